def "main config" [] {
  {
    name: "finalizer"
    version: "v1"
    kind: "ConfigMap"
    finalizer: "nuop.dev/cleanup"
    requeue_after_change: 5
    requeueAfterNoop: 42
    timeout: 3
  } | to yaml
}

def "main reconcile" [] { exit 0 }

def "main finalize" [] {
  let obj = $in | from json
  print -e $"cleaning up after ($obj.metadata.name)"
  exit 0
}
