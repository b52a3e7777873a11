//! The live cluster: declared kinds read from the controller's informer caches, every
//! other read and every write through the API server.
//!
//! Does I/O (the API client). Interface placeholder: the caches are wired by the
//! controller; the request handling lands with the `k8s` commands (issue 13).

use futures::future::BoxFuture;
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::Store;
use serde_json::Value;

use super::{Cluster, Request};
use crate::k8s::{ErrorCode, K8sError};

/// One informer cache a controller declared (its primary, `owns`, `watches`, `reads`),
/// as the controller hands it to the live cluster.
#[derive(Clone)]
pub struct CachedKind {
    /// The kind as discovery resolved it.
    pub resource: ApiResource,
    /// Whether the kind is namespaced.
    pub namespaced: bool,
    /// The one namespace the cache watches, or none for all namespaces.
    pub namespace: Option<String>,
    /// The label selector the watch was narrowed by, in the API's string form
    /// (`a=b,nuop.dev/controller`), if any: a read is served from this cache only when
    /// its own selector implies this one.
    pub labels: Option<String>,
    /// The field selector the watch was narrowed by, in the API's string form, if any.
    pub fields: Option<String>,
    /// The cache, synced before the controller starts.
    pub store: Store<DynamicObject>,
}

/// `k8s` commands against the real API server, reading declared kinds from caches.
pub struct LiveCluster {
    #[allow(dead_code)]
    client: Client,
    #[allow(dead_code)]
    caches: Vec<CachedKind>,
}

impl LiveCluster {
    /// A live cluster for one controller, over the caches it declared.
    pub fn new(client: Client, caches: Vec<CachedKind>) -> Self {
        Self { client, caches }
    }
}

impl Cluster for LiveCluster {
    fn execute<'a>(
        &'a self,
        _field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        Box::pin(async move {
            Err(K8sError {
                verb: request.verb().to_string(),
                target: String::new(),
                reason: "not implemented yet".into(),
                code: ErrorCode::Other,
            })
        })
    }
}
