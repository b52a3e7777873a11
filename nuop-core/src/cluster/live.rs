//! The live cluster: declared kinds read from the controller's informer caches, every
//! other read and every write through the API server.
//!
//! Does I/O (the API client). Kinds are resolved through discovery (aggregated when the
//! server offers it), cached and refreshed on a miss. A read is served from a
//! [`CachedKind`] when that cache covers it ([`covers`], pure): same kind, the cache's
//! namespace unset or the read's, the cache's label selector implied by the read's, its
//! field selector contained in the read's, and the read's field selector only on
//! `metadata.name`/`metadata.namespace`. A get that a *narrowed* cache does not hold is
//! asked of the API server (the object may exist outside the cache's selector). Every
//! read that goes to the API server (`--live`, or no covering cache) is counted in
//! `nuop_k8s_uncached_reads_total{controller,kind}`, and the first such read of a kind
//! (without `--live`) is warned about. Uncached lists go with `resourceVersion=0`
//! (`ListParams::match_any`), which the API server answers from its watch cache, except
//! `--live` ones: those are consistent reads, so they see every write that came before.
//! Writes are forced server-side apply under the controller's field manager, merge or
//! JSON patches, creates and deletes (404 is not an error). Objects come back without
//! managedFields.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::discovery::{Discovery, Scope};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use super::{
    Cluster, KindName, PatchType, Propagation, Request, ResolvedKind, list_target, object_target,
    resolve_among,
};
use crate::k8s::selector::{FieldSelector, LabelSelector};
use crate::k8s::{ErrorCode, K8sError};
use crate::metrics::METRICS;

/// How long after one discovery a miss may trigger another (a script asking for a kind
/// that does not exist must not run discovery on every call).
const REDISCOVERY_INTERVAL: Duration = Duration::from_secs(5);

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

/// What a read asks for, as [`covers`] compares it with a cache.
#[derive(Debug, Clone)]
pub struct ReadScope<'a> {
    /// The kind.
    pub kind: &'a ResolvedKind,
    /// One namespace, or all.
    pub namespace: Option<&'a str>,
    /// The read's label selector.
    pub labels: Option<&'a LabelSelector>,
    /// The read's field selector.
    pub fields: Option<&'a FieldSelector>,
}

/// Whether `cache` watches `kind` in `namespace` (all namespaces when none), whatever
/// its selectors.
fn watches(cache: &CachedKind, kind: &ResolvedKind, namespace: Option<&str>) -> bool {
    let same_kind = cache.resource.group == kind.group && cache.resource.kind == kind.kind;
    let in_namespace = match (&cache.namespace, namespace) {
        (None, _) => true,
        (Some(c), Some(r)) => c == r,
        (Some(_), None) => !cache.namespaced,
    };
    same_kind && in_namespace
}

/// Whether a cache narrowed as `cache` holds every object `read` asks for.
pub fn covers(cache: &CachedKind, read: &ReadScope<'_>) -> bool {
    let labels = match &cache.labels {
        None => true,
        Some(text) => match LabelSelector::parse(text) {
            Ok(narrowed) => read.labels.is_some_and(|mine| mine.implies(&narrowed)),
            Err(_) => false,
        },
    };
    let fields_cacheable = read.fields.is_none_or(FieldSelector::only_metadata);
    let fields = match &cache.fields {
        None => true,
        Some(text) => match FieldSelector::parse(text) {
            Ok(narrowed) => read.fields.is_some_and(|mine| mine.implies(&narrowed)),
            Err(_) => false,
        },
    };
    watches(cache, read.kind, read.namespace) && labels && fields_cacheable && fields
}

/// Whether a cache holds *all* objects of its kind in a namespace (not narrowed by a
/// selector), so that absence from it means absence.
fn complete(cache: &CachedKind) -> bool {
    cache.labels.is_none() && cache.fields.is_none()
}

struct Discovered {
    kinds: Vec<(ResolvedKind, bool)>,
    at: Option<Instant>,
}

/// `k8s` commands against the real API server, reading declared kinds from caches.
pub struct LiveCluster {
    client: Client,
    caches: Vec<CachedKind>,
    discovered: tokio::sync::RwLock<Discovered>,
    /// Kinds whose uncached reads were warned about.
    warned: Mutex<HashSet<String>>,
}

impl LiveCluster {
    /// A live cluster for one controller, over the caches it declared.
    pub fn new(client: Client, caches: Vec<CachedKind>) -> Self {
        Self {
            client,
            caches,
            discovered: tokio::sync::RwLock::new(Discovered {
                kinds: Vec::new(),
                at: None,
            }),
            warned: Mutex::new(HashSet::new()),
        }
    }

    async fn discover(&self) -> Result<(), K8sError> {
        let mut discovered = self.discovered.write().await;
        if discovered
            .at
            .is_some_and(|at| at.elapsed() < REDISCOVERY_INTERVAL)
        {
            return Ok(());
        }
        let found = match Discovery::new(self.client.clone()).run_aggregated().await {
            Ok(d) => d,
            Err(_) => Discovery::new(self.client.clone())
                .run()
                .await
                .map_err(|e| map_error("resolve", "kinds".into(), e))?,
        };
        let mut kinds = Vec::new();
        for group in found.groups() {
            let preferred = group.preferred_version_or_latest().to_string();
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    kinds.push((
                        ResolvedKind {
                            group: ar.group.clone(),
                            version: ar.version.clone(),
                            kind: ar.kind.clone(),
                            plural: ar.plural.clone(),
                            namespaced: caps.scope == Scope::Namespaced,
                        },
                        version == preferred,
                    ));
                }
            }
        }
        discovered.kinds = kinds;
        discovered.at = Some(Instant::now());
        Ok(())
    }

    async fn resolve_kind(&self, kind: &KindName) -> Result<ResolvedKind, K8sError> {
        {
            let discovered = self.discovered.read().await;
            if discovered.at.is_some()
                && let Ok(found) = resolve_among(&discovered.kinds, kind)
            {
                return Ok(found);
            }
        }
        self.discover().await?;
        resolve_among(&self.discovered.read().await.kinds, kind)
    }

    fn api(&self, kind: &ResolvedKind, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = api_resource(kind);
        match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    fn cache_for(&self, read: &ReadScope<'_>) -> Option<&CachedKind> {
        self.caches.iter().find(|c| covers(c, read))
    }

    /// Counts (and the first time per kind, without `--live`, warns about) a read that
    /// goes to the API server.
    fn uncached(&self, field_manager: &str, kind: &ResolvedKind, live: bool) {
        let controller = field_manager.strip_prefix("nuop-").unwrap_or(field_manager);
        METRICS
            .k8s_uncached_reads
            .with_label_values(&[controller, kind.kind.as_str()])
            .inc();
        if live {
            return;
        }
        let first = self
            .warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind.qualified());
        if first {
            tracing::warn!(
                controller,
                kind = %kind.kind,
                "k8s reads of {} are not served from a cache: declare the kind under `watches` or `reads` (or `owns`) to stop reading the API server on every call",
                kind.qualified()
            );
        }
    }

    async fn run(&self, field_manager: &str, request: &Request) -> Result<Value, K8sError> {
        match request {
            Request::Get { target, live } => {
                let kind = self.resolve_kind(&target.kind).await?;
                let namespace = target.namespace.as_deref().filter(|_| kind.namespaced);
                let text = object_target(&kind.kind, namespace, &target.name);
                if !live {
                    // Any cache of the kind that holds the object answers; only a cache
                    // of every object of the kind answers that it is absent.
                    let mut absent = false;
                    for cache in self.caches.iter().filter(|c| watches(c, &kind, namespace)) {
                        let key = ObjectRef::new_with(&target.name, cache.resource.clone());
                        let key = match namespace {
                            Some(ns) if kind.namespaced => key.within(ns),
                            _ => key,
                        };
                        if let Some(found) = cache.store.get(&key) {
                            return Ok(object_value(&found, &cache.resource));
                        }
                        absent |= complete(cache);
                    }
                    if absent {
                        return Ok(Value::Null);
                    }
                }
                self.uncached(field_manager, &kind, *live);
                let found = self
                    .api(&kind, namespace)
                    .get_opt(&target.name)
                    .await
                    .map_err(|e| map_error("get", text, e))?;
                Ok(found.map_or(Value::Null, |o| object_value(&o, &api_resource(&kind))))
            }
            Request::List {
                kind,
                namespace,
                labels,
                fields,
                live,
            } => {
                let kind = self.resolve_kind(kind).await?;
                let namespace = namespace.as_deref().filter(|_| kind.namespaced);
                let text = list_target(&kind.plural, kind.namespaced, namespace);
                let usage = |e: String| K8sError {
                    verb: "list".into(),
                    target: text.clone(),
                    reason: e,
                    code: ErrorCode::Usage,
                };
                let label_selector = labels
                    .as_deref()
                    .map(LabelSelector::parse)
                    .transpose()
                    .map_err(usage)?;
                let field_selector = fields
                    .as_deref()
                    .map(FieldSelector::parse)
                    .transpose()
                    .map_err(usage)?;
                if !live {
                    let read = ReadScope {
                        kind: &kind,
                        namespace,
                        labels: label_selector.as_ref(),
                        fields: field_selector.as_ref(),
                    };
                    if let Some(cache) = self.cache_for(&read) {
                        let items = cache
                            .store
                            .state()
                            .into_iter()
                            .filter(|o| {
                                namespace
                                    .is_none_or(|ns| o.metadata.namespace.as_deref() == Some(ns))
                            })
                            .map(|o| object_value(&o, &cache.resource))
                            .filter(|o| {
                                label_selector.as_ref().is_none_or(|l| l.matches_object(o))
                                    && field_selector.as_ref().is_none_or(|f| f.matches(o))
                            })
                            .collect();
                        return Ok(Value::Array(items));
                    }
                }
                self.uncached(field_manager, &kind, *live);
                // `--live` asks for what the server holds now: a consistent read from
                // etcd. Otherwise the API server's watch cache (resourceVersion=0) is
                // fresh enough and much cheaper.
                let mut params = if *live {
                    ListParams::default()
                } else {
                    ListParams::default().match_any()
                };
                if let Some(l) = labels {
                    params = params.labels(l);
                }
                if let Some(f) = fields {
                    params = params.fields(f);
                }
                let ar = api_resource(&kind);
                let list = self
                    .api(&kind, namespace)
                    .list(&params)
                    .await
                    .map_err(|e| map_error("list", text, e))?;
                Ok(Value::Array(
                    list.items.iter().map(|o| object_value(o, &ar)).collect(),
                ))
            }
            Request::Apply {
                object,
                status,
                dry_run,
            } => {
                let (kind, namespace, name) = self.identify(object).await?;
                let text = object_target(&kind.kind, namespace.as_deref(), &name);
                let mut params = PatchParams::apply(field_manager).force();
                if *dry_run {
                    params = params.dry_run();
                }
                let api = self.api(&kind, namespace.as_deref());
                let patch = Patch::Apply(object);
                let result = if *status {
                    api.patch_status(&name, &params, &patch).await
                } else {
                    api.patch(&name, &params, &patch).await
                };
                result
                    .map(|o| object_value(&o, &api_resource(&kind)))
                    .map_err(|e| map_error("apply", text, e))
            }
            Request::Patch {
                target,
                patch_type,
                patch,
                status,
            } => {
                let kind = self.resolve_kind(&target.kind).await?;
                let namespace = target.namespace.as_deref().filter(|_| kind.namespaced);
                let text = object_target(&kind.kind, namespace, &target.name);
                let params = PatchParams {
                    field_manager: Some(field_manager.to_string()),
                    ..PatchParams::default()
                };
                let api = self.api(&kind, namespace);
                let result = match patch_type {
                    PatchType::Merge => {
                        let patch = Patch::Merge(patch);
                        if *status {
                            api.patch_status(&target.name, &params, &patch).await
                        } else {
                            api.patch(&target.name, &params, &patch).await
                        }
                    }
                    PatchType::Json => {
                        let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                            .map_err(|e| K8sError {
                                verb: "patch".into(),
                                target: text.clone(),
                                reason: format!("not a JSON patch: {e}"),
                                code: ErrorCode::Usage,
                            })?;
                        let patch = Patch::<()>::Json(ops);
                        if *status {
                            api.patch_status(&target.name, &params, &patch).await
                        } else {
                            api.patch(&target.name, &params, &patch).await
                        }
                    }
                };
                result
                    .map(|o| object_value(&o, &api_resource(&kind)))
                    .map_err(|e| map_error("patch", text, e))
            }
            Request::Create { object, dry_run } => {
                let (kind, namespace, name) = self.identify(object).await?;
                let text = object_target(&kind.kind, namespace.as_deref(), &name);
                let data: DynamicObject =
                    serde_json::from_value(object.clone()).map_err(|e| K8sError {
                        verb: "create".into(),
                        target: text.clone(),
                        reason: format!("not an object: {e}"),
                        code: ErrorCode::Usage,
                    })?;
                let params = PostParams {
                    dry_run: *dry_run,
                    field_manager: Some(field_manager.to_string()),
                };
                self.api(&kind, namespace.as_deref())
                    .create(&params, &data)
                    .await
                    .map(|o| object_value(&o, &api_resource(&kind)))
                    .map_err(|e| map_error("create", text, e))
            }
            Request::Delete {
                target,
                propagation,
            } => {
                let kind = self.resolve_kind(&target.kind).await?;
                let namespace = target.namespace.as_deref().filter(|_| kind.namespaced);
                let text = object_target(&kind.kind, namespace, &target.name);
                let params = match propagation {
                    Propagation::Background => DeleteParams::background(),
                    Propagation::Foreground => DeleteParams::foreground(),
                    Propagation::Orphan => DeleteParams::orphan(),
                };
                match self
                    .api(&kind, namespace)
                    .delete(&target.name, &params)
                    .await
                {
                    Ok(_) => Ok(Value::Null),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(Value::Null),
                    Err(e) => Err(map_error("delete", text, e)),
                }
            }
        }
    }

    /// The kind, namespace and name of an object to write.
    async fn identify(
        &self,
        object: &Value,
    ) -> Result<(ResolvedKind, Option<String>, String), K8sError> {
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let kind = self
            .resolve_kind(&KindName {
                kind: text("/kind").unwrap_or_default(),
                api_version: text("/apiVersion"),
            })
            .await?;
        let namespace = text("/metadata/namespace").filter(|_| kind.namespaced);
        let name = text("/metadata/name")
            .or_else(|| text("/metadata/generateName"))
            .unwrap_or_default();
        Ok((kind, namespace, name))
    }
}

fn api_resource(kind: &ResolvedKind) -> ApiResource {
    ApiResource {
        group: kind.group.clone(),
        version: kind.version.clone(),
        api_version: kind.api_version(),
        kind: kind.kind.clone(),
        plural: kind.plural.clone(),
    }
}

/// An object as scripts see it: apiVersion and kind set, no managedFields.
fn object_value(object: &DynamicObject, resource: &ApiResource) -> Value {
    crate::reconcile::object_value(object, resource)
}

/// The code of an API error: by HTTP status, and for 409 by reason.
pub fn error_code(status: u16, reason: &str) -> ErrorCode {
    match status {
        404 => ErrorCode::NotFound,
        409 if reason == "AlreadyExists" => ErrorCode::AlreadyExists,
        409 => ErrorCode::Conflict,
        401 | 403 => ErrorCode::Forbidden,
        400 | 422 => ErrorCode::Invalid,
        500..=599 => ErrorCode::Unavailable,
        _ => ErrorCode::Other,
    }
}

/// A kube error as a `k8s` error: the server's message and its class; anything that is
/// not an answer from the server (connection, TLS, timeouts) is `unavailable`.
fn map_error(verb: &str, target: String, error: kube::Error) -> K8sError {
    let (reason, code) = match &error {
        kube::Error::Api(status) => (
            if status.message.is_empty() {
                format!("{} ({})", status.reason, status.code)
            } else {
                status.message.clone()
            },
            error_code(status.code, &status.reason),
        ),
        kube::Error::SerdeError(e) => (e.to_string(), ErrorCode::Other),
        other => (other.to_string(), ErrorCode::Unavailable),
    };
    K8sError {
        verb: verb.into(),
        target,
        reason,
        code,
    }
}

impl Cluster for LiveCluster {
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        Box::pin(self.run(field_manager, request))
    }

    fn resolve<'a>(&'a self, kind: &'a KindName) -> BoxFuture<'a, Result<ResolvedKind, K8sError>> {
        Box::pin(self.resolve_kind(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;

    fn cache(namespace: Option<&str>, labels: Option<&str>, fields: Option<&str>) -> CachedKind {
        let resource = ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
        };
        let store = reflector::store::Writer::<DynamicObject>::new(resource.clone()).as_reader();
        CachedKind {
            resource,
            namespaced: true,
            namespace: namespace.map(Into::into),
            labels: labels.map(Into::into),
            fields: fields.map(Into::into),
            store,
        }
    }

    fn configmaps() -> ResolvedKind {
        ResolvedKind::new("v1", "ConfigMap", "configmaps", true)
    }

    fn covered(
        c: &CachedKind,
        ns: Option<&str>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> bool {
        let kind = configmaps();
        let labels = labels.map(|l| LabelSelector::parse(l).expect("labels"));
        let fields = fields.map(|f| FieldSelector::parse(f).expect("fields"));
        covers(
            c,
            &ReadScope {
                kind: &kind,
                namespace: ns,
                labels: labels.as_ref(),
                fields: fields.as_ref(),
            },
        )
    }

    #[test]
    fn a_cache_covers_reads_within_its_scope_and_selectors() {
        let all = cache(None, None, None);
        assert!(covered(&all, None, None, None));
        assert!(covered(
            &all,
            Some("n"),
            Some("a=b"),
            Some("metadata.name=x")
        ));
        assert!(!covered(&all, None, None, Some("status.phase=Active")));
        let one = cache(Some("n"), None, None);
        assert!(covered(&one, Some("n"), None, None));
        assert!(!covered(&one, Some("m"), None, None));
        assert!(!covered(&one, None, None, None));
        let owned = cache(None, Some("nuop.dev/controller"), None);
        assert!(covered(
            &owned,
            Some("n"),
            Some("nuop.dev/controller=x"),
            None
        ));
        assert!(!covered(&owned, Some("n"), None, None));
        let narrowed = cache(None, None, Some("metadata.name=x"));
        assert!(covered(
            &narrowed,
            None,
            None,
            Some("metadata.name=x,metadata.namespace=n")
        ));
        assert!(!covered(&narrowed, None, None, None));
        let secrets = ResolvedKind::new("v1", "Secret", "secrets", true);
        assert!(!covers(
            &all,
            &ReadScope {
                kind: &secrets,
                namespace: None,
                labels: None,
                fields: None
            }
        ));
        assert!(complete(&all) && !complete(&owned) && !complete(&narrowed));
    }

    #[test]
    fn api_errors_are_classified() {
        assert_eq!(error_code(404, "NotFound"), ErrorCode::NotFound);
        assert_eq!(error_code(409, "AlreadyExists"), ErrorCode::AlreadyExists);
        assert_eq!(error_code(409, "Conflict"), ErrorCode::Conflict);
        assert_eq!(error_code(403, "Forbidden"), ErrorCode::Forbidden);
        assert_eq!(error_code(422, "Invalid"), ErrorCode::Invalid);
        assert_eq!(
            error_code(503, "ServiceUnavailable"),
            ErrorCode::Unavailable
        );
        assert_eq!(error_code(429, "TooManyRequests"), ErrorCode::Other);
    }
}
