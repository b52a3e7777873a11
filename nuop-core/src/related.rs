//! A controller's related kinds at run time: resolving its `owns`, `watches` and
//! `reads`, subscribing to their shared informers, waiting for their first lists, and
//! routing their changes to the primaries they concern.
//!
//! Does I/O (discovery, the informers, `main map` calls). The decisions — which changes
//! pass the `on` filter and which primaries a change maps to — are the pure functions of
//! [`crate::triggers`]. Mapped primaries are routed to the per-namespace controller whose
//! store holds them (a ref sent to a controller that does not hold it would only be an
//! `ObjectNotFound` error), through bounded channels written with `try_send` only: a
//! full channel turns into one "reconcile everything" request.

use std::sync::Arc;

use futures::channel::mpsc;
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{Instrument, debug, error, info, warn};

use crate::cluster::echo::Echoes;
use crate::cluster::live::CachedKind;
use crate::health::Readiness;
use crate::informers::{Change, InformerKey, Informers, Received, Subscription};
use crate::metrics::METRICS;
use crate::protocol::{ListKind, Phase, RelatedKind, ScriptConfig, parse_document};
use crate::reconcile::{Context, object_value};
use crate::script::CallRequest;
use crate::shutdown::Shutdown;
use crate::triggers::{Filter, Primary, PrimaryRef, Wake, map_object, parse_map_output};

/// The label every object nuop applies as a child carries; `owns` caches select on its
/// existence, so one watch per child kind serves every controller in the process.
pub const CONTROLLER_LABEL: &str = "nuop.dev/controller";

/// Mapped refs buffered per controller before a full channel turns into one
/// reconcile-everything request.
const ROUTE_CAPACITY: usize = 1024;

/// One declared kind, resolved and subscribed (one subscription per namespace).
pub struct Related {
    /// Which list declared it.
    pub list: ListKind,
    /// Its position in that list, for logs (`watches[1]`).
    pub index: usize,
    /// The declaration.
    pub entry: RelatedKind,
    /// The kind as discovery resolved it.
    pub resource: ApiResource,
    /// Whether the kind is namespaced.
    pub namespaced: bool,
    /// The shared informers it reads, one per namespace (or one for all).
    pub subscriptions: Vec<Subscription>,
}

impl Related {
    /// `watches[1] (ConfigMap)`, for logs and readiness.
    pub fn label(&self) -> String {
        format!(
            "{}[{}] ({})",
            self.list.as_str(),
            self.index,
            self.resource.kind
        )
    }

    /// The caches for the `k8s` commands.
    pub fn caches(&self) -> impl Iterator<Item = CachedKind> + '_ {
        self.subscriptions.iter().map(|s| CachedKind {
            resource: self.resource.clone(),
            namespaced: self.namespaced,
            namespace: s.key().namespace.clone(),
            labels: s.key().labels.clone(),
            fields: s.key().fields.clone(),
            store: s.store(),
        })
    }
}

/// Every declared kind of `config`, in `owns`, `watches`, `reads` order.
fn declared(config: &ScriptConfig) -> Vec<(ListKind, usize, &RelatedKind)> {
    [
        (ListKind::Owns, &config.owns),
        (ListKind::Watches, &config.watches),
        (ListKind::Reads, &config.reads),
    ]
    .into_iter()
    .flat_map(|(kind, entries)| entries.iter().enumerate().map(move |(i, e)| (kind, i, e)))
    .collect()
}

/// The informer keys of one declared kind: its own namespaces; for `owns` without any,
/// the primary's (when namespaced and narrowed); else all namespaces. `owns` select on
/// [`CONTROLLER_LABEL`] existing, in addition to the entry's own selectors.
pub fn informer_keys(
    list: ListKind,
    entry: &RelatedKind,
    resource: &ApiResource,
    namespaced: bool,
    primary_namespaces: &[String],
) -> Vec<InformerKey> {
    let mut labels: Vec<String> = entry
        .label_selectors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if list == ListKind::Owns && !entry.label_selectors.contains_key(CONTROLLER_LABEL) {
        labels.push(CONTROLLER_LABEL.to_string());
    }
    let labels = (!labels.is_empty()).then(|| labels.join(","));
    let fields = (!entry.field_selectors.is_empty()).then(|| {
        entry
            .field_selectors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let namespaces: Vec<Option<String>> = if !namespaced {
        vec![None]
    } else if !entry.namespaces.is_empty() {
        entry.namespaces.iter().cloned().map(Some).collect()
    } else if list == ListKind::Owns && !primary_namespaces.is_empty() {
        primary_namespaces.iter().cloned().map(Some).collect()
    } else {
        vec![None]
    };
    namespaces
        .into_iter()
        .map(|namespace| InformerKey {
            resource: resource.clone(),
            namespace,
            labels: labels.clone(),
            fields: fields.clone(),
        })
        .collect()
}

/// Resolves every declared kind by discovery (retrying one that is not served yet,
/// noted in `readiness`) and subscribes to its informers. `None` on shutdown.
pub async fn subscribe_all(
    client: &Client,
    config: &ScriptConfig,
    primary_namespaced: bool,
    informers: &Informers,
    readiness: &Readiness,
    shutdown: Shutdown,
) -> Option<Vec<Related>> {
    let primary_namespaces: &[String] = if primary_namespaced {
        &config.namespaces
    } else {
        &[]
    };
    let mut out = Vec::new();
    for (list, index, entry) in declared(config) {
        let gvk = GroupVersionKind::gvk(&entry.group, &entry.version, &entry.kind);
        let (resource, caps) =
            crate::controller::resolve_gvk(client, &config.name, &gvk, readiness, shutdown.clone())
                .await?;
        let namespaced = caps.scope == Scope::Namespaced;
        if !namespaced && !entry.namespaces.is_empty() {
            warn!(controller = %config.name, "{}[{index}]: namespaces are ignored: {} is cluster-scoped", list.as_str(), resource.kind);
        }
        let subscriptions = informer_keys(list, entry, &resource, namespaced, primary_namespaces)
            .into_iter()
            .map(|key| informers.subscribe(client, key))
            .collect();
        out.push(Related {
            list,
            index,
            entry: entry.clone(),
            resource,
            namespaced,
            subscriptions,
        });
    }
    Some(out)
}

/// Waits until every subscription has completed its first list. While one fails, the
/// failure is logged (an error for a forbidden list or watch: RBAC must grant it) and
/// noted in `readiness`; the controller does not start on a silently empty cache.
/// Returns false on shutdown.
pub async fn wait_synced(
    controller: &str,
    related: &[Related],
    readiness: &Readiness,
    shutdown: Shutdown,
) -> bool {
    for r in related {
        for subscription in &r.subscriptions {
            let mut status = subscription.status();
            let mut reported: Option<String> = None;
            loop {
                let now = status.borrow_and_update().clone();
                if now.synced {
                    break;
                }
                let note = match &now.error {
                    Some(e) => {
                        if reported.as_deref() != Some(e.message.as_str()) {
                            if e.forbidden() {
                                error!(
                                    controller,
                                    "{}: {}; the controller does not start until it may",
                                    r.label(),
                                    e.message
                                );
                            } else {
                                warn!(controller, "{}: {}", r.label(), e.message);
                            }
                            reported = Some(e.message.clone());
                        }
                        format!("{}: {}", r.label(), e.message)
                    }
                    None => format!(
                        "waiting for the first list of {}: {}",
                        r.label(),
                        subscription.key().describe()
                    ),
                };
                readiness.note(controller, Some(note));
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return false },
                    () = shutdown.clone() => return false,
                }
            }
        }
    }
    readiness.note(controller, None);
    if !related.is_empty() {
        info!(controller, kinds = related.len(), "related caches synced");
    }
    true
}

/// Where mapped primaries go: one route per per-namespace controller.
pub struct Routes {
    /// The primary kind, for the mappers.
    pub primary: Primary,
    /// The primary kind as discovery resolved it, for object refs.
    pub resource: ApiResource,
    routes: Vec<Route>,
}

struct Route {
    /// The namespace this controller watches, or none for all.
    namespace: Option<String>,
    store: Store<DynamicObject>,
    refs: mpsc::Sender<ObjectRef<DynamicObject>>,
    all: mpsc::Sender<()>,
}

/// The streams one per-namespace controller reads its related triggers from.
pub struct RouteStreams {
    /// Single primaries to reconcile (`Controller::reconcile_on`).
    pub refs: mpsc::Receiver<ObjectRef<DynamicObject>>,
    /// Requests to reconcile every primary (`Controller::reconcile_all_on`).
    pub all: mpsc::Receiver<()>,
}

impl Routes {
    /// No routes yet, for `primary`.
    pub fn new(primary: Primary, resource: ApiResource) -> Self {
        Self {
            primary,
            resource,
            routes: Vec::new(),
        }
    }

    /// Adds the route to the controller of `namespace` (none: all namespaces) whose
    /// primaries are in `store`; returns the streams it will read.
    pub fn add(&mut self, namespace: Option<String>, store: Store<DynamicObject>) -> RouteStreams {
        let (refs, refs_rx) = mpsc::channel(ROUTE_CAPACITY);
        // One pending request is enough: everything is reconciled when it is taken.
        let (all, all_rx) = mpsc::channel(1);
        self.routes.push(Route {
            namespace,
            store,
            refs,
            all,
        });
        RouteStreams {
            refs: refs_rx,
            all: all_rx,
        }
    }

    /// Sends each primary to the controller whose store holds it; primaries no
    /// controller holds (outside its namespaces or selectors, or gone) are dropped.
    pub fn wake(&self, refs: &[PrimaryRef]) {
        for r in refs {
            let Some(route) = self
                .routes
                .iter()
                .find(|route| route.namespace.is_none() || route.namespace == r.namespace)
            else {
                continue;
            };
            let mut object_ref = ObjectRef::new_with(&r.name, self.resource.clone());
            if self.primary.namespaced {
                match &r.namespace {
                    Some(ns) => object_ref = object_ref.within(ns),
                    None => continue,
                }
            }
            if route.store.get(&object_ref).is_none() {
                debug!(primary = %object_ref, "mapped primary is not watched; not woken");
                continue;
            }
            if route.refs.clone().try_send(object_ref).is_err() {
                // Full (or the controller stopped): reconcile everything instead.
                let _ = route.all.clone().try_send(());
            }
        }
    }

    /// Asks every controller to reconcile every primary.
    pub fn wake_all(&self) {
        for route in &self.routes {
            // Full means one such request is pending already.
            let _ = route.all.clone().try_send(());
        }
    }
}

/// Routes the changes of one `owns` or `watches` entry until shutdown: the `on` filter,
/// the mapper, then [`Routes`]. A lagging subscription reconciles every primary once
/// (counted in `nuop_informer_lagged_total`). A change that is the echo of one of the
/// controller's own writes (see [`Echoes`]) wakes nothing: the call that wrote it saw
/// the result.
pub async fn route_changes(
    mut related: Related,
    routes: Arc<Routes>,
    ctx: Arc<Context>,
    echoes: Arc<Echoes>,
    shutdown: Shutdown,
) {
    let controller = ctx.config.name.clone();
    let label = related.label();
    let lagged = METRICS
        .informer_lagged
        .with_label_values(&[controller.as_str(), related.resource.kind.as_str()]);
    let mut subscriptions = std::mem::take(&mut related.subscriptions);
    let mut filters: Vec<Filter> = subscriptions
        .iter()
        .map(|s| {
            let mut filter = Filter::new(related.entry.on);
            filter.seed(s.store().state());
            filter
        })
        .collect();
    loop {
        let next =
            futures::future::select_all(subscriptions.iter_mut().map(|s| Box::pin(s.recv())));
        let (received, i, _) = tokio::select! {
            next = next => next,
            () = shutdown.clone() => return,
        };
        let filter = &mut filters[i];
        let woken: Vec<Arc<DynamicObject>> = match received {
            Received::Change(Change::Applied(object)) => {
                // The filter sees every change (it keeps the latest fingerprint); an
                // echo is dropped after it.
                if filter.applied(&object) && !is_echo(&echoes, &object) {
                    vec![object]
                } else {
                    Vec::new()
                }
            }
            Received::Change(Change::Deleted(object)) => {
                filter.deleted(&object);
                vec![object]
            }
            Received::Change(Change::Resync) => filter.vanished(&subscriptions[i].store().state()),
            Received::Lagged(missed) => {
                warn!(
                    controller,
                    "{label}: fell {missed} changes behind its shared watch; reconciling every primary"
                );
                lagged.inc();
                filter.seed(subscriptions[i].store().state());
                if let Some(entry) = &ctx.console {
                    entry.mark_all(&cause(related.list, &related.resource.kind, None));
                }
                routes.wake_all();
                Vec::new()
            }
        };
        for object in woken {
            let trigger = ctx
                .console
                .as_ref()
                .map(|_| cause(related.list, &related.resource.kind, Some(&object)));
            // Marked before the wake, so the reconcile it starts finds its reason.
            let mark = |refs: &[PrimaryRef]| {
                if let (Some(entry), Some(trigger)) = (&ctx.console, &trigger) {
                    for r in refs {
                        entry.mark(r.namespace.as_deref(), &r.name, trigger.clone());
                    }
                }
            };
            match map_object(&related.entry.map, &object, &routes.primary) {
                Wake::Refs(refs) => {
                    mark(&refs);
                    routes.wake(&refs);
                }
                Wake::All => {
                    if let (Some(entry), Some(trigger)) = (&ctx.console, &trigger) {
                        entry.mark_all(trigger);
                    }
                    routes.wake_all();
                }
                Wake::Script => {
                    let refs = map_by_script(&ctx, &object, &related.resource).await;
                    mark(&refs);
                    routes.wake(&refs);
                }
            }
        }
    }
}

/// The console's trigger for a change of a related object: a child for `owns`, a
/// related object otherwise (without one: every primary was woken).
fn cause(
    list: ListKind,
    kind: &str,
    object: Option<&DynamicObject>,
) -> crate::console::journal::Trigger {
    let object = object
        .map(|o| {
            crate::console::journal::object_key(
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let kind = kind.to_string();
    match list {
        ListKind::Owns => crate::console::journal::Trigger::Child { kind, object },
        _ => crate::console::journal::Trigger::Related { kind, object },
    }
}

fn is_echo(echoes: &Echoes, object: &DynamicObject) -> bool {
    echoes.is_echo_of(object)
}

/// Asks the script's `main map` which primaries `object` concerns. Failures are logged
/// and wake nothing. One call per passing change: about 80 µs with the embedded
/// executor, a `nu` process (about 18 ms) with the process executor.
async fn map_by_script(
    ctx: &Context,
    object: &DynamicObject,
    resource: &ApiResource,
) -> Vec<PrimaryRef> {
    let value = object_value(object, resource);
    let namespace = object.metadata.namespace.as_deref();
    let executor = ctx.runner.kind().as_str();
    let timer = METRICS
        .script_duration
        .with_label_values(&[ctx.config.name.as_str(), Phase::Map.as_str(), executor])
        .start_timer();
    let span = tracing::info_span!(
        "map",
        controller = %ctx.config.name,
        kind = %resource.kind,
        namespace = namespace.unwrap_or_default(),
        object = object.metadata.name.as_deref().unwrap_or_default(),
    );
    let result = ctx
        .runner
        .call(CallRequest {
            phase: Phase::Map,
            input: Some(value.to_string()),
            controller: ctx.config.name.clone(),
            timeout: ctx.config.timeout,
            // `main map` only maps: it runs without a session, so `k8s` commands in it
            // fail with OutsideCall.
            k8s: None,
        })
        .instrument(span.clone())
        .await;
    timer.observe_duration();
    let _entered = span.enter();
    let result = match result {
        Ok(result) => result,
        Err(e) => {
            warn!("main map failed: {e}");
            return Vec::new();
        }
    };
    if result.code != 0 {
        warn!(
            code = result.code,
            "main map exited with code {}: {}",
            result.code,
            result.stderr.text.trim()
        );
        return Vec::new();
    }
    let answer = match result.returned {
        Some(value) => value,
        None if result.stdout.text.trim().is_empty() => serde_json::Value::Null,
        None => match parse_document(&result.stdout.text) {
            Ok(value) => value,
            Err(e) => {
                warn!("main map printed neither JSON nor YAML ({e}); end it with `| to json`");
                return Vec::new();
            }
        },
    };
    match parse_map_output(&answer, namespace, ctx.namespaced) {
        Ok(refs) => refs,
        Err(e) => {
            warn!("main map answered something that is not a list of primaries: {e}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Mapper, Trigger};
    use std::collections::BTreeMap;

    fn resource(kind: &str) -> ApiResource {
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_ascii_lowercase()),
        }
    }

    fn entry(namespaces: &[&str], labels: &[(&str, &str)]) -> RelatedKind {
        RelatedKind {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            label_selectors: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            field_selectors: BTreeMap::new(),
            on: Trigger::Spec,
            map: Mapper::Owner,
        }
    }

    fn scopes(keys: &[InformerKey]) -> Vec<(Option<&str>, Option<&str>)> {
        keys.iter()
            .map(|k| (k.namespace.as_deref(), k.labels.as_deref()))
            .collect()
    }

    #[test]
    fn owns_select_nuops_label_in_the_primarys_namespaces() {
        let cm = resource("ConfigMap");
        let primary_ns = ["a".to_string(), "b".to_string()];
        let keys = informer_keys(ListKind::Owns, &entry(&[], &[]), &cm, true, &primary_ns);
        assert_eq!(
            scopes(&keys),
            [
                (Some("a"), Some("nuop.dev/controller")),
                (Some("b"), Some("nuop.dev/controller"))
            ]
        );
        // A cluster-wide primary: one cluster-wide owns watch.
        let keys = informer_keys(ListKind::Owns, &entry(&[], &[]), &cm, true, &[]);
        assert_eq!(scopes(&keys), [(None, Some("nuop.dev/controller"))]);
        // The entry's own namespaces and selectors win / add.
        let keys = informer_keys(
            ListKind::Owns,
            &entry(&["x"], &[("app", "web")]),
            &cm,
            true,
            &primary_ns,
        );
        assert_eq!(
            scopes(&keys),
            [(Some("x"), Some("app=web,nuop.dev/controller"))]
        );
    }

    #[test]
    fn watches_and_reads_are_cluster_wide_unless_narrowed() {
        let cm = resource("ConfigMap");
        let primary_ns = ["a".to_string()];
        for list in [ListKind::Watches, ListKind::Reads] {
            let keys = informer_keys(list, &entry(&[], &[]), &cm, true, &primary_ns);
            assert_eq!(scopes(&keys), [(None, None)]);
            let keys = informer_keys(list, &entry(&["s"], &[("k", "v")]), &cm, true, &primary_ns);
            assert_eq!(scopes(&keys), [(Some("s"), Some("k=v"))]);
        }
        // Cluster-scoped kinds ignore namespaces.
        let keys = informer_keys(
            ListKind::Watches,
            &entry(&["s"], &[]),
            &resource("Namespace"),
            false,
            &primary_ns,
        );
        assert_eq!(scopes(&keys), [(None, None)]);
    }
}
