# Stamps on its primary the names of the Secrets annotated `test.nuop.dev/for: <its
# name>`. The Secrets are watched with `map: script`: `main map` reads that annotation.
# Requeues only after 300 s.
def "main config" [] {
  {
    name: "watch-script"
    version: "v1"
    kind: "ConfigMap"
    labelSelectors: {"test.nuop.dev/mapped": "watch-script"}
    requeue_after_change: 300
    requeue_after_noop: 300
    watches: [{apiVersion: "v1", kind: "Secret", labelSelectors: {"test.nuop.dev/mapped": "watch-script"}, map: "script"}]
  } | to json
}

# The related Secret names its primary in an annotation.
def "main map" [] {
  let secret = $in | from json
  let target = $secret.metadata.annotations? | default {} | get -o "test.nuop.dev/for"
  # A list (or one record); `to json` so that the process executor's stdout says the same.
  if $target == null { [] } else { [{namespace: $secret.metadata.namespace, name: $target}] } | to json
}

def "main reconcile" [] {
  let obj = $in | from json
  let ns = $obj.metadata.namespace
  let names = ^kubectl get secrets -n $ns -l "test.nuop.dev/mapped=watch-script" -o json | from json | get items
    | where {|s| ($s.metadata.annotations? | default {} | get -o "test.nuop.dev/for") == $obj.metadata.name }
    | get metadata.name | sort | str join ","
  let current = $obj.metadata.annotations? | default {} | get -o "test.nuop.dev/secrets" | default ""
  if $current == $names { exit 0 }
  $obj | upsert metadata.annotations {|o| $o.metadata.annotations? | default {} | upsert "test.nuop.dev/secrets" $names } | to json | print
  exit 2
}
