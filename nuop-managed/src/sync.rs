//! One task per source: fetch on an interval, check out and load each new revision,
//! and report to the supervisor. Does I/O.
//!
//! A fetch that fails (unreachable server, refused credentials, unknown ref) and a
//! revision whose scripts do not load are both reported and counted in
//! `nuop_source_syncs_total{result="failure"|"rejected"}` (the running revision is
//! `nuop_source_revision_info`); the last good revision keeps
//! running. Failed fetches back off ([`crate::backoff`]); a rejected commit is not
//! loaded again until the ref moves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use nuop_core::controller::Shutdown;
use nuop_core::metrics::METRICS;
use nuop_core::script::ExecutorKind;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::backoff;
use crate::credentials::SecretReader;
use crate::git;
use crate::location::Location;
use crate::revision::{self, Revision};

/// What a source task tells the supervisor.
pub enum Report {
    /// A fetch succeeded; `revision` is set when it brought a new good revision.
    Synced {
        /// The source's index in the configuration.
        source: usize,
        /// The commit the ref names now.
        commit: String,
        /// The new revision, loaded, when the commit changed.
        revision: Option<Box<Revision>>,
        /// When.
        at: SystemTime,
    },
    /// A fetch failed, or the fetched revision was rejected.
    Failed {
        /// The source's index in the configuration.
        source: usize,
        /// Why (never holding credentials).
        error: String,
    },
}

/// Everything one source's task needs.
pub struct SourceTask {
    /// The source's index in the configuration.
    pub index: usize,
    /// Where to fetch from.
    pub location: Location,
    /// The source's credential references.
    pub credentials: Option<nuop_crd::Credentials>,
    /// Where Secret values come from.
    pub secrets: SecretReader,
    /// This source's cache directory (bare repository and checkouts).
    pub cache: PathBuf,
    /// Time between fetches.
    pub interval: Duration,
    /// The longest a fetch may take before it is interrupted.
    pub fetch_timeout: Duration,
    /// The executor that loads the scripts.
    pub executor: ExecutorKind,
    /// Where reports go.
    pub reports: mpsc::Sender<Report>,
}

/// Where a source's checkouts live under its cache directory.
pub fn checkouts_dir(cache: &Path) -> PathBuf {
    cache.join("checkouts")
}

impl SourceTask {
    /// Syncs until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        // Checkouts left by an earlier process may be partial (killed mid-removal) and
        // nothing uses them yet: start clean. The bare repository is kept.
        let _ = tokio::fs::remove_dir_all(checkouts_dir(&self.cache)).await;
        let label = self.location.url.clone();
        let mut current: Option<String> = None;
        let mut rejected: Option<(String, String)> = None;
        let mut failures: u32 = 0;
        loop {
            let before = current.clone();
            let (result, report) = self.sync_once(&mut current, &mut rejected).await;
            if current != before {
                let revisions = &METRICS.source_revision;
                if let Some(old) = &before {
                    let _ = revisions.remove_label_values(&[label.as_str(), old.as_str()]);
                }
                if let Some(new) = &current {
                    revisions
                        .with_label_values(&[label.as_str(), new.as_str()])
                        .set(1);
                }
            }
            METRICS
                .source_syncs
                .with_label_values(&[label.as_str(), result])
                .inc();
            if result == "failure" {
                failures = failures.saturating_add(1);
            } else {
                failures = 0;
            }
            if self.reports.send(report).await.is_err() {
                return;
            }
            let delay = backoff::next_delay(failures, self.interval);
            if failures > 0 {
                debug!(source = %label, "next fetch in {delay:?} after {failures} failures");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.clone() => return,
            }
        }
    }

    /// One fetch (and load, when the commit is new). Returns the metric result and the
    /// report.
    async fn sync_once(
        &self,
        current: &mut Option<String>,
        rejected: &mut Option<(String, String)>,
    ) -> (&'static str, Report) {
        let failed = |error: String| Report::Failed {
            source: self.index,
            error,
        };
        debug!(source = %self.location, "fetching");
        let commit = match self.fetch().await {
            Ok(commit) => {
                debug!(source = %self.location, %commit, "fetched");
                commit
            }
            Err(error) => {
                warn!(source = %self.location, "fetch failed, keeping the last good revision: {error}");
                return ("failure", failed(error));
            }
        };
        let synced = |revision: Option<Box<Revision>>| Report::Synced {
            source: self.index,
            commit: commit.clone(),
            revision,
            at: SystemTime::now(),
        };
        if current.as_deref() == Some(commit.as_str()) {
            return ("success", synced(None));
        }
        if let Some((bad, reason)) = rejected.as_ref()
            && *bad == commit
        {
            return ("rejected", failed(reason.clone()));
        }
        match self.load(&commit).await {
            Ok(revision) => {
                info!(source = %self.location, %commit, scripts = revision.scripts.len(), "new revision loaded");
                *current = Some(commit.clone());
                *rejected = None;
                ("success", synced(Some(Box::new(revision))))
            }
            Err(reason) => {
                let reason =
                    format!("revision {commit} rejected, keeping the last good one: {reason}");
                warn!(source = %self.location, "{reason}");
                *rejected = Some((commit, reason.clone()));
                ("rejected", failed(reason))
            }
        }
    }

    async fn fetch(&self) -> Result<String, String> {
        let credentials = self
            .secrets
            .resolve(self.credentials.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let interrupt = Arc::new(AtomicBool::new(false));
        let (cache, location, flag) = (
            self.cache.join("repo.git"),
            self.location.clone(),
            interrupt.clone(),
        );
        let fetch = tokio::task::spawn_blocking(move || {
            git::fetch(&cache, &location, credentials, &flag).map_err(|e| e.to_string())
        });
        match tokio::time::timeout(self.fetch_timeout, fetch).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("fetch task failed: {e}")),
            Err(_) => {
                interrupt.store(true, Ordering::SeqCst);
                Err(format!("fetch timed out after {:?}", self.fetch_timeout))
            }
        }
    }

    /// Checks `commit` out into its own directory (reused while it exists: a kept
    /// controller may still run from it) and loads its scripts; a rejected checkout is
    /// removed.
    async fn load(&self, commit: &str) -> Result<Revision, String> {
        let checkouts = checkouts_dir(&self.cache);
        let dest = checkouts.join(commit);
        if !dest.is_dir() {
            let staging = checkouts.join(format!(".staging-{commit}"));
            let (cache, commit_owned, dir, staging_dir, final_dir) = (
                self.cache.join("repo.git"),
                commit.to_string(),
                self.location.dir.clone(),
                staging.clone(),
                dest.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&staging_dir);
                git::checkout(&cache, &commit_owned, dir.as_deref(), &staging_dir)
                    .map_err(|e| e.to_string())?;
                // A rename is atomic: a directory named after a commit is always complete.
                std::fs::rename(&staging_dir, &final_dir)
                    .map_err(|e| format!("cannot move the checkout into place: {e}"))
            })
            .await
            .map_err(|e| format!("checkout task failed: {e}"))??;
        }
        let result = revision::load(commit, &dest, self.executor).await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&dest).await;
        }
        result
    }
}
