# Owns a child ConfigMap `<name>-child` holding its primary's data, written with
# kubectl (labelled as nuop's `k8s apply` would label it). Requeues only after 300 s,
# so a child restored sooner was restored by the owns watch.
def "main config" [] {
  {
    name: "owns-child"
    version: "v1"
    kind: "ConfigMap"
    labelSelectors: {"test.nuop.dev/parent": "owns-child"}
    requeue_after_change: 300
    requeue_after_noop: 300
    owns: [{apiVersion: "v1", kind: "ConfigMap"}]
  } | to json
}

def "main reconcile" [] {
  let parent = $in | from json
  let ns = $parent.metadata.namespace
  let name = $"($parent.metadata.name)-child"
  let want = $parent.data? | default {}
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
      labels: {"nuop.dev/controller": $env.NUOP_CONTROLLER, "app.kubernetes.io/managed-by": "nuop"}
      ownerReferences: [{apiVersion: "v1", kind: "ConfigMap", name: $parent.metadata.name, uid: $parent.metadata.uid, controller: true}]
    }
    data: $want
  } | to json | ^kubectl apply --server-side --force-conflicts --field-manager $"nuop-($env.NUOP_CONTROLLER)" -f - | ignore
  print -e $"wrote ($ns)/($name)"
  exit 2
}
