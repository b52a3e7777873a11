# Each phase blocks, then writes a marker file named in the input: a call cancelled
# while it blocks must never write it.
def "main config" [] { { name: "cancel", version: "v1", kind: "ConfigMap" } | to yaml }

# An external that blocks.
def "main reconcile" [] {
  let obj = $in | from json
  ^sleep 31.5
  "ran on" | save -f $obj.data.marker
  exit 0
}

# A pure Nushell loop that would take minutes.
def "main finalize" [] {
  let obj = $in | from json
  mut n = 0
  while $n < 2000000000 { $n += 1 }
  "ran on" | save -f $obj.data.marker
  exit 0
}
