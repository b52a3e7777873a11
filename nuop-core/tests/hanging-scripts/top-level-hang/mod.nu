# The top level never finishes: an external that sleeps, then a loop.
^sleep 602
loop { sleep 10ms }

def "main config" [] { { name: "top-level-hang", version: "v1", kind: "ConfigMap" } | to yaml }
def "main reconcile" [] { exit 0 }
