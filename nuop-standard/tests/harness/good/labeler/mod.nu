# Labels ConfigMaps `greeted: "yes"`: an answer the runtime writes back (exit 2).

def "main config" [] {
  {name: "labeler", version: "v1", kind: "ConfigMap", requeue_after_change: 5, requeue_after_noop: 30} | to yaml
}

def "main reconcile" [] {
  let cm = $in | from json
  if ($cm.metadata.labels? | default {} | get -o greeted) == "yes" {
    print -e $"($cm.metadata.name) already labelled"
    exit 0
  }
  print -e $"labelling ($cm.metadata.name)"
  print ($cm | upsert metadata.labels.greeted "yes" | to json)
  exit 2
}
