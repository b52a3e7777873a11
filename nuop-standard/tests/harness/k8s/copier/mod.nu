# Copies its ConfigMap to `<name>-copy` with `k8s apply` (an owned child), after
# reading what is there.

def "main config" [] {
  {name: "copier", version: "v1", kind: "ConfigMap", owns: [{apiVersion: v1, kind: ConfigMap}]} | to yaml
}

def "main reconcile" [] {
  let cm = $in | from json
  let name = $"($cm.metadata.name)-copy"
  let existing = k8s get configmap $name
  if $existing != null and $existing.data? == $cm.data? {
    exit 0
  }
  {apiVersion: v1, kind: ConfigMap, metadata: {name: $name}, data: $cm.data} | k8s apply | ignore
  print -e $"copied to ($name)"
  exit 2
}
