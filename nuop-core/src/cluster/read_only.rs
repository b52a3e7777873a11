//! A decorator that passes reads on and refuses every write: what `k8s` commands run
//! against in the webhook phases (`validate`, `mutate`, `convert`), whose webhooks
//! declare `sideEffects: None` — the API server calls them for dry-run requests too,
//! and may call them more than once per request.
//!
//! No I/O of its own: the wrapped cluster does it.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Cluster, KindName, Request, ResolvedKind, object_target};
use crate::k8s::{ErrorCode, K8sError};

/// A cluster that serves `get` and `list` and refuses `apply`, `patch`, `create` and
/// `delete` with [`ErrorCode::Forbidden`].
pub struct ReadOnly<C: ?Sized> {
    inner: Arc<C>,
    /// The phase named in the refusal.
    phase: &'static str,
}

impl<C: Cluster + ?Sized> ReadOnly<C> {
    /// Reads go to `inner`; writes are refused, naming `phase`.
    pub fn new(inner: Arc<C>, phase: &'static str) -> Self {
        Self { inner, phase }
    }
}

fn target_of(request: &Request) -> String {
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    match request {
        Request::Get { target, .. }
        | Request::Patch { target, .. }
        | Request::Delete { target, .. } => {
            object_target(&target.kind.kind, target.namespace.as_deref(), &target.name)
        }
        Request::Apply { object, .. } | Request::Create { object, .. } => object_target(
            &text(object, "/kind").unwrap_or_else(|| "object".into()),
            text(object, "/metadata/namespace").as_deref(),
            &text(object, "/metadata/name").unwrap_or_else(|| "?".into()),
        ),
        Request::List { kind, .. } => kind.kind.to_lowercase(),
    }
}

impl<C: Cluster + ?Sized> Cluster for ReadOnly<C> {
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        match request {
            Request::Get { .. } | Request::List { .. } => {
                self.inner.execute(field_manager, request)
            }
            _ => {
                let refused = K8sError {
                    verb: request.verb().into(),
                    target: target_of(request),
                    reason: format!(
                        "writes are refused in `main {}`: webhooks declare sideEffects None \
                         (the API server also calls them for dry-run requests); make changes \
                         in `main reconcile`, or answer the change from `main mutate`",
                        self.phase
                    ),
                    code: ErrorCode::Forbidden,
                };
                Box::pin(async move { Err(refused) })
            }
        }
    }

    fn resolve<'a>(&'a self, kind: &'a KindName) -> BoxFuture<'a, Result<ResolvedKind, K8sError>> {
        self.inner.resolve(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{FakeCluster, Target};
    use serde_json::json;

    #[tokio::test]
    async fn writes_are_refused_and_reads_pass() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "a", "namespace": "ns"}});
        let fake = Arc::new(FakeCluster::new(vec![cm.clone()]).expect("fake"));
        let cluster = ReadOnly::new(fake, "validate");
        let target = Target {
            kind: KindName {
                kind: "ConfigMap".into(),
                api_version: None,
            },
            namespace: Some("ns".into()),
            name: "a".into(),
        };
        let got = cluster
            .execute(
                "m",
                &Request::Get {
                    target: target.clone(),
                    live: false,
                },
            )
            .await
            .expect("get passes");
        assert_eq!(got["metadata"]["name"], json!("a"));
        for write in [
            Request::Apply {
                object: cm.clone(),
                status: false,
                dry_run: false,
            },
            Request::Create {
                object: cm.clone(),
                dry_run: true,
            },
            Request::Delete {
                target: target.clone(),
                propagation: Default::default(),
            },
        ] {
            let err = cluster.execute("m", &write).await.expect_err("refused");
            assert_eq!(err.code, ErrorCode::Forbidden);
            assert!(err.reason.contains("main validate"), "{err}");
            assert_eq!(err.target, "configmap ns/a");
        }
    }
}
