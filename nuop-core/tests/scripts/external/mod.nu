# Uses an external command, as original scripts call kubectl.
def "main config" [] { { name: "external", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  let obj = $in | from yaml
  ^sh -c $"echo external saw ($obj.metadata.name)"
  exit 0
}
