# Rewrites the variable nuop tags its externals with, then starts one that hangs.
def "main config" [] { { name: "call-id", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  $env.NUOP_CALL_ID = "1-1-0000000000000000"
  print "still my output"
  hide-env NUOP_CALL_ID
  ^sleep 603
}
