# Uses a deprecated flag: `nu` warns about it on every call.
def "main config" [] { { name: "deprecated", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  let obj = $in | from json
  print -e $"log line for ($obj | get -i metadata.name)"
  exit 0
}
