def "main config" [] { { name: "bad-config", version: "v1", kind: "ConfigMap", requeue_after_chnage: 5 } | to yaml }
def "main reconcile" [] { exit 0 }
