//! nuop's finalizer on the objects it reconciles: which phase an object is in, and the
//! guarded JSON Patches that add and remove the finalizer.
//!
//! [`next_step`], [`add_finalizer_patch`], [`remove_finalizer_patch`] and
//! [`is_finalizer_conflict`] are pure; [`patch_finalizers`] does I/O (one PATCH, and
//! its audit record).

use kube::api::{Patch, PatchParams};
use serde_json::Value;

use super::error::ReconcileError;
use super::{Context, object_value, text};
use crate::audit::{Change, Intent, ObjectRef, Verb};

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
/// A finalizer is never added to an object already being deleted (the API server refuses
/// it with 422; see `finalizer_steps` below and the standard_mode test
/// `finalizer_is_added_runs_on_delete_and_is_never_added_to_a_deleting_object`).
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

/// Whether a 422 answer to a finalizer patch means "the object changed under us", so the
/// object is re-read rather than the error reported: a failed `test` op (someone changed
/// the list) or the rule that no finalizer may be added to an object being deleted.
/// Any other 422 is a genuine validation error (permanent).
pub fn is_finalizer_conflict(message: &str) -> bool {
    message.contains("testing value ")
        || message.contains("test operation does not apply")
        || message.contains("no new finalizers can be added if the object is being deleted")
}

/// Applies a finalizer JSON Patch (under the controller's field manager) and returns the
/// object as it now is; `verb` says which ([`Verb::AddFinalizer`] or
/// [`Verb::RemoveFinalizer`]) for the error and the audit record. A 422 that
/// [`is_finalizer_conflict`] is turned into a 409, so the pipeline re-reads the object.
///
/// # Errors
/// [`ReconcileError::Api`] when the request fails.
pub(crate) async fn patch_finalizers(
    ctx: &Context,
    object: &Value,
    patch: Value,
    verb: Verb,
) -> Result<Value, ReconcileError> {
    let action = match verb {
        Verb::AddFinalizer => "add finalizer",
        _ => "remove finalizer",
    };
    let pending = ctx.audit.begin(Intent {
        verb,
        object: ObjectRef::of(object),
        change: Change::Json(&patch),
        field_manager: &ctx.field_manager,
        subresource: None,
        dry_run: false,
    });
    let patch: json_patch::Patch = match serde_json::from_value(patch) {
        Ok(patch) => patch,
        Err(e) => {
            let source = kube::Error::SerdeError(e);
            pending.failed(&source.to_string(), "invalid patch");
            return Err(ReconcileError::Api { action, source });
        }
    };
    let api = ctx.api_for(object);
    let params = PatchParams {
        field_manager: Some(ctx.field_manager.clone()),
        ..PatchParams::default()
    };
    let result = api
        .patch(
            text(object, "/metadata/name"),
            &params,
            &Patch::Json::<()>(patch),
        )
        .await;
    match &result {
        Ok(updated) => pending.ok(updated.metadata.uid.as_deref()),
        Err(e) => pending.failed(&e.to_string(), &crate::audit::kube_error_class(e)),
    }
    match result {
        Ok(updated) => Ok(object_value(&updated, &ctx.resource)),
        Err(kube::Error::Api(status))
            if status.code == 422 && is_finalizer_conflict(&status.message) =>
        {
            Err(ReconcileError::Api {
                action,
                source: kube::Error::Api(Box::new(kube::core::Status {
                    code: 409,
                    ..*status
                })),
            })
        }
        Err(source) => Err(ReconcileError::Api { action, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn only_a_failed_test_op_or_the_deleting_rule_is_a_conflict() {
        assert!(is_finalizer_conflict(
            "testing value /metadata/finalizers failed: test failed"
        ));
        assert!(is_finalizer_conflict(
            "test operation does not apply: is missing path: /metadata/finalizers/1: missing value"
        ));
        assert!(is_finalizer_conflict(
            "ConfigMap \"a\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{\"nuop.dev/f\"}"
        ));
        // A genuine validation error is not retried as a conflict.
        assert!(!is_finalizer_conflict(
            "ConfigMap \"a\" is invalid: metadata.finalizers[0]: Invalid value: \"bad name\": name part must consist of alphanumeric characters"
        ));
    }
}
