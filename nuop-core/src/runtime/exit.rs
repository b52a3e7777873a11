//! Process bootstrap and exit for the binaries: the crypto provider, telemetry, the
//! async runtime, the termination signal handlers (installed before start-up) and the
//! exit code.
//!
//! Does I/O (process-wide state: the global subscriber, signal handlers).

use std::future::Future;

use super::Stopped;

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
