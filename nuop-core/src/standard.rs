//! Standard mode: every `<scripts root>/*/mod.nu` becomes a controller.
//!
//! Does I/O: loads the scripts root with [`crate::root`], then runs one controller per
//! valid script until shutdown. A broken script is reported and skipped; the others
//! keep running.

use std::path::Path;

use kube::Client;
use tracing::{error, info, warn};

use crate::controller::{self, ControllerOptions};
use crate::root::load_root;
use crate::script::ExecutorKind;
use crate::shutdown::Shutdown;

/// Runs standard mode until `shutdown` resolves.
///
/// # Errors
/// When the scripts root cannot be read.
pub async fn run(
    client: Client,
    root: &Path,
    kind: ExecutorKind,
    options: ControllerOptions,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let (loaded, rejected) = load_root(root, kind).await?;
    for r in &rejected {
        error!(script = %r.script, "script rejected: {}", r.reason);
    }
    if loaded.is_empty() {
        warn!("no valid controller scripts under {}", root.display());
    }
    info!(executor = %kind, controllers = loaded.len(), rejected = rejected.len(), "standard mode starting");
    // Every controller counts for readiness from now on, even before its task runs;
    // then the "controllers starting" blocker the runtime set can go.
    for script in &loaded {
        options.readiness.register(&script.config.name);
    }
    options.readiness.block(None);
    // A JoinSet aborts every controller when dropped, so cancelling this future (at
    // the shutdown timeout, or when the lease is lost) stops them all.
    let mut controllers = tokio::task::JoinSet::new();
    for script in loaded {
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
    Ok(())
}
