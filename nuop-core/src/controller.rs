//! Running one script's controller: resolve the kind by discovery, watch it with the
//! script's selectors, and drive [`crate::reconcile`] with kube-runtime.
//!
//! Does I/O. A kind that does not exist yet (its CRD not installed) is retried with
//! backoff and reported, never fatal; each controller is independent of the others and
//! bounded in concurrency, so a script that hangs or floods slows only itself.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope, pinned_kind};
use kube::runtime::{Controller, controller, watcher};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::health::Readiness;
use crate::metrics::METRICS;
use crate::protocol::ScriptConfig;
use crate::reconcile::{Context, discovery_retry_delay, error_policy, reconcile};
use crate::script::ScriptRunner;

/// Settings shared by every controller in a process.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Reconciles of one controller that may run at once.
    pub concurrency: u16,
    /// Where controllers report that their first list completed.
    pub readiness: Arc<Readiness>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            readiness: Readiness::new(),
        }
    }
}

/// How often the cached-objects gauge is refreshed.
const CACHE_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A future that resolves once shutdown starts; cloned into every controller.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Makes a [`Shutdown`] from any future.
pub fn shutdown_signal(trigger: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    trigger.boxed().shared()
}

/// Resolves a config's kind through API discovery, retrying until it exists or shutdown.
/// Returns `None` on shutdown.
pub async fn resolve_kind(
    client: &Client,
    config: &ScriptConfig,
    shutdown: Shutdown,
) -> Option<(ApiResource, ApiCapabilities)> {
    let gvk = GroupVersionKind::gvk(&config.group, &config.version, &config.kind);
    let mut attempt = 0;
    loop {
        match pinned_kind(client, &gvk).await {
            Ok(found) => return Some(found),
            Err(e) => {
                attempt += 1;
                let delay = discovery_retry_delay(attempt);
                warn!(
                    controller = %config.name,
                    "kind {}/{} {} not served yet ({e}); retrying in {delay:?}",
                    config.group, config.version, config.kind
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.clone() => return None,
                }
            }
        }
    }
}

/// Runs one script's controller until shutdown.
pub async fn run(
    client: Client,
    config: ScriptConfig,
    runner: ScriptRunner,
    options: ControllerOptions,
    shutdown: Shutdown,
) {
    // Registered before discovery: a kind that is not served yet keeps the process unready.
    options.readiness.register(&config.name);
    let Some((resource, caps)) = resolve_kind(&client, &config, shutdown.clone()).await else {
        return;
    };
    let namespaced = caps.scope == Scope::Namespaced;
    let has_status = caps.subresources.iter().any(|(r, _)| r.plural == "status");
    info!(
        controller = %config.name,
        plural = %resource.plural,
        namespaced,
        has_status,
        "starting controller"
    );

    let mut watcher_config = watcher::Config::default();
    if let Some(labels) = config.label_selector_string() {
        watcher_config = watcher_config.labels(&labels);
    }
    if let Some(fields) = config.field_selector_string() {
        watcher_config = watcher_config.fields(&fields);
    }
    let apis: Vec<Api<DynamicObject>> = if namespaced && !config.namespaces.is_empty() {
        config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &resource))
            .collect()
    } else {
        if !namespaced && !config.namespaces.is_empty() {
            warn!(controller = %config.name, "namespaces are ignored: {} is cluster-scoped", resource.kind);
        }
        vec![Api::all_with(client.clone(), &resource)]
    };

    let name = config.name.clone();
    let ctx = Arc::new(Context::new(
        config,
        runner,
        client,
        resource.clone(),
        namespaced,
        has_status,
    ));
    let controllers: Vec<_> = apis
        .into_iter()
        .map(|api| {
            Controller::new_with(api, watcher_config.clone(), resource.clone())
                .with_config(controller::Config::default().concurrency(options.concurrency))
                .graceful_shutdown_on(shutdown.clone())
        })
        .collect();
    let stores: Vec<_> = controllers.iter().map(Controller::store).collect();
    tokio::spawn(report_cache(
        name.clone(),
        stores,
        options.readiness.clone(),
        shutdown.clone(),
    ));
    let runs = controllers.into_iter().map(|c| {
        c.run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((object, action)) => debug!(object = %object, ?action, "reconciled"),
                    // Reconcile errors were logged with their object already.
                    Err(controller::Error::ReconcilerFailed(..)) => {}
                    Err(e) => warn!("controller: {e}"),
                }
            })
    });
    futures::future::join_all(runs).await;
    info!(controller = %name, "controller stopped");
}

/// Marks the controller ready once every store has its first list, then keeps the
/// cached-objects gauge current until shutdown.
async fn report_cache(
    name: String,
    stores: Vec<kube::runtime::reflector::Store<DynamicObject>>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
) {
    let ready = futures::future::join_all(stores.iter().map(|s| s.wait_until_ready()));
    tokio::select! {
        _ = ready => readiness.mark_synced(&name),
        () = shutdown.clone() => return,
    }
    info!(controller = %name, "watch synced");
    let gauge = METRICS.objects.with_label_values(&[name.as_str()]);
    loop {
        gauge.set(stores.iter().map(|s| s.state().len()).sum::<usize>() as i64);
        tokio::select! {
            () = tokio::time::sleep(CACHE_GAUGE_INTERVAL) => {}
            () = shutdown.clone() => return,
        }
    }
}
