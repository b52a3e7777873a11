# Never finishes on its own: a Nushell loop in reconcile, an external sleep in finalize.
def "main config" [] { { name: "hang", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  print -e "about to hang"
  loop { sleep 10ms }
}

def "main finalize" [] {
  print -e "about to hang in an external"
  ^sleep 600
}
