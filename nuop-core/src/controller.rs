//! Running one script's controller: resolve the kind by discovery, watch it with the
//! script's selectors, and drive [`crate::reconcile`] with kube-runtime.
//!
//! Does I/O. A kind that does not exist yet (its CRD not installed) is retried with
//! backoff and reported, never fatal; each controller is independent of the others and
//! bounded in concurrency, so a script that hangs or floods slows only itself.

use futures::future::FutureExt;
use std::sync::Arc;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope, pinned_kind};
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::health::Readiness;
use crate::metrics::METRICS;
use crate::protocol::ScriptConfig;
use crate::reconcile::{Backoff, Context, backoff, error_policy, reconcile, release};
use crate::script::ScriptRunner;

/// Settings shared by every controller in a process.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Script calls (reconciles and releases) one controller may run at once, across
    /// all the namespaces it watches (`concurrency_is_per_controller_across_namespaces`
    /// in `tests/release.rs`).
    pub concurrency: u16,
    /// Where controllers report that their first list completed.
    pub readiness: Arc<Readiness>,
    /// Whether successful writes (updates, status, finalizers) emit Normal Events.
    /// Warnings are always emitted. Each Event is one more object written to etcd, so
    /// at scale turning these off halves the API load of a busy controller.
    pub write_events: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            readiness: Readiness::new(),
            write_events: true,
        }
    }
}

/// How often the cached-objects gauge is refreshed.
const CACHE_GAUGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Kept at the old path for the crates that import it from here (nuop-managed); new
/// code imports [`crate::shutdown`].
pub use crate::shutdown::{Shutdown, shutdown_signal};

/// How long to wait between discovery attempts for a kind that does not exist yet.
pub(crate) fn discovery_retry_delay(attempt: u32) -> std::time::Duration {
    backoff::delay_after(attempt).min(std::time::Duration::from_secs(30))
}

/// Resolves a config's kind through API discovery, retrying until it exists or shutdown;
/// each failed attempt is noted in `readiness`. Returns `None` on shutdown.
pub async fn resolve_kind(
    client: &Client,
    config: &ScriptConfig,
    readiness: &Readiness,
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
                readiness.note(
                    &config.name,
                    Some(format!(
                        "kind {}/{} {} not served yet, attempt {attempt}",
                        config.group, config.version, config.kind
                    )),
                );
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
    run_with_backoff(
        client,
        config,
        runner,
        options,
        shutdown,
        backoff::BASE_DELAY,
    )
    .await;
}

/// [`run`] with per-object retry delays starting at `backoff_base` (doubling up to
/// [`backoff::MAX_DELAY`]); tests that need many retries use a short one.
pub async fn run_with_backoff(
    client: Client,
    config: ScriptConfig,
    runner: ScriptRunner,
    options: ControllerOptions,
    shutdown: Shutdown,
    backoff_base: std::time::Duration,
) {
    // Registered before discovery: a kind that is not served yet keeps the process unready.
    options.readiness.register(&config.name);
    let Some((resource, caps)) =
        resolve_kind(&client, &config, &options.readiness, shutdown.clone()).await
    else {
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
    let ctx = Arc::new(
        Context::new(
            config,
            runner,
            client,
            resource.clone(),
            namespaced,
            has_status,
            &options,
        )
        .with_backoff_base(backoff_base),
    );
    // Each watch reports its own first list (InitDone) to `first_lists`. Waiting on
    // `Store::wait_until_ready` from a second task does not work: kube-runtime's store
    // wakes only the last task that polled it, which is the controller's own runner.
    let first_lists = Arc::new(FirstLists::new(apis.len()));
    // Only a watch narrowed by selectors can lose sight of an object that still exists;
    // such objects are found by an unselective metadata watch (see reconcile::release).
    let releases: Vec<Option<String>> = if ctx.config.finalizer.is_none()
        || ctx.config.label_selectors.is_empty() && ctx.config.field_selectors.is_empty()
    {
        Vec::new()
    } else if namespaced && !ctx.config.namespaces.is_empty() {
        ctx.config.namespaces.iter().cloned().map(Some).collect()
    } else {
        vec![None]
    };
    let mut stores = Vec::new();
    let controllers: Vec<_> = apis
        .into_iter()
        .map(|api| {
            let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
            let reader = writer.as_reader();
            stores.push(reader.clone());
            let first_lists = first_lists.clone();
            let mut seen = false;
            // managedFields are dropped as objects arrive: often half of a small object,
            // they would be cached for every object and sent to every script call.
            let objects = watcher(api, watcher_config.clone())
                .modify(|object: &mut DynamicObject| object.metadata.managed_fields = None);
            let trigger = reflector(writer, objects)
                .inspect(move |event| {
                    if !seen && matches!(event, Ok(watcher::Event::InitDone)) {
                        seen = true;
                        first_lists.done();
                    }
                })
                .applied_objects();
            Controller::for_stream_with(trigger, reader, resource.clone())
                .with_config(controller::Config::default().concurrency(options.concurrency))
                .graceful_shutdown_on(shutdown.clone())
        })
        .collect();
    tokio::spawn(report_cache(
        name.clone(),
        stores,
        first_lists,
        options.readiness.clone(),
        ctx.clone(),
        shutdown.clone(),
    ));
    let release_runs = releases.into_iter().map(|namespace| {
        release::run(
            ctx.clone(),
            namespace,
            options.concurrency,
            shutdown.clone(),
        )
        .boxed()
    });
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
    futures::future::join(
        futures::future::join_all(runs),
        futures::future::join_all(release_runs),
    )
    .await;
    METRICS.forget_controller(&name);
    info!(controller = %name, "controller stopped");
}

/// Counts the watches of one controller that have completed their first list.
struct FirstLists {
    pending: std::sync::Mutex<usize>,
    all_done: tokio::sync::Notify,
}

impl FirstLists {
    fn new(watches: usize) -> Self {
        Self {
            pending: std::sync::Mutex::new(watches),
            all_done: tokio::sync::Notify::new(),
        }
    }

    /// One watch completed its first list.
    fn done(&self) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *pending = pending.saturating_sub(1);
        if *pending == 0 {
            // notify_one stores a permit, so a waiter arriving later still sees it.
            self.all_done.notify_one();
        }
    }

    async fn wait(&self) {
        self.all_done.notified().await;
    }
}

/// Marks the controller ready once every watch has completed its first list, then
/// keeps the cached-objects gauge current and prunes the backoff of objects that are
/// gone, until shutdown.
async fn report_cache(
    name: String,
    stores: Vec<kube::runtime::reflector::Store<DynamicObject>>,
    first_lists: Arc<FirstLists>,
    readiness: Arc<Readiness>,
    ctx: Arc<Context>,
    shutdown: Shutdown,
) {
    tokio::select! {
        () = first_lists.wait() => readiness.mark_synced(&name),
        () = shutdown.clone() => return,
    }
    info!(controller = %name, "watch synced");
    let gauge = METRICS.objects.with_label_values(&[name.as_str()]);
    loop {
        gauge.set(stores.iter().map(|s| s.state().len()).sum::<usize>() as i64);
        prune_backoff(&ctx.backoff, &stores);
        tokio::select! {
            () = tokio::time::sleep(CACHE_GAUGE_INTERVAL) => {}
            () = shutdown.clone() => return,
        }
    }
}

/// Forgets the failures of objects the watches no longer hold (deleted while failing),
/// so the backoff map does not grow with every object that ever failed. Releases are
/// keyed apart and forgotten when they succeed.
fn prune_backoff(
    backoff: &Backoff<String>,
    stores: &[kube::runtime::reflector::Store<DynamicObject>],
) {
    if backoff.is_empty() {
        return;
    }
    let uids: std::collections::HashSet<String> = stores
        .iter()
        .flat_map(|s| s.state())
        .filter_map(|o| o.metadata.uid.clone())
        .collect();
    backoff.retain(|key| key.starts_with(release::KEY_PREFIX) || uids.contains(key));
}
