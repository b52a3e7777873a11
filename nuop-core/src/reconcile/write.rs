//! Writing a script's answer back to the cluster: the merge patches an answer becomes,
//! and the requests that send them.
//!
//! [`plan_write`], [`is_whole`], [`merge_diff`] and [`check_answer`] are pure;
//! [`write`] does I/O (a PATCH of the object, then a PATCH of its status subresource,
//! each with its audit record).
//!
//! # The rule
//!
//! The answer (the object a `reconcile` prints with exit 2) is compared with the object
//! the script was given (its input, `managedFields` removed). Only the difference is
//! sent, as a JSON merge patch (RFC 7386) that carries the input's
//! `metadata.resourceVersion`: the API server treats that as a precondition and answers
//! 409 when the object changed since it was read, and nuop then re-reads the object and
//! reconciles it again at once.
//!
//! - A **whole** answer carries every top-level field and every `metadata` field the
//!   input had (`uid`, `resourceVersion` and `creationTimestamp` included): what
//!   `$in | from json | upsert …` or `| reject …` produce. It is the desired object, and
//!   a field it leaves out, at any depth, is removed.
//! - Any other answer is **partial**, such as
//!   `{apiVersion, kind, metadata: {name, namespace}, data: {key: value}}`. It names only
//!   what changes: a field it leaves out, at any depth, stays as it is (finalizers,
//!   ownerReferences, other labels, annotations and data keys).
//! - In both, an explicit `null` removes a field, and a list (`finalizers`,
//!   `ownerReferences`, `containers`) is replaced as a whole, as RFC 7386 says.
//! - Fields the server owns (`uid`, `resourceVersion`, `generation`,
//!   `creationTimestamp`, `managedFields`, `deletionTimestamp`,
//!   `deletionGracePeriodSeconds`, `selfLink`) are never written
//!   (`echoes_and_server_fields_are_no_change`); apiVersion, kind,
//!   name and namespace are checked by the identity rule before planning.
//! - With a status subresource, `.status` is patched there (guarded by the
//!   resourceVersion the first patch returned) and the rest on the object.
//! - An answer is refused, and nothing is written, when a label or annotation value is
//!   not a string, or when its `finalizers` list leaves out nuop's own finalizer
//!   ([`check_answer`]).
//!
//! The four cases are tested against the API server in `tests/writes.rs`.

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::events::EventType;
use serde_json::{Map, Value};

use super::error::ReconcileError;
use super::events::publish;
use super::{Context, text};
use crate::audit::{Change, Intent, ObjectRef, Pending, Verb};

/// Metadata fields the server owns: never written, whatever the answer says
/// (`echoes_and_server_fields_are_no_change`).
const SERVER_FIELDS: [&str; 8] = [
    "resourceVersion",
    "managedFields",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The writes an answer needs: merge patches for the object and its status subresource.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WritePlan {
    /// A merge patch of the object (everything but `.status` when the kind has a status
    /// subresource), carrying the input's resourceVersion.
    pub main: Option<Value>,
    /// A merge patch of the status subresource, carrying the input's resourceVersion.
    pub status: Option<Value>,
}

impl WritePlan {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.main.is_none() && self.status.is_none()
    }
}

/// An answer that cannot be written as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// A label or annotation value that is not a string (`labels.count: 3`).
    #[error("metadata.{field}.{key} must be a string, found {found}; nothing was written")]
    NotAString {
        /// `labels` or `annotations`.
        field: &'static str,
        /// The offending key.
        key: String,
        /// What was found instead.
        found: &'static str,
    },
    /// `metadata.finalizers` that is not a list of strings.
    #[error("metadata.finalizers must be a list of strings; nothing was written")]
    BadFinalizers,
    /// A `finalizers` list that leaves out nuop's own finalizer.
    #[error(
        "the answer's metadata.finalizers leaves out {0}, which nuop manages; nothing was written"
    )]
    DropsFinalizer(String),
}

/// Whether `answer` is a whole object rather than a partial one: it keeps every
/// top-level key and every `metadata` key of `input` (see the module doc).
pub fn is_whole(input: &Value, answer: &Value) -> bool {
    let keeps = |from: Option<&Value>, to: Option<&Value>| match from.and_then(Value::as_object) {
        None => true,
        Some(from) => to
            .and_then(Value::as_object)
            .is_some_and(|to| from.keys().all(|k| to.contains_key(k))),
    };
    keeps(Some(input), Some(answer)) && keeps(input.get("metadata"), answer.get("metadata"))
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`, or `None` when they are
/// equal. With `removals`, a key of `from` that `to` lacks becomes `null` (removed);
/// without, it is left out of the patch (unchanged). An explicit `null` in `to` removes
/// a key `from` has either way.
pub fn merge_diff(from: &Value, to: &Value, removals: bool) -> Option<Value> {
    match (from, to) {
        (Value::Object(from), Value::Object(to)) => {
            let mut patch = Map::new();
            for (key, to_value) in to {
                match from.get(key) {
                    Some(from_value) => {
                        if let Some(change) = merge_diff(from_value, to_value, removals) {
                            patch.insert(key.clone(), change);
                        }
                    }
                    // Removing what is not there is no change.
                    None if to_value.is_null() => {}
                    None => {
                        patch.insert(key.clone(), to_value.clone());
                    }
                }
            }
            if removals {
                for key in from.keys().filter(|k| !to.contains_key(*k)) {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if from == to => None,
        _ => Some(to.clone()),
    }
}

/// Checks what the API server would refuse or nuop must not allow before anything is
/// planned: label and annotation values are strings (or `null`, a removal), and
/// `finalizers`, when the answer states it, is a list of strings that keeps `ours`
/// whenever the input carries it.
///
/// # Errors
/// [`AnswerError`] naming the problem.
pub fn check_answer(input: &Value, answer: &Value, ours: Option<&str>) -> Result<(), AnswerError> {
    let meta = answer.get("metadata");
    for field in ["labels", "annotations"] {
        let Some(map) = meta.and_then(|m| m.get(field)).and_then(Value::as_object) else {
            continue;
        };
        if let Some((key, value)) = map.iter().find(|(_, v)| !(v.is_string() || v.is_null())) {
            return Err(AnswerError::NotAString {
                field,
                key: key.clone(),
                found: json_type(value),
            });
        }
    }
    let Some(finalizers) = meta.and_then(|m| m.get("finalizers")) else {
        return Ok(());
    };
    let listed: Vec<&str> = match finalizers {
        Value::Null => Vec::new(),
        Value::Array(list) => list
            .iter()
            .map(|f| f.as_str().ok_or(AnswerError::BadFinalizers))
            .collect::<Result<_, _>>()?,
        _ => return Err(AnswerError::BadFinalizers),
    };
    match ours {
        Some(ours) if super::finalizer::has_finalizer(input, ours) && !listed.contains(&ours) => {
            Err(AnswerError::DropsFinalizer(ours.to_string()))
        }
        _ => Ok(()),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a record",
    }
}

/// Turns an answer into the merge patches it needs (see the module doc for the rule).
/// `input` is the object the script was given, `answer` what it printed; identity has
/// been checked already.
pub fn plan_write(input: &Value, answer: &Value, has_status_subresource: bool) -> WritePlan {
    let removals = is_whole(input, answer);
    let writable = |object: &Value| {
        let mut object = object.clone();
        if let Some(map) = object.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
            if has_status_subresource {
                map.remove("status");
            }
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("name");
                meta.remove("namespace");
                for field in SERVER_FIELDS {
                    meta.remove(field);
                }
            }
        }
        object
    };
    let guard = |mut patch: Value| {
        if let (Some(rv), Some(map)) = (
            input
                .pointer("/metadata/resourceVersion")
                .filter(|v| v.is_string()),
            patch.as_object_mut(),
        ) {
            let meta = map
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert("resourceVersion".into(), rv.clone());
            }
        }
        patch
    };
    let main = merge_diff(&writable(input), &writable(answer), removals).map(guard);
    let status = has_status_subresource
        .then(|| answer.get("status"))
        .flatten()
        .and_then(|to| merge_diff(input.get("status").unwrap_or(&Value::Null), to, removals))
        .map(|change| guard(serde_json::json!({ "status": change })));
    WritePlan { main, status }
}

/// Sends a [`WritePlan`]: the object's patch, then the status patch guarded by the
/// resourceVersion the first one returned. Each successful write queues a Normal Event.
///
/// # Errors
/// [`ReconcileError::Api`] when a request fails (409 when the object changed since it
/// was read).
pub(crate) async fn write(
    ctx: &Context,
    object: &Value,
    plan: WritePlan,
) -> Result<(), ReconcileError> {
    if plan.is_empty() {
        return Ok(());
    }
    let api = ctx.api_for(object);
    let name = text(object, "/metadata/name");
    let params = PatchParams {
        field_manager: Some(ctx.field_manager.clone()),
        ..PatchParams::default()
    };
    let mut resource_version = None;
    if let Some(patch) = plan.main {
        let pending = ctx
            .audit
            .begin(intent(ctx, object, Verb::WriteBack, &patch));
        let result = api.patch(name, &params, &Patch::Merge(&patch)).await;
        audited(pending, &result);
        let updated = result.map_err(|source| ReconcileError::Api {
            action: "patch object",
            source,
        })?;
        remember_write(ctx, &updated);
        resource_version = updated.metadata.resource_version;
        publish(
            ctx,
            object,
            EventType::Normal,
            "Updated",
            "Update",
            "script changes written",
        );
    }
    if let Some(mut patch) = plan.status {
        if let Some(rv) = resource_version {
            patch["metadata"]["resourceVersion"] = Value::String(rv);
        }
        let pending = ctx
            .audit
            .begin(intent(ctx, object, Verb::WriteStatus, &patch));
        let result = api.patch_status(name, &params, &Patch::Merge(&patch)).await;
        audited(pending, &result);
        let updated = result.map_err(|source| ReconcileError::Api {
            action: "patch status",
            source,
        })?;
        // The later version: the object's echo is the status write's.
        remember_write(ctx, &updated);
        publish(
            ctx,
            object,
            EventType::Normal,
            "StatusUpdated",
            "UpdateStatus",
            "script status written",
        );
    }
    Ok(())
}

/// Remembers the version a write-back left the object at: its watch event is an echo.
fn remember_write(ctx: &Context, updated: &DynamicObject) {
    if let (Some(uid), Some(version)) = (&updated.metadata.uid, &updated.metadata.resource_version)
    {
        ctx.write_echoes.remember_version(uid, version);
    }
}

/// The audit record of one write-back patch of `object`.
fn intent<'a>(ctx: &'a Context, object: &Value, verb: Verb, patch: &'a Value) -> Intent<'a> {
    Intent {
        verb,
        object: ObjectRef::of(object),
        change: Change::Merge(patch),
        field_manager: &ctx.field_manager,
        subresource: None,
        dry_run: false,
    }
}

/// Finishes the audit record of one write with the API server's answer.
fn audited(pending: Pending, result: &Result<DynamicObject, kube::Error>) {
    match result {
        Ok(updated) => pending.ok(updated.metadata.uid.as_deref()),
        Err(e) => pending.failed(&e.to_string(), &crate::audit::kube_error_class(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "a", "namespace": "n", "uid": "u-1", "resourceVersion": "7",
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"keep": "1", "drop": "2"},
                "annotations": {"note": "x"},
                "finalizers": ["other.io/keep", "nuop.dev/f"],
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "u-0"}]
            },
            "data": {"k": "v", "old": "o"}
        })
    }

    #[test]
    fn a_partial_answer_changes_only_what_it_names() {
        let answer = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "labels": {"new": "3"}},
            "data": {"k": "v2"}});
        assert!(!is_whole(&input(), &answer));
        let plan = plan_write(&input(), &answer, false);
        assert_eq!(
            plan.main,
            Some(
                json!({"metadata": {"labels": {"new": "3"}, "resourceVersion": "7"},
                        "data": {"k": "v2"}})
            )
        );
        assert_eq!(plan.status, None);
    }

    #[test]
    fn a_whole_answer_removes_what_it_leaves_out() {
        let mut answer = input();
        answer["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("drop");
        answer["data"].as_object_mut().expect("data").remove("old");
        assert!(is_whole(&input(), &answer));
        assert_eq!(
            plan_write(&input(), &answer, false).main,
            Some(
                json!({"metadata": {"labels": {"drop": null}, "resourceVersion": "7"},
                        "data": {"old": null}})
            )
        );
    }

    #[test]
    fn a_whole_answer_missing_one_metadata_key_is_partial() {
        let mut answer = input();
        let meta = answer["metadata"].as_object_mut().expect("meta");
        meta.remove("ownerReferences");
        meta.remove("uid");
        answer["data"].as_object_mut().expect("data").remove("old");
        assert!(!is_whole(&input(), &answer));
        assert!(plan_write(&input(), &answer, false).is_empty());
    }

    #[test]
    fn explicit_null_removes_in_a_partial_answer_and_lists_are_replaced() {
        let answer = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "annotations": {"note": null, "absent": null},
                         "finalizers": ["nuop.dev/f"]}});
        assert_eq!(
            plan_write(&input(), &answer, false).main,
            Some(json!({"metadata": {"annotations": {"note": null},
                        "finalizers": ["nuop.dev/f"], "resourceVersion": "7"}}))
        );
    }

    #[test]
    fn echoes_and_server_fields_are_no_change() {
        assert!(plan_write(&input(), &input(), false).is_empty());
        let mut answer = input();
        answer["metadata"]["resourceVersion"] = json!("999");
        answer["metadata"]["uid"] = json!("other");
        answer["metadata"]["generation"] = json!(4);
        assert!(plan_write(&input(), &answer, true).is_empty());
        // A partial answer that only restates what is there.
        let partial = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n"}, "data": {"k": "v"}});
        assert!(plan_write(&input(), &partial, false).is_empty());
    }

    #[test]
    fn status_goes_to_the_subresource_only_with_one() {
        let mut answer = input();
        answer["status"] = json!({"message": "hello"});
        let plan = plan_write(&input(), &answer, true);
        assert_eq!(plan.main, None);
        assert_eq!(
            plan.status,
            Some(json!({"status": {"message": "hello"}, "metadata": {"resourceVersion": "7"}}))
        );
        let plan = plan_write(&input(), &answer, false);
        assert_eq!(
            plan.main,
            Some(json!({"status": {"message": "hello"}, "metadata": {"resourceVersion": "7"}}))
        );
        assert_eq!(plan.status, None);
    }

    #[test]
    fn unwritable_answers_are_refused() {
        let mut answer = input();
        answer["metadata"]["labels"]["count"] = json!(3);
        assert_eq!(
            check_answer(&input(), &answer, None),
            Err(AnswerError::NotAString {
                field: "labels",
                key: "count".into(),
                found: "a number"
            })
        );
        let mut answer = input();
        answer["metadata"]["finalizers"] = json!(["other.io/keep"]);
        assert_eq!(
            check_answer(&input(), &answer, Some("nuop.dev/f")),
            Err(AnswerError::DropsFinalizer("nuop.dev/f".into()))
        );
        answer["metadata"]["finalizers"] = json!([1]);
        assert_eq!(
            check_answer(&input(), &answer, None),
            Err(AnswerError::BadFinalizers)
        );
        // A partial answer that does not mention finalizers keeps them: fine.
        let partial = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": null}}});
        assert_eq!(check_answer(&input(), &partial, Some("nuop.dev/f")), Ok(()));
        assert_eq!(check_answer(&input(), &input(), Some("nuop.dev/f")), Ok(()));
    }
}
