# Adds `nuop.dev/seen: "true"` to a ConfigMap, written as the original nuop's scripts
# are: YAML config, YAML on stdin, the object printed as YAML, exit 2 on change.

def "main config" [] {
  {
    name: "add-label"
    group: ""
    version: "v1"
    kind: "ConfigMap"
    labelSelectors: { x: "y" }
  } | to yaml
}

def "main reconcile" [] {
  let obj = $in | from yaml
  if ($obj.metadata.labels? | default {} | get -o "nuop.dev/seen") == "true" {
    exit 0
  }
  let labels = $obj.metadata.labels? | default {} | upsert "nuop.dev/seen" "true"
  print -e $"labelling ($obj.metadata.name)"
  print ($obj | upsert metadata.labels $labels | to yaml)
  exit 2
}

def "main finalize" [] {
  exit 0
}
