# Runs, but check warns about each of these lines.

def "main config" [] {
  {name: "lints", version: "v1", kind: "ConfigMap", owns: [{apiVersion: v1, kind: ConfigMap}]} | to yaml
}

def "main reconcile" [] {
  let cm = $in | from json
  let pods = ^kubectl get pods -o json
  let secrets = k8s list secrets -A
  let copy = k8s get configmaps copy
  print -e ($cm | get -i metadata.name)
  exit 0
}

def "main finalize" [] {
  exit 0
}
