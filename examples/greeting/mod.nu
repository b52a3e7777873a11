# greeting: writes a greeting for each Greeting (examples.nuop.dev/v1alpha1) into its
# status. The CRD is in crd.yaml next to this file.
#
# reconcile prints the whole object with the new status (nuop writes `.status` to the
# status subresource) and exits 2; it exits 0 when the status is already right.

def "main config" [] {
  {
    name: "greeting"
    group: "examples.nuop.dev"
    version: "v1alpha1"
    kind: "Greeting"
  } | to yaml
}

def "main reconcile" [] {
  let greeting = $in | from json
  let hello = $"Hello, ($greeting.spec.name)!"
  let message = if ($greeting.spec.style? | default "plain") == "loud" { $hello | str uppercase } else { $hello }
  let generation = $greeting.metadata.generation? | default 0
  let status = $greeting.status? | default {}

  if $status.message? == $message and $status.observedGeneration? == $generation {
    print -e $"($greeting.metadata.name): status up to date"
    exit 0
  }
  print -e $"($greeting.metadata.name): ($message)"
  $greeting
    | upsert status ($status | upsert message $message | upsert observedGeneration $generation)
    | to json -r
    | print
  exit 2
}
