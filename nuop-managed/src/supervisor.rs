//! The supervisor: keeps one controller per mapping running over the sources' last
//! good revisions, restarting only those whose script or mapping changed. Does I/O
//! (starts and stops controller tasks, removes unused checkouts).
//!
//! It owns all state the source tasks report into: per source the good revision, the
//! last sync time and the last error. From that it derives readiness (not ready while
//! a source has no good revision, with the reason) and the per-source and per-mapping
//! state reported back to the NuOperator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kube::Client;
use nuop_core::controller::{self, ControllerOptions, Shutdown, shutdown_signal};
use nuop_crd::Mapping;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::plan::{self, Available, Desired, MappingProblem};
use crate::revision::{LoadedScript, Revision};
use crate::status::{self, StatusWriter};
use crate::sync::{Report, checkouts_dir};

/// How long a controller being replaced may take to finish its in-flight reconciles.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What is known about one source.
#[derive(Clone, Default)]
pub struct SourceState {
    /// The location as configured (for status and messages; holds no credentials).
    pub location: String,
    /// This source's cache directory; `None` when its location is invalid.
    pub cache: Option<PathBuf>,
    /// The revision in use.
    pub good: Option<Revision>,
    /// The commit the ref named at the last successful fetch.
    pub fetched: Option<String>,
    /// When the last fetch succeeded.
    pub last_sync: Option<SystemTime>,
    /// Why the last fetch (or load) failed; cleared by a good one.
    pub last_error: Option<String>,
}

struct Running {
    desired: Desired,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
    root: PathBuf,
}

/// One controller per mapping over the sources' good revisions.
pub struct Supervisor {
    client: Client,
    mappings: Vec<Mapping>,
    options: ControllerOptions,
    shutdown: Shutdown,
    /// Per source, in configuration order.
    pub sources: Vec<SourceState>,
    running: BTreeMap<String, Running>,
    /// Mappings that do not run, with the reason, as of the last plan.
    pub problems: Vec<MappingProblem>,
    status: Option<StatusWriter>,
}

impl Supervisor {
    /// A supervisor with nothing running yet.
    pub fn new(
        client: Client,
        mappings: Vec<Mapping>,
        options: ControllerOptions,
        sources: Vec<SourceState>,
        status: Option<StatusWriter>,
        shutdown: Shutdown,
    ) -> Self {
        let supervisor = Self {
            client,
            mappings,
            options,
            shutdown,
            sources,
            running: BTreeMap::new(),
            problems: Vec::new(),
            status,
        };
        supervisor.update_readiness();
        supervisor
    }

    /// The names of the mappings whose controllers run.
    pub fn running(&self) -> BTreeSet<String> {
        self.running.keys().cloned().collect()
    }

    /// Takes in one report; replans when it brought a new revision.
    pub async fn handle(&mut self, report: Report) {
        match report {
            Report::Synced {
                source,
                commit,
                revision,
                at,
            } => {
                if let Some(state) = self.sources.get_mut(source) {
                    state.fetched = Some(commit);
                    state.last_sync = Some(at);
                    state.last_error = None;
                    if let Some(revision) = revision {
                        state.good = Some(*revision);
                        self.apply().await;
                    }
                }
            }
            Report::Failed { source, error } => {
                if let Some(state) = self.sources.get_mut(source) {
                    state.last_error = Some(error);
                }
            }
        }
        self.update_readiness();
        self.write_status().await;
    }

    /// Reports sources and mappings in the NuOperator's status, when it changed.
    pub async fn write_status(&mut self) {
        let desired = status::desired(
            &self.sources,
            &self.mappings,
            &self.running(),
            &self.problems,
        );
        if let Some(writer) = &mut self.status {
            writer.write(desired).await;
        }
    }

    /// Not ready while any source has no good revision.
    fn update_readiness(&self) {
        let waiting: Vec<String> = self
            .sources
            .iter()
            .filter(|s| s.good.is_none())
            .map(|s| match &s.last_error {
                Some(e) => format!("source {} has no good revision: {e}", s.location),
                None => format!("source {} not fetched yet", s.location),
            })
            .collect();
        self.options
            .readiness
            .block((!waiting.is_empty()).then(|| waiting.join("; ")));
    }

    /// The scripts of every good revision; a name in two sources comes from the first.
    fn available(&self) -> BTreeMap<String, (LoadedScript, PathBuf)> {
        let mut out = BTreeMap::new();
        for source in &self.sources {
            let Some(revision) = &source.good else {
                continue;
            };
            for (name, script) in &revision.scripts {
                if out.contains_key(name) {
                    warn!(script = %name, source = %source.location, "script also in an earlier source; that one is used");
                    continue;
                }
                out.insert(name.clone(), (script.clone(), revision.root.clone()));
            }
        }
        out
    }

    /// Replans and starts, restarts and stops controllers accordingly.
    pub async fn apply(&mut self) {
        let scripts = self.available();
        let available: BTreeMap<String, Available> = scripts
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.available.clone()))
            .collect();
        let (desired, problems) = plan::plan(&self.mappings, &available);
        for problem in &problems {
            if !self.problems.contains(problem) {
                error!(mapping = %problem.mapping, "mapping does not run: {}", problem.reason);
            }
        }
        self.problems = problems;
        let running: BTreeMap<String, Desired> = self
            .running
            .iter()
            .map(|(k, r)| (k.clone(), r.desired.clone()))
            .collect();
        let changes = plan::diff(&running, &desired);
        for name in changes.stop.iter().chain(&changes.restart) {
            if let Some(r) = self.running.remove(name) {
                info!(controller = %name, "stopping controller");
                stop(name, r, &self.options).await;
            }
        }
        for d in desired {
            if !(changes.start.contains(&d.mapping) || changes.restart.contains(&d.mapping)) {
                continue;
            }
            let Some((script, root)) = scripts.get(&d.script) else {
                continue;
            };
            info!(controller = %d.mapping, script = %d.script, fingerprint = %d.fingerprint, "starting controller");
            let running = self.start(d, script, root.clone());
            self.running
                .insert(running.desired.mapping.clone(), running);
        }
        self.remove_unused_checkouts();
    }

    fn start(&self, desired: Desired, script: &LoadedScript, root: PathBuf) -> Running {
        // Registered now, not when the task first runs: readiness must not flash ready
        // between the source's blocker going and the controller's first list.
        self.options.readiness.register(&desired.mapping);
        let (stop, stopped) = oneshot::channel::<()>();
        let global = self.shutdown.clone();
        let shutdown = shutdown_signal(async move {
            tokio::select! {
                () = global => {}
                _ = stopped => {}
            }
        });
        let handle = tokio::spawn(controller::run(
            self.client.clone(),
            desired.config.clone(),
            script.runner.clone(),
            self.options.clone(),
            shutdown,
        ));
        Running {
            desired,
            stop: Some(stop),
            handle,
            root,
        }
    }

    /// Removes checkouts that neither a running controller nor a good revision uses.
    fn remove_unused_checkouts(&self) {
        let in_use: BTreeSet<PathBuf> = self
            .running
            .values()
            .map(|r| r.root.clone())
            .chain(
                self.sources
                    .iter()
                    .filter_map(|s| s.good.as_ref().map(|g| g.root.clone())),
            )
            .collect();
        for source in &self.sources {
            let Some(cache) = &source.cache else { continue };
            let Ok(entries) = std::fs::read_dir(checkouts_dir(cache)) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let staging = entry.file_name().to_string_lossy().starts_with('.');
                if !staging
                    && !in_use.contains(&path)
                    && let Err(e) = std::fs::remove_dir_all(&path)
                {
                    warn!("cannot remove old checkout {}: {e}", path.display());
                }
            }
        }
    }

    /// Waits for every controller to stop (they stop with the global shutdown).
    pub async fn finish(mut self) {
        for (name, r) in std::mem::take(&mut self.running) {
            stop(&name, r, &self.options).await;
        }
    }
}

async fn stop(name: &str, mut running: Running, options: &ControllerOptions) {
    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    if tokio::time::timeout(STOP_TIMEOUT, &mut running.handle)
        .await
        .is_err()
    {
        warn!(controller = %name, "controller did not stop within {STOP_TIMEOUT:?}; aborting it");
        running.handle.abort();
    }
    options.readiness.remove(name);
}
