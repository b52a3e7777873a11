# Widgets: status `ready: true` through the status subresource, a finalizer, and a
# finalize that logs.

def "main config" [] {
  {name: "cleaner", group: "example.com", version: "v1", kind: "Widget", finalizer: "nuop.dev/cleaner"} | to yaml
}

def "main reconcile" [] {
  let w = $in | from json
  $w | upsert status {ready: true} | to json | print
  exit 2
}

def "main finalize" [] {
  let w = $in | from json
  print -e $"cleaned up after ($w.metadata.name)"
  exit 0
}
