//! A decorator that records every request before passing it on, for tests and for
//! showing what a script would have done.
//!
//! No I/O of its own: the wrapped cluster does it.

use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use serde_json::Value;

use super::{Cluster, KindName, Request, ResolvedKind};
use crate::k8s::K8sError;

/// A cluster that remembers the requests it was given, in order.
pub struct Recording<C: ?Sized> {
    inner: Arc<C>,
    requests: Mutex<Vec<Request>>,
}

impl<C: Cluster + ?Sized> Recording<C> {
    /// Records what goes to `inner`.
    pub fn new(inner: Arc<C>) -> Self {
        Self {
            inner,
            requests: Mutex::new(Vec::new()),
        }
    }

    /// The requests so far, in order (failed ones included).
    pub fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The wrapped cluster.
    pub fn inner(&self) -> &Arc<C> {
        &self.inner
    }
}

impl<C: Cluster + ?Sized> Cluster for Recording<C> {
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.clone());
        self.inner.execute(field_manager, request)
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
    fn every_request_is_recorded_in_order() {
        let fake = Arc::new(FakeCluster::new(vec![]).expect("fake"));
        let recording = Recording::new(fake);
        let kind = KindName {
            kind: "configmaps".into(),
            api_version: None,
        };
        let requests = [
            Request::List {
                kind: kind.clone(),
                namespace: None,
                labels: None,
                fields: None,
                live: false,
            },
            Request::Create {
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "a", "namespace": "n"}}),
                dry_run: false,
            },
            Request::Create {
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "a", "namespace": "n"}}),
                dry_run: false,
            },
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let results: Vec<bool> = requests
            .iter()
            .map(|r| runtime.block_on(recording.execute("m", r)).is_ok())
            .collect();
        assert_eq!(results, vec![true, true, false]);
        assert_eq!(recording.requests(), requests.to_vec());
        let resolved = runtime.block_on(recording.resolve(&kind)).expect("resolve");
        assert_eq!(resolved.kind, "ConfigMap");
    }
}
