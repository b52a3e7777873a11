//! What the console shows, as plain data: the same structs are the JSON of the
//! `/debug/...` endpoints and the input of the HTML pages ([`super::page`]).
//!
//! Pure: no I/O. Built from a script's config ([`ControllerInfo::from_config`]) and from
//! the console's state (`super`). Holds object names, never object contents, except
//! [`ObjectInController::content`], filled only on request and never for a Secret
//! ([`may_show_contents`], `secrets_are_never_shown`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::journal::{Record, Trigger};
use crate::protocol::{Mapper, RelatedKind, ScriptConfig};

/// The whole process, as `/debug/controllers` answers and the index page shows.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// `nuop-standard` or `nuop-managed`.
    pub binary: String,
    /// nuop's version.
    pub version: String,
    /// Whether this process leads (without `--leader-elect` the runtime leads from the
    /// start).
    pub leader: bool,
    /// Whether `/readyz` answers 200.
    pub ready: bool,
    /// Why not, when not.
    pub not_ready: Option<String>,
    /// Records kept per controller (`--console-history`).
    pub history: usize,
    /// Every controller, by name.
    pub controllers: Vec<ControllerSummary>,
    /// Sources and mappings, in managed mode.
    pub managed: Option<Managed>,
}

/// What a controller is, from its script's config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControllerInfo {
    /// The controller's name.
    pub name: String,
    /// The watched kind's `group/version`.
    pub api_version: String,
    /// The watched kind.
    pub kind: String,
    /// Whether the kind is namespaced.
    pub namespaced: bool,
    /// The namespaces watched; empty for all.
    pub namespaces: Vec<String>,
    /// The label selector, in the API's form.
    pub label_selector: Option<String>,
    /// The field selector, in the API's form.
    pub field_selector: Option<String>,
    /// Its `owns`, `watches` and `reads`.
    pub watches: Vec<WatchInfo>,
    /// `embedded` or `process`.
    pub executor: String,
    /// The finalizer it adds, if any.
    pub finalizer: Option<String>,
    /// Seconds until the requeue after a change.
    pub requeue_after_change_s: u64,
    /// Seconds until the requeue after no change.
    pub requeue_after_noop_s: u64,
}

/// One declared related kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WatchInfo {
    /// `owns`, `watches` or `reads`.
    pub list: String,
    /// `group/version`.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// The namespaces; empty for all (or the primary's, for `owns`).
    pub namespaces: Vec<String>,
    /// How a change maps to primaries: `owner`, `label K`, `annotation K`, `all`,
    /// `script`, or `-` for reads.
    pub map: String,
}

impl ControllerInfo {
    /// The console's view of `config`, with the kind's scope as discovery found it.
    pub fn from_config(config: &ScriptConfig, namespaced: bool, executor: &str) -> Self {
        let watches = [
            ("owns", &config.owns),
            ("watches", &config.watches),
            ("reads", &config.reads),
        ]
        .into_iter()
        .flat_map(|(list, entries)| entries.iter().map(move |e| watch_info(list, e)))
        .collect();
        Self {
            name: config.name.clone(),
            api_version: config.api_version(),
            kind: config.kind.clone(),
            namespaced,
            namespaces: config.namespaces.clone(),
            label_selector: config.label_selector_string(),
            field_selector: config.field_selector_string(),
            watches,
            executor: executor.to_string(),
            finalizer: config.finalizer.clone(),
            requeue_after_change_s: config.requeue_after_change.as_secs(),
            requeue_after_noop_s: config.requeue_after_noop.as_secs(),
        }
    }
}

fn watch_info(list: &str, entry: &RelatedKind) -> WatchInfo {
    let api_version = if entry.group.is_empty() {
        entry.version.clone()
    } else {
        format!("{}/{}", entry.group, entry.version)
    };
    let map = match &entry.map {
        Mapper::Owner => "owner".to_string(),
        Mapper::Label(key) => format!("label {key}"),
        Mapper::Annotation(key) => format!("annotation {key}"),
        Mapper::All => "all".into(),
        Mapper::Script => "script".into(),
        Mapper::None => "-".into(),
    };
    WatchInfo {
        list: list.to_string(),
        api_version,
        kind: entry.kind.clone(),
        namespaces: entry.namespaces.clone(),
        map,
    }
}

/// One controller's state now.
#[derive(Debug, Clone, Serialize)]
pub struct ControllerSummary {
    /// What it is.
    #[serde(flatten)]
    pub info: ControllerInfo,
    /// Objects in its watch cache.
    pub cached_objects: usize,
    /// Whether its watches completed their first list.
    pub synced: bool,
    /// What it waits for, while not synced.
    pub waiting: Option<String>,
    /// Reconciles running now.
    pub in_flight: i64,
    /// Reconciles since start, by outcome (`nuop_reconciles_total`).
    pub reconciles: BTreeMap<String, u64>,
    /// Failed reconciles since start, by category (`nuop_reconcile_errors_total`).
    pub errors: BTreeMap<String, u64>,
    /// The most recent reconciles, newest first (only in a controller's own view).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "shared_records_opt"
    )]
    pub recent: Option<Vec<Arc<Record>>>,
}

/// Everything known about one object, as `/debug/objects/<ns>/<name>` answers.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    /// The namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// One entry per controller that has it cached or reconciled it recently.
    pub controllers: Vec<ObjectInController>,
}

/// One object as one controller knows it.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectInController {
    /// The controller.
    pub controller: String,
    /// The controller's kind (the object's).
    pub kind: String,
    /// Whether its cache holds the object now.
    pub cached: bool,
    /// Why it will be reconciled next, when an event is waiting for it.
    pub next: Option<Trigger>,
    /// Its recent reconciles, newest first: why each ran and what came of it.
    #[serde(serialize_with = "shared_records")]
    pub records: Vec<Arc<Record>>,
    /// The object as cached, without managedFields: only when asked for
    /// (`?content=true`) and never for a Secret (test `secrets_are_never_shown`).
    pub content: Option<Value>,
    /// Why `content` is absent although asked for.
    pub content_note: Option<String>,
}

/// Serializes shared records as the records themselves (serde's `rc` feature would
/// do it too, at the price of rebuilding every crate that depends on serde).
fn shared_records<S: serde::Serializer>(
    records: &[Arc<Record>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(records.iter().map(|r| &**r))
}

fn shared_records_opt<S: serde::Serializer>(
    records: &Option<Vec<Arc<Record>>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match records {
        Some(records) => shared_records(records, serializer),
        None => serializer.serialize_none(),
    }
}

/// Managed mode's sources and mappings.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Managed {
    /// The sources, in configuration order.
    pub sources: Vec<SourceView>,
    /// The mappings, in configuration order.
    pub mappings: Vec<MappingView>,
}

/// One script source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceView {
    /// The location, without credentials.
    pub location: String,
    /// The revision in use.
    pub revision: Option<String>,
    /// When it was last fetched successfully (RFC 3339).
    pub last_sync: Option<String>,
    /// Why the last fetch or load failed.
    pub last_error: Option<String>,
}

/// One mapping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MappingView {
    /// The mapping's (and controller's) name.
    pub name: String,
    /// The kind's `group/version`.
    pub api_version: String,
    /// The kind it maps.
    pub kind: String,
    /// Whether its controller runs.
    pub running: bool,
    /// Whether it restarts for a new revision.
    pub restarting: bool,
    /// Why it does not run.
    pub message: Option<String>,
}

/// Whether the console may show an object's contents: never a core Secret's (nor
/// anything that calls itself one in another group, to be safe; test
/// `secrets_are_never_shown`).
pub fn may_show_contents(kind: &str) -> bool {
    !kind.eq_ignore_ascii_case("secret")
}

/// An object's contents as shown on request: without managedFields, and `None` for a
/// kind [`may_show_contents`] rejects.
pub fn shown_contents(kind: &str, object: &Value) -> Option<Value> {
    if !may_show_contents(kind) {
        return None;
    }
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Some(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_never_shown() {
        let secret =
            json!({"kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "c2VjcmV0"}});
        assert_eq!(shown_contents("Secret", &secret), None);
        assert_eq!(shown_contents("secret", &secret), None);
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c", "managedFields": [{}]}, "data": {"a": "b"}});
        assert_eq!(
            shown_contents("ConfigMap", &cm),
            Some(json!({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}))
        );
    }

    #[test]
    fn a_config_becomes_the_controllers_info() {
        let config = crate::protocol::parse_config_text(
            "r",
            r#"{"name": "r", "version": "v1", "kind": "ConfigMap",
                "labelSelectors": {"a": "b"}, "namespaces": ["x"],
                "watches": [{"apiVersion": "v1", "kind": "Namespace", "map": "all"}],
                "owns": [{"apiVersion": "apps/v1", "kind": "Deployment"}]}"#,
        )
        .expect("config");
        let info = ControllerInfo::from_config(&config, true, "embedded");
        assert_eq!(info.api_version, "v1");
        assert_eq!(info.label_selector.as_deref(), Some("a=b"));
        assert_eq!(info.namespaces, ["x"]);
        let watches: Vec<(&str, &str, &str, &str)> = info
            .watches
            .iter()
            .map(|w| {
                (
                    w.list.as_str(),
                    w.api_version.as_str(),
                    w.kind.as_str(),
                    w.map.as_str(),
                )
            })
            .collect();
        assert_eq!(
            watches,
            [
                ("owns", "apps/v1", "Deployment", "owner"),
                ("watches", "v1", "Namespace", "all")
            ]
        );
    }
}
