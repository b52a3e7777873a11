//! Process-wide logs and traces, and the termination signal.
//!
//! Does I/O: installs the global tracing subscriber (plain or JSON lines on stderr,
//! filtered like `RUST_LOG`); when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, also exports spans — one per reconcile
//! and one per script call — over OTLP/HTTP with JSON bodies, batched on the SDK's own
//! thread (the usual `OTEL_BSP_*` and `OTEL_EXPORTER_OTLP_*` variables apply). Without
//! an endpoint nothing tries to connect. Listens for SIGTERM and SIGINT: the handlers
//! are installed by [`install_termination_handlers`] as soon as the process has a
//! runtime (`runtime::run_to_exit` does it before start-up), so a SIGTERM during
//! start-up is a graceful stop, not the default action (tested by
//! `nuop-standard/tests/early_signal.rs`).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variables that turn OTLP trace export on.
pub const OTLP_ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are being exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter. Blocks: call it outside
    /// the async runtime (or from a blocking thread).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!("failed to flush traces: {e}");
        }
    }
}

/// Whether an OTLP endpoint is configured, given a way to read variables.
pub fn otlp_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    OTLP_ENDPOINT_VARS
        .iter()
        .any(|name| var(name).is_some_and(|v| !v.trim().is_empty()))
}

/// Installs logs (and traces when an OTLP endpoint is configured) for `service`.
///
/// # Errors
/// When the format is unknown, the exporter cannot be built, or a subscriber is already
/// installed.
pub fn init(service: &str, format: &str) -> Result<Telemetry, String> {
    let format = LogFormat::parse(format)?;
    let provider = if otlp_configured(|name| std::env::var(name).ok()) {
        Some(tracer_provider(service)?)
    } else {
        None
    };
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(service.to_string()))
    });
    tracing_subscriber::registry()
        .with(filter())
        .with(log_layer(format))
        .with(traces)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(Telemetry { provider })
}

/// Installs logs only: `plain` or `json` lines on stderr, filtered by `RUST_LOG`
/// (default `info`).
///
/// # Errors
/// When the format is unknown or a subscriber is already installed.
pub fn init_logs(format: &str) -> Result<(), String> {
    let format = LogFormat::parse(format)?;
    tracing_subscriber::registry()
        .with(filter())
        .with(log_layer(format))
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; span fields (controller, kind, namespace, name) inline.
    Plain,
    /// One JSON object per line, with the fields of every enclosing span.
    Json,
}

impl LogFormat {
    /// Parses `plain` or `json`.
    ///
    /// # Errors
    /// For anything else.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "plain" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format `{other}`: expected plain or json"
            )),
        }
    }
}

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => layer.boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    }
}

fn tracer_provider(service: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .build()
        .map_err(|e| format!("cannot build the OTLP trace exporter: {e}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .build(),
        )
        .build())
}

/// SIGTERM and SIGINT streams registered ahead of [`termination`]: a signal that
/// arrives after registration is kept by the stream until it is read.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// The streams [`install_termination_handlers`] registered, until [`termination`] takes
/// them. Signals are process-wide, so their streams are too.
static INSTALLED: std::sync::Mutex<Option<Signals>> = std::sync::Mutex::new(None);

fn register() -> Option<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    Some(Signals {
        term: signal(SignalKind::terminate()).ok()?,
        int: signal(SignalKind::interrupt()).ok()?,
    })
}

/// Replaces the default action of SIGTERM and SIGINT (ending the process at once) with
/// handlers that [`termination`] reads, now rather than when `termination` is first
/// polled. Must run inside a tokio runtime with signals enabled (`runtime.enter()`);
/// returns whether the handlers are in place.
pub fn install_termination_handlers() -> bool {
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if installed.is_none() {
        *installed = register();
    }
    installed.is_some()
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT), including a signal
/// that arrived after [`install_termination_handlers`] but before this was polled.
pub async fn termination() {
    let taken = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match taken.or_else(register) {
        Some(Signals { mut term, mut int }) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers, only Ctrl-C through tokio's portable API remains.
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("termination requested; shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_is_on_only_with_a_non_empty_endpoint() {
        assert!(!otlp_configured(|_| None));
        assert!(!otlp_configured(|_| Some("  ".into())));
        assert!(otlp_configured(|name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4318".into())
        }));
        assert!(otlp_configured(|name| {
            (name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .then(|| "http://127.0.0.1:4318/v1/traces".into())
        }));
    }

    #[test]
    fn log_formats() {
        assert_eq!(LogFormat::parse("plain"), Ok(LogFormat::Plain));
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert!(LogFormat::parse("yaml").is_err());
    }
}
