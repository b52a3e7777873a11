//! Recognising the watch events a controller's own `k8s` writes cause (their echoes), so
//! they do not wake the primary that made them again.
//!
//! No I/O of its own: [`Echoes`] wraps the cluster a controller's calls write through and
//! remembers, per object UID, the resourceVersion each successful write returned. When
//! the owns/watches routing later sees a change with exactly that UID and
//! resourceVersion, the object is what the call wrote and saw: reconciling its primary
//! again would only find everything up to date (`related::route_changes`; tested by
//! `echo::tests::only_the_exact_version_written_is_an_echo` and, end to end, by the
//! examples' tests, which still restore every edited or deleted copy).
//!
//! A controller keeps a second, separate [`Echoes`] for its write-backs (the script's
//! answer patched onto the primary itself, `reconcile::write`): the primary's own watch
//! event that carries exactly the resourceVersion the last write-back returned is not
//! reconciled (`controller::run`). The rule, and why the outcome cannot differ: that
//! event's object is the server's answer to the write, the very state the script's exit 2
//! just produced and nuop already acted on, and `requeue_after_change` is already
//! scheduled, which reconciles the object again as the script asked. Any other version
//! (another writer, a deletion timestamp, a later status write) is reconciled as before.
//! Kept apart from the calls' memory because a kind can be both the primary and a watched
//! kind, and each event must be matched against the writes of its own path only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Cluster, KindName, Request, ResolvedKind};
use crate::k8s::K8sError;

/// At most this many writes are remembered; past it the memory is cleared, which costs
/// only the reconciles the echoes would have caused anyway.
const REMEMBERED: usize = 16_384;

/// The versions a controller's writes produced, by object UID.
#[derive(Debug, Default)]
pub struct Echoes {
    written: Mutex<HashMap<String, String>>,
}

impl Echoes {
    /// An empty memory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Remembers the object a write returned.
    fn remember(&self, object: &Value) {
        if let (Some(uid), Some(version)) = (
            object.pointer("/metadata/uid").and_then(Value::as_str),
            object
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str),
        ) {
            self.remember_version(uid, version);
        }
    }

    /// Remembers that a write left the object with UID `uid` at `version`.
    pub fn remember_version(&self, uid: &str, version: &str) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if written.len() >= REMEMBERED {
            written.clear();
        }
        written.insert(uid.to_string(), version.to_string());
    }

    /// [`Self::is_echo`] for a watched object; one without UID or version is none.
    pub fn is_echo_of(&self, object: &kube::api::DynamicObject) -> bool {
        match (&object.metadata.uid, &object.metadata.resource_version) {
            (Some(uid), Some(version)) => self.is_echo(uid, version),
            _ => false,
        }
    }

    /// Whether a change is the echo of a write (same UID and resourceVersion); an echo
    /// is forgotten once seen, and any other version of the object forgets the write.
    pub fn is_echo(&self, uid: &str, version: &str) -> bool {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        match written.remove(uid) {
            Some(v) => v == version,
            None => false,
        }
    }

    /// Wraps `inner` so that its successful writes are remembered here.
    pub fn around(self: &Arc<Self>, inner: Arc<dyn Cluster>) -> Arc<dyn Cluster> {
        Arc::new(Remembering {
            inner,
            echoes: self.clone(),
        })
    }
}

struct Remembering {
    inner: Arc<dyn Cluster>,
    echoes: Arc<Echoes>,
}

impl Cluster for Remembering {
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        Box::pin(async move {
            let result = self.inner.execute(field_manager, request).await;
            let wrote = match request {
                Request::Apply { dry_run, .. } | Request::Create { dry_run, .. } => !dry_run,
                Request::Patch { .. } => true,
                Request::Get { .. } | Request::List { .. } | Request::Delete { .. } => false,
            };
            if wrote && let Ok(object) = &result {
                self.echoes.remember(object);
            }
            result
        })
    }

    fn resolve<'a>(&'a self, kind: &'a KindName) -> BoxFuture<'a, Result<ResolvedKind, K8sError>> {
        self.inner.resolve(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::FakeCluster;
    use serde_json::json;

    #[test]
    fn only_the_exact_version_written_is_an_echo() {
        let echoes = Echoes::new();
        echoes.remember(&json!({"metadata": {"uid": "u1", "resourceVersion": "7"}}));
        assert!(!echoes.is_echo("u2", "7"), "another object");
        assert!(!echoes.is_echo("u1", "8"), "a later version");
        // The later version made it forget the write.
        assert!(!echoes.is_echo("u1", "7"));
        echoes.remember(&json!({"metadata": {"uid": "u1", "resourceVersion": "9"}}));
        assert!(echoes.is_echo("u1", "9"));
        assert!(!echoes.is_echo("u1", "9"), "an echo is seen once");
    }

    #[test]
    fn a_watched_object_is_the_echo_of_a_write_back_only_at_the_version_written() {
        let echoes = Echoes::new();
        let at = |version: Option<&str>| {
            let mut object = kube::api::DynamicObject::new(
                "a",
                &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
            );
            object.metadata.uid = Some("u1".into());
            object.metadata.resource_version = version.map(str::to_string);
            object
        };
        echoes.remember_version("u1", "5");
        assert!(!echoes.is_echo_of(&at(None)), "no version: not an echo");
        assert!(echoes.is_echo_of(&at(Some("5"))));
        assert!(!echoes.is_echo_of(&at(Some("5"))), "seen once");
        echoes.remember_version("u1", "6");
        assert!(
            !echoes.is_echo_of(&at(Some("7"))),
            "someone else's later write"
        );
    }

    #[tokio::test]
    async fn writes_are_remembered_and_reads_and_dry_runs_are_not() {
        let echoes = Echoes::new();
        let cluster = echoes.around(Arc::new(
            FakeCluster::new(Vec::new()).expect("empty cluster"),
        ));
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n"}, "data": {"k": "v"}});
        let dry = cluster
            .execute(
                "m",
                &Request::Apply {
                    object: object.clone(),
                    status: false,
                    dry_run: true,
                },
            )
            .await
            .expect("dry run");
        let uid = dry["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let version = dry["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!echoes.is_echo(&uid, &version), "a dry run wrote nothing");
        let applied = cluster
            .execute(
                "m",
                &Request::Apply {
                    object,
                    status: false,
                    dry_run: false,
                },
            )
            .await
            .expect("apply");
        let uid = applied["metadata"]["uid"].as_str().expect("uid");
        let version = applied["metadata"]["resourceVersion"]
            .as_str()
            .expect("resourceVersion");
        assert!(echoes.is_echo(uid, version));
    }
}
