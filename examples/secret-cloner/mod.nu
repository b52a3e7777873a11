# secret-cloner: copies Secrets labelled `nuop.dev/clone: "true"` into other namespaces,
# keeps the copies in step with the source, and deletes them when the source goes away
# (finalizer) or a namespace stops being a target.
#
# Targets: every Active namespace except the source's own and kube-system, kube-public,
# kube-node-lease; `nuop.dev/clone-include: "ns1,ns2"` restricts the targets to those
# namespaces (system namespaces only when named there); `nuop.dev/clone-exclude: "ns3"`
# removes namespaces from the targets.
#
# Copies are named like the source, have its type and data, are labelled
# `nuop.dev/clone-of: <namespace>.<name>` (and not with the clone label, so they are
# never cloned themselves), and are written with kubectl server-side apply. The script
# never writes its own object back: exit 0 = every copy already up to date, exit 2 =
# copies created, updated or deleted.
#
# Secret data never reaches the logs: the script logs namespaces and names only, and
# kubectl's error messages are redacted before they are logged.

const CLONE_LABEL = "nuop.dev/clone"
const CLONE_OF_LABEL = "nuop.dev/clone-of"
const INCLUDE_ANNOTATION = "nuop.dev/clone-include"
const EXCLUDE_ANNOTATION = "nuop.dev/clone-exclude"
const FIELD_MANAGER = "nuop-secret-cloner"
const SYSTEM_NAMESPACES = [kube-system kube-public kube-node-lease]
# Token Secrets are filled in per namespace by Kubernetes: a copy would be meaningless.
const UNCLONABLE_TYPES = ["kubernetes.io/service-account-token"]

def "main config" [] {
  {
    name: "secret-cloner"
    group: ""
    version: "v1"
    kind: "Secret"
    labelSelectors: { "nuop.dev/clone": "true" }
    finalizer: "nuop.dev/secret-cloner"
    requeue_after_change: 10
    # New namespaces get their copy at the next periodic reconcile.
    requeue_after_noop: 60
    timeout: 60
  } | to yaml
}

def "main reconcile" [] {
  let source = $in | from json
  let tag = clone-tag $source
  let name = $source.metadata.name
  let hide = secret-values $source
  let type = $source.type? | default "Opaque"

  let targets = if $type in $UNCLONABLE_TYPES {
    print -e $"warning: secrets of type ($type) are not cloned"
    []
  } else {
    target-namespaces $source (active-namespaces $hide)
  }
  # Every Secret with the source's name, in any namespace: our copies (labelled with the
  # tag) and Secrets of the same name we must not touch.
  let same_name = kubectl-json $hide [get secrets --all-namespaces --field-selector $"metadata.name=($name)"]
    | get items
    | where {|s| $s.metadata.namespace != $source.metadata.namespace }
  let copies = $same_name | where {|s| (label-of $s $CLONE_OF_LABEL) == $tag }
  let foreign = $same_name
    | where {|s| (label-of $s $CLONE_OF_LABEL) != $tag and $s.metadata.namespace in $targets }
    | get metadata.namespace
  for ns in $foreign {
    print -e $"warning: ($ns)/($name) exists and is not a copy of ($tag); left alone"
  }

  # Copies to create or bring up to date.
  let stale = $targets
    | where {|ns| $ns not-in $foreign }
    | each {|ns|
        let copy = $copies | where metadata.namespace == $ns | get 0?
        let action = if $copy == null {
          "created"
        } else if ($copy.type? | default "Opaque") != $type {
          "recreated"  # the type of a Secret cannot be changed in place
        } else if (($copy.data? | default {}) == ($source.data? | default {})) {
          null
        } else {
          "updated"
        }
        if $action != null { {namespace: $ns, action: $action, extra: (extra-keys $copy $source)} }
      }
  if ($stale | is-not-empty) {
    for s in ($stale | where action == "recreated") {
      kubectl-run $hide [delete secret $name --namespace $s.namespace --ignore-not-found] | ignore
    }
    let items = $stale | each {|s| desired-copy $source $s.namespace $tag }
    {apiVersion: "v1", kind: "List", items: $items} | to json
      | kubectl-run $hide [apply --server-side --field-manager $FIELD_MANAGER --force-conflicts -f -]
      | ignore
    # Server-side apply removes only keys this field manager owned; keys someone else
    # added to a copy are removed here so the copy matches the source exactly.
    for s in ($stale | where {|s| $s.action == "updated" and ($s.extra | is-not-empty) }) {
      let patch = {data: ($s.extra | each {|k| {$k: null} } | into record)}
      kubectl-run $hide [patch secret $name --namespace $s.namespace --type merge --patch ($patch | to json -r)] | ignore
    }
    for s in $stale { print -e $"($s.action) copy ($s.namespace)/($name)" }
  }

  # Copies in namespaces that are no longer targets.
  let orphans = $copies | where {|s| $s.metadata.namespace not-in $targets } | get metadata.namespace
  for ns in $orphans {
    kubectl-run $hide [delete secret $name --namespace $ns --ignore-not-found] | ignore
    print -e $"deleted copy ($ns)/($name): no longer a target"
  }

  if ($stale | is-empty) and ($orphans | is-empty) {
    print -e $"($targets | length | $in - ($foreign | length)) copies of ($tag) up to date"
    exit 0
  }
  exit 2
}

def "main finalize" [] {
  let source = $in | from json
  let tag = clone-tag $source
  let out = kubectl-run (secret-values $source) [delete secrets --all-namespaces --selector $"($CLONE_OF_LABEL)=($tag)" --ignore-not-found]
  let deleted = $out | lines | where {|l| $l =~ ' deleted' }
  print -e $"source ($tag) deleted: removed ($deleted | length) copies"
  exit 0
}

# `<namespace>.<name>`, the value of the copies' label; a label value is at most 63
# characters, so very long names cannot be cloned.
def clone-tag [source: record] {
  let tag = $"($source.metadata.namespace).($source.metadata.name)"
  if ($tag | str length) > 63 {
    error make {msg: $"cannot clone ($tag): `<namespace>.<name>` is longer than 63 characters, the limit of the ($CLONE_OF_LABEL) label"}
  }
  $tag
}

# The namespaces the source goes to, sorted.
def target-namespaces [source: record, active: list<string>] {
  let annotations = $source.metadata.annotations? | default {}
  let include = $annotations | get -o $INCLUDE_ANNOTATION
  let exclude = $annotations | get -o $EXCLUDE_ANNOTATION | split-list
  let candidates = if $include == null {
    $active | where $it not-in $SYSTEM_NAMESPACES
  } else {
    let wanted = $include | split-list
    for ns in ($wanted | where $it not-in $active) {
      print -e $"warning: ($INCLUDE_ANNOTATION) names ($ns), which is not an active namespace"
    }
    $wanted | where $it in $active
  }
  $candidates
    | where {|ns| $ns != $source.metadata.namespace and $ns not-in $exclude }
    | uniq
    | sort
}

# "a, b,,c" -> [a b c]; null -> [].
def split-list [] {
  $in | default "" | split row "," | str trim | where $it != ""
}

def active-namespaces [hide: list<string>] {
  kubectl-json $hide [get namespaces] | get items | where status.phase == "Active" | get metadata.name
}

def desired-copy [source: record, namespace: string, tag: string] {
  let copy = {
    apiVersion: "v1"
    kind: "Secret"
    metadata: {name: $source.metadata.name, namespace: $namespace, labels: {$CLONE_OF_LABEL: $tag}}
    type: ($source.type? | default "Opaque")
  }
  if $source.data? == null { $copy } else { $copy | insert data $source.data }
}

# Keys a copy has that the source does not.
def extra-keys [copy, source: record] {
  let have = $copy | default {} | get -o data | default {} | columns
  let want = $source.data? | default {} | columns
  $have | where $it not-in $want
}

def label-of [object: record, label: string] {
  $object.metadata.labels? | default {} | get -o $label
}

# The strings that must never be logged: each value of the Secret, base64 as stored and
# decoded (when it is text of a few characters or more).
def secret-values [source: record] {
  $source.data? | default {} | values | each {|encoded|
    let decoded = try { $encoded | decode base64 | decode utf-8 } catch { null }
    [$encoded $decoded]
  } | flatten | where {|v| $v != null and ($v | str length) >= 4 } | uniq | sort-by --reverse {|v| $v | str length }
}

def redact [hide: list<string>] {
  let text = $in
  $hide | reduce --fold $text {|secret, acc| $acc | str replace --all $secret "<redacted>" }
}

# Runs kubectl with `args` (stdin from the pipeline, if any); its stdout, or an error
# carrying its stderr, with every string of `hide` redacted, when it fails.
def kubectl-run [hide: list<string>, args: list<string>] {
  let stdin = $in
  let result = if $stdin == null { ^kubectl ...$args | complete } else { $stdin | ^kubectl ...$args | complete }
  if $result.exit_code != 0 {
    let message = $result.stderr | str trim | redact $hide
    error make {msg: $"kubectl ($args | str join ' ') failed: ($message)"}
  }
  $result.stdout
}

def kubectl-json [hide: list<string>, args: list<string>] {
  kubectl-run $hide [...$args --output json] | from json
}
