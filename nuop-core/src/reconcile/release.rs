//! Releasing objects that carry nuop's finalizer but no longer match the controller's
//! selectors (a label removed, a field changed): `finalize` runs and the finalizer is
//! removed, as if the object had been deleted.
//!
//! [`release_check`] and [`matches_labels`] are pure. [`run`] does I/O: it drives a
//! second kube-runtime controller over a metadata-only watch of the kind *without*
//! selectors, so an object that left is found however it left: while the selective
//! watch was running, while nuop was down, during a failover, or across a re-list (each
//! list replays every object). Releases share the controller's `--concurrency`
//! permits, retry with the per-object backoff and no cap on attempts, stop with the
//! controller's shutdown, and run only where the controller runs (under the lease).
//!
//! Label selectors are checked on the watched metadata. Field selectors cannot be
//! checked locally, so an object whose labels match asks the API server (one list of
//! that object with the controller's selectors) whether it is still selected.
//!
//! `finalize` of a released object runs at least once; the finalizer is removed once
//! (a guarded patch). Tested in `tests/release.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::EventType;
use kube::runtime::{Controller, WatchStreamExt, reflector, watcher};
use serde_json::Value;
use tracing::{Instrument, debug, info, warn};

use super::error::{ReconcileError, Retry};
use super::events::publish;
use super::finalizer::has_finalizer;
use super::{Context, object_span, object_value, run_finalize, text};
use crate::metrics::{GaugeGuard, METRICS};
use crate::shutdown::Shutdown;

/// Backoff keys of releases start with this, so pruning by the selective watch's cache
/// (which no longer holds released objects) leaves them alone.
pub(crate) const KEY_PREFIX: &str = "release:";

/// What to do with an object seen by the unselective watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing: it does not carry our finalizer, or the selective watch has it.
    Keep,
    /// It carries our finalizer and its labels no longer match: release it.
    Release,
    /// Its labels match, but whether the field selectors do only the API server knows.
    AskServer,
}

/// Decides from an object's labels and finalizer whether it must be released.
pub fn release_check(
    labels: &BTreeMap<String, String>,
    carries_ours: bool,
    label_selectors: &BTreeMap<String, String>,
    has_field_selectors: bool,
) -> Check {
    if !carries_ours {
        Check::Keep
    } else if !matches_labels(labels, label_selectors) {
        Check::Release
    } else if has_field_selectors {
        Check::AskServer
    } else {
        Check::Keep
    }
}

/// Whether `labels` carry every label in `selectors` with the same value (the
/// equality-based label selectors a script's config can express).
pub fn matches_labels(
    labels: &BTreeMap<String, String>,
    selectors: &BTreeMap<String, String>,
) -> bool {
    selectors
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Watches the kind's metadata in `namespace` (all namespaces when `None`) without
/// selectors and releases what left the selectors, until `shutdown`.
pub(crate) async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: Shutdown,
) {
    let resource = ctx.resource.clone();
    // An Api of PartialObjectMeta makes metadata-only requests.
    let api: Api<PartialObjectMeta<DynamicObject>> = match &namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    };
    let writer =
        reflector::store::Writer::<PartialObjectMeta<DynamicObject>>::new(resource.clone());
    let reader = writer.as_reader();
    let objects = watcher(api, watcher::Config::default())
        .modify(|object| object.metadata.managed_fields = None);
    let trigger = reflector(writer, objects).applied_objects();
    Controller::for_stream_with(trigger, reader, resource)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_release, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(e) => debug!("release controller: {e}"),
            }
        })
        .await;
}

/// The minimal object value (name, namespace, uid) for spans, Events and keys.
fn meta_value(object: &PartialObjectMeta<DynamicObject>) -> Value {
    serde_json::json!({"metadata": {
        "name": object.name_any(),
        "namespace": object.namespace(),
        "uid": object.uid(),
    }})
}

fn key(object: &Value) -> String {
    format!("{KEY_PREFIX}{}", super::object_key(object))
}

async fn reconcile_release(
    object: Arc<PartialObjectMeta<DynamicObject>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let Some(finalizer) = ctx.config.finalizer.clone() else {
        return Ok(Action::await_change());
    };
    let check = release_check(
        object.labels(),
        object.finalizers().contains(&finalizer),
        &ctx.config.label_selectors,
        !ctx.config.field_selectors.is_empty(),
    );
    if check == Check::Keep {
        return Ok(Action::await_change());
    }
    let summary = meta_value(&object);
    let span = object_span(&ctx, &summary);
    async move {
        let result = release(&summary, check, &ctx, &finalizer).await;
        match &result {
            Ok(_) => ctx.backoff.succeeded(&key(&summary)),
            Err(error) if error.retry() == Retry::Gone => {
                ctx.backoff.succeeded(&key(&summary));
                return Ok(Action::await_change());
            }
            Err(error) => {
                warn!(category = error.category(), "releasing an object that left the selectors failed: {error}");
                publish(&ctx, &summary, EventType::Warning, error.category(), "Release", &format!(
                    "the object left the selectors but finalize failed, so finalizer {finalizer} stays until a retry succeeds: {error}"
                ));
            }
        }
        result
    }
    .instrument(span)
    .await
}

async fn release(
    summary: &Value,
    check: Check,
    ctx: &Context,
    finalizer: &str,
) -> Result<Action, ReconcileError> {
    let api = ctx.api_for(summary);
    let name = text(summary, "/metadata/name");
    if check == Check::AskServer && still_selected(ctx, &api, name).await? {
        return Ok(Action::await_change());
    }
    // The full object, as `finalize` sees it, and a second look at the labels on it.
    let Some(fresh) = api
        .get_opt(name)
        .await
        .map_err(|source| ReconcileError::Api {
            action: "read object that left the selectors",
            source,
        })?
    else {
        return Ok(Action::await_change());
    };
    let current = object_value(&fresh, &ctx.resource);
    let selected_by_labels = matches_labels(&labels_of(&current), &ctx.config.label_selectors);
    if !has_finalizer(&current, finalizer)
        || selected_by_labels && ctx.config.field_selectors.is_empty()
    {
        return Ok(Action::await_change());
    }
    let _permit = ctx.permits.acquire().await.ok();
    let _in_flight = GaugeGuard::inc(
        METRICS
            .in_flight
            .with_label_values(&[ctx.config.name.as_str()]),
    );
    info!("the object no longer matches the selectors; finalizing it");
    run_finalize(&current, ctx).await
}

/// Whether the API server still selects `name` with the controller's label and field
/// selectors.
async fn still_selected(
    ctx: &Context,
    api: &Api<DynamicObject>,
    name: &str,
) -> Result<bool, ReconcileError> {
    let mut fields = format!("metadata.name={name}");
    if let Some(selectors) = ctx.config.field_selector_string() {
        fields = format!("{selectors},{fields}");
    }
    let mut params = ListParams::default().fields(&fields);
    if let Some(labels) = ctx.config.label_selector_string() {
        params = params.labels(&labels);
    }
    let found = api
        .list_metadata(&params)
        .await
        .map_err(|source| ReconcileError::Api {
            action: "check the selectors",
            source,
        })?;
    Ok(!found.items.is_empty())
}

/// Retries a failed release with the per-object backoff, without a cap on attempts;
/// permanent problems wait for the object (or script) to change.
fn error_policy(
    object: Arc<PartialObjectMeta<DynamicObject>>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = key(&meta_value(&object));
    match error.retry() {
        Retry::Permanent | Retry::Gone => {
            ctx.backoff.succeeded(&key);
            Action::await_change()
        }
        Retry::Conflict | Retry::Transient => Action::requeue(ctx.backoff.failed(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors_match_only_when_every_label_is_equal() {
        let selectors = map(&[("x", "y"), ("a", "b")]);
        assert!(matches_labels(
            &map(&[("x", "y"), ("a", "b"), ("extra", "1")]),
            &selectors
        ));
        assert!(!matches_labels(&map(&[("x", "y")]), &selectors));
        assert!(!matches_labels(&map(&[("x", "z"), ("a", "b")]), &selectors));
        assert!(!matches_labels(&map(&[]), &selectors));
        assert!(matches_labels(&map(&[]), &map(&[])));
    }

    #[test]
    fn only_objects_with_our_finalizer_that_left_are_released() {
        let selectors = map(&[("x", "y")]);
        let selected = map(&[("x", "y")]);
        let left = map(&[("x", "n")]);
        assert_eq!(release_check(&left, false, &selectors, false), Check::Keep);
        assert_eq!(
            release_check(&selected, true, &selectors, false),
            Check::Keep
        );
        assert_eq!(
            release_check(&left, true, &selectors, false),
            Check::Release
        );
        assert_eq!(release_check(&left, true, &selectors, true), Check::Release);
        // Labels match but field selectors are set: only the server can tell.
        assert_eq!(
            release_check(&selected, true, &selectors, true),
            Check::AskServer
        );
    }

    #[test]
    fn labels_are_read_from_the_object() {
        let object = serde_json::json!({"metadata": {"labels": {"x": "y", "n": 1}}});
        assert_eq!(labels_of(&object), map(&[("x", "y")]));
        assert_eq!(labels_of(&serde_json::json!({})), map(&[]));
    }
}
