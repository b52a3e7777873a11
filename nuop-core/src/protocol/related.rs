//! The kinds a controller declares besides its primary: `owns`, `watches` and `reads`
//! in a script's `config` answer.
//!
//! Pure: no I/O. [`parse_related`] validates one list with errors that name the entry
//! and field (`watches[1].map`). Each entry names a kind (apiVersion + kind), optionally narrowed by
//! namespaces and equality selectors, with a trigger filter (`on`) and, for `watches`, a
//! mapper from a related object to the primaries it concerns. The controller (see
//! [`crate::controller`]) turns them into shared informers ([`crate::informers`]); the
//! `k8s` commands read declared kinds from those caches.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{ConfigProblem, edit_distance, kind_of, selectors, string_field};

/// One kind declared under `owns`, `watches` or `reads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedKind {
    /// API group ("" for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind, as in an object's `kind`.
    pub kind: String,
    /// Namespaces to watch; empty means the primary's namespaces (`owns`) or all
    /// namespaces (`watches`, `reads`).
    pub namespaces: Vec<String>,
    /// Equality label selectors passed to the watch.
    pub label_selectors: BTreeMap<String, String>,
    /// Equality field selectors passed to the watch.
    pub field_selectors: BTreeMap<String, String>,
    /// Which changes of a related object trigger a reconcile (deletes always do).
    pub on: Trigger,
    /// How a related object maps to the primaries to reconcile.
    pub map: Mapper,
}

impl RelatedKind {
    /// `group/version` as written in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Which changes of a related object wake its primaries. Deletions always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// `on: spec`: `metadata.generation` changes; for kinds without a generation
    /// (ConfigMap, Secret, ...), any change outside `metadata` and `status`. The default
    /// for `owns`: a child's status churn does not wake its owner.
    Spec,
    /// `on: labels`: the labels change.
    Labels,
    /// `on: annotations`: the annotations change.
    Annotations,
    /// `on: any`: any change (a new resourceVersion). The default for `watches`.
    Any,
}

/// How a related object maps to primaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapper {
    /// `owns`: every ownerReference whose apiVersion and kind are the primary's.
    Owner,
    /// `map: {label: K}`: the label's value names the primary, `<namespace>.<name>`
    /// (split at the first dot: namespaces cannot contain one) or `<name>` in the
    /// related object's own namespace.
    Label(String),
    /// `map: {annotation: K}`: the annotation's value names the primary,
    /// `<namespace>/<name>` or `<name>` in the related object's own namespace.
    Annotation(String),
    /// `map: all`: any change reconciles every primary.
    All,
    /// `map: script`: the script's `main map` phase returns `[{namespace, name}]`.
    Script,
    /// `reads`: cached for `k8s get`/`k8s list`, never a trigger.
    None,
}

/// Which list of a `config` answer an entry is in: each has its own rules for `on`,
/// `map` and `clusterWide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `owns`: children, mapped to their owner; `on` defaults to `spec`.
    Owns,
    /// `watches`: related objects with a required `map`; `on` defaults to `any`.
    Watches,
    /// `reads`: cached for lookups only; neither `on` nor `map`.
    Reads,
}

impl ListKind {
    /// The field's name in a config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owns => "owns",
            Self::Watches => "watches",
            Self::Reads => "reads",
        }
    }
}

/// Canonical field names of one entry and every spelling accepted for each (the same
/// spellings as the top level where the field exists there).
const ENTRY_FIELDS: &[(&str, &[&str])] = &[
    ("apiVersion", &["apiVersion", "api_version"]),
    ("group", &["group"]),
    ("version", &["version"]),
    ("kind", &["kind"]),
    ("namespace", &["namespace"]),
    ("namespaces", &["namespaces"]),
    (
        "labelSelectors",
        &[
            "labelSelectors",
            "label_selectors",
            "labelSelector",
            "label_selector",
        ],
    ),
    (
        "fieldSelectors",
        &[
            "fieldSelectors",
            "field_selectors",
            "fieldSelector",
            "field_selector",
        ],
    ),
    ("on", &["on"]),
    ("map", &["map"]),
    ("clusterWide", &["clusterWide", "cluster_wide"]),
];

/// Kinds of the core group that are numerous or sensitive in most clusters: a
/// cluster-wide `watches`/`reads` of them without namespaces or label selectors needs
/// `clusterWide: true`, so that caching every Secret of the cluster is a decision.
const GUARDED_KINDS: &[&str] = &["Secret", "Pod"];

/// Parses the `owns`, `watches` or `reads` list of a `config` answer (absent = empty).
///
/// # Errors
/// [`ConfigProblem::At`] naming the entry and field (`watches[1].map`), or
/// [`ConfigProblem::Invalid`] when the list itself is not a list.
pub(super) fn parse_related(
    value: Option<&Value>,
    list: ListKind,
) -> Result<Vec<RelatedKind>, ConfigProblem> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items = value.as_array().ok_or_else(|| ConfigProblem::Invalid {
        field: list.as_str(),
        reason: format!("expected a list of kinds, found {}", kind_of(value)),
    })?;
    let mut out: Vec<RelatedKind> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", list.as_str());
        let entry = parse_entry(item, list, &path)?;
        if list == ListKind::Owns
            && out
                .iter()
                .any(|o| o.group == entry.group && o.kind == entry.kind)
        {
            return Err(at(
                &path,
                format!(
                    "{} {} is owned twice; one entry per child kind",
                    entry.api_version(),
                    entry.kind
                ),
            ));
        }
        out.push(entry);
    }
    Ok(out)
}

fn at(path: &str, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem::At {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Re-homes a top-level style problem about `field` under an entry's path.
fn under(path: &str, problem: ConfigProblem) -> ConfigProblem {
    match problem {
        ConfigProblem::Invalid { field, reason } => at(&format!("{path}.{field}"), reason),
        ConfigProblem::Missing(field) => at(&format!("{path}.{field}"), "is required"),
        other => at(path, other.to_string()),
    }
}

fn parse_entry(item: &Value, list: ListKind, path: &str) -> Result<RelatedKind, ConfigProblem> {
    let map = item.as_object().ok_or_else(|| {
        at(
            path,
            format!(
                "expected a mapping with apiVersion and kind, found {}",
                kind_of(item)
            ),
        )
    })?;
    let mut fields: BTreeMap<&'static str, (&str, &Value)> = BTreeMap::new();
    for (key, value) in map {
        let canonical = ENTRY_FIELDS
            .iter()
            .find(|(_, spellings)| spellings.contains(&key.as_str()))
            .map(|(c, _)| *c)
            .ok_or_else(|| {
                let reason = match suggest_entry_field(key) {
                    Some(hint) => format!("unknown field (did you mean `{hint}`?)"),
                    None => "unknown field".to_string(),
                };
                at(&format!("{path}.{key}"), reason)
            })?;
        if let Some((first, _)) = fields.insert(canonical, (key, value)) {
            return Err(at(
                &format!("{path}.{canonical}"),
                format!("given twice, as `{first}` and `{key}`"),
            ));
        }
    }
    let get = |k: &str| fields.get(k).map(|(_, v)| *v).filter(|v| !v.is_null());
    let string = |k: &'static str| -> Result<Option<String>, ConfigProblem> {
        get(k)
            .map(|v| string_field(v, k).map_err(|p| under(path, p)))
            .transpose()
    };

    let (mut group, mut version) = (String::new(), None);
    if let Some(api_version) = string("apiVersion")? {
        match api_version.split_once('/') {
            Some((g, v)) => (group, version) = (g.to_string(), Some(v.to_string())),
            None => version = Some(api_version),
        }
    }
    if let Some(g) = string("group")? {
        if get("apiVersion").is_some() && g != group {
            return Err(at(
                &format!("{path}.group"),
                format!("`{g}` contradicts apiVersion"),
            ));
        }
        group = g;
    }
    if let Some(v) = string("version")? {
        if version.as_ref().is_some_and(|known| *known != v) {
            return Err(at(
                &format!("{path}.version"),
                format!("`{v}` contradicts apiVersion"),
            ));
        }
        version = Some(v);
    }
    let version = version.filter(|v| !v.is_empty()).ok_or_else(|| {
        at(
            &format!("{path}.apiVersion"),
            "is required (e.g. `v1`, `apps/v1`)",
        )
    })?;
    let kind = string("kind")?
        .filter(|k| !k.is_empty())
        .ok_or_else(|| at(&format!("{path}.kind"), "is required"))?;

    let mut namespaces = Vec::new();
    if let Some(ns) = string("namespace")? {
        namespaces.push(ns);
    }
    if let Some(list) = get("namespaces") {
        let items = list.as_array().ok_or_else(|| {
            at(
                &format!("{path}.namespaces"),
                format!("expected a list, found {}", kind_of(list)),
            )
        })?;
        for ns in items {
            namespaces.push(string_field(ns, "namespaces").map_err(|p| under(path, p))?);
        }
    }
    namespaces.retain(|n| !n.is_empty());
    namespaces.sort();
    namespaces.dedup();

    let label_selectors =
        selectors(get("labelSelectors"), "labelSelectors").map_err(|p| under(path, p))?;
    let field_selectors =
        selectors(get("fieldSelectors"), "fieldSelectors").map_err(|p| under(path, p))?;

    let on = match get("on") {
        None => match list {
            ListKind::Owns => Trigger::Spec,
            ListKind::Watches | ListKind::Reads => Trigger::Any,
        },
        Some(_) if list == ListKind::Reads => {
            return Err(at(
                &format!("{path}.on"),
                "`reads` never trigger a reconcile; move the entry to `watches` to be woken",
            ));
        }
        Some(value) => parse_trigger(value).map_err(|reason| at(&format!("{path}.on"), reason))?,
    };

    let map = match (list, get("map")) {
        (ListKind::Owns, None) => Mapper::Owner,
        (ListKind::Reads, None) => Mapper::None,
        (ListKind::Owns, Some(_)) => {
            return Err(at(
                &format!("{path}.map"),
                "`owns` entries map to their owner through ownerReferences; \
                 use `watches` for another mapping",
            ));
        }
        (ListKind::Reads, Some(_)) => {
            return Err(at(
                &format!("{path}.map"),
                "`reads` never trigger a reconcile; move the entry to `watches` to be woken",
            ));
        }
        (ListKind::Watches, None) => {
            return Err(at(
                &format!("{path}.map"),
                "is required: `all`, `script`, `{label: <key>}` or `{annotation: <key>}`",
            ));
        }
        (ListKind::Watches, Some(value)) => {
            parse_mapper(value).map_err(|reason| at(&format!("{path}.map"), reason))?
        }
    };

    let cluster_wide = match get("clusterWide") {
        None => false,
        Some(_) if list == ListKind::Owns => {
            return Err(at(
                &format!("{path}.clusterWide"),
                "`owns` caches hold only objects nuop created (label `nuop.dev/controller`); \
                 clusterWide applies to `watches` and `reads`",
            ));
        }
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(at(
                &format!("{path}.clusterWide"),
                format!("expected true or false, found {}", kind_of(other)),
            ));
        }
    };
    if list != ListKind::Owns
        && group.is_empty()
        && GUARDED_KINDS.contains(&kind.as_str())
        && namespaces.is_empty()
        && label_selectors.is_empty()
        && !cluster_wide
    {
        return Err(at(
            path,
            format!(
                "caching every {kind} of the cluster costs memory and exposes them all to the \
                 script; narrow it with `namespaces` or `labelSelectors`, or say `clusterWide: true`"
            ),
        ));
    }

    Ok(RelatedKind {
        group,
        version,
        kind,
        namespaces,
        label_selectors,
        field_selectors,
        on,
        map,
    })
}

fn parse_trigger(value: &Value) -> Result<Trigger, String> {
    match value.as_str().map(str::trim) {
        Some("spec") => Ok(Trigger::Spec),
        Some("labels") => Ok(Trigger::Labels),
        Some("annotations") => Ok(Trigger::Annotations),
        Some("any") => Ok(Trigger::Any),
        Some(other) => Err(format!(
            "`{other}` is not a trigger: expected spec, labels, annotations or any"
        )),
        None => Err(format!(
            "expected spec, labels, annotations or any, found {}",
            kind_of(value)
        )),
    }
}

fn parse_mapper(value: &Value) -> Result<Mapper, String> {
    const EXPECTED: &str = "expected `all`, `script`, `{label: <key>}` or `{annotation: <key>}`";
    match value {
        Value::String(s) => match s.trim() {
            "all" => Ok(Mapper::All),
            "script" => Ok(Mapper::Script),
            other => Err(format!("`{other}` is not a mapper: {EXPECTED}")),
        },
        Value::Object(map) => {
            let mut entries = map.iter();
            let (Some((key, value)), None) = (entries.next(), entries.next()) else {
                return Err(format!("{EXPECTED}, with exactly one key"));
            };
            let text = match value {
                Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
                other => {
                    return Err(format!(
                        "`{key}` must name a key as a non-empty string, found {}",
                        kind_of(other)
                    ));
                }
            };
            match key.as_str() {
                "label" => Ok(Mapper::Label(text)),
                "annotation" => Ok(Mapper::Annotation(text)),
                other => Err(format!("unknown mapper `{other}`: {EXPECTED}")),
            }
        }
        other => Err(format!("{EXPECTED}, found {}", kind_of(other))),
    }
}

fn suggest_entry_field(key: &str) -> Option<&'static str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let wanted = norm(key);
    ENTRY_FIELDS
        .iter()
        .flat_map(|(c, spellings)| spellings.iter().map(move |s| (*c, norm(s))))
        .map(|(c, s)| (c, edit_distance(&wanted, &s)))
        .filter(|(_, d)| *d <= 3.min(wanted.len().saturating_sub(1)).max(1))
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ScriptConfig, parse_config_value};
    use serde_json::json;

    fn config(extra: Value) -> Result<ScriptConfig, ConfigProblem> {
        let mut value = json!({"name": "c", "version": "v1", "kind": "ConfigMap"});
        for (k, v) in extra.as_object().expect("a mapping") {
            value[k] = v.clone();
        }
        parse_config_value("my-script", &value).map_err(|e| e.problem)
    }

    fn ok(extra: Value) -> ScriptConfig {
        config(extra).expect("config should be valid")
    }

    /// The path and reason of a rejected entry.
    fn rejected(extra: Value) -> (String, String) {
        match config(extra.clone()) {
            Err(ConfigProblem::At { path, reason }) => (path, reason),
            other => panic!("{extra}: expected a problem at a path, got {other:?}"),
        }
    }

    #[test]
    fn absent_lists_are_empty() {
        let c = ok(json!({}));
        assert!(c.owns.is_empty() && c.watches.is_empty() && c.reads.is_empty());
        let c = ok(json!({"owns": null}));
        assert!(c.owns.is_empty());
    }

    #[test]
    fn owns_defaults_to_the_owner_mapper_and_spec_trigger() {
        let c = ok(json!({"owns": [{"apiVersion": "apps/v1", "kind": "Deployment"}]}));
        assert_eq!(
            c.owns,
            vec![RelatedKind {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                namespaces: vec![],
                label_selectors: BTreeMap::new(),
                field_selectors: BTreeMap::new(),
                on: Trigger::Spec,
                map: Mapper::Owner,
            }]
        );
        assert_eq!(c.owns[0].api_version(), "apps/v1");
    }

    #[test]
    fn watches_default_to_any_and_take_every_mapper() {
        let c = ok(json!({"watches": [
            {"apiVersion": "v1", "kind": "Namespace", "map": "all"},
            {"apiVersion": "v1", "kind": "ConfigMap", "map": {"label": "nuop.dev/replica-of"}},
            {"apiVersion": "v1", "kind": "Secret", "namespaces": ["a"], "map": {"annotation": "nuop.dev/parent"}},
            {"apiVersion": "v1", "kind": "Service", "map": "script", "on": "labels"},
        ]}));
        let maps: Vec<&Mapper> = c.watches.iter().map(|w| &w.map).collect();
        assert_eq!(
            maps,
            [
                &Mapper::All,
                &Mapper::Label("nuop.dev/replica-of".into()),
                &Mapper::Annotation("nuop.dev/parent".into()),
                &Mapper::Script
            ]
        );
        let ons: Vec<Trigger> = c.watches.iter().map(|w| w.on).collect();
        assert_eq!(
            ons,
            [Trigger::Any, Trigger::Any, Trigger::Any, Trigger::Labels]
        );
    }

    #[test]
    fn reads_neither_map_nor_trigger() {
        let c = ok(json!({"reads": [{"version": "v1", "kind": "Secret", "namespace": "shared"}]}));
        assert_eq!(c.reads[0].map, Mapper::None);
        assert_eq!(c.reads[0].namespaces, vec!["shared"]);
        assert_eq!(
            rejected(json!({"reads": [{"version": "v1", "kind": "ConfigMap", "on": "any"}]})).0,
            "reads[0].on"
        );
        assert_eq!(
            rejected(json!({"reads": [{"version": "v1", "kind": "ConfigMap", "map": "all"}]})).0,
            "reads[0].map"
        );
    }

    #[test]
    fn every_trigger_spelling_parses_and_others_are_refused() {
        for (text, trigger) in [
            ("spec", Trigger::Spec),
            ("labels", Trigger::Labels),
            ("annotations", Trigger::Annotations),
            ("any", Trigger::Any),
        ] {
            let c = ok(json!({"owns": [{"version": "v1", "kind": "ConfigMap", "on": text}]}));
            assert_eq!(c.owns[0].on, trigger, "{text}");
        }
        let (path, reason) =
            rejected(json!({"owns": [{"version": "v1", "kind": "ConfigMap", "on": "status"}]}));
        assert_eq!(path, "owns[0].on");
        assert!(
            reason.contains("spec, labels, annotations or any"),
            "{reason}"
        );
        assert_eq!(
            rejected(json!({"owns": [{"version": "v1", "kind": "ConfigMap", "on": 1}]})).0,
            "owns[0].on"
        );
    }

    #[test]
    fn a_watch_needs_a_valid_map() {
        let (path, reason) = rejected(json!({"watches": [
            {"version": "v1", "kind": "Namespace", "map": "all"},
            {"version": "v1", "kind": "ConfigMap"},
        ]}));
        assert_eq!(path, "watches[1].map");
        assert!(reason.contains("is required"), "{reason}");
        for bad in [
            json!("some"),
            json!({"label": ""}),
            json!({"label": 1}),
            json!({"label": "a", "annotation": "b"}),
            json!({"owner": "x"}),
            json!({}),
            json!(["all"]),
        ] {
            let (path, _) = rejected(
                json!({"watches": [{"version": "v1", "kind": "ConfigMap", "map": bad.clone()}]}),
            );
            assert_eq!(path, "watches[0].map", "{bad}");
        }
    }

    #[test]
    fn owns_entries_cannot_choose_a_mapper_or_be_given_twice() {
        assert_eq!(
            rejected(json!({"owns": [{"version": "v1", "kind": "ConfigMap", "map": "all"}]})).0,
            "owns[0].map"
        );
        let (path, reason) = rejected(json!({"owns": [
            {"version": "v1", "kind": "ConfigMap"},
            {"apiVersion": "v1", "kind": "ConfigMap", "namespaces": ["x"]},
        ]}));
        assert_eq!(path, "owns[1]");
        assert!(reason.contains("owned twice"), "{reason}");
    }

    #[test]
    fn entries_need_an_api_version_and_a_kind() {
        assert_eq!(
            rejected(json!({"owns": [{"kind": "ConfigMap"}]})).0,
            "owns[0].apiVersion"
        );
        assert_eq!(
            rejected(json!({"owns": [{"apiVersion": "v1"}]})).0,
            "owns[0].kind"
        );
        assert_eq!(
            rejected(json!({"owns": [{"apiVersion": "v1", "kind": ""}]})).0,
            "owns[0].kind"
        );
        assert_eq!(rejected(json!({"owns": ["ConfigMap"]})).0, "owns[0]");
        assert_eq!(
            rejected(json!({"owns": [{"apiVersion": 1, "kind": "ConfigMap"}]})).0,
            "owns[0].apiVersion"
        );
    }

    #[test]
    fn group_and_version_may_be_given_apart_but_not_contradict() {
        let c = ok(json!({"owns": [{"group": "apps", "version": "v1", "kind": "Deployment"}]}));
        assert_eq!(c.owns[0].api_version(), "apps/v1");
        assert_eq!(
            rejected(json!({"owns": [{"apiVersion": "apps/v1", "group": "batch", "kind": "Job"}]}))
                .0,
            "owns[0].group"
        );
        assert_eq!(
            rejected(json!({"owns": [{"apiVersion": "apps/v1", "version": "v2", "kind": "Job"}]}))
                .0,
            "owns[0].version"
        );
    }

    #[test]
    fn snake_and_camel_case_entries_are_equal() {
        let camel = ok(json!({"watches": [{"apiVersion": "v1", "kind": "ConfigMap",
            "labelSelectors": {"a": "b"}, "fieldSelectors": "metadata.name=x", "map": "all"}]}));
        let snake = ok(
            json!({"watches": [{"api_version": "v1", "kind": "ConfigMap",
            "label_selector": {"a": "b"}, "field_selectors": "metadata.name=x", "map": "all"}]}),
        );
        assert_eq!(camel, snake);
        assert_eq!(camel.watches[0].field_selectors["metadata.name"], "x");
        assert_eq!(camel.watches[0].label_selectors["a"], "b");
    }

    #[test]
    fn unknown_and_doubled_entry_fields_are_refused_with_a_hint() {
        let (path, reason) =
            rejected(json!({"watches": [{"version": "v1", "kind": "ConfigMap", "mapp": "all"}]}));
        assert_eq!(path, "watches[0].mapp");
        assert!(reason.contains("did you mean `map`"), "{reason}");
        let (path, reason) = rejected(json!({"owns": [{"version": "v1", "kind": "ConfigMap",
            "labelSelectors": {}, "label_selectors": {}}]}));
        assert_eq!(path, "owns[0].labelSelectors");
        assert!(reason.contains("given twice"), "{reason}");
        let err = parse_config_value(
            "my-script",
            &json!({"name": "c", "version": "v1", "kind": "K",
                    "owns": [{"version": "v1", "kind": "ConfigMap", "colour": 1}]}),
        )
        .expect_err("unknown field");
        assert_eq!(
            err.to_string(),
            "invalid config of script my-script: `owns[0].colour`: unknown field"
        );
    }

    #[test]
    fn bad_shapes_name_the_entry_field() {
        for (extra, path) in [
            (json!({"owns": {"kind": "ConfigMap"}}), None),
            (
                json!({"owns": [{"version": "v1", "kind": "ConfigMap", "namespaces": "a"}]}),
                Some("owns[0].namespaces"),
            ),
            (
                json!({"owns": [{"version": "v1", "kind": "ConfigMap", "namespaces": [1]}]}),
                Some("owns[0].namespaces"),
            ),
            (
                json!({"owns": [{"version": "v1", "kind": "ConfigMap", "labelSelectors": ["a"]}]}),
                Some("owns[0].labelSelectors"),
            ),
            (
                json!({"reads": [{"version": "v1", "kind": "ConfigMap", "fieldSelectors": "nokey"}]}),
                Some("reads[0].fieldSelectors"),
            ),
            (
                json!({"reads": [{"version": "v1", "kind": "Secret", "clusterWide": "yes"}]}),
                Some("reads[0].clusterWide"),
            ),
        ] {
            match (config(extra.clone()), path) {
                (Err(ConfigProblem::Invalid { field: "owns", .. }), None) => {}
                (Err(ConfigProblem::At { path: p, .. }), Some(path)) => {
                    assert_eq!(p, path, "{extra}");
                }
                (other, _) => panic!("{extra}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn namespace_and_namespaces_merge_in_entries() {
        let c = ok(json!({"reads": [{"version": "v1", "kind": "ConfigMap",
            "namespace": "b", "namespaces": ["a", "b", ""]}]}));
        assert_eq!(c.reads[0].namespaces, vec!["a", "b"]);
    }

    #[test]
    fn cluster_wide_secrets_and_pods_need_an_explicit_yes() {
        for list in ["watches", "reads"] {
            for kind in ["Secret", "Pod"] {
                let mut entry = json!({"version": "v1", "kind": kind});
                if list == "watches" {
                    entry["map"] = json!("all");
                }
                let (path, reason) = rejected(json!({list: [entry.clone()]}));
                assert_eq!(path, format!("{list}[0]"));
                assert!(reason.contains("clusterWide: true"), "{reason}");
                let mut yes = entry.clone();
                yes["clusterWide"] = json!(true);
                ok(json!({list: [yes]}));
                let mut narrowed = entry.clone();
                narrowed["namespaces"] = json!(["a"]);
                ok(json!({list: [narrowed]}));
                let mut selected = entry.clone();
                selected["labelSelectors"] = json!({"app": "x"});
                ok(json!({list: [selected]}));
            }
        }
        // Only the core kinds are guarded, and owns select on nuop's own label anyway.
        ok(json!({"reads": [{"apiVersion": "example.com/v1", "kind": "Secret"}]}));
        ok(json!({"owns": [{"version": "v1", "kind": "Secret"}]}));
        assert_eq!(
            rejected(json!({"owns": [{"version": "v1", "kind": "Secret", "clusterWide": true}]})).0,
            "owns[0].clusterWide"
        );
    }
}
