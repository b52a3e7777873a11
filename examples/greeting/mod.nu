# greeting: writes a greeting for each Greeting (examples.nuop.dev/v1alpha1) into its
# status, and into a ConfigMap it owns. The CRD is in crd.yaml next to this file.
#
# The child ConfigMap `<name>-greeting` (data `message`) is declared under `owns`:
# `k8s apply` makes the Greeting its controller owner (Kubernetes' garbage collector
# deletes it with the Greeting) and labels it for nuop's owns watch, so a child that is
# deleted or edited wakes its Greeting at once and is put back.
#
# reconcile applies the child when it is missing or stale, prints the whole object with
# the new status when the status is stale (nuop writes `.status` to the status
# subresource), and exits 2 when it changed either; it exits 0 when both are right.

def "main config" [] {
  {
    name: "greeting"
    group: "examples.nuop.dev"
    version: "v1alpha1"
    kind: "Greeting"
    # The owns watch wakes a Greeting when its child changes; periodic reconciles are a
    # safety net only.
    requeue_after_change: 300
    requeue_after_noop: 300
    owns: [{apiVersion: "v1", kind: "ConfigMap"}]
  } | to yaml
}

def "main reconcile" [] {
  let greeting = $in | from json
  let name = $greeting.metadata.name
  let hello = $"Hello, ($greeting.spec.name)!"
  let message = if ($greeting.spec.style? | default "plain") == "loud" { $hello | str uppercase } else { $hello }
  let generation = $greeting.metadata.generation? | default 0
  let status = $greeting.status? | default {}

  # The child, from nuop's cache of this Greeting's children.
  let child_name = $"($name)-greeting"
  let child = k8s children configmap | where metadata.name == $child_name | get 0?
  let child_ok = $child != null and ($child.data? | default {}) == {message: $message}
  if not $child_ok {
    {apiVersion: "v1", kind: "ConfigMap", metadata: {name: $child_name}, data: {message: $message}}
      | k8s apply
      | ignore
    print -e $"($name): (if $child == null { 'created' } else { 'updated' }) ConfigMap ($child_name)"
  }

  if $status.message? == $message and $status.observedGeneration? == $generation {
    if $child_ok {
      print -e $"($name): status and ConfigMap up to date"
      exit 0
    }
    exit 2
  }
  print -e $"($name): ($message)"
  $greeting
    | upsert status ($status | upsert message $message | upsert observedGeneration $generation)
    | to json -r
    | print
  exit 2
}
