//! Standard mode: every `<scripts root>/*/mod.nu` becomes a controller.
//!
//! Does I/O: discovers and loads scripts, runs their `config`, then runs one controller
//! per valid script until shutdown. A broken script is reported and skipped; the others
//! keep running.

use std::collections::HashMap;
use std::path::Path;

use kube::Client;
use tracing::{error, info, warn};

use crate::controller::{self, ControllerOptions, Shutdown};
use crate::protocol::{DEFAULT_TIMEOUT, ScriptConfig};
use crate::script::{ExecutorKind, ScriptRunner, discover};

/// A script ready to become a controller.
pub struct LoadedScript {
    /// Its validated config.
    pub config: ScriptConfig,
    /// The loaded script.
    pub runner: ScriptRunner,
}

/// A script that cannot become a controller, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The script (directory name).
    pub script: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Loads every script under `root` and runs its `config`.
///
/// # Errors
/// When `root` cannot be read.
pub async fn load_scripts(
    root: &Path,
    kind: ExecutorKind,
) -> std::io::Result<(Vec<LoadedScript>, Vec<Rejected>)> {
    let found = discover(root)?;
    for skipped in &found.skipped {
        warn!("skipping {}: {}", skipped.dir.display(), skipped.reason);
    }
    let mut loaded: Vec<LoadedScript> = Vec::new();
    let mut rejected = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for script in found.scripts {
        let runner = match ScriptRunner::load(kind, &script) {
            Ok(r) => r,
            Err(e) => {
                rejected.push(Rejected {
                    script: script.name.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let config = match runner.config(DEFAULT_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                rejected.push(Rejected {
                    script: script.name.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Some(first) = names.insert(config.name.clone(), script.name.clone()) {
            rejected.push(Rejected {
                script: script.name.clone(),
                reason: format!(
                    "controller name `{}` is already used by script {first}",
                    config.name
                ),
            });
            continue;
        }
        loaded.push(LoadedScript { config, runner });
    }
    Ok((loaded, rejected))
}

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
    let (loaded, rejected) = load_scripts(root, kind).await?;
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
