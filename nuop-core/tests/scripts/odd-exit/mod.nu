def "main config" [] { { name: "odd-exit", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  print "partial progress"
  exit 7
}
