# Keeps a copy `<name>-copy` of its primary's data, labelled
# `test.nuop.dev/replica-of: <namespace>.<name>`; the copies are watched and mapped back
# by that label. Requeues only after 300 s, so a copy restored sooner was restored
# because the watch woke its primary.
def "main config" [] {
  {
    name: "watch-label"
    version: "v1"
    kind: "ConfigMap"
    labelSelectors: {"test.nuop.dev/source": "watch-label"}
    requeue_after_change: 300
    requeue_after_noop: 300
    watches: [{
      apiVersion: "v1"
      kind: "ConfigMap"
      labelSelectors: {"test.nuop.dev/copy": "watch-label"}
      map: {label: "test.nuop.dev/replica-of"}
    }]
  } | to json
}

def "main reconcile" [] {
  let source = $in | from json
  let ns = $source.metadata.namespace
  let name = $"($source.metadata.name)-copy"
  let want = $source.data? | default {}
  let found = ^kubectl get configmap $name -n $ns -o json --ignore-not-found | complete
  if $found.exit_code == 0 and ($found.stdout | str trim) != "" {
    if (($found.stdout | from json).data? | default {}) == $want { exit 0 }
  }
  {
    apiVersion: "v1"
    kind: "ConfigMap"
    metadata: {
      name: $name
      namespace: $ns
      labels: {"test.nuop.dev/copy": "watch-label", "test.nuop.dev/replica-of": $"($ns).($source.metadata.name)"}
    }
    data: $want
  } | to json | ^kubectl apply --server-side --force-conflicts --field-manager nuop-watch-label -f - | ignore
  exit 2
}
