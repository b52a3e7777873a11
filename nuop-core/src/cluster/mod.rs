//! What `k8s` commands run against: the [`Cluster`] trait and its requests.
//!
//! This module only defines the boundary; implementations do the I/O: the live cluster
//! (cached reads from the informer registry, writes through the API client), an
//! in-memory fake (for `exec --cluster`, the script test harness and unit tests), and a
//! recording decorator (the commands a call issued). A [`Request`] is fully resolved:
//! defaults (the primary's namespace, owner references) were applied by the per-call
//! session before it got here, except that a namespace given for a cluster-scoped
//! kind is ignored. Kind resolution ([`Cluster::resolve`], pure matching in
//! [`resolve_among`]) tells the session a kind's scope and identity.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::k8s::K8sError;

/// A kind as a script named it: `ConfigMap`, `configmaps`, `deployments.apps`, with an
/// optional apiVersion to settle ambiguity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KindName {
    /// As written: Kind, plural, or kind.group / plural.group.
    pub kind: String,
    /// `--api-version`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// One object by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The kind.
    pub kind: KindName,
    /// The namespace (none for cluster-scoped kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// Which patch a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchType {
    /// JSON merge patch (RFC 7386).
    Merge,
    /// JSON patch (RFC 6902).
    Json,
}

/// How a delete treats the object's dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    /// The garbage collector deletes dependents afterwards (the API default).
    #[default]
    Background,
    /// Dependents go first.
    Foreground,
    /// Dependents are kept.
    Orphan,
}

/// One resolved request to a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case")]
pub enum Request {
    /// One object, or null.
    Get {
        /// Which object.
        target: Target,
        /// Bypass the cache.
        live: bool,
    },
    /// Objects of a kind.
    List {
        /// The kind.
        kind: KindName,
        /// One namespace, or every namespace when none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
        /// Label selector in the API's string form, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        labels: Option<String>,
        /// Field selector in the API's string form, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<String>,
        /// Bypass the cache.
        live: bool,
    },
    /// Server-side apply of one object (forced, under `field_manager`).
    Apply {
        /// The object, with apiVersion, kind, metadata.name (and namespace).
        object: Value,
        /// Write the status subresource.
        status: bool,
        /// Validate only.
        dry_run: bool,
    },
    /// Patch one object.
    Patch {
        /// Which object.
        target: Target,
        /// Merge or JSON patch.
        patch_type: PatchType,
        /// The patch document.
        patch: Value,
        /// Patch the status subresource.
        status: bool,
    },
    /// Create one object.
    Create {
        /// The object.
        object: Value,
        /// Validate only.
        dry_run: bool,
    },
    /// Delete one object; absent is not an error.
    Delete {
        /// Which object.
        target: Target,
        /// What happens to its dependents.
        propagation: Propagation,
    },
}

impl Request {
    /// The verb, as the `k8s` command is named.
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Get { .. } => "get",
            Self::List { .. } => "list",
            Self::Apply { .. } => "apply",
            Self::Patch { .. } => "patch",
            Self::Create { .. } => "create",
            Self::Delete { .. } => "delete",
        }
    }
}

/// Where `k8s` commands go. `field_manager` is the writing controller's
/// (`nuop-<controller>`); reads ignore it.
pub trait Cluster: Send + Sync {
    /// Runs one request. Get answers an object or null, List a JSON array, Apply/Patch/
    /// Create the object the server returned, Delete null.
    ///
    /// # Errors
    /// A [`K8sError`] naming the verb, the target and the server's reason.
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>>;

    /// Resolves a kind as a script wrote it (Kind, plural, kind.group, `--api-version`)
    /// to the kind the cluster serves. The default knows only [`builtin_kinds`].
    ///
    /// # Errors
    /// [`crate::k8s::ErrorCode::UnknownKind`] when nothing (or more than one group)
    /// answers to the name; the error's verb is `resolve`, for the caller to replace.
    fn resolve<'a>(&'a self, kind: &'a KindName) -> BoxFuture<'a, Result<ResolvedKind, K8sError>> {
        Box::pin(async move {
            let served: Vec<(ResolvedKind, bool)> =
                builtin_kinds().into_iter().map(|k| (k, true)).collect();
            resolve_among(&served, kind)
        })
    }
}

pub mod echo;
pub mod fake;
mod kinds;
pub mod live;
pub mod read_only;
pub mod recording;

pub use fake::FakeCluster;
pub use kinds::{
    ResolvedKind, builtin_kinds, list_target, object_target, resolve_among, split_api_version,
};
pub use live::{CachedKind, LiveCluster};
pub use recording::Recording;
