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
//! - [`certs`]: the certificate the server presents (self-signed in a Secret, or a
//!   mounted directory), rotated without a restart.
//! - [`configuration`]: the webhook configurations and CRD conversion stanzas that
//!   point the API server at the server.
//!
//! Serving does not wait on leader election: every replica serves, so the Service can
//! spread the API server's calls (standard mode loads the scripts and starts the server
//! before `operate` waits for the lease, test `a_standby_replica_serves_webhooks`;
//! managed mode serves from sources each replica fetches itself, test
//! `a_standby_replica_serves_the_webhooks_the_leader_publishes`).
//! The script's `k8s` commands may read but never write in these phases
//! ([`crate::cluster::read_only`]).
//!
//! A script may be webhook-only: with `webhooks` or `conversion` in its config and no
//! `main reconcile`, no controller is started for it (its `group/version/kind` still
//! name the default kind of its rules).

pub mod certs;
pub mod configuration;
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

/// Who the binary is, for [`start`]: the name of its webhook configurations
/// (`nuop-<name>`) and certificate Secret (`<name>-webhook-tls`), and the Secret's
/// namespace (self-signed certificates).
#[derive(Debug, Clone)]
pub struct Identity {
    /// The binary's identity (its leader election id: `nuop-standard` by default).
    pub name: String,
    /// The pod's namespace, where the certificate Secret lives.
    pub namespace: Option<String>,
}

/// The IP address in `https://IP:PORT`, for the self-signed certificate's SANs.
pub fn url_ip(url: &str) -> Option<std::net::IpAddr> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    if let Ok(address) = authority.parse::<std::net::SocketAddr>() {
        return Some(address.ip());
    }
    authority.parse().ok()
}

/// Starts the HTTPS server for `registry` as `options` say, when any script declares
/// webhooks; returns the bound address. The server runs until `shutdown`. When none
/// does, removes the configurations this identity registered before (with an endpoint
/// and a self-signed certificate: the ones nuop manages).
///
/// The certificate: the files of `--webhook-cert-dir` (re-read when they change;
/// nuop then manages no configuration), else a self-signed CA and serving certificate
/// kept in the Secret `<identity>-webhook-tls` of the pod's namespace, shared by every
/// replica and rotated without a restart ([`certs`]; signed for `localhost`, the IP of
/// `--webhook-url-base` and the DNS names of `--webhook-service`). With
/// `--webhook-url-base` or `--webhook-service` and a self-signed certificate, nuop
/// applies the webhook configurations and CRD conversion stanzas itself
/// ([`configuration::Registrar`]) with that endpoint and the CA as caBundle.
///
/// # Errors
/// When the certificate cannot be had or the address cannot be bound: a message
/// naming the flag.
pub async fn start(
    client: &kube::Client,
    options: &crate::runtime::WebhookOptions,
    registry: Arc<Registry>,
    identity: Identity,
    shutdown: crate::shutdown::Shutdown,
) -> Result<Option<std::net::SocketAddr>, String> {
    let endpoint = match (&options.url_base, &options.service) {
        (Some(url), _) => Some(configuration::Endpoint::Url(url.clone())),
        (None, Some(service)) => Some(configuration::Endpoint::Service {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port: service.port,
        }),
        (None, None) => None,
    };
    if registry.all().is_empty() {
        // No script declares a webhook (any more): configurations an earlier run of
        // this identity registered would point the API server at a server that is not
        // there, and with `failurePolicy: Fail` block every matching request. Test
        // `a_configuration_whose_scripts_are_gone_is_removed_at_start`.
        if let (Some(endpoint), None) = (endpoint, &options.cert_dir) {
            let registrar =
                configuration::Registrar::new(client.clone(), identity.name.clone(), endpoint);
            match registrar.remove().await {
                Ok(()) => {
                    tracing::debug!(identity = %identity.name, "no webhooks declared: none registered")
                }
                Err(e) => {
                    tracing::warn!(identity = %identity.name, "no webhooks declared, but the earlier ones cannot be removed: {e}")
                }
            }
        }
        return Ok(None);
    }
    let Some(address) = options.bind_address else {
        tracing::warn!(
            "scripts declare webhooks but --webhook-bind-address is 0: webhooks are not served"
        );
        return Ok(None);
    };
    // Never cancelled: certificates rotate and configurations are kept for the
    // process's whole life (the API server keeps calling during a graceful shutdown).
    let token = tokio_util::sync::CancellationToken::new();
    let source = match &options.cert_dir {
        Some(dir) => certs::CertSource::Dir(dir.clone()),
        None => {
            let Some(namespace) = identity.namespace.clone() else {
                return Err(
                    "scripts declare webhooks: self-signed certificates are kept in a Secret of the pod's \
                     namespace; set POD_NAMESPACE, or pass --webhook-cert-dir"
                        .into(),
                );
            };
            let mut dns_names = vec!["localhost".to_string()];
            if let Some(service) = &options.service {
                dns_names.extend(service.dns_names());
            }
            certs::CertSource::SelfSigned {
                namespace,
                name: format!("{}-webhook-tls", identity.name),
                dns_names,
                ip_addresses: options
                    .url_base
                    .as_deref()
                    .and_then(url_ip)
                    .into_iter()
                    .collect(),
                validity: certs::DEFAULT_VALIDITY,
            }
        }
    };
    let certs = certs::Certs::start(Some(client.clone()), source, token.clone())
        .await
        .map_err(|e| format!("webhook certificate: {e}"))?;
    let bound = server::serve(address, certs.server_config(), registry.clone(), shutdown)
        .await
        .map_err(|e| format!("--webhook-bind-address {address}: cannot bind: {e}"))?;
    match (endpoint, &options.cert_dir) {
        (Some(endpoint), None) => {
            let configs: Vec<ScriptConfig> =
                registry.all().iter().map(|s| s.config.clone()).collect();
            let hooks = declared(client, &configs).await;
            let (keep, hooks) = tokio::sync::watch::channel(hooks);
            let registrar =
                configuration::Registrar::new(client.clone(), identity.name.clone(), endpoint);
            let ca_bundle = certs.ca_bundle();
            tokio::spawn(async move {
                let _keep = keep;
                registrar.run(hooks, ca_bundle, token).await;
            });
        }
        _ => tracing::info!(
            "webhook configurations are not managed by nuop (a mounted --webhook-cert-dir, or neither --webhook-url-base nor --webhook-service)"
        ),
    }
    // The certificate's rotation lives as long as the process.
    tokio::spawn(async move {
        let _certs = certs;
        std::future::pending::<()>().await;
    });
    Ok(Some(bound))
}

/// Serves `registry` on `address` with the certificate of the mounted directory `dir`
/// (`tls.crt`, `tls.key`; re-read when they change) until `shutdown`, whether or not
/// any script is served yet: managed mode fills the registry as revisions arrive.
/// Manages no webhook configuration. Returns the bound address.
///
/// # Errors
/// When the certificate cannot be read or the address cannot be bound: a message
/// naming the setting.
pub async fn serve_from_dir(
    address: std::net::SocketAddr,
    dir: &std::path::Path,
    registry: Arc<Registry>,
    shutdown: crate::shutdown::Shutdown,
) -> Result<std::net::SocketAddr, String> {
    let token = tokio_util::sync::CancellationToken::new();
    let certs = certs::Certs::start(
        None,
        certs::CertSource::Dir(dir.to_path_buf()),
        token.clone(),
    )
    .await
    .map_err(|e| format!("--webhook-cert-dir {}: {e}", dir.display()))?;
    let bound = server::serve(address, certs.server_config(), registry, shutdown.clone())
        .await
        .map_err(|e| format!("--webhook-bind-address {address}: cannot bind: {e}"))?;
    // The directory is watched for as long as the server runs.
    tokio::spawn(async move {
        shutdown.await;
        token.cancel();
        drop(certs);
    });
    Ok(bound)
}

/// The hooks and conversions `configs` declare, their kinds resolved to plural
/// resources by discovery (a kind the API server does not serve is left out, with a
/// warning). Paths are `/{phase}/{controller}`, as [`server`] routes them.
pub async fn declared(
    client: &kube::Client,
    configs: &[ScriptConfig],
) -> (Vec<configuration::Hook>, Vec<configuration::Conversion>) {
    use crate::cluster::{Cluster, KindName, LiveCluster};
    use k8s_openapi::api::admissionregistration::v1::RuleWithOperations;
    let cluster = LiveCluster::new(client.clone(), Vec::new());
    let (mut hooks, mut conversions) = (Vec::new(), Vec::new());
    for config in configs {
        let name = config.name.clone();
        let declared = [
            (
                configuration::HookKind::Validate,
                Phase::Validate,
                &config.webhooks.validate,
            ),
            (
                configuration::HookKind::Mutate,
                Phase::Mutate,
                &config.webhooks.mutate,
            ),
        ];
        for (kind, phase, hook) in declared {
            let Some(hook) = hook else { continue };
            let mut rules = Vec::new();
            for rule in &hook.rules {
                let mut resources = Vec::new();
                for k in &rule.kinds {
                    if k == "*" {
                        resources.push("*".to_string());
                        continue;
                    }
                    let group = rule
                        .groups
                        .first()
                        .filter(|g| *g != "*")
                        .cloned()
                        .unwrap_or_default();
                    let version = rule.versions.first().filter(|v| *v != "*").cloned();
                    let api_version = version.map(|v| {
                        if group.is_empty() {
                            v
                        } else {
                            format!("{group}/{v}")
                        }
                    });
                    match cluster
                        .resolve(&KindName {
                            kind: k.clone(),
                            api_version,
                        })
                        .await
                    {
                        Ok(resolved) => resources.push(resolved.plural),
                        Err(e) => {
                            tracing::warn!(webhook = %name, "kind {k} left out of the {phase} webhook: {e}")
                        }
                    }
                }
                if resources.is_empty() {
                    continue;
                }
                rules.push(RuleWithOperations {
                    api_groups: Some(rule.groups.clone()),
                    api_versions: Some(rule.versions.clone()),
                    resources: Some(resources),
                    operations: Some(rule.operations.clone()),
                    scope: Some(rule.scope.as_str().to_string()),
                });
            }
            if rules.is_empty() {
                continue;
            }
            let selector = |s: &Option<serde_json::Value>| {
                s.as_ref()
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
            };
            hooks.push(configuration::Hook {
                controller: name.clone(),
                kind,
                rules,
                namespace_selector: selector(&hook.namespace_selector),
                object_selector: selector(&hook.object_selector),
                failure_policy: hook.failure_policy.as_str().to_string(),
                timeout_seconds: i32::try_from(hook.timeout.as_secs()).unwrap_or(10),
                path: format!("/{phase}/{name}"),
            });
        }
        if let Some(conversion) = &config.conversion {
            conversions.push(configuration::Conversion {
                crd: conversion.crd.clone(),
                path: format!("/convert/{name}"),
            });
        }
    }
    (hooks, conversions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_base_names_the_ip_of_the_certificate() {
        assert_eq!(
            url_ip("https://127.0.0.1:9443"),
            Some([127, 0, 0, 1].into())
        );
        assert_eq!(
            url_ip("https://[::1]:9443/x"),
            Some(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert_eq!(url_ip("https://nuop.example:9443"), None);
        assert_eq!(url_ip("http://127.0.0.1:1"), None);
    }
}
