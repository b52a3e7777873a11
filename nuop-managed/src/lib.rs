//! nuop-managed: controllers from git-synced Nushell scripts, one per mapping, reloaded
//! without a restart when the scripts change.
//!
//! - [`location`]: a source's URL, ref and subdirectory (pure; [`nuop_crd::location`],
//!   shared with the manager's validation).
//! - [`refs`]: which refs to fetch and how a `ref` resolves (pure).
//! - [`backoff`]: when to fetch next after failures (pure).
//! - [`plan`]: mappings × scripts → controllers, and what changed (pure).
//! - [`credentials`]: Secret values for a source, never printed.
//! - [`git`]: fetching, reading signatures and checking out with gix (blocking I/O).
//! - [`signature`]: whether a revision is signed by an allowed key (pure).
//! - [`signers`]: a signed source's allowed signers, inline and from a ConfigMap.
//! - [`revision`]: loading a checkout's scripts, all or nothing.
//! - [`sync`]: one task per source, fetching on an interval.
//! - [`supervisor`]: starts, restarts and stops controllers as revisions arrive.
//! - [`status`]: per-source and per-mapping state in the NuOperator's status.
//! - [`mode`]: managed or standard, from `NUOP_MODE` (pure).
//! - [`webhooks`]: the webhooks the scripts declare, published in the status for the
//!   manager to register (managed pods only serve them).
//!
//! [`run`] ties them together under `nuop_core::runtime::operate`.

pub mod backoff;
pub mod credentials;
pub mod git;
pub mod mode;
pub mod plan;
pub mod refs;
pub mod revision;
pub mod signature;
pub mod signers;
pub mod status;
pub mod supervisor;
pub mod sync;
pub mod webhooks;

pub use nuop_crd::location;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;
use nuop_core::controller::{ControllerOptions, Shutdown};
use nuop_core::script::ExecutorKind;
use nuop_crd::ManagedConfig;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::credentials::SecretReader;
use crate::signers::SignerReader;
use crate::status::StatusWriter;
use crate::supervisor::{SourceState, Supervisor};
use crate::sync::SourceTask;

/// What [`run`] needs besides a client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sources and mappings, as the manager wrote them.
    pub config: ManagedConfig,
    /// Time between two fetches of a source.
    pub sync_interval: Duration,
    /// Where the sources' bare repositories and checkouts live.
    pub cache_dir: PathBuf,
    /// Mounted Secrets (`<dir>/<secret>/<key>`), read before asking the API.
    pub secrets_dir: Option<PathBuf>,
    /// The longest one fetch may take.
    pub fetch_timeout: Duration,
    /// The executor that runs the scripts.
    pub executor: ExecutorKind,
    /// The longest loading one script (parse and top level) may take; a script that
    /// outlives it rejects its revision.
    pub load_timeout: Duration,
    /// Where and with which certificate to serve the scripts' webhooks
    /// ([`webhooks::serve`]); the default serves none.
    pub webhooks: nuop_core::runtime::WebhookOptions,
}

/// The cache directory name of source number `index` at `url`: a new URL at the same
/// position gets a fresh cache.
pub fn source_dir_name(index: usize, url: &str) -> String {
    let hash = nuop_crd::fnv::Fnv::default().feed(url.as_bytes()).value();
    format!("source-{index}-{:08x}", hash & 0xffff_ffff)
}

/// Syncs every source and runs one controller per mapping until `shutdown`.
///
/// # Errors
/// When the cache directory cannot be created.
pub async fn run(
    client: Client,
    settings: Settings,
    options: ControllerOptions,
    shutdown: Shutdown,
) -> Result<(), String> {
    std::fs::create_dir_all(&settings.cache_dir).map_err(|e| {
        format!(
            "cannot create the cache directory {}: {e}",
            settings.cache_dir.display()
        )
    })?;
    let (reports, mut received) = mpsc::channel(16);
    let mut tasks = tokio::task::JoinSet::new();
    let states = spawn_sources(
        &client,
        &settings,
        &settings.cache_dir,
        &reports,
        &shutdown,
        &mut tasks,
    );
    drop(reports);
    info!(
        sources = states.len(),
        mappings = settings.config.mappings.len(),
        interval = ?settings.sync_interval,
        "managed mode starting"
    );
    let operator = &settings.config.nu_operator;
    let status = (!operator.name.is_empty() && !operator.namespace.is_empty())
        .then(|| StatusWriter::new(client.clone(), operator.clone()));
    let (stopped, mut finished) = mpsc::unbounded_channel();
    // The webhooks the running scripts declare, for the manager to register: `None`
    // until every source has a good revision, so that a restart never publishes a
    // partial list (which would remove configurations for a moment).
    let (declared, declared_rx) = watch::channel(None);
    if let Some(operator) =
        (!operator.name.is_empty() && !operator.namespace.is_empty()).then(|| operator.clone())
    {
        tokio::spawn(webhooks::publish(
            client.clone(),
            operator,
            declared_rx,
            shutdown.clone(),
        ));
    }
    let mut supervisor = Supervisor::new(
        client,
        settings.config.mappings.clone(),
        options,
        states,
        status,
        shutdown.clone(),
        stopped,
    )
    .publishing(declared);
    if settings.config.sources.is_empty() {
        supervisor.apply().await;
    }
    supervisor.write_status().await;
    loop {
        tokio::select! {
            report = received.recv() => match report {
                Some(report) => supervisor.handle(report).await,
                None => break,
            },
            Some(mapping) = finished.recv() => supervisor.controller_stopped(&mapping).await,
            () = shutdown.clone() => break,
        }
    }
    tasks.abort_all();
    supervisor.finish().await;
    Ok(())
}

/// Spawns one [`SourceTask`] per source of `settings` into `tasks`, caching under
/// `cache_root` and reporting on `reports`; returns the sources' initial states (an
/// invalid location is reported there and gets no task).
fn spawn_sources(
    client: &Client,
    settings: &Settings,
    cache_root: &Path,
    reports: &mpsc::Sender<sync::Report>,
    shutdown: &Shutdown,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Vec<SourceState> {
    let namespace = Some(settings.config.nu_operator.namespace.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| std::env::var("POD_NAMESPACE").ok());
    let api = namespace.map(|n| (client.clone(), n));
    let signers = SignerReader { api: api.clone() };
    let secrets = SecretReader {
        dir: settings.secrets_dir.clone(),
        api,
    };
    let mut states = Vec::new();
    for (index, source) in settings.config.sources.iter().enumerate() {
        match location::parse(
            &source.location,
            source.git_ref.as_deref(),
            source.path.as_deref(),
        ) {
            Ok(location) => {
                let cache = cache_root.join(source_dir_name(index, &location.url));
                states.push(SourceState {
                    location: location::redact(&source.location),
                    cache: Some(cache.clone()),
                    ..SourceState::default()
                });
                let task = SourceTask {
                    index,
                    location,
                    credentials: source.credentials.clone(),
                    secrets: secrets.clone(),
                    verify: source.verify.clone(),
                    signers: signers.clone(),
                    cache,
                    interval: settings.sync_interval,
                    fetch_timeout: settings.fetch_timeout,
                    executor: settings.executor,
                    load_timeout: settings.load_timeout,
                    reports: reports.clone(),
                };
                tasks.spawn(task.run(shutdown.clone()));
            }
            Err(e) => {
                error!(source = index, "source cannot be used: {e}");
                states.push(SourceState {
                    location: location::redact(&source.location),
                    last_error: Some(e.to_string()),
                    ..SourceState::default()
                });
            }
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_directories_differ_by_position_and_url() {
        let a = source_dir_name(0, "git://h/a.git");
        assert!(a.starts_with("source-0-"), "{a}");
        assert_eq!(a, source_dir_name(0, "git://h/a.git"));
        assert_ne!(a, source_dir_name(0, "git://h/b.git"));
        assert_ne!(a, source_dir_name(1, "git://h/a.git"));
    }
}
