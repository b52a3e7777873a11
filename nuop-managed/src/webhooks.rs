//! Publishing the webhooks the scripts declare into the NuOperator's status, for the
//! manager to register (managed pods only serve; they never create webhook
//! configurations, which are cluster-wide, see `nuop_manager::webhooks`).
//!
//! [`status_patch`] is pure; [`publish`] does the I/O: it server-side applies
//! `status.webhooks` and `status.conversions` under its own field manager
//! ([`FIELD_MANAGER`]), so it neither overwrites nor is overwritten by the sources and
//! mappings the status writer applies, each time the declared hooks change.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource as _};
use nuop_core::webhook::configuration::{Conversion, Hook};
use nuop_crd::{NuOperator, OperatorRef};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The field manager of `status.webhooks` and `status.conversions`.
pub const FIELD_MANAGER: &str = "nuop-managed-webhooks";

/// The status apply body declaring `hooks` and `conversions` (empty lists clear them).
pub fn status_patch(hooks: &[Hook], conversions: &[Conversion]) -> Value {
    json!({
        "apiVersion": NuOperator::api_version(&()),
        "kind": NuOperator::kind(&()),
        "status": {"webhooks": hooks, "conversions": conversions},
    })
}

/// Applies the declared hooks to `operator`'s status each time `declared` changes, until
/// `shutdown`; a failed write is logged and retried.
///
/// The managed binary's wiring feeds `declared` with what its scripts' configs declare
/// (the same `Hook`s and `Conversion`s standard mode registers itself).
pub async fn publish(
    client: Client,
    operator: OperatorRef,
    mut declared: watch::Receiver<(Vec<Hook>, Vec<Conversion>)>,
    shutdown: CancellationToken,
) {
    let api: Api<NuOperator> = Api::namespaced(client, &operator.namespace);
    let mut open = true;
    loop {
        let (hooks, conversions) = declared.borrow_and_update().clone();
        let retry = match api
            .patch_status(
                &operator.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&status_patch(&hooks, &conversions)),
            )
            .await
        {
            Ok(_) => {
                debug!(operator = %operator.name, hooks = hooks.len(), "webhooks published");
                None
            }
            Err(e) => {
                warn!(operator = %operator.name, "cannot publish the declared webhooks (retrying): {e}");
                Some(Duration::from_secs(5))
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(retry.unwrap_or(Duration::MAX)), if retry.is_some() => {}
            // A closed channel declares nothing new: then only shutdown ends this.
            changed = declared.changed(), if open => open = changed.is_ok(),
        }
    }
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
