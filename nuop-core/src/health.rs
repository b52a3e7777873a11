//! Health, readiness and metrics endpoints, served with axum.
//!
//! [`Readiness`] is plain shared state: controllers register, mark themselves synced
//! once their watch has completed its first list, and shutdown marks the process as
//! stopping. [`serve`] exposes `/healthz` and `/readyz` on the probe address and
//! `/metrics` on the metrics address (does I/O).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus::IntGauge;

use crate::metrics::METRICS;
use crate::shutdown::Shutdown;

/// Whether the process is ready to serve: every registered controller synced and no
/// shutdown under way.
#[derive(Debug)]
pub struct Readiness {
    controllers: Mutex<BTreeMap<String, bool>>,
    /// Where the count of synced controllers goes (`nuop_controllers_synced`).
    synced_gauge: IntGauge,
    /// Where the count of registered controllers goes (`nuop_controllers`).
    registered_gauge: IntGauge,
    /// Why an unsynced controller is still waiting, when it knows (a kind not served).
    notes: Mutex<BTreeMap<String, String>>,
    stopping: AtomicBool,
    /// A reason that keeps the process unready regardless of controllers (e.g. no
    /// script source fetched yet).
    blocker: Mutex<Option<String>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            controllers: Mutex::default(),
            synced_gauge: METRICS.controllers_synced.clone(),
            registered_gauge: METRICS.controllers.clone(),
            notes: Mutex::default(),
            stopping: AtomicBool::default(),
            blocker: Mutex::default(),
        }
    }
}

impl Readiness {
    /// A shared, empty readiness state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a controller that must sync before the process is ready.
    pub fn register(&self, controller: &str) {
        let mut controllers = self.lock();
        controllers.entry(controller.to_string()).or_insert(false);
        self.count_synced(&controllers);
    }

    /// Sets or clears why an unsynced controller is waiting, shown by [`Readiness::check`].
    pub fn note(&self, controller: &str, reason: Option<String>) {
        let mut notes = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match reason {
            Some(reason) => notes.insert(controller.to_string(), reason),
            None => notes.remove(controller),
        };
    }

    /// Marks a controller's watch as having completed its first list.
    pub fn mark_synced(&self, controller: &str) {
        self.note(controller, None);
        let mut controllers = self.lock();
        controllers.insert(controller.to_string(), true);
        self.count_synced(&controllers);
    }

    /// Forgets a controller (it was stopped on purpose); `nuop_controllers_synced` drops
    /// with it (`removing_a_controller_updates_the_synced_gauge`).
    pub fn remove(&self, controller: &str) {
        self.note(controller, None);
        let mut controllers = self.lock();
        controllers.remove(controller);
        self.count_synced(&controllers);
    }

    fn count_synced(&self, controllers: &BTreeMap<String, bool>) {
        self.synced_gauge
            .set(controllers.values().filter(|s| **s).count() as i64);
        self.registered_gauge.set(controllers.len() as i64);
    }

    /// Whether `controller` has synced and, if not, what it waits for; `None` when it
    /// is not registered (for the console).
    pub fn controller(&self, controller: &str) -> Option<(bool, Option<String>)> {
        let synced = *self.lock().get(controller)?;
        let note = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(controller)
            .cloned();
        Some((synced, note))
    }

    /// Marks the process as stopping: never ready again.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Sets or clears a reason the process is not ready.
    pub fn block(&self, reason: Option<String>) {
        *self
            .blocker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    /// `Ok` when ready, otherwise the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if let Some(reason) = self
            .blocker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Err(reason);
        }
        let notes = self
            .notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let pending: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, s)| !**s)
            .map(|(n, _)| match notes.get(n) {
                Some(note) => format!("{n} ({note})"),
                None => n.clone(),
            })
            .collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "waiting for the first list of: {}",
                pending.join(", ")
            ))
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.controllers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Parses a controller-runtime style bind address: `:8081`, `0.0.0.0:8081`,
/// `127.0.0.1:0`; `0` (or empty) turns the endpoint off.
///
/// # Errors
/// When the address is neither.
pub fn parse_bind_address(text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() || text == "0" {
        return Ok(None);
    }
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_string()
    };
    full.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| format!("invalid bind address `{text}`: {e}"))
}

fn probe_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.check() {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
                    }
                }
            }),
        )
}

fn metrics_router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                METRICS.render(),
            )
        }),
    )
}

/// The addresses the servers actually bound (useful with port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Where `/healthz` and `/readyz` answer.
    pub probes: Option<SocketAddr>,
    /// Where `/metrics` answers.
    pub metrics: Option<SocketAddr>,
}

/// Binds and serves the probe and metrics endpoints until `shutdown`. When both
/// addresses are the same, one server answers all three paths.
///
/// # Errors
/// When an address cannot be bound.
pub async fn serve(
    probes: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
) -> std::io::Result<Bound> {
    let mut bound = Bound {
        probes: None,
        metrics: None,
    };
    let mut servers: Vec<(SocketAddr, Router)> = Vec::new();
    match (probes, metrics) {
        (Some(p), Some(m)) if p == m => {
            servers.push((p, probe_router(readiness).merge(metrics_router())))
        }
        (p, m) => {
            if let Some(p) = p {
                servers.push((p, probe_router(readiness)));
            }
            if let Some(m) = m {
                servers.push((m, metrics_router()));
            }
        }
    }
    for (address, router) in servers {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        if Some(address) == probes {
            bound.probes = Some(local);
        }
        if Some(address) == metrics {
            bound.metrics = Some(local);
        }
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop)
                .await
            {
                tracing::error!("http server on {local} failed: {e}");
            }
        });
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_controller_synced_and_not_stopping() {
        let r = Readiness::default();
        assert_eq!(r.check(), Ok(()));
        r.register("a");
        r.register("b");
        assert_eq!(r.check(), Err("waiting for the first list of: a, b".into()));
        r.note("b", Some("kind v1/Gadget not served yet".into()));
        assert_eq!(
            r.check(),
            Err("waiting for the first list of: a, b (kind v1/Gadget not served yet)".into())
        );
        r.mark_synced("a");
        r.mark_synced("b");
        assert_eq!(r.check(), Ok(()));
        r.block(Some("no source fetched yet".into()));
        assert_eq!(r.check(), Err("no source fetched yet".into()));
        r.block(None);
        r.stopping();
        assert_eq!(r.check(), Err("shutting down".into()));
    }

    #[test]
    fn removing_a_controller_updates_the_synced_gauge() {
        // A private gauge: the process-wide one is shared with parallel tests.
        let gauge = IntGauge::new("unit_synced", "test").expect("gauge");
        let registered = IntGauge::new("unit_registered", "test").expect("gauge");
        let r = Readiness {
            synced_gauge: gauge.clone(),
            registered_gauge: registered.clone(),
            ..Readiness::default()
        };
        r.register("a");
        r.register("c");
        assert_eq!((gauge.get(), registered.get()), (0, 2));
        r.mark_synced("a");
        r.mark_synced("b");
        assert_eq!((gauge.get(), registered.get()), (2, 3));
        r.remove("a");
        assert_eq!((gauge.get(), registered.get()), (1, 2));
    }

    #[test]
    fn bind_addresses_follow_controller_runtime() {
        assert_eq!(
            parse_bind_address(":8081"),
            Ok(Some("0.0.0.0:8081".parse().expect("addr")))
        );
        assert_eq!(
            parse_bind_address("127.0.0.1:0"),
            Ok(Some("127.0.0.1:0".parse().expect("addr")))
        );
        assert_eq!(parse_bind_address("0"), Ok(None));
        assert!(parse_bind_address("nonsense").is_err());
    }
}
