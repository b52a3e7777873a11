# Defines config only.
def "main config" [] { { name: "no-reconcile", version: "v1", kind: "ConfigMap" } | to yaml }
