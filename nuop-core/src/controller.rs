//! Running one script's controller: resolve the kind by discovery, watch it with the
//! script's selectors, and drive [`crate::reconcile`] with kube-runtime.
//!
//! Does I/O. A kind that does not exist yet (its CRD not installed) is retried with
//! backoff and reported, never fatal; each controller is independent of the others and
//! bounded in concurrency, so a script that hangs or floods slows only itself.

use futures::future::FutureExt;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope, pinned_kind};
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::cluster::live::{CachedKind, LiveCluster};
use crate::health::Readiness;
use crate::informers::Informers;
use crate::metrics::METRICS;
use crate::protocol::{ListKind, ScriptConfig};
use crate::reconcile::{Backoff, Context, backoff, error_policy, reconcile, release};
use crate::related::{self, Routes};
use crate::script::ScriptRunner;
use crate::triggers::Primary;

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
    /// The process's shared informers (`owns`, `watches`, `reads`): one registry per
    /// process, so controllers that declare the same kind share one watch.
    pub informers: Informers,
    /// Where audit records of the controllers' writes go (off by default); managed mode
    /// sets the revision per controller ([`crate::audit::AuditLog::with_revision`]).
    pub audit: crate::audit::AuditLog,
    /// Where reconciles are recorded for the console (`--console-bind-address`); none
    /// records nothing.
    pub console: Option<crate::console::Console>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            readiness: Readiness::new(),
            write_events: true,
            informers: Informers::default(),
            audit: crate::audit::AuditLog::default(),
            console: None,
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
    resolve_gvk(client, &config.name, &gvk, readiness, shutdown).await
}

/// Resolves `gvk` for `controller` through API discovery, retrying until it exists or
/// shutdown; each failed attempt is noted in `readiness`. Returns `None` on shutdown.
pub async fn resolve_gvk(
    client: &Client,
    controller: &str,
    gvk: &GroupVersionKind,
    readiness: &Readiness,
    shutdown: Shutdown,
) -> Option<(ApiResource, ApiCapabilities)> {
    let mut attempt = 0;
    loop {
        match pinned_kind(client, gvk).await {
            Ok(found) => return Some(found),
            Err(e) => {
                attempt += 1;
                let delay = discovery_retry_delay(attempt);
                readiness.note(
                    controller,
                    Some(format!(
                        "kind {}/{} {} not served yet, attempt {attempt}",
                        gvk.group, gvk.version, gvk.kind
                    )),
                );
                warn!(
                    controller,
                    "kind {}/{} {} not served yet ({e}); retrying in {delay:?}",
                    gvk.group,
                    gvk.version,
                    gvk.kind
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

    // The declared kinds first: a controller starts reconciling only once every cache
    // it declared has listed, so its primary watch starts after them.
    let Some(related) = related::subscribe_all(
        &client,
        &config,
        namespaced,
        &options.informers,
        &options.readiness,
        shutdown.clone(),
    )
    .await
    else {
        return;
    };
    if !related::wait_synced(&config.name, &related, &options.readiness, shutdown.clone()).await {
        return;
    }

    let mut watcher_config = watcher::Config::default();
    if let Some(labels) = config.label_selector_string() {
        watcher_config = watcher_config.labels(&labels);
    }
    if let Some(fields) = config.field_selector_string() {
        watcher_config = watcher_config.fields(&fields);
    }
    let namespaces: Vec<Option<String>> = if namespaced && !config.namespaces.is_empty() {
        config.namespaces.iter().cloned().map(Some).collect()
    } else {
        if !namespaced && !config.namespaces.is_empty() {
            warn!(controller = %config.name, "namespaces are ignored: {} is cluster-scoped", resource.kind);
        }
        vec![None]
    };
    let writers: Vec<reflector::store::Writer<DynamicObject>> = namespaces
        .iter()
        .map(|_| reflector::store::Writer::new(resource.clone()))
        .collect();
    let stores: Vec<reflector::Store<DynamicObject>> = writers
        .iter()
        .map(reflector::store::Writer::as_reader)
        .collect();

    // What the script's `k8s` commands read from: the primary's stores and every
    // declared cache.
    let mut caches: Vec<CachedKind> = namespaces
        .iter()
        .zip(&stores)
        .map(|(namespace, store)| CachedKind {
            resource: resource.clone(),
            namespaced,
            namespace: namespace.clone(),
            labels: config.label_selector_string(),
            fields: config.field_selector_string(),
            store: store.clone(),
        })
        .collect();
    caches.extend(related.iter().flat_map(related::Related::caches));
    // The calls' writes are remembered so that their own watch events (echoes) do not
    // wake the primaries that made them again (cluster::echo).
    let echoes = crate::cluster::echo::Echoes::new();
    // One auditor for the controller's own writes and its calls' `k8s` writes.
    let auditor = options
        .audit
        .for_controller(&config.name, &runner.script().dir);
    let cluster = echoes.around(Arc::new(
        LiveCluster::new(client.clone(), caches).with_audit(auditor.clone()),
    ));

    let name = config.name.clone();
    let console = options.console.as_ref().map(|console| {
        let entry = console.register(crate::console::view::ControllerInfo::from_config(
            &config,
            namespaced,
            runner.kind().as_str(),
        ));
        entry.set_stores(stores.clone());
        entry
    });
    let ctx = Arc::new(
        Context::new(
            config,
            runner,
            client.clone(),
            resource.clone(),
            namespaced,
            has_status,
            &options,
        )
        .with_backoff_base(backoff_base)
        .with_cluster(cluster)
        .with_audit(auditor)
        .with_console(console.clone()),
    );
    // Each watch reports its own first list (InitDone) to `first_lists`. Waiting on
    // `Store::wait_until_ready` from a second task does not work: kube-runtime's store
    // wakes only the last task that polled it, which is the controller's own runner.
    let first_lists = Arc::new(FirstLists::new(namespaces.len()));
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
    let mut routes = Routes::new(
        Primary {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
            namespaced,
        },
        resource.clone(),
    );
    let controllers: Vec<_> = namespaces
        .iter()
        .zip(writers)
        .map(|(namespace, writer)| {
            let api = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let reader = writer.as_reader();
            // Related changes reach this controller only for primaries its store holds.
            let related_triggers = routes.add(namespace.clone(), reader.clone());
            let first_lists = first_lists.clone();
            let console = console.clone();
            let write_echoes = ctx.write_echoes.clone();
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
                .applied_objects()
                // The event of exactly what the last write-back left: the script already
                // decided on that state and its requeue_after_change is scheduled, so it
                // is not called again now (the rule: cluster::echo). The store has it.
                .try_filter(move |object| std::future::ready(!write_echoes.is_echo_of(object)))
                // The object's own event: the reason for its next reconcile (console).
                .inspect(move |object| {
                    if let (Some(entry), Ok(object)) = (&console, object) {
                        entry.mark(
                            object.metadata.namespace.as_deref(),
                            object.metadata.name.as_deref().unwrap_or_default(),
                            crate::console::journal::Trigger::OwnEvent,
                        );
                    }
                });
            Controller::for_stream_with(trigger, reader, resource.clone())
                .reconcile_on(related_triggers.refs)
                .reconcile_all_on(related_triggers.all)
                .with_config(controller::Config::default().concurrency(options.concurrency))
                .graceful_shutdown_on(shutdown.clone())
        })
        .collect();
    let routes = Arc::new(routes);
    tokio::spawn(report_cache(
        name.clone(),
        stores,
        first_lists,
        options.readiness.clone(),
        ctx.clone(),
        shutdown.clone(),
    ));
    // `reads` only need their subscriptions held; `owns` and `watches` route changes.
    let (reads, triggering): (Vec<_>, Vec<_>) =
        related.into_iter().partition(|r| r.list == ListKind::Reads);
    let routers = triggering.into_iter().map(|r| {
        related::route_changes(
            r,
            routes.clone(),
            ctx.clone(),
            echoes.clone(),
            shutdown.clone(),
        )
        .boxed()
    });
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
    futures::future::join3(
        futures::future::join_all(runs),
        futures::future::join_all(release_runs),
        futures::future::join_all(routers),
    )
    .await;
    // Held until the controller stops; dropping the last subscription stops a watch.
    drop(reads);
    if let (Some(console), Some(entry)) = (&options.console, &console) {
        console.unregister(entry);
    }
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
        if let Some(entry) = &ctx.console {
            entry.prune();
        }
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
