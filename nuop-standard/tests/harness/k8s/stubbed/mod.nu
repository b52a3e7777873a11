# Uses the editor stubs (`nuop-standard stubs`): the `use` line below lets `nu --ide-check`
# and language servers know the `k8s` commands; at run time nuop's real commands answer.
use nuop-k8s.nu *

def "main config" [] {
  {name: "stubbed", version: "v1", kind: "ConfigMap", reads: [{apiVersion: v1, kind: ConfigMap}]} | to yaml
}

def "main reconcile" [] {
  let cm = $in | from json
  let source = k8s get configmap $"($cm.metadata.name)-source" --namespace $cm.metadata.namespace
  if $source == null or $source.data? == $cm.data? {
    exit 0
  }
  print ($cm | upsert data $source.data | to json)
  exit 2
}
