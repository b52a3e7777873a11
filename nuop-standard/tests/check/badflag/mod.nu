def "main config" [] {
  {name: "badflag", version: "v1", kind: "ConfigMap"} | to yaml
}

def "main reconcile" [] {
  let copy = k8s get configmap copy --nope
  exit 0
}
