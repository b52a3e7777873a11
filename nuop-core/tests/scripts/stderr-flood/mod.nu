# Writes 10 MiB to stderr, then answers normally.
def "main config" [] { { name: "stderr-flood", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  let line = ("" | fill -c "x" -w 1048575)
  for i in 1..10 { print -e $line }
  print "done"
  exit 0
}
