# Rewrites the variable nuop tags its externals with, then starts one that hangs; a
# child of an external runs with its environment cleared.
def "main config" [] { { name: "call-id", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  $env.NUOP_CALL_ID = "1-1-0000000000000000"
  print "still my output"
  ^sh -c 'env -i sleep 604; true'
}

def "main finalize" [] {
  $env.NUOP_CALL_ID = "1-1-0000000000000000"
  ^sleep 603
}
