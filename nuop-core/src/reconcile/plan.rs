//! What to do with an object, decided without I/O.
//!
//! [`next_step`] picks the finalizer phase; [`plan_write`] turns a script's desired object
//! into the writes it needs (main resource, status subresource, or nothing).

use serde_json::Value;

/// The first thing the pipeline does with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add our finalizer (by patch) before the first reconcile.
    AddFinalizer,
    /// Run `reconcile`.
    Reconcile,
    /// Being deleted and carrying our finalizer: run `finalize`, then remove it.
    Finalize,
    /// Being deleted without our finalizer: nothing for us to do.
    Ignore,
}

/// Decides the step from the object's metadata and the controller's finalizer.
///
/// A finalizer is never added to an object already being deleted: the API server would
/// accept it and the object would then wait on us for no reason.
pub fn next_step(object: &Value, finalizer: Option<&str>) -> Step {
    let deleting = object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let has_ours = finalizer.is_some_and(|f| has_finalizer(object, f));
    match (finalizer, deleting, has_ours) {
        (None, false, _) => Step::Reconcile,
        (None, true, _) => Step::Ignore,
        (Some(_), false, false) => Step::AddFinalizer,
        (Some(_), false, true) => Step::Reconcile,
        (Some(_), true, true) => Step::Finalize,
        (Some(_), true, false) => Step::Ignore,
    }
}

/// Whether `object` carries every label in `selectors` with the same value (the
/// equality-based label selectors a script's config can express).
pub fn matches_labels(
    object: &Value,
    selectors: &std::collections::BTreeMap<String, String>,
) -> bool {
    let labels = object.pointer("/metadata/labels");
    selectors.iter().all(|(key, value)| {
        labels
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .is_some_and(|v| v == value)
    })
}

/// Whether `object` lists `finalizer`.
pub fn has_finalizer(object: &Value, finalizer: &str) -> bool {
    finalizer_index(object, finalizer).is_some()
}

/// Position of `finalizer` in `metadata.finalizers`.
pub fn finalizer_index(object: &Value, finalizer: &str) -> Option<usize> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().position(|f| f.as_str() == Some(finalizer)))
}

/// JSON Patch adding `finalizer`, guarded so it fails rather than clobbering a
/// concurrent change to the list.
pub fn add_finalizer_patch(object: &Value, finalizer: &str) -> Value {
    match object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
    {
        Some(list) if !list.is_empty() => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": list},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ]),
        Some(empty) => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": empty},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ]),
        // An absent list tests as null (the API server's JSON Patch treats missing as null).
        None => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ]),
    }
}

/// JSON Patch removing `finalizer` at the index it has in `object`, guarded by a test of
/// that index; `None` when it is not there.
pub fn remove_finalizer_patch(object: &Value, finalizer: &str) -> Option<Value> {
    let index = finalizer_index(object, finalizer)?;
    let path = format!("/metadata/finalizers/{index}");
    Some(serde_json::json!([
        {"op": "test", "path": path, "value": finalizer},
        {"op": "remove", "path": path},
    ]))
}

/// The writes a desired object needs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WritePlan {
    /// A full object for an update of the main resource (guarded by resourceVersion).
    pub main: Option<Value>,
    /// A full object for an update of the status subresource.
    pub status: Option<Value>,
}

impl WritePlan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.main.is_none() && self.status.is_none()
    }
}

/// Fields the server owns: a script echoing or dropping them is not a change.
const SERVER_FIELDS: [&str; 5] = [
    "resourceVersion",
    "managedFields",
    "generation",
    "creationTimestamp",
    "uid",
];

fn without_server_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_FIELDS {
            meta.remove(field);
        }
    }
    object
}

/// Splits the difference between `input` and `desired` into writes.
///
/// With a status subresource, `.status` changes go there and everything else to the
/// main resource; without one (ConfigMap, Secret) the whole object is one update. Both
/// carry the input's resourceVersion, so a concurrent change makes the write fail with
/// a conflict instead of being overwritten.
pub fn plan_write(input: &Value, desired: &Value, has_status_subresource: bool) -> WritePlan {
    let resource_version = input
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    let stamp = |mut object: Value| {
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), resource_version.clone());
            meta.remove("managedFields");
        }
        object
    };
    let strip_status = |object: &Value| {
        let mut object = without_server_fields(object);
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
        object
    };

    if !has_status_subresource {
        let changed = without_server_fields(input) != without_server_fields(desired);
        return WritePlan {
            main: changed.then(|| stamp(desired.clone())),
            status: None,
        };
    }
    let main_changed = strip_status(input) != strip_status(desired);
    let status_changed =
        input.get("status") != desired.get("status") && desired.get("status").is_some();
    WritePlan {
        main: main_changed.then(|| stamp(desired.clone())),
        status: status_changed.then(|| stamp(desired.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_match_only_when_every_label_is_equal() {
        let selectors: std::collections::BTreeMap<String, String> = [
            ("x".to_string(), "y".to_string()),
            ("a".to_string(), "b".to_string()),
        ]
        .into();
        let with = |labels: Value| json!({"metadata": {"name": "o", "labels": labels}});
        assert!(matches_labels(
            &with(json!({"x": "y", "a": "b", "extra": "1"})),
            &selectors
        ));
        assert!(!matches_labels(&with(json!({"x": "y"})), &selectors));
        assert!(!matches_labels(
            &with(json!({"x": "z", "a": "b"})),
            &selectors
        ));
        assert!(!matches_labels(
            &json!({"metadata": {"name": "o"}}),
            &selectors
        ));
        assert!(matches_labels(
            &json!({"metadata": {"name": "o"}}),
            &Default::default()
        ));
    }

    fn obj(finalizers: Value, deleting: bool) -> Value {
        let mut o = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "resourceVersion": "7", "finalizers": finalizers}});
        if deleting {
            o["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        o
    }

    #[test]
    fn finalizer_steps() {
        let f = Some("nuop.dev/f");
        assert_eq!(next_step(&obj(json!(null), false), None), Step::Reconcile);
        assert_eq!(next_step(&obj(json!(null), true), None), Step::Ignore);
        assert_eq!(next_step(&obj(json!(null), false), f), Step::AddFinalizer);
        assert_eq!(
            next_step(&obj(json!(["nuop.dev/f"]), false), f),
            Step::Reconcile
        );
        assert_eq!(
            next_step(&obj(json!(["x/y", "nuop.dev/f"]), true), f),
            Step::Finalize
        );
        // Already being deleted (held by someone else's finalizer): never add ours.
        assert_eq!(
            next_step(&obj(json!(["other.io/keep"]), true), f),
            Step::Ignore
        );
    }

    #[test]
    fn finalizer_patches_are_guarded() {
        assert_eq!(
            add_finalizer_patch(&obj(json!(null), false), "nuop.dev/f"),
            json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
                   {"op": "add", "path": "/metadata/finalizers", "value": ["nuop.dev/f"]}])
        );
        assert_eq!(
            add_finalizer_patch(&obj(json!(["x/y"]), false), "nuop.dev/f"),
            json!([{"op": "test", "path": "/metadata/finalizers", "value": ["x/y"]},
                   {"op": "add", "path": "/metadata/finalizers/-", "value": "nuop.dev/f"}])
        );
        assert_eq!(
            remove_finalizer_patch(&obj(json!(["x/y", "nuop.dev/f"]), true), "nuop.dev/f"),
            Some(
                json!([{"op": "test", "path": "/metadata/finalizers/1", "value": "nuop.dev/f"},
                        {"op": "remove", "path": "/metadata/finalizers/1"}])
            )
        );
        assert_eq!(
            remove_finalizer_patch(&obj(json!(["x/y"]), true), "nuop.dev/f"),
            None
        );
    }

    #[test]
    fn unchanged_objects_need_no_write_even_without_server_fields() {
        let input = obj(json!(null), false);
        let mut echoed = input.clone();
        echoed["metadata"]
            .as_object_mut()
            .expect("meta")
            .remove("resourceVersion");
        assert!(plan_write(&input, &echoed, false).is_empty());
        assert!(plan_write(&input, &input, true).is_empty());
    }

    #[test]
    fn changes_without_status_subresource_are_one_guarded_update() {
        let input = obj(json!(null), false);
        let mut desired = input.clone();
        desired["metadata"]["labels"] = json!({"a": "b"});
        desired["metadata"]["resourceVersion"] = json!("999");
        let plan = plan_write(&input, &desired, false);
        let main = plan.main.expect("main write");
        assert_eq!(
            main["metadata"]["resourceVersion"], "7",
            "guarded by the input's version"
        );
        assert_eq!(main["metadata"]["labels"]["a"], "b");
        assert_eq!(plan.status, None);
    }

    #[test]
    fn status_changes_go_to_the_subresource() {
        let input = obj(json!(null), false);
        let mut desired = input.clone();
        desired["status"] = json!({"message": "hello"});
        let plan = plan_write(&input, &desired, true);
        assert_eq!(plan.main, None);
        assert_eq!(
            plan.status.expect("status write")["status"]["message"],
            "hello"
        );

        desired["spec"] = json!({"x": 1});
        let plan = plan_write(&input, &desired, true);
        assert!(plan.main.is_some() && plan.status.is_some());
    }
}
