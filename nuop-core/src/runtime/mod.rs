//! Running a binary's controllers as an operated process: probes and metrics served
//! from the start, controllers only while this process leads (with `--leader-elect`),
//! and a bounded graceful shutdown on SIGTERM/SIGINT.
//!
//! Split by job: [`args`] holds the controller-runtime style flags every binary shares
//! (each with an environment variable) and turns them into [`RuntimeOptions`] (pure,
//! tested); this module's [`operate`] does the I/O of leadership and shutdown; [`exit`]
//! is the binaries' process bootstrap and exit code ([`run_to_exit`]).
//!
//! Shutdown order: readiness turns 503, controllers stop taking new work, in-flight
//! reconciles get `--shutdown-timeout` to finish (the lease keeps being renewed
//! meanwhile), then the lease is released so a standby takes over at its next attempt,
//! and the HTTP servers stop last.
//!
//! Losing leadership is fatal, as in controller-runtime: [`operate`] returns
//! [`RuntimeError::LeadershipLost`] without waiting for in-flight work and the binary
//! exits non-zero at once, so it never reconciles alongside the new leader; the pod
//! restarts as a fresh standby.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tracing::{error, info, warn};

use crate::health::{self, Readiness};
use crate::leader::{self, Elector};
use crate::metrics::METRICS;
use crate::shutdown::{Shutdown, shutdown_signal};

pub mod args;
pub mod exit;
pub mod pages;

pub use args::{
    AuditArgs, OperateArgs, RuntimeOptions, SERVICE_ACCOUNT_NAMESPACE_FILE, WebhookArgs,
    WebhookOptions, lease_namespace, parse_duration,
};
pub use exit::run_to_exit;

/// Why [`operate`] stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A probe or metrics address could not be bound.
    #[error("failed to bind the probe or metrics endpoint: {0}")]
    Bind(#[source] std::io::Error),
    /// This process was the leader and is not any more.
    #[error("leader election lost: {0}")]
    LeadershipLost(leader::Lost),
    /// The controllers stopped with an error.
    #[error("controllers failed: {0}")]
    Controllers(String),
}

impl RuntimeError {
    /// A bounded label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Bind(_) => "bind",
            Self::LeadershipLost(_) => "leadership_lost",
            Self::Controllers(_) => "controllers",
        }
    }
}

/// How a clean stop went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every in-flight reconcile finished within the shutdown timeout.
    Drained,
    /// The shutdown timeout passed; the remaining reconciles were cancelled.
    TimedOut,
}

/// Serves probes and metrics, waits for leadership when configured, runs
/// `controllers` until `termination` resolves, and shuts down in order (module docs).
///
/// `controllers` receives the future that tells it to stop taking new work. Until it
/// clears the readiness blocker (`readiness.block(None)`, after registering its
/// controllers) the process answers 503 on /readyz.
///
/// # Errors
/// [`RuntimeError`]. After `LeadershipLost` the caller must exit at once, cancelling
/// every task still on the runtime (`Runtime::shutdown_background`, then
/// `std::process::exit`): tasks the controllers spawned themselves outlive this call.
pub async fn operate<F, Fut>(
    client: Client,
    options: RuntimeOptions,
    readiness: Arc<Readiness>,
    termination: Shutdown,
    controllers: F,
) -> Result<Stopped, RuntimeError>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let (stop_servers, servers_stopped) = tokio::sync::oneshot::channel::<()>();
    let servers_stop = shutdown_signal(async move {
        let _ = servers_stopped.await;
    });
    // Not ready until the controllers have registered (a standby waits ready).
    if options.leader_election.is_none() {
        readiness.block(Some("controllers starting".into()));
    }
    let bound = health::serve(
        options.health_probe_bind_address,
        options.metrics_bind_address,
        readiness.clone(),
        servers_stop,
    )
    .await
    .map_err(RuntimeError::Bind)?;
    info!(probes = ?bound.probes, metrics = ?bound.metrics, "serving probes and metrics");
    let trim = tokio::spawn(release_pages_once_ready(readiness.clone()));

    let result = lead(
        client,
        &options,
        readiness.clone(),
        termination,
        controllers,
    )
    .await;
    readiness.stopping();
    trim.abort();
    let _ = stop_servers.send(());
    result
}

/// Pages out the code only start-up ran (`pages`) the first time the process is ready:
/// its controllers have listed and loaded their scripts, or it is a standby waiting for
/// the lease. Readiness is polled rather than signalled: this happens once, and a
/// quarter of a second late costs nothing.
async fn release_pages_once_ready(readiness: Arc<Readiness>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while readiness.check().is_err() {
        tick.tick().await;
    }
    let _ = tokio::task::spawn_blocking(pages::release).await;
}

async fn lead<F, Fut>(
    client: Client,
    options: &RuntimeOptions,
    readiness: Arc<Readiness>,
    termination: Shutdown,
    controllers: F,
) -> Result<Stopped, RuntimeError>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut elector = options
        .leader_election
        .clone()
        .map(|settings| Elector::new(client, settings));
    METRICS.leader.set(0);
    if let Some(elector) = elector.as_mut()
        && !elector.acquire(termination.clone()).await
    {
        info!("terminated while waiting for the leader lease");
        readiness.stopping();
        // A claim written just before termination would otherwise linger.
        release(elector).await;
        return Ok(Stopped::Drained);
    }
    METRICS.leader.set(1);

    let outcome = run_while_leading(
        elector.as_mut(),
        options.shutdown_timeout,
        readiness.clone(),
        termination,
        controllers,
    )
    .await;
    readiness.stopping();
    // After losing the lease there is nothing to release, and no time to lose.
    if !matches!(outcome, Err(RuntimeError::LeadershipLost(_)))
        && let Some(elector) = elector.as_mut()
    {
        release(elector).await;
    }
    METRICS.leader.set(0);
    outcome
}

async fn run_while_leading<F, Fut>(
    elector: Option<&mut Elector>,
    shutdown_timeout: Duration,
    readiness: Arc<Readiness>,
    termination: Shutdown,
    controllers: F,
) -> Result<Stopped, RuntimeError>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let hold = async move {
        match elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hold);

    readiness.block(Some("controllers starting".into()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop_signal = shutdown_signal(async move {
        let _ = stopped.await;
    });
    let mut running = tokio::spawn(controllers(stop_signal));

    // Run until termination, loss of leadership or the controllers' end.
    let mut finished = false;
    tokio::select! {
        () = termination.clone() => {}
        lost = &mut hold => return Err(lost_now(lost, &readiness, &running)),
        result = &mut running => {
            finished = true;
            if let Err(e) = flatten(result) {
                error!("controllers failed: {e}");
                return Err(RuntimeError::Controllers(e));
            }
            // Nothing left to run (e.g. no valid scripts): keep serving until asked to
            // stop, still holding the lease so a standby does not start instead.
            tokio::select! {
                () = termination.clone() => {}
                lost = &mut hold => return Err(lost_now(lost, &readiness, &running)),
            }
        }
    }

    // Graceful shutdown: no new work, in-flight reconciles finish within the bound,
    // while the lease keeps being renewed so nobody else starts meanwhile.
    readiness.stopping();
    let _ = stop.send(());
    if finished {
        return Ok(Stopped::Drained);
    }
    info!(timeout = ?shutdown_timeout, "waiting for in-flight reconciles");
    tokio::select! {
        result = tokio::time::timeout(shutdown_timeout, &mut running) => match result {
            Ok(result) => {
                if let Err(e) = flatten(result) {
                    warn!("controllers stopped with an error: {e}");
                }
                info!("in-flight reconciles finished");
                Ok(Stopped::Drained)
            }
            Err(_) => {
                warn!(timeout = ?shutdown_timeout, "shutdown timeout passed; cancelling the remaining reconciles");
                running.abort();
                Ok(Stopped::TimedOut)
            }
        },
        lost = &mut hold => Err(lost_now(lost, &readiness, &running)),
    }
}

/// Stops everything at once after leadership is lost.
fn lost_now(
    lost: leader::Lost,
    readiness: &Readiness,
    running: &tokio::task::JoinHandle<Result<(), String>>,
) -> RuntimeError {
    error!("leader election lost: {lost}; stopping at once");
    METRICS.leader.set(0);
    readiness.stopping();
    running.abort();
    RuntimeError::LeadershipLost(lost)
}

async fn release(elector: &mut Elector) {
    match elector.release().await {
        Ok(_) => {}
        Err(e) => warn!("failed to release the leader lease (it expires on its own): {e}"),
    }
}

fn flatten(result: Result<Result<(), String>, tokio::task::JoinError>) -> Result<(), String> {
    match result {
        Ok(inner) => inner,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(format!("controller task panicked: {e}")),
    }
}
