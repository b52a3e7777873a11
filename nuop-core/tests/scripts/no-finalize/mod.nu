# Declares a finalizer but forgets `main finalize`: every deletion would hang.
def "main config" [] {
  { name: "no-finalize", version: "v1", kind: "ConfigMap", finalizer: "deployment.finalizer.example.com" } | to yaml
}
def "main reconcile" [] { exit 0 }
