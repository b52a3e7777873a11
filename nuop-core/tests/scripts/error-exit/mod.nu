def "main config" [] { { name: "error-exit", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  print -e "something went wrong"
  exit 1
}
