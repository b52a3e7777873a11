//! The reconcile of one `NuOperator`, one call per step: fetch → validate → build →
//! apply → delete what is no longer wanted → status. Does I/O; every decision is made
//! by the pure modules ([`crate::validate`], [`crate::build`], [`crate::status`]).
//!
//! A spec that fails validation is not an error: the status says why (Degraded), no
//! child is created, and the children of an earlier valid spec are left running — a bad
//! edit does not take a working operator down. Errors are API failures; they back off
//! per object, capped.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt as _};
use nuop_core::metrics::METRICS;
use nuop_crd::NuOperator;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::build::{self, Settings};
use crate::status::{Observation, desired_status};
use crate::validate::{self, Problem};
use crate::{Error, FIELD_MANAGER, Result};

/// The `controller` label of the manager's metrics.
pub const METRICS_CONTROLLER: &str = "nuop-manager";

/// How long a healthy `NuOperator` waits before it is looked at again without a change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// How long an operator whose problem may resolve itself (a Secret not yet created)
/// waits before it is validated again.
pub const RECHECK: Duration = Duration::from_secs(30);

/// The longest wait after repeated API failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The longest Event note the API server accepts, in bytes.
const MAX_EVENT_NOTE: usize = 1024;

/// What every reconcile shares.
pub struct Context {
    /// The client for the cluster.
    pub client: Client,
    /// The manager's settings for the children.
    pub settings: Settings,
    recorder: Recorder,
    failures: Mutex<HashMap<ObjectRef<NuOperator>, u32>>,
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
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<NuOperator>, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        Ok(_) => {
            ctx.failures()
                .remove(&ObjectRef::from_obj(operator.as_ref()));
            "ok"
        }
        Err(e) => {
            if let Ok(counter) = METRICS
                .errors
                .get_metric_with_label_values(&[METRICS_CONTROLLER, e.category()])
            {
                counter.inc();
            }
            "error"
        }
    };
    if let Ok(counter) = METRICS
        .reconciles
        .get_metric_with_label_values(&[METRICS_CONTROLLER, outcome])
    {
        counter.inc();
    }
    if let Ok(histogram) = METRICS
        .reconcile_duration
        .get_metric_with_label_values(&[METRICS_CONTROLLER])
    {
        histogram.observe(started.elapsed().as_secs_f64());
    }
    result
}

async fn reconcile_inner(operator: &NuOperator, ctx: &Context) -> Result<Action> {
    if operator.metadata.deletion_timestamp.is_some() {
        // The children carry owner references: the garbage collector removes them.
        return Ok(Action::await_change());
    }
    let namespace = operator
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let name = operator.name_any();

    let secrets = existing_secrets(
        &ctx.client,
        &namespace,
        &validate::referenced_secrets(operator),
    )
    .await?;
    let problems = validate::validate(operator, &secrets);
    if !problems.is_empty() {
        warn!(%namespace, %name, problems = %join(&problems), "NuOperator is invalid; nothing applied");
        warn_invalid(ctx, operator, &problems).await;
        write_status(&ctx.client, operator, Observation::Invalid(&problems)).await?;
        return Ok(if problems.iter().any(Problem::may_resolve_itself) {
            Action::requeue(RECHECK)
        } else {
            Action::await_change()
        });
    }

    let config_map = build::desired_config_map(operator)?;
    let hash = build::config_hash(&config_map);
    let deployment = build::desired_deployment(operator, &ctx.settings, &hash)?;
    apply(&ctx.client, &namespace, &config_map).await?;
    let deployment = apply(&ctx.client, &namespace, &deployment).await?;
    delete_unwanted::<ConfigMap>(&ctx.client, operator).await?;
    delete_unwanted::<Deployment>(&ctx.client, operator).await?;
    write_status(&ctx.client, operator, Observation::Applied(&deployment)).await?;
    info!(%namespace, %name, config_hash = %hash, "NuOperator reconciled");
    Ok(Action::requeue(RESYNC))
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

/// Which of `names` exist as Secrets in `namespace`. Reads metadata only: the manager
/// never reads a Secret's data.
async fn existing_secrets(
    client: &Client,
    namespace: &str,
    names: &BTreeSet<String>,
) -> Result<BTreeSet<String>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut existing = BTreeSet::new();
    for name in names {
        let found = api
            .get_metadata_opt(name)
            .await
            .map_err(Error::kube(format!("look up secret {namespace}/{name}")))?;
        if found.is_some() {
            existing.insert(name.clone());
        }
    }
    Ok(existing)
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
async fn write_status(
    client: &Client,
    operator: &NuOperator,
    observation: Observation<'_>,
) -> Result<()> {
    let namespace = operator.metadata.namespace.clone().unwrap_or_default();
    let name = operator.name_any();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = desired_status(operator, observation, &now);
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

/// What to do after a failed reconcile: retry after 1, 2, 4 … seconds for the same
/// object, capped at [`MAX_BACKOFF`]; a success resets it.
pub fn error_policy(operator: Arc<NuOperator>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures();
        let count = map
            .entry(ObjectRef::from_obj(operator.as_ref()))
            .or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(failures);
    warn!(
        namespace = operator.metadata.namespace.as_deref().unwrap_or_default(),
        name = %operator.name_any(),
        category = error.category(),
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

/// The wait after the `failures`-th failure in a row.
pub fn backoff(failures: u32) -> Duration {
    let seconds = 1u64
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u64::MAX);
    Duration::from_secs(seconds).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let waits: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(backoff(200), MAX_BACKOFF);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }
}
