# Stamps on each primary how many namespaces are labelled `test.nuop.dev/for: <its
# namespace>`; namespaces are watched with `map: all`, so a new one updates every
# primary at once. Requeues only after 300 s.
def "main config" [] {
  {
    name: "watch-all"
    version: "v1"
    kind: "ConfigMap"
    labelSelectors: {"test.nuop.dev/counted": "watch-all"}
    requeue_after_change: 300
    requeue_after_noop: 300
    watches: [{apiVersion: "v1", kind: "Namespace", labelSelectors: {"test.nuop.dev/watch-all": "true"}, map: "all"}]
  } | to json
}

def "main reconcile" [] {
  let obj = $in | from json
  let ns = $obj.metadata.namespace
  let count = ^kubectl get namespaces -l $"test.nuop.dev/for=($ns)" -o json | from json | get items | length | into string
  let current = $obj.metadata.annotations? | default {} | get -o "test.nuop.dev/namespaces"
  if $current == $count { exit 0 }
  $obj | upsert metadata.annotations {|o| $o.metadata.annotations? | default {} | upsert "test.nuop.dev/namespaces" $count } | to json | print
  exit 2
}
