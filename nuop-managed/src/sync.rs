//! One task per source: fetch on an interval, check out and load each new revision,
//! and report to the supervisor. Does I/O.
//!
//! A fetch that fails (unreachable server, refused credentials, unknown ref), a
//! commit of a signed source that is not signed by an allowed key ([`crate::signature`],
//! checked before anything is checked out, and again at every sync while it is the
//! ref's commit, since the allowed signers may change), and a
//! revision whose scripts do not load are all reported and counted in
//! `nuop_source_syncs_total{result="failure"|"rejected"}` (the running revision is
//! `nuop_source_revision_info`); the last good revision keeps running. Failed fetches
//! back off ([`crate::backoff`]). A commit whose scripts fail for a reason of its own
//! (parse, config) is rejected and not loaded again until the ref moves; one that
//! failed for a transient reason (I/O, a timeout) counts as a failure and is loaded
//! again at the next, backed-off, sync ([`crate::revision::LoadFailure::transient`]).
//!
//! Each load checks the commit out into a directory of its own,
//! `checkouts/<commit>-<n>`, never reused: a directory is never shared between an
//! attempt in progress and a revision the supervisor knows. The task never removes a
//! checkout it reported; the supervisor removes those no controller uses any more
//! (test `a_checkout_being_loaded_survives_another_sources_cleanup` in
//! `supervisor.rs`). A failed checkout's staging directory is removed at once.

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
use crate::revision::{self, LoadFailure, Revision};
use crate::signature::{self, Decision};
use crate::signers::SignerReader;

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
        /// The checkout made for a revision that did not load: the supervisor's to
        /// remove.
        checkout: Option<PathBuf>,
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
    /// The signatures its commits need, if any.
    pub verify: Option<nuop_crd::Verify>,
    /// Where allowed signers come from.
    pub signers: SignerReader,
    /// This source's cache directory (bare repository and checkouts).
    pub cache: PathBuf,
    /// Time between fetches.
    pub interval: Duration,
    /// The longest a fetch may take before it is interrupted.
    pub fetch_timeout: Duration,
    /// The executor that loads the scripts.
    pub executor: ExecutorKind,
    /// The longest loading one script (parse and top level) may take.
    pub load_timeout: Duration,
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
        let mut state = SyncState::default();
        let mut failures: u32 = 0;
        loop {
            let before = state.current.clone();
            let (result, report) = self.sync_once(&mut state).await;
            if state.current != before {
                let revisions = &METRICS.source_revision;
                if let Some(old) = &before {
                    let _ = revisions.remove_label_values(&[label.as_str(), old.as_str()]);
                }
                if let Some(new) = &state.current {
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
    async fn sync_once(&self, state: &mut SyncState) -> (&'static str, Report) {
        debug!(source = %self.location, "fetching");
        let commit = match self.fetch().await {
            Ok(commit) => {
                debug!(source = %self.location, %commit, "fetched");
                commit
            }
            Err(error) => {
                warn!(source = %self.location, "fetch failed, keeping the last good revision: {error}");
                return ("failure", self.failed(error, None));
            }
        };
        let synced = |revision: Option<Box<Revision>>| Report::Synced {
            source: self.index,
            commit: commit.clone(),
            revision,
            at: SystemTime::now(),
        };
        if state.current.as_deref() == Some(commit.as_str()) {
            return ("success", synced(None));
        }
        if let Some((bad, reason)) = state.rejected.as_ref()
            && *bad == commit
        {
            return ("rejected", self.failed(reason.clone(), None));
        }
        let signed_by = match self.check_signature(&commit).await {
            Ok(signed_by) => {
                state.signature_rejected = None;
                signed_by
            }
            Err(Unverified::Failure(error)) => {
                warn!(source = %self.location, "cannot verify revision {commit}, keeping the last good one: {error}");
                return ("failure", self.failed(error, None));
            }
            Err(Unverified::Rejected(reason)) => {
                let reason =
                    format!("revision {commit} rejected, keeping the last good one: {reason}");
                // Checked again at every sync (the keys may change): logged once.
                if state.signature_rejected.as_ref() != Some(&reason) {
                    warn!(source = %self.location, "{reason}");
                }
                state.signature_rejected = Some(reason.clone());
                return ("rejected", self.failed(reason, None));
            }
        };
        state.attempts = state.attempts.wrapping_add(1);
        let dest = checkouts_dir(&self.cache).join(format!("{commit}-{}", state.attempts));
        match self.load(&commit, &dest).await {
            Ok(mut revision) => {
                revision.signed_by = signed_by;
                info!(source = %self.location, %commit, scripts = revision.scripts.len(), "new revision loaded");
                state.current = Some(commit.clone());
                state.rejected = None;
                ("success", synced(Some(Box::new(revision))))
            }
            Err(failure) if failure.transient => {
                let reason = format!(
                    "revision {commit} could not be loaded, retrying at the next sync: {}",
                    failure.message
                );
                warn!(source = %self.location, "{reason}");
                ("failure", self.failed(reason, Some(dest)))
            }
            Err(failure) => {
                let reason = format!(
                    "revision {commit} rejected, keeping the last good one: {}",
                    failure.message
                );
                warn!(source = %self.location, "{reason}");
                state.rejected = Some((commit, reason.clone()));
                ("rejected", self.failed(reason, Some(dest)))
            }
        }
    }

    /// For a source with `verify`: whether `commit` (as the ref names it) is signed by
    /// an allowed key; the key's fingerprint when it is. `Ok(None)` without `verify`.
    async fn check_signature(&self, commit: &str) -> Result<Option<String>, Unverified> {
        let Some(verify) = &self.verify else {
            return Ok(None);
        };
        let allowed = self
            .signers
            .allowed(&verify.ssh)
            .await
            .map_err(Unverified::Failure)?;
        let (cache, git_ref, commit_owned) = (
            self.cache.join("repo.git"),
            self.location.git_ref.clone(),
            commit.to_string(),
        );
        let material = tokio::task::spawn_blocking(move || {
            git::signed_material(&cache, git_ref.as_deref(), &commit_owned)
        })
        .await
        .map_err(|e| Unverified::Failure(format!("signature task failed: {e}")))?
        .map_err(|e| Unverified::Failure(e.to_string()))?;
        match signature::decide(&material, &allowed) {
            Decision::Verified {
                fingerprint,
                signed,
            } => {
                info!(source = %self.location, %commit, signer = %fingerprint, "{signed} is signed by an allowed key");
                Ok(Some(fingerprint))
            }
            Decision::Rejected { reason } => Err(Unverified::Rejected(reason)),
        }
    }

    fn failed(&self, error: String, checkout: Option<PathBuf>) -> Report {
        Report::Failed {
            source: self.index,
            error,
            checkout,
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

    /// Checks `commit` out into `dest` (which does not exist yet) and loads its scripts.
    async fn load(&self, commit: &str, dest: &Path) -> Result<Revision, LoadFailure> {
        let staging = checkouts_dir(&self.cache).join(format!(
            ".staging-{}",
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let (cache, commit_owned, dir, final_dir) = (
            self.cache.join("repo.git"),
            commit.to_string(),
            self.location.dir.clone(),
            dest.to_path_buf(),
        );
        tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&staging);
            let result = git::checkout(&cache, &commit_owned, dir.as_deref(), &staging)
                .map_err(|e| (e.to_string(), e.is_missing_dir()))
                .and_then(|()| {
                    // A rename is atomic: a directory named after a commit is always
                    // complete.
                    std::fs::rename(&staging, &final_dir)
                        .map_err(|e| (format!("cannot move the checkout into place: {e}"), false))
                });
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            result
        })
        .await
        .map_err(|e| LoadFailure {
            message: format!("checkout task failed: {e}"),
            transient: true,
        })?
        .map_err(|(message, missing_dir)| LoadFailure {
            message,
            // A `dir` the commit does not have is the commit's own; other checkout
            // failures are I/O.
            transient: !missing_dir,
        })?;
        revision::load(commit, dest, self.executor, self.load_timeout).await
    }
}

/// What a source task remembers between syncs.
#[derive(Debug, Default)]
struct SyncState {
    /// The commit of the good revision last reported.
    current: Option<String>,
    /// A commit rejected for a reason of its own, and the reason.
    rejected: Option<(String, String)>,
    /// Checkouts made so far: each gets its own directory.
    attempts: u64,
    /// The last signature rejection reported (not remembered per commit: the allowed
    /// signers may change, so each sync checks again).
    signature_rejected: Option<String>,
}

/// Why a commit was not verified.
enum Unverified {
    /// The allowed signers or the objects could not be read: nothing was decided.
    Failure(String),
    /// The commit is not signed by an allowed key.
    Rejected(String),
}
