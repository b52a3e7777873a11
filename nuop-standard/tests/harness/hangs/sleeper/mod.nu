# A reconcile that never ends by itself.

def "main config" [] {
  {name: "sleeper", version: "v1", kind: "ConfigMap"} | to yaml
}

def "main reconcile" [] {
  print -e "going to sleep"
  sleep 1hr
  exit 0
}
