# Runs the command named in the input's data.cmd: each would act on the whole operator
# process in the embedded engine, which refuses them.
def "main config" [] { { name: "refused", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  let obj = $in | from json
  match $obj.data.cmd {
    "exec" => { exec sleep 600 }
    "ulimit" => { ulimit -n 64 }
    "umask" => { umask 000 }
    "job spawn" => { job spawn { sleep 600sec } }
  }
  print "the command returned"
  exit 0
}
