//! A script's `config` answer: parsing and validation into a [`ScriptConfig`].
//!
//! Pure: no I/O. Accepts YAML or JSON text (scripts written for the original nuop end
//! `config` with `| to yaml`) or an already structured value (the embedded executor hands
//! over the record the script returned). Both snake_case and camelCase spellings are
//! accepted; anything unknown is rejected with the script and the field named, because a
//! misspelt `requeue_after_chnage` that is silently ignored is worse than a clear error.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::hooks::{ConversionHook, Webhooks, parse_conversion, parse_webhooks};
use super::related::{ListKind, RelatedKind, parse_related};

/// Default seconds before reconciling again after the script changed something.
pub const DEFAULT_REQUEUE_AFTER_CHANGE: Duration = Duration::from_secs(10);
/// Default seconds before reconciling again after the script changed nothing.
pub const DEFAULT_REQUEUE_AFTER_NOOP: Duration = Duration::from_secs(300);
/// Default limit for one script call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A controller's validated metadata, as its script's `config` declared it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptConfig {
    /// Unique controller name; used in logs, metrics, events and field managers.
    pub name: String,
    /// API group of the watched kind ("" for the core group).
    pub group: String,
    /// API version of the watched kind.
    pub version: String,
    /// Kind to watch; plural and scope come from discovery.
    pub kind: String,
    /// Equality label selectors passed to the watch.
    pub label_selectors: BTreeMap<String, String>,
    /// Equality field selectors passed to the watch.
    pub field_selectors: BTreeMap<String, String>,
    /// Namespaces to watch; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Finalizer added before the first reconcile, if any.
    pub finalizer: Option<String>,
    /// Delay before the next reconcile after a change.
    pub requeue_after_change: Duration,
    /// Delay before the next reconcile when nothing changed.
    pub requeue_after_noop: Duration,
    /// Limit for one script call.
    pub timeout: Duration,
    /// Kinds the script creates as children (`owns`): their changes wake the owner.
    pub owns: Vec<RelatedKind>,
    /// Related kinds whose changes wake mapped primaries (`watches`).
    pub watches: Vec<RelatedKind>,
    /// Kinds cached for `k8s get`/`k8s list` only (`reads`).
    pub reads: Vec<RelatedKind>,
    /// Admission webhooks answered by `main validate` / `main mutate` (`webhooks`).
    pub webhooks: Webhooks,
    /// The CRD `main convert` converts (`conversion`).
    pub conversion: Option<ConversionHook>,
}

impl ScriptConfig {
    /// `group/version` as written in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Label selectors as the watch API expects them (`k=v,k2=v2`), if any.
    pub fn label_selector_string(&self) -> Option<String> {
        selector_string(&self.label_selectors)
    }

    /// Field selectors as the watch API expects them (`k=v,k2=v2`), if any.
    pub fn field_selector_string(&self) -> Option<String> {
        selector_string(&self.field_selectors)
    }
}

fn selector_string(map: &BTreeMap<String, String>) -> Option<String> {
    if map.is_empty() {
        return None;
    }
    Some(
        map.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A `config` answer that could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config of script {script}: {problem}")]
pub struct ConfigError {
    /// The script (directory name) whose config was rejected.
    pub script: String,
    /// What was wrong, naming the field.
    pub problem: ConfigProblem,
}

/// What exactly was wrong with a `config` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// The text was neither YAML nor JSON.
    NotParsable(String),
    /// The document was not a mapping of fields.
    NotAMapping(&'static str),
    /// A required field is absent or empty.
    Missing(&'static str),
    /// A field is not one nuop knows.
    UnknownField {
        /// The field as the script spelt it.
        field: String,
        /// The known field it most resembles.
        hint: Option<&'static str>,
    },
    /// A field is present under two spellings.
    Duplicate {
        /// The canonical field name.
        field: &'static str,
        /// The two spellings used.
        spellings: (String, String),
    },
    /// A field has a value of the wrong shape or out of range.
    Invalid {
        /// The canonical field name.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Something is wrong inside an entry of `owns`, `watches` or `reads`, or inside
    /// `webhooks` / `conversion`.
    At {
        /// Where, as a path: `watches[1].map`, `owns[0]` for the entry itself.
        path: String,
        /// What is wrong there.
        reason: String,
    },
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotParsable(e) => write!(f, "output is neither YAML nor JSON: {e}"),
            Self::NotAMapping(found) => write!(f, "expected a mapping of fields, found {found}"),
            Self::Missing(field) => write!(f, "field `{field}` is required"),
            Self::UnknownField { field, hint } => {
                write!(f, "unknown field `{field}`")?;
                if let Some(h) = hint {
                    write!(f, " (did you mean `{h}`?)")?;
                }
                Ok(())
            }
            Self::Duplicate { field, spellings } => write!(
                f,
                "field `{field}` is given twice, as `{}` and `{}`",
                spellings.0, spellings.1
            ),
            Self::Invalid { field, reason } => write!(f, "field `{field}`: {reason}"),
            Self::At { path, reason } => write!(f, "`{path}`: {reason}"),
        }
    }
}

/// Canonical field names and every spelling accepted for each.
const FIELDS: &[(&str, &[&str])] = &[
    ("name", &["name"]),
    ("group", &["group"]),
    ("version", &["version"]),
    ("apiVersion", &["apiVersion", "api_version"]),
    ("kind", &["kind"]),
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
    ("namespace", &["namespace"]),
    ("namespaces", &["namespaces"]),
    ("finalizer", &["finalizer"]),
    (
        "requeue_after_change",
        &["requeue_after_change", "requeueAfterChange"],
    ),
    (
        "requeue_after_noop",
        &[
            "requeue_after_noop",
            "requeueAfterNoop",
            "requeueAfterSeconds",
            "requeue_after_seconds",
        ],
    ),
    ("timeout", &["timeout", "timeoutSeconds", "timeout_seconds"]),
    ("owns", &["owns"]),
    ("watches", &["watches"]),
    ("reads", &["reads"]),
    ("webhooks", &["webhooks"]),
    ("conversion", &["conversion"]),
];

/// Parses `config` output text (YAML or JSON) and validates it.
///
/// # Errors
/// A [`ConfigError`] naming `script` and the offending field.
pub fn parse_config_text(script: &str, text: &str) -> Result<ScriptConfig, ConfigError> {
    let value = parse_document(text).map_err(|e| ConfigError {
        script: script.to_string(),
        problem: ConfigProblem::NotParsable(e),
    })?;
    parse_config_value(script, &value)
}

/// Parses one YAML or JSON document into a JSON value (JSON is tried first: it is the
/// common case and its errors are clearer).
pub fn parse_document(text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        // YAML 1.2 booleans only: `x: y` (as nu's `to yaml` writes it) is the string "y",
        // not YAML 1.1's `true`.
        Err(json_err) => serde_saphyr::from_str_with_options::<Value>(
            text,
            serde_saphyr::options! { strict_booleans: true },
        )
        .map_err(|yaml_err| {
            if text.trim_start().starts_with(['{', '[']) {
                json_err.to_string()
            } else {
                yaml_err.to_string()
            }
        }),
    }
}

/// Validates an already structured `config` answer.
///
/// # Errors
/// A [`ConfigError`] naming `script` and the offending field.
pub fn parse_config_value(script: &str, value: &Value) -> Result<ScriptConfig, ConfigError> {
    validate(value).map_err(|problem| ConfigError {
        script: script.to_string(),
        problem,
    })
}

pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Folds every accepted spelling onto its canonical name.
fn canonicalize(map: &Map<String, Value>) -> Result<BTreeMap<&'static str, &Value>, ConfigProblem> {
    let mut out: BTreeMap<&'static str, (&str, &Value)> = BTreeMap::new();
    for (key, value) in map {
        let canonical = FIELDS
            .iter()
            .find(|(_, spellings)| spellings.contains(&key.as_str()))
            .map(|(c, _)| *c)
            .ok_or_else(|| ConfigProblem::UnknownField {
                field: key.clone(),
                hint: suggest(key),
            })?;
        if let Some((first, _)) = out.insert(canonical, (key, value)) {
            return Err(ConfigProblem::Duplicate {
                field: canonical,
                spellings: (first.to_string(), key.clone()),
            });
        }
    }
    Ok(out.into_iter().map(|(k, (_, v))| (k, v)).collect())
}

/// Suggests the known field closest to a misspelt one.
fn suggest(key: &str) -> Option<&'static str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', '-'], "");
    let wanted = norm(key);
    FIELDS
        .iter()
        .flat_map(|(c, spellings)| spellings.iter().map(move |s| (*c, norm(s))))
        .map(|(c, s)| (c, edit_distance(&wanted, &s)))
        .filter(|(_, d)| *d <= 3)
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn validate(value: &Value) -> Result<ScriptConfig, ConfigProblem> {
    let map = value
        .as_object()
        .ok_or_else(|| ConfigProblem::NotAMapping(kind_of(value)))?;
    let fields = canonicalize(map)?;
    let get = |k: &str| fields.get(k).copied().filter(|v| !v.is_null());

    let name = required_string(get("name"), "name")?;
    check_name(&name)?;

    // `apiVersion: apps/v1` is accepted as a shorthand for group + version.
    let (mut group, mut version) = (String::new(), None);
    if let Some(api_version) = get("apiVersion") {
        let api_version = string_field(api_version, "apiVersion")?;
        match api_version.split_once('/') {
            Some((g, v)) => (group, version) = (g.to_string(), Some(v.to_string())),
            None => version = Some(api_version),
        }
    }
    if let Some(g) = get("group") {
        let g = string_field(g, "group")?;
        if get("apiVersion").is_some() && g != group && !group.is_empty() {
            return Err(invalid("group", format!("`{g}` contradicts apiVersion")));
        }
        group = g;
    }
    if let Some(v) = get("version") {
        version = Some(string_field(v, "version")?);
    }
    let version = version
        .filter(|v| !v.is_empty())
        .ok_or(ConfigProblem::Missing("version"))?;
    let kind = required_string(get("kind"), "kind")?;

    let mut namespaces = Vec::new();
    if let Some(ns) = get("namespace") {
        namespaces.push(string_field(ns, "namespace")?);
    }
    if let Some(list) = get("namespaces") {
        let list = list.as_array().ok_or_else(|| {
            invalid(
                "namespaces",
                format!("expected a list, found {}", kind_of(list)),
            )
        })?;
        for item in list {
            namespaces.push(string_field(item, "namespaces")?);
        }
    }
    namespaces.retain(|n| !n.is_empty());
    namespaces.sort();
    namespaces.dedup();

    let finalizer = match get("finalizer") {
        Some(f) => {
            let f = string_field(f, "finalizer")?;
            check_finalizer(&f)?;
            Some(f)
        }
        None => None,
    };

    let webhooks = parse_webhooks(get("webhooks"), (&group, &version, &kind))?;
    let conversion = parse_conversion(get("conversion"))?;
    Ok(ScriptConfig {
        name,
        group,
        version,
        kind,
        label_selectors: selectors(get("labelSelectors"), "labelSelectors")?,
        field_selectors: selectors(get("fieldSelectors"), "fieldSelectors")?,
        namespaces,
        finalizer,
        requeue_after_change: seconds(get("requeue_after_change"), "requeue_after_change", true)?
            .unwrap_or(DEFAULT_REQUEUE_AFTER_CHANGE),
        requeue_after_noop: seconds(get("requeue_after_noop"), "requeue_after_noop", true)?
            .unwrap_or(DEFAULT_REQUEUE_AFTER_NOOP),
        timeout: seconds(get("timeout"), "timeout", true)?.unwrap_or(DEFAULT_TIMEOUT),
        owns: parse_related(get("owns"), ListKind::Owns)?,
        watches: parse_related(get("watches"), ListKind::Watches)?,
        reads: parse_related(get("reads"), ListKind::Reads)?,
        webhooks,
        conversion,
    })
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem::Invalid {
        field,
        reason: reason.into(),
    }
}

pub(super) fn string_field(value: &Value, field: &'static str) -> Result<String, ConfigProblem> {
    match value {
        Value::String(s) => Ok(s.trim().to_string()),
        other => Err(invalid(
            field,
            format!("expected a string, found {}", kind_of(other)),
        )),
    }
}

fn required_string(value: Option<&Value>, field: &'static str) -> Result<String, ConfigProblem> {
    let s = string_field(value.ok_or(ConfigProblem::Missing(field))?, field)?;
    if s.is_empty() {
        return Err(ConfigProblem::Missing(field));
    }
    Ok(s)
}

/// Controller names end up in metric labels, field managers and Event sources, so they
/// follow the DNS-1123 label rules those places accept.
fn check_name(name: &str) -> Result<(), ConfigProblem> {
    let ok = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!(
                "`{name}` must be at most 63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// A finalizer the API server accepts: a qualified name, `example.com/cleanup`, or — as
/// scripts for the original nuop have (`deployment.finalizer.example.com`) — a bare
/// name, which the API server accepts with a warning ([`finalizer_warning`] says so).
fn check_finalizer(f: &str) -> Result<(), ConfigProblem> {
    let valid_part = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    let ok = match f.split_once('/') {
        Some((domain, name)) => valid_part(domain) && valid_part(name) && domain.contains('.'),
        None => valid_part(f),
    };
    if ok && f.len() <= 316 {
        Ok(())
    } else {
        Err(invalid(
            "finalizer",
            format!(
                "`{f}` is not a valid finalizer name; use a qualified name like `example.com/cleanup`"
            ),
        ))
    }
}

/// The warning for a finalizer without a `/`: accepted (the API server takes it with a
/// warning), but Kubernetes recommends a domain-qualified name.
pub fn finalizer_warning(finalizer: &str) -> Option<String> {
    (!finalizer.contains('/')).then(|| {
        format!(
            "finalizer `{finalizer}` is not domain-qualified; the API server accepts it with a warning, \
             but a name like `example.com/{finalizer}` avoids clashes with other controllers"
        )
    })
}

pub(super) fn selectors(
    value: Option<&Value>,
    field: &'static str,
) -> Result<BTreeMap<String, String>, ConfigProblem> {
    let mut out = BTreeMap::new();
    match value {
        None => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(invalid(
                            field,
                            format!("value of `{k}` must be a string, found {}", kind_of(other)),
                        ));
                    }
                };
                if k.is_empty() {
                    return Err(invalid(field, "a selector key is empty"));
                }
                out.insert(k.clone(), v);
            }
        }
        // `app=web,tier=db`: the selector syntax written out.
        Some(Value::String(s)) => {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (k, v) = part.split_once('=').ok_or_else(|| {
                    invalid(field, format!("`{part}` is not of the form key=value"))
                })?;
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
        Some(other) => {
            return Err(invalid(
                field,
                format!("expected a mapping of key: value, found {}", kind_of(other)),
            ));
        }
    }
    Ok(out)
}

fn seconds(
    value: Option<&Value>,
    field: &'static str,
    positive: bool,
) -> Result<Option<Duration>, ConfigProblem> {
    let Some(value) = value else { return Ok(None) };
    let secs = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('s').parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        invalid(
            field,
            format!("expected seconds as a number, found {}", kind_of(value)),
        )
    })?;
    if !secs.is_finite() || secs < 0.0 || (positive && secs == 0.0) || secs > 31_536_000.0 {
        let bound = if positive {
            "greater than 0"
        } else {
            "0 or more"
        };
        return Err(invalid(
            field,
            format!("{secs} must be {bound} and at most a year"),
        ));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> ScriptConfig {
        parse_config_value("s", &v).expect("config should be valid")
    }

    fn problem(v: Value) -> ConfigProblem {
        parse_config_value("s", &v)
            .expect_err("config should be rejected")
            .problem
    }

    #[test]
    fn defaults_apply_when_only_required_fields_are_given() {
        let c = ok(json!({"name": "c", "version": "v1", "kind": "ConfigMap"}));
        assert_eq!(c.group, "");
        assert_eq!(c.api_version(), "v1");
        assert_eq!(c.requeue_after_change, Duration::from_secs(10));
        assert_eq!(c.requeue_after_noop, Duration::from_secs(300));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(c.namespaces.is_empty());
        assert_eq!(c.finalizer, None);
        assert_eq!(c.label_selector_string(), None);
    }

    #[test]
    fn snake_and_camel_case_spellings_are_equal() {
        let snake = ok(json!({"name": "c", "version": "v1", "kind": "K",
            "requeue_after_change": 5, "requeue_after_noop": 60, "label_selectors": {"x": "y"}}));
        let camel = ok(json!({"name": "c", "version": "v1", "kind": "K",
            "requeueAfterChange": 5, "requeueAfterNoop": 60, "labelSelectors": {"x": "y"}}));
        assert_eq!(snake, camel);
        assert_eq!(snake.requeue_after_change, Duration::from_secs(5));
        assert_eq!(snake.label_selector_string().as_deref(), Some("x=y"));
    }

    #[test]
    fn yaml_text_as_the_original_nuop_printed_it_parses() {
        let text = "name: replicator\ngroup: ''\nversion: v1\nkind: ConfigMap\nlabelSelectors:\n  nuop/replicate: 'true'\nfinalizer: nuop.dev/replicator\n";
        let c = parse_config_text("replicator", text).expect("yaml config");
        assert_eq!(c.finalizer.as_deref(), Some("nuop.dev/replicator"));
        assert_eq!(
            c.label_selector_string().as_deref(),
            Some("nuop/replicate=true")
        );
    }

    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let v = parse_document("a: y\nb: no\nc: true\n").expect("yaml");
        assert_eq!(v, serde_json::json!({"a": "y", "b": "no", "c": true}));
    }

    #[test]
    fn json_text_parses() {
        let c = parse_config_text(
            "j",
            r#"{"name":"j","group":"apps","version":"v1","kind":"Deployment"}"#,
        )
        .expect("json config");
        assert_eq!(c.api_version(), "apps/v1");
    }

    #[test]
    fn api_version_shorthand_sets_group_and_version() {
        let c = ok(json!({"name": "c", "apiVersion": "apps/v1", "kind": "Deployment"}));
        assert_eq!((c.group.as_str(), c.version.as_str()), ("apps", "v1"));
    }

    #[test]
    fn namespace_and_namespaces_merge() {
        let c = ok(
            json!({"name": "c", "version": "v1", "kind": "K", "namespace": "b", "namespaces": ["a", "b"]}),
        );
        assert_eq!(c.namespaces, vec!["a", "b"]);
    }

    #[test]
    fn selectors_accept_selector_syntax_strings() {
        let c = ok(
            json!({"name": "c", "version": "v1", "kind": "K", "fieldSelectors": "metadata.name=x, status.phase=Running"}),
        );
        assert_eq!(
            c.field_selector_string().as_deref(),
            Some("metadata.name=x,status.phase=Running")
        );
    }

    #[test]
    fn missing_required_fields_are_named() {
        assert_eq!(
            problem(json!({"version": "v1", "kind": "K"})),
            ConfigProblem::Missing("name")
        );
        assert_eq!(
            problem(json!({"name": "c", "kind": "K"})),
            ConfigProblem::Missing("version")
        );
        assert_eq!(
            problem(json!({"name": "c", "version": "v1"})),
            ConfigProblem::Missing("kind")
        );
        assert_eq!(
            problem(json!({"name": "", "version": "v1", "kind": "K"})),
            ConfigProblem::Missing("name")
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_a_hint() {
        let p =
            problem(json!({"name": "c", "version": "v1", "kind": "K", "requeue_after_chnage": 1}));
        assert_eq!(
            p,
            ConfigProblem::UnknownField {
                field: "requeue_after_chnage".into(),
                hint: Some("requeue_after_change")
            }
        );
        let err = parse_config_value(
            "my-script",
            &json!({"name": "c", "version": "v1", "kind": "K", "colour": 1}),
        )
        .expect_err("unknown field");
        assert_eq!(
            err.to_string(),
            "invalid config of script my-script: unknown field `colour`"
        );
    }

    #[test]
    fn two_spellings_of_one_field_are_rejected() {
        let p = problem(
            json!({"name": "c", "version": "v1", "kind": "K", "requeue_after_noop": 1, "requeueAfterNoop": 2}),
        );
        assert!(
            matches!(
                p,
                ConfigProblem::Duplicate {
                    field: "requeue_after_noop",
                    ..
                }
            ),
            "{p:?}"
        );
    }

    #[test]
    fn bad_values_are_rejected_naming_the_field() {
        let cases = [
            (
                json!({"name": "Bad_Name", "version": "v1", "kind": "K"}),
                "name",
            ),
            (json!({"name": "c", "version": 1, "kind": "K"}), "version"),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "timeout": 0}),
                "timeout",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "requeue_after_noop": -1}),
                "requeue_after_noop",
            ),
            // 0 would requeue at once, a hot loop of script calls per object: refused.
            (
                json!({"name": "c", "version": "v1", "kind": "K", "requeue_after_noop": 0}),
                "requeue_after_noop",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "requeue_after_change": 0}),
                "requeue_after_change",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "finalizer": "bad name"}),
                "finalizer",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "finalizer": "a/b/c"}),
                "finalizer",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "labelSelectors": ["x"]}),
                "labelSelectors",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "labelSelectors": {"x": {"y": 1}}}),
                "labelSelectors",
            ),
            (
                json!({"name": "c", "version": "v1", "kind": "K", "namespaces": "a"}),
                "namespaces",
            ),
        ];
        for (value, field) in cases {
            match problem(value.clone()) {
                ConfigProblem::Invalid { field: f, .. } => assert_eq!(f, field, "{value}"),
                other => panic!("{value}: expected invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn non_mapping_and_garbage_text_are_rejected() {
        assert_eq!(problem(json!(["a"])), ConfigProblem::NotAMapping("a list"));
        let err = parse_config_text("s", "{not json").expect_err("garbage");
        assert!(
            matches!(err.problem, ConfigProblem::NotParsable(_)),
            "{err}"
        );
        let err = parse_config_text("s", "just words").expect_err("a plain string");
        assert_eq!(err.problem, ConfigProblem::NotAMapping("a string"));
    }

    #[test]
    fn fractional_and_string_seconds_are_accepted() {
        let c = ok(
            json!({"name": "c", "version": "v1", "kind": "K", "timeout": 0.5, "requeue_after_noop": "60s"}),
        );
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.requeue_after_noop, Duration::from_secs(60));
    }

    #[test]
    fn finalizers_of_the_original_nuop_are_accepted_with_a_warning() {
        let c = parse_config_value(
            "s",
            &json!({"name": "c", "version": "v1", "kind": "K",
                    "finalizer": "deployment.finalizer.example.com"}),
        )
        .expect("a bare finalizer name is accepted");
        assert_eq!(
            c.finalizer.as_deref(),
            Some("deployment.finalizer.example.com")
        );
        let warning = finalizer_warning("deployment.finalizer.example.com").expect("warning");
        assert!(warning.contains("not domain-qualified"), "{warning}");
        assert_eq!(finalizer_warning("example.com/cleanup"), None);
    }
}
