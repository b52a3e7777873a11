# Reads JSON, answers JSON: the object with an annotation and a status.
def "main config" [] {
  { name: "json-changed", version: "v1", kind: "ConfigMap" } | to json
}

def "main reconcile" [] {
  let obj = $in | from json
  $obj | upsert metadata.annotations { "nuop.dev/phase": $env.NUOP_PHASE, "nuop.dev/controller": $env.NUOP_CONTROLLER } | to json -r
  | print
  exit 2
}
