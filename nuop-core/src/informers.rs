//! The per-process informer registry: one watch and one cache per (kind, namespace,
//! selectors), shared by every controller that asks for it.
//!
//! Does I/O (the watches). [`Informers::subscribe`] returns a [`Subscription`] to the
//! entry for an [`InformerKey`], starting its watch when it is the first: a
//! `watcher(..).modify(strip managedFields).reflect(writer)` task that owns the writer of
//! a [`Store`], reports its state (synced, the last watch error) on a
//! `tokio::sync::watch` channel and fans every change out on a `tokio::sync::broadcast`
//! channel. Entries are reference-counted by their subscriptions: dropping the last one
//! stops the watch (`one_key_shares_one_watch_and_the_last_subscription_stops_it`), so a managed-mode reload
//! that drops a kind stops its watch. The task belongs to the entry, not to the first
//! subscriber: a subscriber that goes away leaves the watch running for the others.
//!
//! The broadcast never waits for a subscriber: `send` on a full channel overwrites the
//! oldest change, and the subscriber that missed changes gets [`Received::Lagged`]
//! (counted in `nuop_informer_lagged_total`) and is expected to reconcile everything
//! it serves instead (`a_lagging_subscriber_is_told_and_the_watch_goes_on`).
//!
//! Different selectors never share an entry (no filtering in memory): a selective watch
//! must see an object leave its selector as a delete, as the release of finalizers
//! relies on ([`crate::reconcile::release`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus::IntGauge;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::metrics::METRICS;

/// Changes buffered per entry for its slowest subscriber before it lags.
pub const DEFAULT_CAPACITY: usize = 4096;

/// How often each entry refreshes `nuop_informer_cached_objects`.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// What identifies one shared watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InformerKey {
    /// The kind, as discovery resolved it (group, version, kind, plural).
    pub resource: ApiResource,
    /// The one namespace watched, or none for all namespaces (and cluster-scoped kinds).
    pub namespace: Option<String>,
    /// The label selector in the API's string form, if any.
    pub labels: Option<String>,
    /// The field selector in the API's string form, if any.
    pub fields: Option<String>,
}

impl InformerKey {
    /// The watch's settings.
    fn watcher_config(&self) -> watcher::Config {
        let mut config = watcher::Config::default();
        if let Some(labels) = &self.labels {
            config = config.labels(labels);
        }
        if let Some(fields) = &self.fields {
            config = config.fields(fields);
        }
        config
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }

    /// `ConfigMap (v1) in namespace x with labels a=b`, for logs and errors.
    pub fn describe(&self) -> String {
        let mut out = format!("{} ({})", self.resource.kind, self.resource.api_version);
        match &self.namespace {
            Some(ns) => out.push_str(&format!(" in namespace {ns}")),
            None => out.push_str(" in all namespaces"),
        }
        if let Some(labels) = &self.labels {
            out.push_str(&format!(" with labels {labels}"));
        }
        if let Some(fields) = &self.fields {
            out.push_str(&format!(" with fields {fields}"));
        }
        out
    }
}

/// One change of a watched object, as every subscriber receives it.
#[derive(Debug, Clone)]
pub enum Change {
    /// Created or modified (also each object listed again after the watch restarted).
    Applied(Arc<DynamicObject>),
    /// Deleted, or left the watch's selectors; the object as last seen.
    Deleted(Arc<DynamicObject>),
    /// The watch listed everything again (it restarted, e.g. after 410 Gone) and the
    /// cache was replaced: objects deleted meanwhile are gone from it without a
    /// [`Change::Deleted`].
    Resync,
}

/// A failed list or watch, as the entry reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchError {
    /// `list` or `watch`: what the API server refused or failed.
    pub verb: &'static str,
    /// The HTTP status, when the API server answered one (403: RBAC forbids it).
    pub code: Option<u16>,
    /// What happened, naming the kind.
    pub message: String,
}

impl WatchError {
    /// Whether the API server refused the verb (HTTP 403).
    pub fn forbidden(&self) -> bool {
        self.code == Some(403)
    }

    fn from_watcher(error: &watcher::Error, key: &InformerKey) -> Self {
        let (verb, code) = match error {
            watcher::Error::InitialListFailed(e) => ("list", status_code(e)),
            watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
                ("watch", status_code(e))
            }
            watcher::Error::WatchError(status) => ("watch", Some(status.code)),
            watcher::Error::NoResourceVersion => ("list", None),
        };
        let message = if code == Some(403) {
            format!(
                "forbidden: the ServiceAccount may not {verb} {}; grant `list` and `watch` on {} \
                 in its Role or ClusterRole ({error})",
                key.describe(),
                key.resource.plural
            )
        } else {
            format!("cannot {verb} {}: {error}", key.describe())
        };
        Self {
            verb,
            code,
            message,
        }
    }
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// An entry's state: whether its cache has listed, and the last watch error (cleared
/// when the watch works again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The first list completed; the cache holds every object.
    pub synced: bool,
    /// The last failure, until the next successful list or event.
    pub error: Option<WatchError>,
}

/// What [`Subscription::recv`] got.
#[derive(Debug, Clone)]
pub enum Received {
    /// The next change.
    Change(Change),
    /// This subscriber fell behind and missed this many changes: it must treat every
    /// object as possibly changed.
    Lagged(u64),
}

/// The process's informers. Cheap to clone; every clone is the same registry.
#[derive(Clone)]
pub struct Informers {
    inner: Arc<Inner>,
}

struct Inner {
    capacity: usize,
    entries: Mutex<HashMap<InformerKey, Weak<Entry>>>,
}

impl Default for Informers {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers")
            .field("watches", &self.watch_count())
            .finish()
    }
}

impl Informers {
    /// An empty registry whose entries buffer `capacity` changes per subscriber before it
    /// lags (tests of lagging use a tiny one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                entries: Mutex::default(),
            }),
        }
    }

    /// Subscribes to the entry for `key`, starting its watch with `client` if no one
    /// holds it yet. Must run on a tokio runtime. Changes are received from this moment
    /// on; what happened before is in [`Subscription::store`] once synced.
    pub fn subscribe(&self, client: &Client, key: InformerKey) -> Subscription {
        let mut entries = self.inner.lock();
        let entry = match entries.get(&key).and_then(Weak::upgrade) {
            Some(entry) => entry,
            None => {
                let entry = Entry::start(client, key.clone(), self.inner.capacity, &self.inner);
                entries.insert(key, Arc::downgrade(&entry));
                entry
            }
        };
        drop(entries);
        Subscription::new(entry)
    }

    /// Watches running now (entries with at least one subscription).
    pub fn watch_count(&self) -> usize {
        self.inner
            .lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Subscriptions held on the entry for `key` (0 when it does not run).
    pub fn subscriptions(&self, key: &InformerKey) -> usize {
        self.inner
            .lock()
            .get(key)
            .and_then(Weak::upgrade)
            .map_or(0, |entry| {
                entry.subscriptions.load(Ordering::SeqCst).max(0) as usize
            })
    }

    /// The keys of the watches running now.
    pub fn keys(&self) -> Vec<InformerKey> {
        self.inner
            .lock()
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<InformerKey, Weak<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One shared watch; alive while a subscription holds it.
struct Entry {
    key: InformerKey,
    store: Store<DynamicObject>,
    status: watch::Receiver<Status>,
    changes: broadcast::Sender<Change>,
    subscriptions: AtomicI64,
    task: tokio::task::AbortHandle,
    registry: Weak<Inner>,
}

impl Entry {
    fn start(
        client: &Client,
        key: InformerKey,
        capacity: usize,
        registry: &Arc<Inner>,
    ) -> Arc<Self> {
        let writer = Writer::<DynamicObject>::new(key.resource.clone());
        let store = writer.as_reader();
        let (status_tx, status) = watch::channel(Status::default());
        let (changes, _) = broadcast::channel(capacity);
        let api = key.api(client);
        info!(informer = %key.describe(), "starting shared watch");
        let task = tokio::spawn(run_watch(
            api,
            key.clone(),
            writer,
            store.clone(),
            changes.clone(),
            status_tx,
        ))
        .abort_handle();
        METRICS.informer_watches.inc();
        Arc::new(Self {
            key,
            store,
            status,
            changes,
            subscriptions: AtomicI64::new(0),
            task,
            registry: Arc::downgrade(registry),
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
        METRICS.informer_watches.dec();
        info!(informer = %self.key.describe(), "stopped shared watch: no subscriptions left");
        if let Some(registry) = self.registry.upgrade() {
            let mut entries = registry.lock();
            // A new entry for the same key may have replaced this one already.
            if entries
                .get(&self.key)
                .is_some_and(|w| w.strong_count() == 0)
            {
                entries.remove(&self.key);
            }
        }
    }
}

/// A hold on one shared watch: its cache, its state and its changes. Dropping the last
/// subscription of an entry stops its watch.
pub struct Subscription {
    entry: Arc<Entry>,
    changes: broadcast::Receiver<Change>,
}

impl Subscription {
    fn new(entry: Arc<Entry>) -> Self {
        entry.subscriptions.fetch_add(1, Ordering::SeqCst);
        METRICS.informer_subscriptions.inc();
        Self {
            changes: entry.changes.subscribe(),
            entry,
        }
    }

    /// The key this subscription is for.
    pub fn key(&self) -> &InformerKey {
        &self.entry.key
    }

    /// The shared cache (empty until synced).
    pub fn store(&self) -> Store<DynamicObject> {
        self.entry.store.clone()
    }

    /// The entry's state, to wait for the first list and to see watch errors.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.entry.status.clone()
    }

    /// The next change; never ends while the subscription is held.
    pub async fn recv(&mut self) -> Received {
        match self.changes.recv().await {
            Ok(change) => Received::Change(change),
            Err(broadcast::error::RecvError::Lagged(missed)) => Received::Lagged(missed),
            // The entry (which holds a sender) lives as long as this subscription.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.entry.subscriptions.fetch_sub(1, Ordering::SeqCst);
        METRICS.informer_subscriptions.dec();
    }
}

/// The task of one entry: watch, keep the cache, report the state, fan changes out.
async fn run_watch(
    api: Api<DynamicObject>,
    key: InformerKey,
    writer: Writer<DynamicObject>,
    store: Store<DynamicObject>,
    changes: broadcast::Sender<Change>,
    status: watch::Sender<Status>,
) {
    let gauge = METRICS
        .informer_objects
        .with_label_values(&[key.resource.kind.as_str()]);
    let mut counted = Counted::new(gauge);
    let mut events = watcher(api, key.watcher_config())
        .default_backoff()
        // managedFields are often half of a small object; nothing nuop does reads them.
        .modify(|object: &mut DynamicObject| object.metadata.managed_fields = None)
        .reflect(writer)
        .boxed();
    let mut listed = false;
    let mut relisting = false;
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tick.tick() => {
                counted.set(store.state().len());
                continue;
            }
        };
        let Some(event) = event else { break };
        // `send` fails only when no one subscribes; the watch goes on regardless.
        match event {
            Ok(watcher::Event::Init) => relisting = listed,
            Ok(watcher::Event::InitApply(object)) => {
                // The first list fills the cache; subscribers read it from there.
                if relisting {
                    let _ = changes.send(Change::Applied(Arc::new(object)));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if relisting {
                    let _ = changes.send(Change::Resync);
                }
                if !listed {
                    debug!(informer = %key.describe(), "first list complete");
                }
                listed = true;
                relisting = false;
                counted.set(store.state().len());
                status.send_if_modified(|s| {
                    let changed = !s.synced || s.error.is_some();
                    s.synced = true;
                    s.error = None;
                    changed
                });
            }
            Ok(watcher::Event::Apply(object)) => {
                clear_error(&status);
                let _ = changes.send(Change::Applied(Arc::new(object)));
            }
            Ok(watcher::Event::Delete(object)) => {
                clear_error(&status);
                let _ = changes.send(Change::Deleted(Arc::new(object)));
            }
            Err(error) => {
                let error = WatchError::from_watcher(&error, &key);
                warn!(informer = %key.describe(), "{}", error.message);
                status.send_if_modified(|s| {
                    let changed = s.error.as_ref() != Some(&error);
                    s.error = Some(error);
                    changed
                });
            }
        }
    }
}

fn clear_error(status: &watch::Sender<Status>) {
    status.send_if_modified(|s| s.error.take().is_some());
}

/// This entry's share of `nuop_informer_cached_objects{kind}` (several entries may
/// watch one kind), given back when the entry stops.
struct Counted {
    gauge: IntGauge,
    last: i64,
}

impl Counted {
    fn new(gauge: IntGauge) -> Self {
        Self { gauge, last: 0 }
    }

    fn set(&mut self, count: usize) {
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        self.gauge.add(count - self.last);
        self.last = count;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.sub(self.last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str) -> InformerKey {
        InformerKey {
            resource: ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: kind.into(),
                plural: format!("{}s", kind.to_ascii_lowercase()),
            },
            namespace: Some("ns".into()),
            labels: Some("nuop.dev/controller".into()),
            fields: None,
        }
    }

    #[test]
    fn keys_describe_their_scope_and_selectors() {
        let k = key("ConfigMap");
        assert_eq!(
            k.describe(),
            "ConfigMap (v1) in namespace ns with labels nuop.dev/controller"
        );
        let all = InformerKey {
            namespace: None,
            labels: None,
            fields: Some("metadata.name=x".into()),
            ..k
        };
        assert_eq!(
            all.describe(),
            "ConfigMap (v1) in all namespaces with fields metadata.name=x"
        );
    }

    #[test]
    fn a_forbidden_list_names_the_kind_and_the_verb() {
        let status = kube::core::Status::failure("configmaps is forbidden", "Forbidden")
            .with_code(403)
            .boxed();
        let error = WatchError::from_watcher(
            &watcher::Error::InitialListFailed(kube::Error::Api(status)),
            &key("ConfigMap"),
        );
        assert!(error.forbidden());
        assert_eq!(error.verb, "list");
        assert!(
            error
                .message
                .contains("may not list ConfigMap (v1) in namespace ns"),
            "{}",
            error.message
        );
        assert!(error.message.contains("`list` and `watch` on configmaps"));
        let watch = WatchError::from_watcher(&watcher::Error::NoResourceVersion, &key("Pod"));
        assert!(!watch.forbidden());
        assert!(
            watch.message.starts_with("cannot list Pod (v1)"),
            "{}",
            watch.message
        );
    }

    /// A client for an address where nothing listens: watches fail, the registry's
    /// bookkeeping is what is under test.
    fn unreachable() -> Client {
        crate::install_crypto_provider();
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        Client::try_from(config).expect("client")
    }

    #[tokio::test]
    async fn one_key_shares_one_watch_and_the_last_subscription_stops_it() {
        let informers = Informers::default();
        let client = unreachable();
        let a = informers.subscribe(&client, key("ConfigMap"));
        let b = informers.subscribe(&client, key("ConfigMap"));
        let other = informers.subscribe(&client, key("Secret"));
        assert_eq!(informers.watch_count(), 2);
        assert_eq!(informers.subscriptions(&key("ConfigMap")), 2);
        // The task belongs to the entry: the first subscriber leaving keeps it running.
        let task = a.entry.task.clone();
        drop(a);
        assert_eq!(informers.subscriptions(&key("ConfigMap")), 1);
        assert!(!task.is_finished());
        drop(b);
        assert_eq!(informers.subscriptions(&key("ConfigMap")), 0);
        assert_eq!(informers.keys(), vec![key("Secret")]);
        // Aborted: the task ends at its next poll.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !task.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the watch task stops");
        drop(other);
        assert_eq!(informers.watch_count(), 0);
        // A later subscription starts a fresh watch.
        let again = informers.subscribe(&client, key("ConfigMap"));
        assert_eq!(informers.watch_count(), 1);
        drop(again);
    }

    #[tokio::test]
    async fn a_failing_watch_is_reported_not_an_empty_cache() {
        let informers = Informers::default();
        let subscription = informers.subscribe(&unreachable(), key("ConfigMap"));
        let mut status = subscription.status();
        let status = tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| s.error.is_some()),
        )
        .await
        .expect("an error within 30 s")
        .expect("the entry is alive")
        .clone();
        assert!(!status.synced);
        let error = status.error.expect("error");
        assert_eq!(error.verb, "list");
        assert!(
            error.message.contains("cannot list ConfigMap (v1)"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_entrys_gauge_share_is_given_back() {
        let gauge = METRICS.informer_objects.with_label_values(&["UnitCounted"]);
        let mut a = Counted::new(gauge.clone());
        let mut b = Counted::new(gauge.clone());
        a.set(3);
        b.set(4);
        a.set(2);
        assert_eq!(gauge.get(), 6);
        drop(a);
        assert_eq!(gauge.get(), 4);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }
}
