# Claims a change but prints garbage instead of an object.
def "main config" [] { { name: "garbage", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  print "%%% this is not { an object"
  exit 2
}

def "main finalize" [] {
  print '{"apiVersion": "v1", "kind": '
  exit 2
}
