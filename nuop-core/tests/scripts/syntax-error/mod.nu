def "main config" [] { { name: "syntax-error", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  let x = (1 +
}
