//! Installing the `NuOperator` CRD into a cluster and waiting until it is served.
//!
//! Does I/O. Used by tests (which share one control plane and run in parallel, so the
//! install must be idempotent) and by tooling; in a real cluster the CRD comes from
//! `config/crd` (`make deploy`).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, CustomResourceExt as _};

use crate::{CRD_NAME, NuOperator};

/// Server-side applies the `NuOperator` CRD as `field_manager` and waits (up to
/// `timeout`) until the API server reports it Established.
///
/// Applying the same CRD from several processes at once is safe: server-side apply with
/// identical content is a no-op.
///
/// # Errors
/// When the apply fails, or the CRD is not Established within `timeout`.
pub async fn ensure_crd(
    client: Client,
    field_manager: &str,
    timeout: Duration,
) -> Result<(), InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    api.patch(
        CRD_NAME,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(NuOperator::crd()),
    )
    .await
    .map_err(InstallError::Apply)?;
    let established = await_condition(api, CRD_NAME, conditions::is_crd_established());
    match tokio::time::timeout(timeout, established).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(InstallError::Wait(e)),
        Err(_) => Err(InstallError::NotEstablished(timeout)),
    }
}

/// Why the CRD could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The server-side apply of the CRD failed.
    #[error("failed to apply the CRD {CRD_NAME}: {0}")]
    Apply(#[source] kube::Error),
    /// Watching the CRD for its Established condition failed.
    #[error("failed to watch the CRD {CRD_NAME} for its Established condition: {0}")]
    Wait(#[source] kube::runtime::wait::Error),
    /// The CRD did not become Established in time.
    #[error("the CRD {CRD_NAME} was not Established within {0:?}")]
    NotEstablished(Duration),
}
