//! The reconcile of one `NuOperator`, one call per step: fetch → validate → build →
//! check the children's names are ours → apply → delete what is no longer wanted →
//! status. Does I/O; every decision is made by the pure modules ([`crate::validate`],
//! [`crate::build`], [`crate::status`]) and [`conflict`].
//!
//! A spec that fails validation is not an error: the status says why (Degraded), no
//! child is created, and the children of an earlier valid spec are left running — a bad
//! edit does not take a working operator down. The same holds when a ConfigMap or
//! Deployment of the child's name exists without this NuOperator's controller
//! reference (`NameConflict`): it is never taken over (test
//! `a_same_named_configmap_is_not_taken_over` in `tests/manager.rs`). Errors are API
//! failures; they back off per object, capped ([`nuop_core::reconcile::backoff`]).
//!
//! Metrics use the core's vocabulary: `nuop_reconciles_total{outcome}` takes
//! [`ReconcileOutcome::label`] values, `nuop_reconcile_errors_total{category}` takes
//! [`Error::category`] (the core's category for a failed API call).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt as _};
use nuop_core::metrics::METRICS;
use nuop_core::metrics::ReconcileOutcome;
use nuop_core::reconcile::backoff::Backoff;
use nuop_crd::{CONDITION_WEBHOOKS, NuOperator};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::build::{self, Settings};
use crate::status::{Observation, desired_status};
use crate::validate::{self, Problem};
use crate::webhooks;
use crate::{Error, FIELD_MANAGER, Result};

/// The `controller` label of the manager's metrics.
pub const METRICS_CONTROLLER: &str = "nuop-manager";

/// How long a healthy `NuOperator` waits before it is looked at again without a change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// How long an operator whose problem may resolve itself (an object of the child's name
/// that is not ours, deleted later) waits before it is checked again.
pub const RECHECK: Duration = Duration::from_secs(30);

/// The longest Event note the API server accepts, in bytes.
const MAX_EVENT_NOTE: usize = 1024;

/// What every reconcile shares.
pub struct Context {
    /// The client for the cluster.
    pub client: Client,
    /// The manager's settings for the children.
    pub settings: Settings,
    recorder: Recorder,
    /// Keyed by [`backoff_key`]: the core's `Backoff` needs a key with a default.
    backoff: Backoff<String>,
}

impl Context {
    /// A context with no failures recorded.
    pub fn new(client: Client, settings: Settings) -> Arc<Self> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            backoff: Backoff::default(),
        })
    }
}

/// Reconciles one `NuOperator`.
///
/// # Errors
/// When a call to the API server fails; [`error_policy`] decides when to retry.
pub async fn reconcile(operator: Arc<NuOperator>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&operator, &ctx).await;
    let outcome = match &result {
        Ok((_, changed)) => {
            ctx.backoff.succeeded(&backoff_key(&operator));
            if *changed {
                ReconcileOutcome::Changed
            } else {
                ReconcileOutcome::NoChange
            }
        }
        Err(e) => {
            if let Ok(counter) = METRICS
                .errors
                .get_metric_with_label_values(&[METRICS_CONTROLLER, e.category()])
            {
                counter.inc();
            }
            ReconcileOutcome::Error
        }
    };
    if let Ok(counter) = METRICS
        .reconciles
        .get_metric_with_label_values(&[METRICS_CONTROLLER, outcome.label()])
    {
        counter.inc();
    }
    if let Ok(histogram) = METRICS
        .reconcile_duration
        .get_metric_with_label_values(&[METRICS_CONTROLLER])
    {
        histogram.observe(started.elapsed().as_secs_f64());
    }
    result.map(|(action, _)| action)
}

/// The reconcile proper; also says whether a child was created or changed.
async fn reconcile_inner(operator: &NuOperator, ctx: &Context) -> Result<(Action, bool)> {
    if operator.metadata.deletion_timestamp.is_some() {
        // The children carry owner references: the garbage collector removes them. The
        // webhook configurations are cluster-scoped and cannot: the finalizer waits for
        // their removal here.
        if operator
            .finalizers()
            .iter()
            .any(|f| f == webhooks::FINALIZER)
        {
            webhooks::remove(&ctx.client, operator).await?;
        }
        return Ok((Action::await_change(), false));
    }
    let namespace = operator
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = operator.name_any();

    let mut problems = validate::validate(operator);
    let webhook_plan = webhooks::plan(operator, ctx.settings.webhooks.is_some());
    let (config_map, deployment) = if problems.is_empty() {
        let config_map = build::desired_config_map(operator)?;
        let hash = build::config_hash(&config_map);
        let mut deployment = build::desired_deployment(operator, &ctx.settings, &hash)?;
        if matches!(webhook_plan, webhooks::Plan::Register { .. }) {
            webhooks::with_webhook_serving(&mut deployment, operator);
        }
        Some((config_map, deployment))
    } else {
        None
    }
    .unzip();
    let uid = operator.metadata.uid.clone().unwrap_or_default();
    let mut before = Vec::new();
    if let (Some(config_map), Some(deployment)) = (&config_map, &deployment) {
        for (kind, existing) in [
            (
                "ConfigMap",
                existing::<ConfigMap>(&ctx.client, config_map).await?,
            ),
            (
                "Deployment",
                existing::<Deployment>(&ctx.client, deployment).await?,
            ),
        ] {
            if let Some(problem) =
                conflict(kind, existing.as_ref(), &uid, &build::child_name(operator))
            {
                problems.push(problem);
            }
            before.push(existing.and_then(|m| m.resource_version));
        }
    }
    let (Some(config_map), Some(deployment), true) = (config_map, deployment, problems.is_empty())
    else {
        warn!(%namespace, %name, problems = %join(&problems), "NuOperator cannot be deployed; nothing applied");
        warn_invalid(ctx, operator, &problems).await;
        // The webhooks of the last valid spec stay as they are, and so does their word.
        let kept = operator
            .status
            .as_ref()
            .and_then(|s| s.condition(CONDITION_WEBHOOKS))
            .cloned();
        write_status(&ctx.client, operator, Observation::Invalid(&problems), kept).await?;
        let action = if problems.iter().any(Problem::may_resolve_itself) {
            Action::requeue(RECHECK)
        } else {
            Action::await_change()
        };
        return Ok((action, false));
    };

    let config_map = apply(&ctx.client, &namespace, &config_map).await?;
    let deployment = apply(&ctx.client, &namespace, &deployment).await?;
    let after = [
        config_map.metadata.resource_version.clone(),
        deployment.metadata.resource_version.clone(),
    ];
    let changed = before.iter().zip(&after).any(|(b, a)| b != a);
    delete_unwanted::<ConfigMap>(&ctx.client, operator).await?;
    delete_unwanted::<Deployment>(&ctx.client, operator).await?;
    let certificate_check = webhooks::sync(
        &ctx.client,
        operator,
        &webhook_plan,
        ctx.settings.webhooks.as_ref(),
    )
    .await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let webhooks_condition = webhooks::condition(operator, &webhook_plan, &now);
    write_status(
        &ctx.client,
        operator,
        Observation::Applied(&deployment),
        webhooks_condition,
    )
    .await?;
    info!(%namespace, %name, changed, "NuOperator reconciled");
    let requeue = certificate_check.map_or(RESYNC, |check| check.min(RESYNC));
    Ok((Action::requeue(requeue), changed))
}

/// The metadata of the object named like `desired` (same kind and namespace), if any.
async fn existing<K>(client: &Client, desired: &K) -> Result<Option<ObjectMeta>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let namespace = desired.meta().namespace.clone().unwrap_or_default();
    let name = desired.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    api.get_metadata_opt(&name)
        .await
        .map(|found| found.map(|m| m.metadata))
        .map_err(Error::kube(format!(
            "look up {} {namespace}/{name}",
            K::kind(&()).to_lowercase()
        )))
}

/// A [`Problem::NameConflict`] when an object named `name` exists (`existing`) without a
/// controller reference to the NuOperator with `uid`: the manager never takes over what
/// it did not create.
pub fn conflict(
    kind: &'static str,
    existing: Option<&ObjectMeta>,
    uid: &str,
    name: &str,
) -> Option<Problem> {
    let existing = existing?;
    let ours = existing
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true));
    (!ours).then(|| Problem::NameConflict {
        kind,
        name: name.to_string(),
    })
}

/// Publishes a Warning Event on the NuOperator naming its problems. Best effort: an
/// Event that cannot be written is logged, and the status says the same anyway.
async fn warn_invalid(ctx: &Context, operator: &NuOperator, problems: &[Problem]) {
    let mut note = join(problems);
    if note.len() > MAX_EVENT_NOTE {
        let mut end = MAX_EVENT_NOTE - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    let event = Event {
        type_: EventType::Warning,
        reason: problems
            .first()
            .map_or("InvalidSpec", Problem::reason)
            .to_string(),
        note: Some(note),
        action: "Validate".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&event, &operator.object_ref(&()))
        .await
    {
        warn!(name = %operator.name_any(), "failed to publish an event: {e}");
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Server-side applies `object` as the manager's field manager and returns what the
/// API server stored.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(Error::kube(format!(
        "apply {} {namespace}/{name}",
        K::kind(&()).to_lowercase()
    )))
}

/// Deletes the children of `operator` of kind `K` that it no longer wants: labelled as
/// its children and controlled by it, but not under the current [`build::child_name`]
/// (left by an earlier naming, or a renamed child).
async fn delete_unwanted<K>(client: &Client, operator: &NuOperator) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let namespace = operator.metadata.namespace.clone().unwrap_or_default();
    let uid = operator.metadata.uid.clone().unwrap_or_default();
    let wanted = build::child_name(operator);
    let api: Api<K> = Api::namespaced(client.clone(), &namespace);
    let kind = K::kind(&()).to_lowercase();
    let children = api
        .list_metadata(&ListParams::default().labels(&build::children_selector(operator)))
        .await
        .map_err(Error::kube(format!("list {kind}s in {namespace}")))?;
    for child in children {
        let name = child.name_any();
        let ours = child
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        if ours && name != wanted {
            info!(%namespace, %name, kind = %kind, "deleting a child no longer wanted");
            api.delete(&name, &DeleteParams::background())
                .await
                .map(|_| ())
                .or_else(|e| match e {
                    kube::Error::Api(status) if status.code == 404 => Ok(()),
                    other => Err(other),
                })
                .map_err(Error::kube(format!("delete {kind} {namespace}/{name}")))?;
        }
    }
    Ok(())
}

/// Server-side applies the manager's part of the status.
/// `webhooks` is the `Webhooks` condition, when the scripts declare any.
async fn write_status(
    client: &Client,
    operator: &NuOperator,
    observation: Observation<'_>,
    webhooks: Option<Condition>,
) -> Result<()> {
    let namespace = operator.metadata.namespace.clone().unwrap_or_default();
    let name = operator.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut status = desired_status(operator, observation, &now);
    if let Some(condition) = webhooks {
        // The previous one first, so an unchanged status keeps its transition time.
        if let Some(previous) = operator
            .status
            .as_ref()
            .and_then(|s| s.condition(CONDITION_WEBHOOKS))
        {
            status.conditions.push(previous.clone());
        }
        status.set_condition(condition);
    }
    let patch = serde_json::json!({
        "apiVersion": NuOperator::api_version(&()),
        "kind": NuOperator::kind(&()),
        "status": status,
    });
    let api: Api<NuOperator> = Api::namespaced(client.clone(), &namespace);
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube(format!(
        "write the status of nuoperator {namespace}/{name}"
    )))?;
    Ok(())
}

/// The backoff key of `operator`: its uid, so that a NuOperator deleted and created
/// again under the same name starts afresh.
fn backoff_key(operator: &NuOperator) -> String {
    operator
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| ObjectRef::from_obj(operator).to_string())
}

/// What to do after a failed reconcile: retry with the core's per-object backoff
/// ([`nuop_core::reconcile::backoff`]: doubling, capped); a success resets it.
pub fn error_policy(operator: Arc<NuOperator>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(backoff_key(&operator));
    warn!(
        namespace = operator.metadata.namespace.as_deref().unwrap_or_default(),
        name = %operator.name_any(),
        category = error.category(),
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn owned_by(uid: &str, controller: bool) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: uid.to_string(),
                controller: Some(controller),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn only_a_child_we_control_is_ours() {
        assert_eq!(conflict("ConfigMap", None, "u1", "nuop-a"), None);
        assert_eq!(
            conflict("ConfigMap", Some(&owned_by("u1", true)), "u1", "nuop-a"),
            None
        );
        for theirs in [
            ObjectMeta::default(),
            owned_by("u2", true),
            owned_by("u1", false),
        ] {
            assert_eq!(
                conflict("Deployment", Some(&theirs), "u1", "nuop-a"),
                Some(Problem::NameConflict {
                    kind: "Deployment",
                    name: "nuop-a".to_string()
                }),
                "{theirs:?}"
            );
        }
    }
}
