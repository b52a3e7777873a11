//! Which changes of related objects (`owns`, `watches`) wake which primaries: the
//! `on` filter ([`Filter`]) and the mappers ([`map_object`], [`parse_map_output`]).
//!
//! Pure: no I/O. The controller feeds each subscription's changes through a [`Filter`]
//! (deduplicated per object by a fingerprint of what `on` looks at; creations and
//! deletions always pass) and maps what passes to primaries, which it then routes to the
//! per-namespace controller holding them.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::Value;

use crate::protocol::{Mapper, Trigger};

/// The primary kind, as mappers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// `group/version` (`v1` for the core group), as in ownerReferences.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// Whether primaries live in namespaces.
    pub namespaced: bool,
}

/// One primary to reconcile, by namespace (none for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrimaryRef {
    /// The namespace, for namespaced primaries.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// What a related change asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// These primaries (possibly none).
    Refs(Vec<PrimaryRef>),
    /// Every primary of the controller.
    All,
    /// Ask the script's `main map` phase.
    Script,
}

/// Maps a related object to the primaries it concerns, by the entry's mapper.
pub fn map_object(mapper: &Mapper, object: &DynamicObject, primary: &Primary) -> Wake {
    let namespace = object.metadata.namespace.as_deref();
    match mapper {
        Mapper::Owner => Wake::Refs(owners(object, primary)),
        Mapper::Label(key) => Wake::Refs(
            object
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(key))
                .and_then(|v| label_target(v, namespace, primary.namespaced))
                .into_iter()
                .collect(),
        ),
        Mapper::Annotation(key) => Wake::Refs(
            object
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(|v| annotation_target(v, namespace, primary.namespaced))
                .into_iter()
                .collect(),
        ),
        Mapper::All => Wake::All,
        Mapper::Script => Wake::Script,
        Mapper::None => Wake::Refs(Vec::new()),
    }
}

/// Every ownerReference whose apiVersion and kind are the primary's (not only the
/// controller reference, as kube-runtime's `owns` does), in the child's namespace for
/// namespaced primaries. A cluster-scoped child cannot have a namespaced owner.
fn owners(object: &DynamicObject, primary: &Primary) -> Vec<PrimaryRef> {
    let namespace = if primary.namespaced {
        match &object.metadata.namespace {
            Some(ns) => Some(ns.clone()),
            None => return Vec::new(),
        }
    } else {
        None
    };
    let refs: BTreeSet<PrimaryRef> = object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.api_version == primary.api_version && o.kind == primary.kind)
        .map(|o| PrimaryRef {
            namespace: namespace.clone(),
            name: o.name.clone(),
        })
        .collect();
    refs.into_iter().collect()
}

/// A label value naming a primary: `<namespace>.<name>` (split at the first dot:
/// namespaces cannot contain one) or `<name>` in the related object's namespace; the
/// whole value for cluster-scoped primaries.
pub fn label_target(value: &str, namespace: Option<&str>, namespaced: bool) -> Option<PrimaryRef> {
    target(value, '.', namespace, namespaced)
}

/// An annotation value naming a primary: `<namespace>/<name>` or `<name>` in the
/// related object's namespace; the whole value for cluster-scoped primaries.
pub fn annotation_target(
    value: &str,
    namespace: Option<&str>,
    namespaced: bool,
) -> Option<PrimaryRef> {
    target(value, '/', namespace, namespaced)
}

fn target(
    value: &str,
    separator: char,
    namespace: Option<&str>,
    namespaced: bool,
) -> Option<PrimaryRef> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if !namespaced {
        return Some(PrimaryRef {
            namespace: None,
            name: value.to_string(),
        });
    }
    match value.split_once(separator) {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Some(PrimaryRef {
            namespace: Some(ns.to_string()),
            name: name.to_string(),
        }),
        Some(_) => None,
        None => namespace.map(|ns| PrimaryRef {
            namespace: Some(ns.to_string()),
            name: value.to_string(),
        }),
    }
}

/// Reads what `main map` answered: a record `{namespace?, name}`, a list of them, or
/// nothing. A record without a namespace means the related object's namespace; the
/// namespace is ignored for cluster-scoped primaries.
///
/// # Errors
/// A message saying what part of the answer is not a primary.
pub fn parse_map_output(
    answer: &Value,
    namespace: Option<&str>,
    namespaced: bool,
) -> Result<Vec<PrimaryRef>, String> {
    let items: Vec<&Value> = match answer {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let mut out = BTreeSet::new();
    for (i, item) in items.into_iter().enumerate() {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| {
                format!(
                    "item {i} is not a record with a `name` (expected {{namespace, name}}): {item}"
                )
            })?;
        let ns = match item.get("namespace") {
            None | Some(Value::Null) => namespace.map(str::to_string),
            Some(Value::String(ns)) => Some(ns.clone()),
            Some(other) => return Err(format!("item {i}: `namespace` is not a string: {other}")),
        };
        if namespaced && ns.is_none() {
            return Err(format!(
                "item {i} names no namespace and the related object has none"
            ));
        }
        out.insert(PrimaryRef {
            namespace: ns.filter(|_| namespaced),
            name: name.trim().to_string(),
        });
    }
    Ok(out.into_iter().collect())
}

/// What identifies one related object in a [`Filter`].
type ObjectKey = (Option<String>, String);

fn object_key(object: &DynamicObject) -> ObjectKey {
    (
        object.metadata.namespace.clone(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// A hash of what `on` looks at. `spec`: `metadata.generation` when the kind has one,
/// else everything outside `metadata` and `status` (ConfigMap, Secret data); `labels`,
/// `annotations`: those maps; `any`: the resourceVersion. The UID is part of every
/// fingerprint, so a re-created object always passes.
pub fn fingerprint(on: Trigger, object: &DynamicObject) -> u64 {
    let mut h = DefaultHasher::new();
    object.metadata.uid.hash(&mut h);
    match on {
        Trigger::Spec => match object.metadata.generation {
            Some(generation) => generation.hash(&mut h),
            None => match &object.data {
                Value::Object(map) => {
                    for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "status") {
                        k.hash(&mut h);
                        v.to_string().hash(&mut h);
                    }
                }
                other => other.to_string().hash(&mut h),
            },
        },
        Trigger::Labels => object.metadata.labels.hash(&mut h),
        Trigger::Annotations => object.metadata.annotations.hash(&mut h),
        Trigger::Any => object.metadata.resource_version.hash(&mut h),
    }
    h.finish()
}

/// One subscriber's `on` filter: the last fingerprint of every object it knows, and the
/// object as last seen (to map it when it vanishes in a relist).
#[derive(Debug)]
pub struct Filter {
    on: Trigger,
    seen: HashMap<ObjectKey, (u64, Arc<DynamicObject>)>,
}

impl Filter {
    /// An empty filter for `on`.
    pub fn new(on: Trigger) -> Self {
        Self {
            on,
            seen: HashMap::new(),
        }
    }

    /// Forgets everything and knows `objects` (a cache's contents), without passing any.
    pub fn seed(&mut self, objects: impl IntoIterator<Item = Arc<DynamicObject>>) {
        self.seen = objects
            .into_iter()
            .map(|o| (object_key(&o), (fingerprint(self.on, &o), o)))
            .collect();
    }

    /// Whether a created or modified object passes: it is new, or what `on` looks at
    /// changed.
    pub fn applied(&mut self, object: &Arc<DynamicObject>) -> bool {
        let print = fingerprint(self.on, object);
        match self
            .seen
            .insert(object_key(object), (print, object.clone()))
        {
            Some((before, _)) => before != print,
            None => true,
        }
    }

    /// A deleted object always passes; it is forgotten.
    pub fn deleted(&mut self, object: &DynamicObject) -> bool {
        self.seen.remove(&object_key(object));
        true
    }

    /// After a relist: the known objects missing from `present` (deleted while the watch
    /// was down), forgotten and returned so their primaries can be woken.
    pub fn vanished(&mut self, present: &[Arc<DynamicObject>]) -> Vec<Arc<DynamicObject>> {
        let keep: std::collections::HashSet<ObjectKey> =
            present.iter().map(|o| object_key(o)).collect();
        let gone: Vec<ObjectKey> = self
            .seen
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        gone.into_iter()
            .filter_map(|k| self.seen.remove(&k).map(|(_, o)| o))
            .collect()
    }

    /// How many objects the filter knows.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether the filter knows no object.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Arc<DynamicObject> {
        Arc::new(serde_json::from_value(value).expect("a DynamicObject"))
    }

    fn cm(ns: &str, name: &str, rv: &str, data: Value) -> Arc<DynamicObject> {
        object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": rv},
            "data": data}))
    }

    fn widget() -> Primary {
        Primary {
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            namespaced: true,
        }
    }

    fn r(ns: Option<&str>, name: &str) -> PrimaryRef {
        PrimaryRef {
            namespace: ns.map(str::to_string),
            name: name.into(),
        }
    }

    #[test]
    fn owned_objects_map_to_every_owner_of_the_primary_kind() {
        let child = object(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "ns", "ownerReferences": [
            {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w1", "uid": "1", "controller": true},
            {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w2", "uid": "2"},
            {"apiVersion": "example.com/v2", "kind": "Widget", "name": "other-version", "uid": "3"},
            {"apiVersion": "example.com/v1", "kind": "Gadget", "name": "other-kind", "uid": "4"},
        ]}}));
        assert_eq!(
            map_object(&Mapper::Owner, &child, &widget()),
            Wake::Refs(vec![r(Some("ns"), "w1"), r(Some("ns"), "w2")])
        );
        let orphan = cm("ns", "c", "1", json!({}));
        assert_eq!(
            map_object(&Mapper::Owner, &orphan, &widget()),
            Wake::Refs(vec![])
        );
        // A cluster-scoped owner of a namespaced child is named without a namespace.
        let cluster = Primary {
            namespaced: false,
            ..widget()
        };
        assert_eq!(
            map_object(&Mapper::Owner, &child, &cluster),
            Wake::Refs(vec![r(None, "w1"), r(None, "w2")])
        );
    }

    #[test]
    fn label_values_name_namespace_dot_name_or_a_local_name() {
        assert_eq!(
            label_target("src.app.config", Some("x"), true),
            Some(r(Some("src"), "app.config"))
        );
        assert_eq!(
            label_target("app", Some("x"), true),
            Some(r(Some("x"), "app"))
        );
        assert_eq!(label_target("app", None, true), None);
        assert_eq!(label_target(".app", Some("x"), true), None);
        assert_eq!(label_target("", Some("x"), true), None);
        assert_eq!(label_target("a.b", Some("x"), false), Some(r(None, "a.b")));
        let copy = object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "t", "labels": {"nuop.dev/replica-of": "src.c"}}}));
        assert_eq!(
            map_object(
                &Mapper::Label("nuop.dev/replica-of".into()),
                &copy,
                &widget()
            ),
            Wake::Refs(vec![r(Some("src"), "c")])
        );
        assert_eq!(
            map_object(&Mapper::Label("absent".into()), &copy, &widget()),
            Wake::Refs(vec![])
        );
    }

    #[test]
    fn annotation_values_name_namespace_slash_name_or_a_local_name() {
        assert_eq!(
            annotation_target("ns/w", Some("x"), true),
            Some(r(Some("ns"), "w"))
        );
        assert_eq!(
            annotation_target("w", Some("x"), true),
            Some(r(Some("x"), "w"))
        );
        assert_eq!(annotation_target("ns/", Some("x"), true), None);
        assert_eq!(annotation_target("w", None, false), Some(r(None, "w")));
        let secret = object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "t", "annotations": {"nuop.dev/parent": "p/w"}}}));
        assert_eq!(
            map_object(
                &Mapper::Annotation("nuop.dev/parent".into()),
                &secret,
                &widget()
            ),
            Wake::Refs(vec![r(Some("p"), "w")])
        );
    }

    #[test]
    fn all_script_and_none_mappers() {
        let o = cm("ns", "c", "1", json!({}));
        assert_eq!(map_object(&Mapper::All, &o, &widget()), Wake::All);
        assert_eq!(map_object(&Mapper::Script, &o, &widget()), Wake::Script);
        assert_eq!(map_object(&Mapper::None, &o, &widget()), Wake::Refs(vec![]));
    }

    #[test]
    fn map_answers_are_records_or_lists_of_them() {
        assert_eq!(parse_map_output(&Value::Null, Some("x"), true), Ok(vec![]));
        assert_eq!(parse_map_output(&json!([]), Some("x"), true), Ok(vec![]));
        assert_eq!(
            parse_map_output(&json!({"name": "w"}), Some("x"), true),
            Ok(vec![r(Some("x"), "w")])
        );
        assert_eq!(
            parse_map_output(
                &json!([{"namespace": "a", "name": "w"}, {"namespace": "a", "name": "w"}, {"name": "v"}]),
                Some("x"),
                true
            ),
            Ok(vec![r(Some("a"), "w"), r(Some("x"), "v")])
        );
        assert_eq!(
            parse_map_output(&json!({"namespace": "a", "name": "w"}), None, false),
            Ok(vec![r(None, "w")])
        );
        for bad in [
            json!("w"),
            json!([{"namespace": "a"}]),
            json!({"name": ""}),
            json!({"name": "w", "namespace": 1}),
        ] {
            assert!(parse_map_output(&bad, Some("x"), true).is_err(), "{bad}");
        }
        assert!(parse_map_output(&json!({"name": "w"}), None, true).is_err());
    }

    #[test]
    fn spec_ignores_status_and_metadata_but_sees_data_and_generation() {
        let a = cm("ns", "c", "1", json!({"k": "v"}));
        let relabelled = object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "ns", "uid": "uid-c", "resourceVersion": "2", "labels": {"x": "y"}},
            "data": {"k": "v"}}));
        let edited = cm("ns", "c", "3", json!({"k": "w"}));
        assert_eq!(
            fingerprint(Trigger::Spec, &a),
            fingerprint(Trigger::Spec, &relabelled)
        );
        assert_ne!(
            fingerprint(Trigger::Spec, &a),
            fingerprint(Trigger::Spec, &edited)
        );
        assert_ne!(
            fingerprint(Trigger::Labels, &a),
            fingerprint(Trigger::Labels, &relabelled)
        );
        assert_eq!(
            fingerprint(Trigger::Annotations, &a),
            fingerprint(Trigger::Annotations, &relabelled)
        );
        assert_ne!(
            fingerprint(Trigger::Any, &a),
            fingerprint(Trigger::Any, &relabelled)
        );
        let deploy = |generation: i64, replicas: i64| {
            object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d", "namespace": "ns", "uid": "u", "generation": generation},
                "spec": {}, "status": {"replicas": replicas}}))
        };
        assert_eq!(
            fingerprint(Trigger::Spec, &deploy(1, 1)),
            fingerprint(Trigger::Spec, &deploy(1, 2))
        );
        assert_ne!(
            fingerprint(Trigger::Spec, &deploy(1, 1)),
            fingerprint(Trigger::Spec, &deploy(2, 1))
        );
        let status_only = |replicas: i64| {
            object(json!({"apiVersion": "v1", "kind": "Thing",
                "metadata": {"name": "t", "namespace": "ns", "uid": "u"}, "spec": {"a": 1}, "status": {"n": replicas}}))
        };
        assert_eq!(
            fingerprint(Trigger::Spec, &status_only(1)),
            fingerprint(Trigger::Spec, &status_only(2))
        );
    }

    #[test]
    fn the_filter_passes_creations_changes_and_deletes_only() {
        let mut filter = Filter::new(Trigger::Spec);
        filter.seed([cm("ns", "known", "1", json!({"k": "v"}))]);
        // Seeding passes nothing; an unchanged re-delivery (a relist) is filtered.
        assert!(!filter.applied(&cm("ns", "known", "1", json!({"k": "v"}))));
        assert!(!filter.applied(&cm("ns", "known", "2", json!({"k": "v"}))));
        assert!(filter.applied(&cm("ns", "known", "3", json!({"k": "w"}))));
        assert!(filter.applied(&cm("ns", "new", "1", json!({}))));
        assert_eq!(filter.len(), 2);
        assert!(filter.deleted(&cm("ns", "new", "1", json!({}))));
        // A delete never filtered, even of an object the filter did not know.
        assert!(filter.deleted(&cm("ns", "never-seen", "1", json!({}))));
        assert_eq!(filter.len(), 1);
        // Re-created under the same name (new UID): passes although the data is equal.
        let recreated = object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "known", "namespace": "ns", "uid": "other", "resourceVersion": "9"},
            "data": {"k": "w"}}));
        assert!(filter.applied(&recreated));
    }

    #[test]
    fn a_relist_reports_objects_that_vanished_meanwhile() {
        let mut filter = Filter::new(Trigger::Any);
        let kept = cm("ns", "kept", "1", json!({}));
        filter.seed([kept.clone(), cm("ns", "gone", "1", json!({}))]);
        let gone = filter.vanished(&[kept]);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].metadata.name.as_deref(), Some("gone"));
        assert_eq!(filter.len(), 1);
        assert!(!filter.is_empty());
    }
}
