# Floods: reconcile lets externals write 500 MB to stdout and 500 MB to stderr;
# finalize prints 500 MB to each through `print`.
def "main config" [] { { name: "flood", version: "v1", kind: "ConfigMap" } | to yaml }

def "main reconcile" [] {
  ^head -c 500000000 /dev/zero
  ^sh -c 'head -c 500000000 /dev/zero >&2'
  exit 0
}

def "main finalize" [] {
  let chunk = ("" | fill -c "x" -w 999999)
  for i in 1..500 { print $chunk; print -e $chunk }
  exit 0
}
