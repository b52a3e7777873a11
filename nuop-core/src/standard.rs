//! Standard mode: every `<scripts root>/*/mod.nu` becomes a controller, and its
//! webhooks are served.
//!
//! Does I/O: loads the scripts root with [`crate::root`] ([`load`]), then runs one
//! controller per valid script that has `main reconcile` until shutdown ([`run`]). A
//! broken script is reported and skipped; the others keep running. Webhook-only
//! scripts (no `main reconcile`, see [`crate::webhook`]) start no controller; the
//! scripts with webhooks go into a [`Registry`] ([`webhook_registry`]), which the
//! binary serves before waiting for leadership.

use std::path::Path;
use std::sync::Arc;

use kube::Client;
use tracing::{error, info, warn};

use crate::cluster::{Cluster, LiveCluster};
use crate::controller::{self, ControllerOptions};
use crate::protocol::Phase;
use crate::root::{LoadedScript, load_root};
use crate::script::ExecutorKind;
use crate::shutdown::Shutdown;
use crate::webhook::{Registry, Served};

/// Loads the scripts under `root`, logging each rejected one.
///
/// # Errors
/// When the scripts root cannot be read.
pub async fn load(root: &Path, kind: ExecutorKind) -> std::io::Result<Vec<LoadedScript>> {
    let (loaded, rejected) = load_root(root, kind).await?;
    for r in &rejected {
        error!(script = %r.script, "script rejected: {}", r.reason);
    }
    if loaded.is_empty() {
        warn!("no valid controller scripts under {}", root.display());
    }
    info!(executor = %kind, scripts = loaded.len(), rejected = rejected.len(), "scripts loaded");
    Ok(loaded)
}

/// The scripts of `loaded` that declare webhooks, ready to serve; their `k8s` reads go
/// to the API server (the watch caches belong to the controllers, which run only
/// while leading).
pub fn webhook_registry(client: &Client, loaded: &[LoadedScript]) -> Arc<Registry> {
    let registry = Registry::new();
    for script in loaded.iter().filter(|s| Served::has_webhooks(&s.config)) {
        let cluster: Arc<dyn Cluster> = Arc::new(LiveCluster::new(client.clone(), Vec::new()));
        registry.insert(Served {
            config: script.config.clone(),
            runner: script.runner.clone(),
            cluster: Some(cluster),
        });
    }
    registry
}

/// Runs one controller per loaded script with `main reconcile` until `shutdown`.
pub async fn run(
    client: Client,
    loaded: Vec<LoadedScript>,
    options: ControllerOptions,
    shutdown: Shutdown,
) {
    let (controllers_of, webhook_only): (Vec<_>, Vec<_>) = loaded
        .into_iter()
        .partition(|s| s.runner.has_phase(Phase::Reconcile));
    for script in &webhook_only {
        info!(script = %script.config.name, "webhook-only script (no `main reconcile`): no controller started");
    }
    info!(controllers = controllers_of.len(), "standard mode starting");
    // Every controller counts for readiness from now on, even before its task runs;
    // then the "controllers starting" blocker the runtime set can go.
    for script in &controllers_of {
        options.readiness.register(&script.config.name);
    }
    options.readiness.block(None);
    // A JoinSet aborts every controller when dropped, so cancelling this future (at
    // the shutdown timeout, or when the lease is lost) stops them all.
    let mut controllers = tokio::task::JoinSet::new();
    for script in controllers_of {
        controllers.spawn(controller::run(
            client.clone(),
            script.config,
            script.runner,
            options.clone(),
            shutdown.clone(),
        ));
    }
    while let Some(result) = controllers.join_next().await {
        if let Err(e) = result {
            error!("a controller task failed: {e}");
        }
    }
}
