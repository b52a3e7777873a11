//! Process-wide logging setup and the termination signal.
//!
//! Does I/O: installs the global tracing subscriber; listens for SIGTERM and SIGINT.

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber: `plain` or `json` lines on stderr, filtered by
/// `RUST_LOG` (default `info`).
///
/// # Errors
/// When the format is unknown or a subscriber is already installed.
pub fn init_logs(format: &str) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match format {
        "plain" => builder.try_init(),
        "json" => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        other => {
            return Err(format!(
                "unknown log format `{other}`: expected plain or json"
            ));
        }
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers, only Ctrl-C through tokio's portable API remains.
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("termination requested; shutting down");
}
