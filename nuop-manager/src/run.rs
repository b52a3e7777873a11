//! The manager's controller: watches `NuOperator`s (in every namespace or one) and the
//! ConfigMaps and Deployments they own, and drives [`crate::reconcile`] with
//! kube-runtime. Does I/O.

use std::sync::Arc;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use nuop_core::controller::Shutdown;
use nuop_core::health::Readiness;
use nuop_crd::NuOperator;
use tracing::{debug, info, warn};

use crate::build::{MANAGED_BY, Settings};
use crate::reconcile::{Context, error_policy, reconcile};

/// The name the manager's watch registers under in [`Readiness`].
pub const READINESS_NAME: &str = "nuoperators";

/// How often the readiness task looks again whether the first list completed.
const SYNC_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch only this namespace; every namespace when `None`.
    pub namespace: Option<String>,
    /// Settings shaping every managed Deployment.
    pub settings: Settings,
    /// NuOperators reconciled at once.
    pub concurrency: u16,
    /// Where the manager reports that its first list completed.
    pub readiness: Arc<Readiness>,
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
///
/// # Errors
/// Never at present: watch errors are logged and retried by kube-runtime. The `String`
/// error matches what [`nuop_core::runtime::operate`] expects of controllers.
pub async fn run(client: Client, options: Options, shutdown: Shutdown) -> Result<(), String> {
    let (operators, config_maps, deployments): (Api<NuOperator>, Api<ConfigMap>, Api<Deployment>) =
        match &options.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    // Only the children the manager made are watched (and cached).
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let controller = Controller::new(operators, watcher::Config::default())
        .owns(config_maps, children.clone())
        .owns(deployments, children)
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .graceful_shutdown_on(shutdown);

    options.readiness.register(READINESS_NAME);
    // Registered: readiness now waits for this watch, so the "controllers starting"
    // blocker the shared runtime sets can go.
    options.readiness.block(None);
    let store = controller.store();
    let readiness = options.readiness.clone();
    tokio::spawn(async move {
        // The store's readiness signal keeps one waker only, and the controller waits on
        // it too: a waiter polled before the controller's is never woken. Polling again
        // every so often sees the signal once it was given.
        loop {
            match tokio::time::timeout(SYNC_POLL, store.wait_until_ready()).await {
                Ok(Ok(())) => {
                    readiness.mark_synced(READINESS_NAME);
                    info!("NuOperator watch synced");
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => {}
            }
        }
    });

    info!(
        namespace = options.namespace.as_deref().unwrap_or("<all>"),
        "starting the NuOperator controller"
    );
    let context = Context::new(client, options.settings);
    controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(namespace = object.namespace.as_deref().unwrap_or_default(), name = %object.name, "reconciled"),
                Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {
                    // Already logged by the error policy.
                }
                Err(e) => warn!("controller: {e}"),
            }
        })
        .await;
    info!("NuOperator controller stopped");
    Ok(())
}
