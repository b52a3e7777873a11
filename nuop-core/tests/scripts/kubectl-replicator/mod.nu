# config-replicator: copies ConfigMaps labelled `nuop.dev/replicate: "true"` into other
# namespaces, keeps the copies in step with the source, and deletes them when the
# source goes away (finalizer) or a namespace stops being a target.
#
# Targets: every Active namespace except the source's own and kube-system, kube-public,
# kube-node-lease; `nuop.dev/replicate-include: "ns1,ns2"` restricts the targets to those
# namespaces (system namespaces only when named there); `nuop.dev/replicate-exclude:
# "ns3"` removes namespaces from the targets.
#
# Copies are named like the source, labelled `nuop.dev/replica-of: <namespace>.<name>`
# (and not with the replicate label, so they are never replicated themselves), and are
# written with kubectl server-side apply. The script never writes its own object back:
# exit 0 = every copy already up to date, exit 2 = copies created, updated or deleted.

const REPLICATE_LABEL = "nuop.dev/replicate"
const REPLICA_LABEL = "nuop.dev/replica-of"
const INCLUDE_ANNOTATION = "nuop.dev/replicate-include"
const EXCLUDE_ANNOTATION = "nuop.dev/replicate-exclude"
const FIELD_MANAGER = "nuop-config-replicator"
const SYSTEM_NAMESPACES = [kube-system kube-public kube-node-lease]

def "main config" [] {
  {
    name: "config-replicator"
    group: ""
    version: "v1"
    kind: "ConfigMap"
    labelSelectors: { "nuop.dev/replicate": "true" }
    finalizer: "nuop.dev/config-replicator"
    requeue_after_change: 10
    # New namespaces get their copy at the next periodic reconcile.
    requeue_after_noop: 60
    timeout: 60
  } | to yaml
}

def "main reconcile" [] {
  let source = $in | from json
  let tag = replica-tag $source
  let name = $source.metadata.name

  let targets = target-namespaces $source (active-namespaces)
  # Every ConfigMap with the source's name, in any namespace: our copies (labelled with
  # the tag) and ConfigMaps of the same name we must not touch.
  let same_name = kubectl-json [get configmaps --all-namespaces --field-selector $"metadata.name=($name)"]
    | get items
    | where {|cm| $cm.metadata.namespace != $source.metadata.namespace }
  let copies = $same_name | where {|cm| (label-of $cm $REPLICA_LABEL) == $tag }
  let foreign = $same_name
    | where {|cm| (label-of $cm $REPLICA_LABEL) != $tag and $cm.metadata.namespace in $targets }
    | get metadata.namespace
  for ns in $foreign {
    print -e $"warning: ($ns)/($name) exists and is not a copy of ($tag); left alone"
  }

  # Copies to create or bring up to date.
  let stale = $targets
    | where {|ns| $ns not-in $foreign }
    | each {|ns|
        let copy = $copies | where metadata.namespace == $ns | get 0?
        let action = if $copy == null { "created" } else if (up-to-date $copy $source) { null } else { "updated" }
        if $action != null { {namespace: $ns, action: $action, extra: (extra-keys $copy $source)} }
      }
  if ($stale | is-not-empty) {
    let items = $stale | each {|s| desired-copy $source $s.namespace $tag }
    {apiVersion: "v1", kind: "List", items: $items} | to json
      | kubectl-run [apply --server-side --field-manager $FIELD_MANAGER --force-conflicts -f -]
      | ignore
    # Server-side apply removes only keys this field manager owned; keys someone else
    # added to a copy are removed here so the copy matches the source exactly.
    for s in ($stale | where {|s| $s.extra | values | any {|keys| $keys | is-not-empty } }) {
      let patch = $s.extra | items {|field, keys| {$field: ($keys | each {|k| {$k: null} } | into record)} } | into record
      kubectl-run [patch configmap $name --namespace $s.namespace --type merge --patch ($patch | to json -r)] | ignore
    }
    for s in $stale { print -e $"($s.action) copy ($s.namespace)/($name)" }
  }

  # Copies in namespaces that are no longer targets.
  let orphans = $copies | where {|cm| $cm.metadata.namespace not-in $targets } | get metadata.namespace
  for ns in $orphans {
    kubectl-run [delete configmap $name --namespace $ns --ignore-not-found] | ignore
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
  let tag = replica-tag $source
  let out = kubectl-run [delete configmaps --all-namespaces --selector $"($REPLICA_LABEL)=($tag)" --ignore-not-found]
  let deleted = $out | lines | where {|l| $l =~ ' deleted' }
  print -e $"source ($tag) deleted: removed ($deleted | length) copies"
  exit 0
}

# `<namespace>.<name>`, the value of the copies' label; a label value is at most 63
# characters, so very long names cannot be replicated.
def replica-tag [source: record] {
  let tag = $"($source.metadata.namespace).($source.metadata.name)"
  if ($tag | str length) > 63 {
    error make {msg: $"cannot replicate ($tag): `<namespace>.<name>` is longer than 63 characters, the limit of the ($REPLICA_LABEL) label"}
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

def active-namespaces [] {
  kubectl-json [get namespaces] | get items | where status.phase == "Active" | get metadata.name
}

def desired-copy [source: record, namespace: string, tag: string] {
  let copy = {
    apiVersion: "v1"
    kind: "ConfigMap"
    metadata: {name: $source.metadata.name, namespace: $namespace, labels: {$REPLICA_LABEL: $tag}}
  }
  ["data" "binaryData"] | reduce --fold $copy {|field, acc|
    let value = $source | get -o $field
    if $value == null { $acc } else { $acc | insert $field $value }
  }
}

def up-to-date [copy: record, source: record] {
  ["data" "binaryData"] | all {|field| ($copy | get -o $field | default {}) == ($source | get -o $field | default {}) }
}

# Keys a copy has that the source does not, per field: {data: [..], binaryData: [..]}.
def extra-keys [copy, source: record] {
  ["data" "binaryData"] | each {|field|
    let have = $copy | default {} | get -o $field | default {} | columns
    let want = $source | get -o $field | default {} | columns
    {$field: ($have | where $it not-in $want)}
  } | into record
}

def label-of [object: record, label: string] {
  $object.metadata.labels? | default {} | get -o $label
}

# Runs kubectl with `args` (stdin from the pipeline, if any); its stdout, or an error
# carrying its stderr when it fails.
def kubectl-run [args: list<string>] {
  let stdin = $in
  let result = if $stdin == null { ^kubectl ...$args | complete } else { $stdin | ^kubectl ...$args | complete }
  if $result.exit_code != 0 {
    error make {msg: $"kubectl ($args | str join ' ') failed: ($result.stderr | str trim)"}
  }
  $result.stdout
}

def kubectl-json [args: list<string>] {
  kubectl-run [...$args --output json] | from json
}
