//! Running a binary's controllers as an operated process: probes and metrics served
//! from the start, controllers only while this process leads (with `--leader-elect`),
//! and a bounded graceful shutdown on SIGTERM/SIGINT.
//!
//! [`OperateArgs`] holds the controller-runtime style flags every binary shares (each
//! with an environment variable); turning them into [`RuntimeOptions`] is pure and
//! tested. [`operate`] does the I/O.
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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tracing::{error, info, warn};

use crate::controller::{Shutdown, shutdown_signal};
use crate::health::{self, Readiness, parse_bind_address};
use crate::leader::{self, Elector, LeaseSettings};
use crate::metrics::METRICS;

/// Where a pod finds its own namespace.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The operational flags every nuop binary shares (flatten into a clap parser).
#[derive(clap::Args, Debug, Clone)]
pub struct OperateArgs {
    /// Address for /healthz and /readyz (`:8081`, `127.0.0.1:8081`; `0` turns it off).
    #[arg(long, env = "NUOP_HEALTH_PROBE_BIND_ADDRESS", default_value = ":8081")]
    pub health_probe_bind_address: String,
    /// Address for /metrics in Prometheus text format (`0` turns it off).
    #[arg(long, env = "NUOP_METRICS_BIND_ADDRESS", default_value = ":8080")]
    pub metrics_bind_address: String,
    /// Run controllers only while holding a coordination.k8s.io Lease.
    #[arg(long, env = "NUOP_LEADER_ELECT", value_parser = clap::builder::BoolishValueParser::new())]
    pub leader_elect: bool,
    /// Name of the leader election Lease [default: the binary's name, e.g. nuop-standard].
    #[arg(long, env = "NUOP_LEADER_ELECTION_ID")]
    pub leader_election_id: Option<String>,
    /// Namespace of the Lease [default: $POD_NAMESPACE, else the service account's
    /// namespace].
    #[arg(long, env = "NUOP_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// How long a leader's claim lasts without renewal (whole seconds).
    #[arg(long, env = "NUOP_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (and exits).
    #[arg(long, env = "NUOP_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_election_renew_deadline: Duration,
    /// How often candidates try to take the lease and the leader renews it.
    #[arg(long, env = "NUOP_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_election_retry_period: Duration,
    /// How long in-flight reconciles may run after SIGTERM before they are cancelled.
    #[arg(long, env = "NUOP_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// What [`operate`] needs, resolved and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// Where /healthz and /readyz answer; `None` turns them off.
    pub health_probe_bind_address: Option<SocketAddr>,
    /// Where /metrics answers; `None` turns it off.
    pub metrics_bind_address: Option<SocketAddr>,
    /// The lease to hold before running controllers; `None` runs them at once.
    pub leader_election: Option<LeaseSettings>,
    /// How long in-flight reconciles may run after SIGTERM.
    pub shutdown_timeout: Duration,
}

impl OperateArgs {
    /// Resolves the flags for a binary whose default lease name is `default_id`,
    /// reading the pod's namespace from `POD_NAMESPACE` or the service-account file.
    ///
    /// # Errors
    /// A message saying which flag is wrong.
    pub fn resolve(&self, default_id: &str) -> Result<RuntimeOptions, String> {
        let pod_namespace = std::env::var("POD_NAMESPACE").ok();
        let file_namespace = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok();
        self.resolve_with(
            default_id,
            pod_namespace.as_deref(),
            file_namespace.as_deref(),
            leader::default_identity,
        )
    }

    /// [`OperateArgs::resolve`] with the environment passed in.
    ///
    /// # Errors
    /// A message saying which flag is wrong.
    pub fn resolve_with(
        &self,
        default_id: &str,
        pod_namespace: Option<&str>,
        file_namespace: Option<&str>,
        identity: impl FnOnce() -> String,
    ) -> Result<RuntimeOptions, String> {
        let health_probe_bind_address = parse_bind_address(&self.health_probe_bind_address)
            .map_err(|e| format!("--health-probe-bind-address: {e}"))?;
        let metrics_bind_address = parse_bind_address(&self.metrics_bind_address)
            .map_err(|e| format!("--metrics-bind-address: {e}"))?;
        let leader_election = if self.leader_elect {
            let namespace = lease_namespace(
                self.leader_election_namespace.as_deref(),
                pod_namespace,
                file_namespace,
            )
            .ok_or_else(|| {
                format!(
                    "--leader-elect needs the Lease's namespace: pass --leader-election-namespace, \
                     set POD_NAMESPACE, or run in a pod ({SERVICE_ACCOUNT_NAMESPACE_FILE})"
                )
            })?;
            let settings = LeaseSettings {
                name: self
                    .leader_election_id
                    .clone()
                    .unwrap_or_else(|| default_id.to_string()),
                namespace,
                identity: identity(),
                lease_duration: self.leader_election_lease_duration,
                renew_deadline: self.leader_election_renew_deadline,
                retry_period: self.leader_election_retry_period,
            };
            settings.validate()?;
            Some(settings)
        } else {
            None
        };
        Ok(RuntimeOptions {
            health_probe_bind_address,
            metrics_bind_address,
            leader_election,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// The Lease's namespace: the flag, else `POD_NAMESPACE`, else the service-account
/// namespace file's content; blank values count as unset.
pub fn lease_namespace(
    flag: Option<&str>,
    pod_namespace: Option<&str>,
    file_namespace: Option<&str>,
) -> Option<String> {
    [flag, pod_namespace, file_namespace]
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_string)
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, or a plain number of seconds.
///
/// # Errors
/// When the text is none of those.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}`: expected e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "invalid duration `{text}`: unknown unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration `{text}`: {e}"))
}

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

    let result = lead(
        client,
        &options,
        readiness.clone(),
        termination,
        controllers,
    )
    .await;
    readiness.stopping();
    let _ = stop_servers.send(());
    result
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

/// Runs a binary's controllers to the end and returns the process exit code: starts
/// telemetry (outside the async runtime: the OTLP exporter's blocking HTTP client must
/// not live on a runtime thread), builds the runtime, runs `main`, then cancels what
/// still runs without waiting for blocking threads (a script call or fetch cancelled at
/// the shutdown timeout may still occupy one), flushes spans, and maps the outcome: 0
/// when the controllers stopped (drained or timed out), 1 on any error — a lost lease
/// included, so the pod restarts as a standby — printed as `<service>: <error>`.
pub fn run_to_exit<F, Fut, E>(service: &str, log_format: &str, main: F) -> i32
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Stopped, E>>,
    E: std::fmt::Display,
{
    crate::install_crypto_provider();
    let telemetry = match crate::telemetry::init(service, log_format) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("{service}: {e}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return 1;
        }
    };
    // Before start-up: a SIGTERM while the client connects or the servers bind is then
    // a graceful stop (exit 0), not the default action (status 143).
    {
        let _entered = runtime.enter();
        if !crate::telemetry::install_termination_handlers() {
            tracing::warn!("cannot install SIGTERM/SIGINT handlers; only Ctrl-C stops gracefully");
        }
    }
    let result = runtime.block_on(main());
    runtime.shutdown_background();
    telemetry.shutdown();
    match result {
        Ok(Stopped::Drained | Stopped::TimedOut) => 0,
        Err(e) => {
            eprintln!("{service}: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        operate: OperateArgs,
    }

    fn parse(args: &[&str]) -> OperateArgs {
        let mut all = vec!["test"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parse").operate
    }

    #[test]
    fn defaults_follow_controller_runtime() {
        let options = parse(&[])
            .resolve_with("nuop-standard", None, None, || "me".into())
            .expect("resolve");
        assert_eq!(
            options,
            RuntimeOptions {
                health_probe_bind_address: Some("0.0.0.0:8081".parse().expect("addr")),
                metrics_bind_address: Some("0.0.0.0:8080".parse().expect("addr")),
                leader_election: None,
                shutdown_timeout: Duration::from_secs(30),
            }
        );
    }

    #[test]
    fn metrics_can_be_turned_off_and_addresses_are_checked() {
        let options = parse(&["--metrics-bind-address", "0"])
            .resolve_with("x", None, None, || "me".into())
            .expect("resolve");
        assert_eq!(options.metrics_bind_address, None);
        let error = parse(&["--health-probe-bind-address", "nowhere"])
            .resolve_with("x", None, None, || "me".into())
            .expect_err("invalid address");
        assert!(error.contains("--health-probe-bind-address"), "{error}");
    }

    #[test]
    fn leader_election_uses_the_default_id_and_the_pods_namespace() {
        let options = parse(&["--leader-elect"])
            .resolve_with("nuop-standard", Some("ops"), Some("other\n"), || {
                "me".into()
            })
            .expect("resolve");
        let lease = options.leader_election.expect("leader election");
        assert_eq!(lease.name, "nuop-standard");
        assert_eq!(lease.namespace, "ops");
        assert_eq!(lease.identity, "me");
        assert_eq!(lease.lease_duration, Duration::from_secs(15));

        let options = parse(&[
            "--leader-elect",
            "--leader-election-id",
            "mine",
            "--leader-election-lease-duration",
            "5s",
            "--leader-election-renew-deadline",
            "3s",
            "--leader-election-retry-period",
            "500ms",
        ])
        .resolve_with("nuop-standard", None, Some("from-file\n"), || "me".into())
        .expect("resolve");
        let lease = options.leader_election.expect("leader election");
        assert_eq!(lease.name, "mine");
        assert_eq!(lease.namespace, "from-file");
        assert_eq!(lease.retry_period, Duration::from_millis(500));
    }

    #[test]
    fn leader_election_without_a_namespace_is_an_error() {
        let error = parse(&["--leader-elect"])
            .resolve_with("x", None, None, || "me".into())
            .expect_err("no namespace");
        assert!(error.contains("--leader-election-namespace"), "{error}");
        assert!(error.contains("POD_NAMESPACE"), "{error}");
        // Without --leader-elect no namespace is needed.
        assert!(
            parse(&[])
                .resolve_with("x", None, None, || "me".into())
                .is_ok()
        );
    }

    #[test]
    fn unsafe_lease_timings_are_rejected() {
        let error = parse(&[
            "--leader-elect",
            "--leader-election-namespace",
            "ns",
            "--leader-election-lease-duration",
            "5s",
        ])
        .resolve_with("x", None, None, || "me".into())
        .expect_err("renew deadline 10s >= lease duration 5s");
        assert!(error.contains("renew deadline"), "{error}");
    }

    #[test]
    fn lease_namespace_prefers_the_flag_then_the_pod_then_the_file() {
        assert_eq!(
            lease_namespace(Some("a"), Some("b"), Some("c")),
            Some("a".into())
        );
        assert_eq!(
            lease_namespace(None, Some("b"), Some("c")),
            Some("b".into())
        );
        assert_eq!(
            lease_namespace(Some(" "), Some(""), Some("c\n")),
            Some("c".into())
        );
        assert_eq!(lease_namespace(None, None, None), None);
    }

    #[test]
    fn durations_parse_like_go_flags() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn leader_elect_reads_boolean_env_values() {
        // clap reads flags from the environment as booleans ("true", "false", "1", "0").
        let cmd = <Cli as clap::CommandFactory>::command();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == "leader_elect")
            .expect("leader_elect flag");
        assert_eq!(
            arg.get_env(),
            Some(std::ffi::OsStr::new("NUOP_LEADER_ELECT"))
        );
    }
}
