//! The supervisor: keeps one controller per mapping running over the sources' last
//! good revisions, restarting only those whose script or mapping changed. Does I/O
//! (starts and stops controller tasks, removes unused checkouts).
//!
//! It owns all state the source tasks report into: per source the good revision, the
//! last sync time and the last error. From that it derives readiness (not ready while
//! a source has no good revision, with the reason) and the per-source and per-mapping
//! state reported back to the NuOperator.
//!
//! Stopping is never done inside the report loop: a controller to stop or restart gets
//! a stop task of its own, all of them at once, and a restarted mapping's new controller
//! starts once its old one has finished (so an object is never reconciled by both). A
//! restart keeps the mapping's readiness entry, so `/readyz` does not flap for a
//! mapping that had synced; while the old controller finishes, the mapping is reported
//! `restarting`.
//!
//! Checkouts are removed only when the supervisor was told about them (a good revision
//! or a failed load in a report) and nothing uses them: no running or stopping
//! controller, no source's good revision ([`removable`]). A checkout a source task is
//! still loading has not been reported, so it is never removed (test
//! `a_checkout_being_loaded_survives_another_sources_cleanup`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use kube::Client;
use nuop_core::controller::{self, ControllerOptions, Shutdown, shutdown_signal};
use nuop_core::protocol::{Phase, ScriptConfig};
use nuop_core::webhook::Served;
use nuop_crd::Mapping;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::plan::{self, Available, Desired, MappingProblem};
use crate::revision::{LoadedScript, Revision};
use crate::status::{self, StatusWriter};
use crate::sync::Report;

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

/// A controller that was told to stop and has not finished yet.
struct Stopping {
    mapping: String,
    root: PathBuf,
    handle: JoinHandle<()>,
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
    stopping: Vec<Stopping>,
    /// Checkouts reported by the source tasks, until removed.
    known: BTreeSet<PathBuf>,
    /// Where stop tasks say a controller finished (the mapping's name).
    stopped: mpsc::UnboundedSender<String>,
    /// Mappings that do not run, with the reason, as of the last plan.
    pub problems: Vec<MappingProblem>,
    status: Option<StatusWriter>,
    /// Where the configs of the running scripts that declare webhooks go
    /// ([`crate::webhooks::publish`]), once every source has a good revision.
    declared: Option<watch::Sender<Option<Vec<ScriptConfig>>>>,
}

impl Supervisor {
    /// A supervisor with nothing running yet. Each controller it stops is announced on
    /// `stopped` once finished; pass those to [`Supervisor::controller_stopped`].
    pub fn new(
        client: Client,
        mappings: Vec<Mapping>,
        options: ControllerOptions,
        sources: Vec<SourceState>,
        status: Option<StatusWriter>,
        shutdown: Shutdown,
        stopped: mpsc::UnboundedSender<String>,
    ) -> Self {
        let supervisor = Self {
            client,
            mappings,
            options,
            shutdown,
            sources,
            running: BTreeMap::new(),
            stopping: Vec::new(),
            known: BTreeSet::new(),
            stopped,
            problems: Vec::new(),
            status,
            declared: None,
        };
        supervisor.update_readiness();
        supervisor
    }

    /// Also sends the configs of the planned scripts that declare webhooks to
    /// `declared` at every plan made while each usable source has a good revision
    /// (a partial list would unregister the others' webhooks for a moment).
    pub fn publishing(mut self, declared: watch::Sender<Option<Vec<ScriptConfig>>>) -> Self {
        self.declared = Some(declared);
        self
    }

    /// The names of the mappings whose controllers run.
    pub fn running(&self) -> BTreeSet<String> {
        self.running.keys().cloned().collect()
    }

    /// The mappings whose new controller waits for the old one to finish.
    pub fn restarting(&self) -> BTreeSet<String> {
        self.stopping
            .iter()
            .filter(|s| self.running.contains_key(&s.mapping))
            .map(|s| s.mapping.clone())
            .collect()
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
                        self.known.insert(revision.root.clone());
                        state.good = Some(*revision);
                        self.apply().await;
                    }
                }
            }
            Report::Failed {
                source,
                error,
                checkout,
            } => {
                if let Some(state) = self.sources.get_mut(source) {
                    state.last_error = Some(error);
                }
                self.known.extend(checkout);
            }
        }
        self.remove_unused_checkouts();
        self.update_readiness();
        self.write_status().await;
    }

    /// Takes in that the controller of `mapping` told to stop has finished.
    pub async fn controller_stopped(&mut self, mapping: &str) {
        self.stopping.retain(|s| !s.handle.is_finished());
        info!(controller = %mapping, "controller stopped");
        self.remove_unused_checkouts();
        self.write_status().await;
    }

    /// Reports sources and mappings in the NuOperator's status, when it changed.
    pub async fn write_status(&mut self) {
        let desired = status::desired(
            &self.sources,
            &self.mappings,
            &self.running(),
            &self.restarting(),
            &self.problems,
        );
        if let Some(console) = &self.options.console {
            console.set_managed(status::console_view(&desired, &self.mappings));
        }
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

    /// Replans, then starts controllers and begins stopping and restarting them
    /// (without waiting for any to stop).
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
        let complete = self
            .sources
            .iter()
            .all(|s| s.cache.is_none() || s.good.is_some());
        if let Some(declared) = self.declared.as_ref().filter(|_| complete) {
            let configs: Vec<ScriptConfig> = desired
                .iter()
                .filter(|d| Served::has_webhooks(&d.config))
                .map(|d| d.config.clone())
                .collect();
            declared.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&configs);
                *current = Some(configs);
                changed
            });
        }
        let running: BTreeMap<String, Desired> = self
            .running
            .iter()
            .map(|(k, r)| (k.clone(), r.desired.clone()))
            .collect();
        for (mapping, old, new) in plan::stranded_finalizers(&running, &desired) {
            let now = match new {
                Some(new) => format!("adds `{new}` instead"),
                None => "no longer runs or sets a finalizer".to_string(),
            };
            warn!(
                controller = %mapping,
                finalizer = %old,
                "the controller {now}: objects that still carry `{old}` will hang in Terminating when deleted until it is removed from them (kubectl patch --type=json -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers/<index>\"}}]')"
            );
        }
        let changes = plan::diff(&running, &desired);
        for name in &changes.stop {
            if let Some(r) = self.running.remove(name) {
                info!(controller = %name, "stopping controller");
                drop(self.begin_stop(name, r, true));
            }
        }
        for d in desired {
            let restart = changes.restart.contains(&d.mapping);
            if !(changes.start.contains(&d.mapping) || restart) {
                continue;
            }
            let Some((script, root)) = scripts.get(&d.script) else {
                continue;
            };
            let previous = if restart {
                self.running.remove(&d.mapping).map(|r| {
                    info!(controller = %d.mapping, "restarting controller");
                    // The readiness entry stays: the mapping had synced (or will).
                    self.begin_stop(&d.mapping, r, false)
                })
            } else {
                None
            };
            info!(controller = %d.mapping, script = %d.script, fingerprint = %d.fingerprint, "starting controller");
            let running = self.start(d, script, root.clone(), previous);
            self.running
                .insert(running.desired.mapping.clone(), running);
        }
    }

    /// Tells `running` to stop and waits for it in a task of its own; the returned
    /// receiver resolves when it has finished.
    fn begin_stop(
        &mut self,
        name: &str,
        mut running: Running,
        forget: bool,
    ) -> oneshot::Receiver<()> {
        let (done, finished) = oneshot::channel();
        let readiness = self.options.readiness.clone();
        let stopped = self.stopped.clone();
        let mapping = name.to_string();
        let root = running.root.clone();
        let handle = tokio::spawn(async move {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(());
            }
            if tokio::time::timeout(STOP_TIMEOUT, &mut running.handle)
                .await
                .is_err()
            {
                warn!(controller = %mapping, "controller did not stop within {STOP_TIMEOUT:?}; aborting it");
                running.handle.abort();
                let _ = (&mut running.handle).await;
            }
            if forget {
                readiness.remove(&mapping);
            }
            let _ = done.send(());
            let _ = stopped.send(mapping);
        });
        self.stopping.push(Stopping {
            mapping: name.to_string(),
            root,
            handle,
        });
        finished
    }

    fn start(
        &self,
        desired: Desired,
        script: &LoadedScript,
        root: PathBuf,
        after: Option<oneshot::Receiver<()>>,
    ) -> Running {
        // A webhook-only script (no `main reconcile`) runs no controller: its task only
        // waits to be stopped, and readiness does not wait for it.
        let reconciles = script.runner.has_phase(Phase::Reconcile);
        // Registered now, not when the task first runs: readiness must not flash ready
        // between the source's blocker going and the controller's first list.
        if reconciles {
            self.options.readiness.register(&desired.mapping);
        } else {
            info!(controller = %desired.mapping, "webhook-only script (no `main reconcile`): no controller started");
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let global = self.shutdown.clone();
        let shutdown = shutdown_signal(async move {
            tokio::select! {
                () = global => {}
                _ = stopped => {}
            }
        });
        let (client, config, runner, mut options) = (
            self.client.clone(),
            desired.config.clone(),
            script.runner.clone(),
            self.options.clone(),
        );
        // Audit records name the commit whose checkout this controller runs. A later
        // commit that leaves the script unchanged keeps the controller (and so this
        // commit, whose script is the same).
        if let Some(good) = self
            .sources
            .iter()
            .filter_map(|s| s.good.as_ref())
            .find(|g| g.root == root)
        {
            options.audit = options.audit.with_revision(good.commit.clone());
        }
        let handle = tokio::spawn(async move {
            // Never alongside the controller it replaces.
            if let Some(previous) = after {
                let _ = previous.await;
            }
            if reconciles {
                controller::run(client, config, runner, options, shutdown).await;
            } else {
                shutdown.await;
            }
        });
        Running {
            desired,
            stop: Some(stop),
            handle,
            root,
        }
    }

    /// Removes the reported checkouts nothing uses any more.
    fn remove_unused_checkouts(&mut self) {
        self.stopping.retain(|s| !s.handle.is_finished());
        let in_use: BTreeSet<PathBuf> = self
            .running
            .values()
            .map(|r| r.root.clone())
            .chain(self.stopping.iter().map(|s| s.root.clone()))
            .chain(
                self.sources
                    .iter()
                    .filter_map(|s| s.good.as_ref().map(|g| g.root.clone())),
            )
            .collect();
        for path in removable(&self.known, &in_use) {
            self.known.remove(&path);
            if let Err(e) = std::fs::remove_dir_all(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!("cannot remove old checkout {}: {e}", path.display());
            }
        }
    }

    /// Waits for every controller to stop (they stop with the global shutdown).
    pub async fn finish(mut self) {
        for (name, r) in std::mem::take(&mut self.running) {
            drop(self.begin_stop(&name, r, true));
        }
        for stopping in std::mem::take(&mut self.stopping) {
            let _ = stopping.handle.await;
        }
    }
}

/// The checkouts of `known` that nothing in `in_use` needs: the only ones the
/// supervisor may remove.
pub fn removable(known: &BTreeSet<PathBuf>, in_use: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    known.difference(in_use).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_client() -> Client {
        nuop_core::install_crypto_provider();
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a url"));
        Client::try_from(config).expect("a client")
    }

    fn revision(root: &std::path::Path, commit: &str) -> Box<Revision> {
        Box::new(Revision {
            commit: commit.to_string(),
            root: root.to_path_buf(),
            scripts: BTreeMap::new(),
            signed_by: None,
        })
    }

    #[test]
    fn only_known_unused_checkouts_are_removable() {
        let known: BTreeSet<PathBuf> = ["/c/a-1", "/c/a-2", "/c/b-1"].map(PathBuf::from).into();
        let in_use: BTreeSet<PathBuf> = ["/c/a-2", "/c/loading-3"].map(PathBuf::from).into();
        assert_eq!(
            removable(&known, &in_use),
            ["/c/a-1", "/c/b-1"].map(PathBuf::from)
        );
    }

    #[tokio::test]
    async fn a_checkout_being_loaded_survives_another_sources_cleanup() {
        let cache = tempfile::tempdir().expect("tempdir");
        let dir = |source: &str, name: &str| {
            let path = cache.path().join(source).join("checkouts").join(name);
            std::fs::create_dir_all(&path).expect("mkdir");
            path
        };
        // Source A has renamed its checkout into place and is loading it; source B
        // reports two revisions in a row.
        let a_loading = dir("a", "c1-1");
        let b_first = dir("b", "c2-1");
        let b_second = dir("b", "c3-2");
        let sources = ["a", "b"]
            .map(|s| SourceState {
                location: format!("git://h/{s}.git"),
                cache: Some(cache.path().join(s)),
                ..SourceState::default()
            })
            .to_vec();
        let (stopped, _) = mpsc::unbounded_channel();
        let mut supervisor = Supervisor::new(
            offline_client(),
            Vec::new(),
            ControllerOptions::default(),
            sources,
            None,
            shutdown_signal(std::future::pending()),
            stopped,
        );
        for (root, commit) in [(&b_first, "c2"), (&b_second, "c3")] {
            supervisor
                .handle(Report::Synced {
                    source: 1,
                    commit: commit.to_string(),
                    revision: Some(revision(root, commit)),
                    at: SystemTime::now(),
                })
                .await;
        }
        assert!(
            a_loading.is_dir(),
            "source A's checkout was removed mid-load"
        );
        assert!(
            b_second.is_dir(),
            "the good revision's checkout was removed"
        );
        assert!(
            !b_first.exists(),
            "the replaced revision's checkout is left behind"
        );

        // A failed load's checkout is removed once reported, unless in use.
        supervisor
            .handle(Report::Failed {
                source: 0,
                error: "rejected".to_string(),
                checkout: Some(a_loading.clone()),
            })
            .await;
        assert!(!a_loading.exists());
        supervisor
            .handle(Report::Failed {
                source: 1,
                error: "timed out".to_string(),
                checkout: Some(b_second.clone()),
            })
            .await;
        assert!(
            b_second.is_dir(),
            "a checkout in use was removed after a failed reload"
        );
    }
}
