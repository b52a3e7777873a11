//! The webhooks of managed mode. A webhook is a cluster-wide power, so managed pods have
//! no code path that creates webhook configurations (the manager registers them, see
//! `nuop_manager::webhooks`; `--webhook-url-base` is refused at start); they:
//! - publish what their scripts declare into the NuOperator's status, for the manager to
//!   register: [`status_patch`] (pure) and [`publish`] (I/O, the leader's supervisor
//!   feeds it);
//! - serve the calls, on every replica, leader or not: [`serve`] syncs the sources on
//!   its own, loads their scripts and serves those that declare webhooks, with the
//!   certificate the manager mounts (`--webhook-cert-dir`). It does not wait on leader
//!   election (test `a_standby_replica_serves_the_webhooks_the_leader_publishes`), at the
//!   price of a second fetch of each source on the leader.
//!
//! [`publish`] server-side applies `status.webhooks` and `status.conversions` under its
//! own field manager ([`FIELD_MANAGER`]), so it neither overwrites nor is overwritten by
//! the sources and mappings the status writer applies, each time the declared hooks
//! change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource as _};
use nuop_core::cluster::{Cluster, LiveCluster};
use nuop_core::controller::Shutdown;
use nuop_core::protocol::ScriptConfig;
use nuop_core::webhook::configuration::{Conversion, Hook};
use nuop_core::webhook::{Registry, Served};
use nuop_crd::{NuOperator, OperatorRef};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::plan::{self, Available};
use crate::revision::Revision;
use crate::sync::Report;
use crate::{Settings, spawn_sources};

/// The field manager of `status.webhooks` and `status.conversions`.
pub const FIELD_MANAGER: &str = "nuop-managed-webhooks";

/// The subdirectory of the cache where [`serve`] keeps its own checkouts (the
/// supervisor's are beside it, so the two fetch loops do not share a repository).
pub const CACHE_SUBDIR: &str = "webhooks";

/// The status apply body declaring `hooks` and `conversions` (empty lists clear them).
pub fn status_patch(hooks: &[Hook], conversions: &[Conversion]) -> Value {
    json!({
        "apiVersion": NuOperator::api_version(&()),
        "kind": NuOperator::kind(&()),
        "status": {"webhooks": hooks, "conversions": conversions},
    })
}

/// Applies the hooks that the configs in `declared` declare to `operator`'s status
/// each time they change (`None`, the start, publishes nothing), until `shutdown`; a
/// failed write is logged and retried. Kinds are resolved to resources by discovery
/// ([`nuop_core::webhook::declared`]).
pub async fn publish(
    client: Client,
    operator: OperatorRef,
    mut declared: watch::Receiver<Option<Vec<ScriptConfig>>>,
    shutdown: Shutdown,
) {
    let api: Api<NuOperator> = Api::namespaced(client.clone(), &operator.namespace);
    let mut open = true;
    loop {
        let configs = declared.borrow_and_update().clone();
        let mut retry = None;
        if let Some(configs) = configs {
            let (hooks, conversions) = nuop_core::webhook::declared(&client, &configs).await;
            match api
                .patch_status(
                    &operator.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&status_patch(&hooks, &conversions)),
                )
                .await
            {
                Ok(_) => {
                    info!(operator = %operator.name, hooks = hooks.len(), conversions = conversions.len(), "webhooks published in the status");
                }
                Err(e) => {
                    warn!(operator = %operator.name, "cannot publish the declared webhooks (retrying): {e}");
                    retry = Some(Duration::from_secs(5));
                }
            }
        }
        tokio::select! {
            () = shutdown.clone() => return,
            () = tokio::time::sleep(retry.unwrap_or(Duration::MAX)), if retry.is_some() => {}
            // A closed channel declares nothing new: then only shutdown ends this.
            changed = declared.changed(), if open => open = changed.is_ok(),
        }
    }
}

/// The scripts to serve: the planned mappings whose scripts declare webhooks, over
/// the sources' good revisions (a name in two sources comes from the first), as the
/// supervisor plans its controllers. Pure.
pub fn to_serve(
    mappings: &[nuop_crd::Mapping],
    revisions: &[Option<Revision>],
) -> Vec<(ScriptConfig, nuop_core::script::ScriptRunner)> {
    let mut scripts = BTreeMap::new();
    for revision in revisions.iter().flatten() {
        for (name, script) in &revision.scripts {
            scripts
                .entry(name.clone())
                .or_insert_with(|| script.clone());
        }
    }
    let available: BTreeMap<String, Available> = scripts
        .iter()
        .map(|(k, s)| (k.clone(), s.available.clone()))
        .collect();
    let (desired, _problems) = plan::plan(mappings, &available);
    desired
        .into_iter()
        .filter(|d| Served::has_webhooks(&d.config))
        .filter_map(|d| {
            let script = scripts.get(&d.script)?;
            Some((d.config, script.runner.clone()))
        })
        .collect()
}

/// Serves the webhooks of `settings`' scripts on every replica, when
/// `settings.webhooks` names an address and a certificate directory (the manager
/// sets both when it allows this NuOperator's webhooks); otherwise returns at once,
/// with a log line when an address is set. Fetches each source on its own (under
/// [`CACHE_SUBDIR`]), and swaps the served scripts as good revisions arrive, until
/// `shutdown`. Returns the address served on.
///
/// # Errors
/// When the certificate cannot be read or the address bound: a message naming the
/// setting.
pub async fn serve(
    client: Client,
    settings: Settings,
    shutdown: Shutdown,
) -> Result<Option<std::net::SocketAddr>, String> {
    let (Some(address), Some(dir)) = (
        settings.webhooks.bind_address,
        settings.webhooks.cert_dir.clone(),
    ) else {
        if settings.webhooks.bind_address.is_some() {
            info!(
                "no --webhook-cert-dir: managed pods serve webhooks only with the certificate the manager mounts when it allows them"
            );
        }
        return Ok(None);
    };
    let registry = Registry::new();
    let bound =
        nuop_core::webhook::serve_from_dir(address, &dir, registry.clone(), shutdown.clone())
            .await?;
    let cache = settings.cache_dir.join(CACHE_SUBDIR);
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create the cache directory {}: {e}", cache.display()))?;
    tokio::spawn(keep_serving(client, settings, cache, registry, shutdown));
    Ok(Some(bound))
}

/// [`serve`]'s loop: sources' reports in, served scripts out.
async fn keep_serving(
    client: Client,
    settings: Settings,
    cache: std::path::PathBuf,
    registry: Arc<Registry>,
    shutdown: Shutdown,
) {
    let (reports, mut received) = mpsc::channel(16);
    let mut tasks = tokio::task::JoinSet::new();
    let states = spawn_sources(&client, &settings, &cache, &reports, &shutdown, &mut tasks);
    drop(reports);
    let mut revisions: Vec<Option<Revision>> = vec![None; states.len()];
    let cluster: Arc<dyn Cluster> = Arc::new(LiveCluster::new(client, Vec::new()));
    loop {
        let report = tokio::select! {
            report = received.recv() => report,
            () = shutdown.clone() => None,
        };
        let Some(report) = report else { break };
        match report {
            Report::Synced {
                source,
                revision: Some(revision),
                ..
            } if source < revisions.len() => {
                let old = revisions[source].replace(*revision);
                let served = to_serve(&settings.config.mappings, &revisions);
                let names: Vec<String> = served.iter().map(|(c, _)| c.name.clone()).collect();
                for (config, runner) in served {
                    registry.insert(Served {
                        config,
                        runner,
                        cluster: Some(cluster.clone()),
                    });
                }
                for gone in registry.all() {
                    if !names.contains(&gone.config.name) {
                        registry.remove(&gone.config.name);
                    }
                }
                debug!(served = ?names, "webhook scripts swapped in");
                // The old checkout is no longer served (a call the process executor
                // still runs from it finishes with the files it opened).
                if let Some(old) = old
                    && revisions.iter().flatten().all(|r| r.root != old.root)
                    && let Err(e) = std::fs::remove_dir_all(&old.root)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!("cannot remove old checkout {}: {e}", old.root.display());
                }
            }
            Report::Failed {
                checkout: Some(checkout),
                ..
            } => {
                let _ = std::fs::remove_dir_all(checkout);
            }
            _ => {}
        }
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use nuop_core::webhook::configuration::HookKind;
    use nuop_crd::NuOperatorStatus;

    use super::*;

    #[test]
    fn the_patch_is_what_the_crd_status_reads() {
        let hook = Hook {
            controller: "policy".into(),
            kind: HookKind::Validate,
            rules: vec![],
            namespace_selector: None,
            object_selector: None,
            failure_policy: "Fail".into(),
            timeout_seconds: 5,
            path: "/validate/policy".into(),
        };
        let conversion = Conversion {
            crd: "widgets.example.com".into(),
            path: "/convert/widget".into(),
        };
        let patch = status_patch(
            std::slice::from_ref(&hook),
            std::slice::from_ref(&conversion),
        );
        assert_eq!(patch["kind"], "NuOperator");
        let status: NuOperatorStatus =
            serde_json::from_value(patch["status"].clone()).expect("a NuOperator status");
        assert_eq!(status.webhooks.len(), 1);
        assert_eq!(status.webhooks[0].kind, "Validate");
        assert_eq!(status.webhooks[0].path, "/validate/policy");
        assert_eq!(status.conversions[0].crd, "widgets.example.com");
        // And back, as the manager reads it.
        let back: Hook =
            serde_json::from_value(serde_json::to_value(&status.webhooks[0]).expect("json"))
                .expect("a hook");
        assert_eq!(back, hook);
        assert_eq!(status_patch(&[], &[])["status"]["webhooks"], json!([]));
    }
}
