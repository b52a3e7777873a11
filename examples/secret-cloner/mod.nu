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
# never cloned themselves), and are written with `k8s apply` (server-side apply, forced,
# field manager nuop-secret-cloner). Reads (`k8s list`) come from nuop's caches of the
# kinds in `watches`, never from the API server. The script never writes its own object
# back: exit 0 = every copy already up to date, exit 2 = copies created, updated or
# deleted.
#
# `watches` wake a source at once when one of its copies changes or goes away (the
# copy's `nuop.dev/clone-of` label names it) and every source when a namespace comes,
# goes or changes, so the periodic requeue is only a safety net.
#
# Secret data never reaches the logs: the script logs namespaces and names only, and
# the messages of failed `k8s` commands are redacted before they are logged.

const CLONE_LABEL = "nuop.dev/clone"
const CLONE_OF_LABEL = "nuop.dev/clone-of"
const INCLUDE_ANNOTATION = "nuop.dev/clone-include"
const EXCLUDE_ANNOTATION = "nuop.dev/clone-exclude"
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
    # The watches below wake a source when something it depends on changes (its own
    # writes included); periodic reconciles are a safety net only.
    requeue_after_change: 300
    requeue_after_noop: 300
    timeout: 60
    watches: [
      # Every Secret of the cluster is cached (for `k8s list`, which also finds
      # same-named Secrets that are not copies): a decision nuop makes you state with
      # `clusterWide: true`. A copy wakes the source its label names.
      {apiVersion: "v1", kind: "Secret", clusterWide: true, map: {label: $CLONE_OF_LABEL}}
      # A namespace created, deleted or changed wakes every source.
      {apiVersion: "v1", kind: "Namespace", map: "all"}
    ]
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
  let same_name = redacted $hide {|| k8s list secrets -A --field-selector $"metadata.name=($name)" }
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
      redacted $hide {|| k8s delete secret $name -n $s.namespace }
    }
    let items = $stale | each {|s| desired-copy $source $s.namespace $tag }
    redacted $hide {|| $items | k8s apply } | ignore
    # Server-side apply removes only keys this field manager owned; keys someone else
    # added to a copy are removed here so the copy matches the source exactly.
    for s in ($stale | where {|s| $s.action == "updated" and ($s.extra | is-not-empty) }) {
      let patch = {data: ($s.extra | each {|k| {$k: null} } | into record)}
      redacted $hide {|| $patch | k8s patch secret $name -n $s.namespace } | ignore
    }
    for s in $stale { print -e $"($s.action) copy ($s.namespace)/($name)" }
  }

  # Copies in namespaces that are no longer targets.
  let orphans = $copies | where {|s| $s.metadata.namespace not-in $targets } | get metadata.namespace
  for ns in $orphans {
    redacted $hide {|| k8s delete secret $name -n $ns }
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
  let hide = secret-values $source
  let copies = redacted $hide {|| k8s list secrets -A -l {$CLONE_OF_LABEL: $tag} }
  for copy in $copies {
    redacted $hide {|| k8s delete secret $copy.metadata.name -n $copy.metadata.namespace }
  }
  print -e $"source ($tag) deleted: removed ($copies | length) copies"
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
  redacted $hide {|| k8s list namespaces }
    | where {|ns| $ns.status?.phase? == "Active" }
    | get metadata.name
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

# Runs `action`; when it fails (a `k8s` command's error names the object and carries the
# API server's message), fails with that message, every string of `hide` redacted.
def redacted [hide: list<string>, action: closure] {
  try { do $action } catch {|e| error make {msg: ($e.msg | redact $hide)} }
}
