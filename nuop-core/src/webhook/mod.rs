//! Admission and conversion webhooks written as scripts: `main validate`, `main mutate`
//! and `main convert`, served over HTTPS by every binary that runs scripts.
//!
//! - [`Registry`] (here): the scripts this process serves webhooks for, by controller
//!   name; standard mode fills it once at start, managed mode as mappings come and go.
//!   No I/O.
//! - [`server`]: the HTTPS listener (rustls, handshakes in tasks of their own) and the
//!   routes `/validate/{controller}`, `/mutate/{controller}`, `/convert/{controller}`.
//! - [`review`]: one AdmissionReview or ConversionReview: the script call and the
//!   answer, per the hook's failurePolicy when the script cannot answer.
//!
//! Serving does not wait on leader election: every replica serves, so the Service can
//! spread the API server's calls (test `webhooks::a_standby_replica_answers`... is not
//! written yet; standard mode starts the server before `operate` waits for the lease).
//! The script's `k8s` commands may read but never write in these phases
//! ([`crate::cluster::read_only`]).
//!
//! A script may be webhook-only: with `webhooks` or `conversion` in its config and no
//! `main reconcile`, no controller is started for it (its `group/version/kind` still
//! name the default kind of its rules).

pub mod review;
pub mod server;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::cluster::Cluster;
use crate::protocol::{Phase, ScriptConfig};
use crate::script::ScriptRunner;

/// One script whose webhooks this process serves.
pub struct Served {
    /// Its validated config (`webhooks`, `conversion`, `timeout`).
    pub config: ScriptConfig,
    /// The loaded script.
    pub runner: ScriptRunner,
    /// What its `k8s` reads go to (made read-only per call); none without a cluster.
    pub cluster: Option<Arc<dyn Cluster>>,
}

impl Served {
    /// Whether the script serves `phase` (declared in its config and defined).
    pub fn serves(&self, phase: Phase) -> bool {
        let declared = match phase {
            Phase::Validate => self.config.webhooks.validate.is_some(),
            Phase::Mutate => self.config.webhooks.mutate.is_some(),
            Phase::Convert => self.config.conversion.is_some(),
            _ => false,
        };
        declared && self.runner.has_phase(phase)
    }

    /// Whether the script declares any webhook.
    pub fn has_webhooks(config: &ScriptConfig) -> bool {
        !config.webhooks.is_empty() || config.conversion.is_some()
    }
}

/// The scripts served, by controller name.
#[derive(Default)]
pub struct Registry {
    scripts: RwLock<BTreeMap<String, Arc<Served>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `served` under its controller name (replacing an earlier revision).
    pub fn insert(&self, served: Served) {
        let name = served.config.name.clone();
        self.scripts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, Arc::new(served));
    }

    /// Stops serving `controller`.
    pub fn remove(&self, controller: &str) {
        self.scripts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(controller);
    }

    /// The script served as `controller`, if any.
    pub fn get(&self, controller: &str) -> Option<Arc<Served>> {
        self.scripts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(controller)
            .cloned()
    }

    /// Every script served, by name.
    pub fn all(&self) -> Vec<Arc<Served>> {
        self.scripts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// Starts the HTTPS server for `registry` as `options` say, when any script declares
/// webhooks; returns the bound address. The server runs until `shutdown`.
///
/// # Errors
/// When the certificate cannot be read or the address cannot be bound: a message
/// naming the flag.
pub async fn start(
    options: &crate::runtime::WebhookOptions,
    registry: Arc<Registry>,
    shutdown: crate::shutdown::Shutdown,
) -> Result<Option<std::net::SocketAddr>, String> {
    if registry.all().is_empty() {
        return Ok(None);
    }
    let Some(address) = options.bind_address else {
        tracing::warn!(
            "scripts declare webhooks but --webhook-bind-address is 0: webhooks are not served"
        );
        return Ok(None);
    };
    let tls = match &options.cert_dir {
        Some(dir) => server::server_config_from_dir(dir)
            .map_err(|e| format!("--webhook-cert-dir {}: {e}", dir.display()))?,
        // Not fatal: the controllers still run (`make demo` runs every example).
        None => {
            tracing::error!(
                "scripts declare webhooks but no certificate was given: webhooks are not served; \
                 pass --webhook-cert-dir, a directory with tls.crt and tls.key"
            );
            return Ok(None);
        }
    };
    server::serve(address, tls, registry, shutdown)
        .await
        .map(Some)
        .map_err(|e| format!("--webhook-bind-address {address}: cannot bind: {e}"))
}
