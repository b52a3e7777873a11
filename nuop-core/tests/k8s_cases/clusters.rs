//! Clusters for `k8s` command tests besides `FakeCluster`: one whose reads lag behind its
//! writes, and one that never answers.
//!
//! Include with `#[path = "k8s_cases/clusters.rs"] mod clusters;`.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use nuop_core::cluster::{Cluster, FakeCluster, KindName, Request, ResolvedKind};
use nuop_core::k8s::K8sError;
use serde_json::Value;

/// A cluster whose reads come from a snapshot of the objects taken before the call and
/// whose writes go to a live copy: a watch cache that has not caught up yet.
pub struct Lagging {
    reads: FakeCluster,
    writes: FakeCluster,
}

impl Lagging {
    /// Both copies start with `objects`.
    ///
    /// # Panics
    /// When an object lacks apiVersion, kind or metadata.name.
    pub fn new(objects: Vec<Value>) -> Self {
        Self {
            reads: FakeCluster::new(objects.clone()).expect("fake cluster"),
            writes: FakeCluster::new(objects).expect("fake cluster"),
        }
    }
}

impl Cluster for Lagging {
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        match request {
            Request::Get { .. } | Request::List { .. } => {
                self.reads.execute(field_manager, request)
            }
            _ => self.writes.execute(field_manager, request),
        }
    }

    fn resolve<'a>(&'a self, kind: &'a KindName) -> BoxFuture<'a, Result<ResolvedKind, K8sError>> {
        self.reads.resolve(kind)
    }
}

/// A cluster that never answers, counting the requests waiting on it.
#[derive(Default)]
pub struct Hanging {
    /// Requests in flight.
    pub waiting: Arc<AtomicUsize>,
}

struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Cluster for Hanging {
    fn execute<'a>(
        &'a self,
        _field_manager: &'a str,
        _request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        let waiting = self.waiting.clone();
        Box::pin(async move {
            waiting.fetch_add(1, Ordering::SeqCst);
            let _guard = Waiting(waiting);
            futures::future::pending::<()>().await;
            Ok(Value::Null)
        })
    }
}
