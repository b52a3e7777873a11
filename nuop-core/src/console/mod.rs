//! The read-only console each binary serves with `--console-bind-address`: what every
//! controller watches and does, its recent reconciles with their trigger, outcome,
//! duration and the script's log lines, managed mode's sources and mappings, a live
//! tail over Server-Sent Events, and the same data as JSON under `/debug/`.
//!
//! This module owns the state and the HTTP server (I/O: binds a socket, serves axum
//! routes). The decisions are pure, in its own modules: [`journal`] (triggers, records,
//! the bounded ring per controller), [`view`] (what is shown, as plain data; no
//! Secret's contents: `view::tests::secrets_are_never_shown`) and [`page`] (HTML rendering). The script for the live tail and
//! the style sheet are compiled into the binary (`assets/`): no CDN, so it works on
//! offline clusters.
//!
//! Recording is kept off the reconcile's critical path: the console's locks are
//! `std::sync::Mutex`es held for a push or a lookup only, not across an `.await`, and
//! the live tail is a `tokio::sync::broadcast`, whose `send` does not wait: a reader that
//! falls behind
//! misses records and is sent them again from the rings (`a_lagging_tail_is_refilled_from_the_rings`).
//! Without `--console-bind-address` nothing is recorded at all (`ControllerOptions::console`
//! is `None`).

pub mod journal;
pub mod page;
pub mod view;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use kube::api::DynamicObject;
use kube::runtime::reflector::Store;
use prometheus::core::Collector;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::health::Readiness;
use crate::metrics::METRICS;
use crate::shutdown::Shutdown;
use journal::{Capture, Journal, Pending, Record, Trigger, object_key};
use view::{
    ControllerInfo, ControllerSummary, Managed, ObjectInController, ObjectReport, Overview,
};

/// Records kept per controller unless `--console-history` says otherwise.
pub const DEFAULT_HISTORY: usize = 100;

/// Records buffered for the slowest live-tail reader before it lags (and is refilled
/// from the rings).
const TAIL_CAPACITY: usize = 1024;

/// Records of all controllers the index page shows at first (the live tail adds more).
const INDEX_RECENT: usize = 30;

/// The console's state, shared by the controllers (which record into it) and the
/// server (which reads it). Cheap to clone; every clone is the same console.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    binary: String,
    history: usize,
    readiness: Arc<Readiness>,
    controllers: Mutex<BTreeMap<String, Arc<Entry>>>,
    managed: Mutex<Option<Managed>>,
    tail: broadcast::Sender<Arc<Record>>,
    ids: Arc<Mutex<u64>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("binary", &self.inner.binary)
            .field("history", &self.inner.history)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One controller as the console knows it: what it is, its cache, the triggers
/// waiting for its objects and its last records. Held by the controller's reconcile
/// context; its methods are synchronous and take only `std` locks for a lookup or a
/// push, so no lock is ever held across an `.await`.
pub struct Entry {
    info: ControllerInfo,
    stores: Mutex<Vec<Store<DynamicObject>>>,
    journal: Mutex<Journal>,
    pending: Mutex<Pending>,
    tail: broadcast::Sender<Arc<Record>>,
    /// The last id given, process-wide: held while a record is numbered, pushed and
    /// sent, so ids reach the rings and the tail in order (a tail skips ids it has
    /// passed).
    ids: Arc<Mutex<u64>>,
}

/// How one reconcile ended, for [`Entry::finish`].
pub struct Finished<'a> {
    /// The object's namespace (empty: cluster-scoped).
    pub namespace: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// Why it ran ([`Entry::begin`]).
    pub trigger: Trigger,
    /// When it started.
    pub started: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// Its log lines and counted outcome.
    pub capture: Capture,
    /// Its error: category and message.
    pub error: Option<(&'static str, String)>,
}

impl Entry {
    /// What the controller is.
    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// The caches of the controller's primaries (one per watched namespace).
    pub fn set_stores(&self, stores: Vec<Store<DynamicObject>>) {
        *lock(&self.stores) = stores;
    }

    /// Notes that the object `namespace/name` (namespace `None` or empty:
    /// cluster-scoped) is to be reconciled because of `trigger`.
    pub fn mark(&self, namespace: Option<&str>, name: &str, trigger: Trigger) {
        let key = object_key(namespace.unwrap_or_default(), name);
        lock(&self.pending).mark(key, trigger);
    }

    /// Notes `trigger` for every cached primary (a change that wakes them all).
    pub fn mark_all(&self, trigger: &Trigger) {
        let keys = self.cached_keys();
        let mut pending = lock(&self.pending);
        for key in keys {
            pending.mark(key, trigger.clone());
        }
    }

    /// Why `namespace/name` is being reconciled now, given its failures so far.
    pub fn begin(&self, namespace: &str, name: &str, failures: u32) -> Trigger {
        lock(&self.pending).take(&object_key(namespace, name), failures)
    }

    /// Records a finished reconcile in the ring and sends it to the live tail.
    pub fn finish(&self, done: Finished<'_>) {
        let outcome = match (&done.error, done.capture.outcome) {
            (Some(_), _) => "error",
            (None, Some(outcome)) => outcome,
            (None, None) => "skipped",
        };
        let (category, error) = match done.error {
            Some((category, message)) => (Some(category.to_string()), Some(message)),
            None => (None, None),
        };
        let mut record = Record {
            id: 0,
            controller: self.info.name.clone(),
            kind: self.info.kind.clone(),
            namespace: done.namespace.to_string(),
            name: done.name.to_string(),
            trigger: done.trigger,
            outcome: outcome.to_string(),
            category,
            error,
            started_ms: done
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            duration_ms: done.duration.as_secs_f64() * 1000.0,
            lines: done.capture.into_lines(),
        };
        let mut last = lock(&self.ids);
        *last += 1;
        record.id = *last;
        let record = Arc::new(record);
        lock(&self.journal).push(record.clone());
        // Never waits (a full channel drops its oldest); Err only means nobody tails.
        let _ = self.tail.send(record);
    }

    /// Forgets the waiting triggers of objects the caches no longer hold.
    pub fn prune(&self) {
        let present: std::collections::HashSet<String> = self.cached_keys().into_iter().collect();
        lock(&self.pending).retain(|key| present.contains(key));
    }

    /// The keys of every cached primary.
    fn cached_keys(&self) -> Vec<String> {
        lock(&self.stores)
            .iter()
            .flat_map(Store::state)
            .map(|o| {
                object_key(
                    o.metadata.namespace.as_deref().unwrap_or_default(),
                    o.metadata.name.as_deref().unwrap_or_default(),
                )
            })
            .collect()
    }

    fn cached_objects(&self) -> usize {
        lock(&self.stores).iter().map(|s| s.state().len()).sum()
    }

    fn cached(&self, namespace: &str, name: &str) -> Option<Arc<DynamicObject>> {
        lock(&self.stores).iter().flat_map(Store::state).find(|o| {
            o.metadata.name.as_deref() == Some(name)
                && o.metadata.namespace.as_deref().unwrap_or_default() == namespace
        })
    }
}

/// The values of `family`'s series for `controller`, by the value of `label`.
fn series_by(collector: &dyn Collector, controller: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for family in collector.collect() {
        let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for metric in family.get_metric() {
            let labels = metric.get_label();
            if !labels
                .iter()
                .any(|l| l.name() == "controller" && l.value() == controller)
            {
                continue;
            }
            let key = labels
                .iter()
                .find(|l| l.name() == label)
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            let value = if counter {
                metric.get_counter().get_value()
            } else {
                metric.get_gauge().get_value()
            };
            out.insert(key, value);
        }
    }
    out
}

fn counts(values: BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    values
        .into_iter()
        .map(|(k, v)| (k, v.max(0.0) as u64))
        .collect()
}

impl Console {
    /// A console for `binary` keeping `history` records per controller; `readiness`
    /// tells which controllers have synced.
    pub fn new(binary: &str, readiness: Arc<Readiness>, history: usize) -> Self {
        let (tail, _) = broadcast::channel(TAIL_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                binary: binary.to_string(),
                history: history.max(1),
                readiness,
                controllers: Mutex::default(),
                managed: Mutex::default(),
                tail,
                ids: Arc::new(Mutex::new(0)),
            }),
        }
    }

    /// Adds (or replaces) a controller; what it returns goes into its reconcile context.
    pub fn register(&self, info: ControllerInfo) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            info,
            stores: Mutex::default(),
            journal: Mutex::new(Journal::new(self.inner.history)),
            pending: Mutex::default(),
            tail: self.inner.tail.clone(),
            ids: self.inner.ids.clone(),
        });
        lock(&self.inner.controllers).insert(entry.info.name.clone(), entry.clone());
        entry
    }

    /// Removes a stopped controller, unless another registration replaced it.
    pub fn unregister(&self, entry: &Arc<Entry>) {
        let mut controllers = lock(&self.inner.controllers);
        if controllers
            .get(&entry.info.name)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            controllers.remove(&entry.info.name);
        }
    }

    /// Sets managed mode's sources and mappings.
    pub fn set_managed(&self, managed: Managed) {
        *lock(&self.inner.managed) = Some(managed);
    }

    fn entries(&self) -> Vec<Arc<Entry>> {
        lock(&self.inner.controllers).values().cloned().collect()
    }

    fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        lock(&self.inner.controllers).get(name).cloned()
    }

    fn summary(&self, entry: &Entry, recent: bool) -> ControllerSummary {
        let name = entry.info.name.as_str();
        let (synced, waiting) = self
            .inner
            .readiness
            .controller(name)
            .unwrap_or((false, None));
        ControllerSummary {
            info: entry.info.clone(),
            cached_objects: entry.cached_objects(),
            synced,
            waiting,
            in_flight: series_by(&METRICS.in_flight, name, "controller")
                .values()
                .sum::<f64>() as i64,
            reconciles: counts(series_by(&METRICS.reconciles, name, "outcome")),
            errors: counts(series_by(&METRICS.errors, name, "category")),
            recent: recent.then(|| lock(&entry.journal).newest_first()),
        }
    }

    /// The process and every controller, without their records.
    pub fn overview(&self) -> Overview {
        let ready = self.inner.readiness.check();
        Overview {
            binary: self.inner.binary.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            leader: METRICS.leader.get() == 1,
            ready: ready.is_ok(),
            not_ready: ready.err(),
            history: self.inner.history,
            controllers: self
                .entries()
                .iter()
                .map(|e| self.summary(e, false))
                .collect(),
            managed: lock(&self.inner.managed).clone(),
        }
    }

    /// One controller with its recent records.
    pub fn controller(&self, name: &str) -> Option<ControllerSummary> {
        self.entry(name).map(|e| self.summary(&e, true))
    }

    /// Everything known about `namespace/name` (namespace empty: cluster-scoped); with
    /// `content`, the cached object too, except a Secret's.
    pub fn object(&self, namespace: &str, name: &str, content: bool) -> ObjectReport {
        let controllers = self
            .entries()
            .iter()
            .filter_map(|entry| {
                let cached = entry.cached(namespace, name);
                let records = lock(&entry.journal).of_object(namespace, name);
                if cached.is_none() && records.is_empty() {
                    return None;
                }
                let next = lock(&entry.pending)
                    .peek(&object_key(namespace, name))
                    .cloned();
                let (content, content_note) = match (&cached, content) {
                    (_, false) => (None, None),
                    (None, true) => (None, Some("not in the controller's cache".to_string())),
                    (Some(object), true) => {
                        let mut value = serde_json::to_value(&**object).unwrap_or(Value::Null);
                        if let Some(map) = value.as_object_mut() {
                            map.insert("apiVersion".into(), entry.info.api_version.clone().into());
                            map.insert("kind".into(), entry.info.kind.clone().into());
                        }
                        match view::shown_contents(&entry.info.kind, &value) {
                            Some(shown) => (Some(shown), None),
                            None => (
                                None,
                                Some(format!(
                                    "the console never shows the contents of a {}",
                                    entry.info.kind
                                )),
                            ),
                        }
                    }
                };
                Some(ObjectInController {
                    controller: entry.info.name.clone(),
                    kind: entry.info.kind.clone(),
                    cached: cached.is_some(),
                    next,
                    records,
                    content,
                    content_note,
                })
            })
            .collect();
        ObjectReport {
            namespace: namespace.to_string(),
            name: name.to_string(),
            controllers,
        }
    }

    /// The records of every controller with an id above `after`, oldest first.
    pub fn replay(&self, after: u64) -> Vec<Arc<Record>> {
        let journals: Vec<Vec<Arc<Record>>> = self
            .entries()
            .iter()
            .map(|e| lock(&e.journal).after(after))
            .collect();
        journal::replay(&journals, after)
    }

    /// The last `n` records of every controller, newest first.
    fn recent(&self, n: usize) -> Vec<Arc<Record>> {
        let mut all = self.replay(0);
        all.reverse();
        all.truncate(n);
        all
    }

    /// Binds `address` and serves the console until `shutdown`; returns the bound
    /// address (useful with port 0).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn serve(
        &self,
        address: SocketAddr,
        shutdown: Shutdown,
    ) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        let router = self.router(shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!("console on {local} failed: {e}");
            }
        });
        Ok(local)
    }

    /// The console's routes (every one a GET: the console changes nothing).
    pub fn router(&self, shutdown: Shutdown) -> Router {
        let state = Served {
            console: self.clone(),
            shutdown,
        };
        Router::new()
            .route("/", get(index))
            .route("/controllers/{name}", get(controller_page))
            .route("/objects/{namespace}/{name}", get(object_page))
            .route("/objects/{name}", get(cluster_object_page))
            .route("/debug/controllers", get(controllers_json))
            .route("/debug/controllers/{name}", get(controller_json))
            .route("/debug/objects/{namespace}/{name}", get(object_json))
            .route("/debug/objects/{name}", get(cluster_object_json))
            .route("/events", get(events))
            .route("/assets/console.js", get(script))
            .route("/assets/console.css", get(style))
            .layer(axum::middleware::map_response(secure_headers))
            .with_state(state)
    }
}

/// Starts the console at `address` when one is given (`--console-bind-address`) and
/// returns it for [`crate::controller::ControllerOptions::console`]; `None` (console
/// off) records nothing.
///
/// # Errors
/// When the address cannot be bound.
pub async fn start(
    binary: &str,
    address: Option<SocketAddr>,
    history: usize,
    readiness: Arc<Readiness>,
    shutdown: Shutdown,
) -> std::io::Result<Option<Console>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let console = Console::new(binary, readiness, history);
    let bound = console.serve(address, shutdown).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot bind the console to {address}: {e}"),
        )
    })?;
    tracing::info!(address = %bound, history, "serving the console on http://{bound}/");
    Ok(Some(console))
}

#[derive(Clone)]
struct Served {
    console: Console,
    shutdown: Shutdown,
}

/// No script or style from elsewhere, no framing, no sniffing, no caching of live data.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no controller named {what}\n"),
    )
        .into_response()
}

async fn index(State(s): State<Served>) -> Html<String> {
    Html(page::index(
        &s.console.overview(),
        &s.console.recent(INDEX_RECENT),
    ))
}

async fn controller_page(State(s): State<Served>, Path(name): Path<String>) -> Response {
    match s.console.controller(&name) {
        Some(summary) => Html(page::controller(&summary)).into_response(),
        None => not_found(&name),
    }
}

/// `?content=true` asks for an object's contents.
#[derive(Debug, Default, Deserialize)]
struct ObjectQuery {
    #[serde(default)]
    content: bool,
}

async fn object_page(
    State(s): State<Served>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<ObjectQuery>,
) -> Html<String> {
    Html(page::object(
        &s.console.object(&namespace, &name, q.content),
    ))
}

async fn cluster_object_page(
    State(s): State<Served>,
    Path(name): Path<String>,
    Query(q): Query<ObjectQuery>,
) -> Html<String> {
    Html(page::object(&s.console.object("", &name, q.content)))
}

async fn controllers_json(State(s): State<Served>) -> Response {
    json(&s.console.overview())
}

async fn controller_json(State(s): State<Served>, Path(name): Path<String>) -> Response {
    match s.console.controller(&name) {
        Some(summary) => json(&summary),
        None => not_found(&name),
    }
}

async fn object_json(
    State(s): State<Served>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<ObjectQuery>,
) -> Response {
    json(&s.console.object(&namespace, &name, q.content))
}

async fn cluster_object_json(
    State(s): State<Served>,
    Path(name): Path<String>,
    Query(q): Query<ObjectQuery>,
) -> Response {
    json(&s.console.object("", &name, q.content))
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
}

/// Where a live tail starts: `?after=ID` (the page's newest record) and `?controller=`
/// to follow one controller only.
#[derive(Debug, Default, Deserialize)]
struct TailQuery {
    after: Option<u64>,
    controller: Option<String>,
}

/// One reader of the live tail: records not yet sent, and the last id sent.
struct Tail {
    console: Console,
    receiver: broadcast::Receiver<Arc<Record>>,
    backlog: VecDeque<Arc<Record>>,
    last: u64,
    controller: Option<String>,
}

impl Tail {
    /// The next record to send, waiting for one when none is buffered; `None` when the
    /// console is gone.
    async fn next(&mut self) -> Option<Arc<Record>> {
        loop {
            while let Some(record) = self.backlog.pop_front() {
                if record.id <= self.last {
                    continue;
                }
                self.last = record.id;
                if self
                    .controller
                    .as_ref()
                    .is_none_or(|c| *c == record.controller)
                {
                    return Some(record);
                }
            }
            match self.receiver.recv().await {
                Ok(record) => self.backlog.push_back(record),
                // Missed some: they are still in the rings, unless those moved on too.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.backlog = self.console.replay(self.last).into();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// `/events`: the live tail. A browser that reconnects sends `Last-Event-ID` and is
/// sent what it missed from the rings first.
async fn events(
    State(s): State<Served>,
    headers: HeaderMap,
    Query(q): Query<TailQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after);
    let receiver = s.console.inner.tail.subscribe();
    let backlog = after.map(|a| s.console.replay(a)).unwrap_or_default();
    let tail = Tail {
        console: s.console.clone(),
        receiver,
        backlog: backlog.into(),
        last: after.unwrap_or(0),
        controller: q.controller.filter(|c| !c.is_empty()),
    };
    let stream = futures::stream::unfold(tail, |mut tail| async move {
        let record = tail.next().await?;
        let event = Event::default()
            .id(record.id.to_string())
            .event("reconcile")
            .data(serde_json::to_string(&*record).unwrap_or_default());
        Some((Ok(event), tail))
    })
    .take_until(s.shutdown.clone());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str) -> ControllerInfo {
        ControllerInfo {
            name: name.into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespaced: true,
            namespaces: Vec::new(),
            label_selector: None,
            field_selector: None,
            watches: Vec::new(),
            executor: "embedded".into(),
            finalizer: None,
            requeue_after_change_s: 10,
            requeue_after_noop_s: 300,
        }
    }

    fn finish(entry: &Entry, name: &str) {
        let trigger = entry.begin("ns", name, 0);
        let mut capture = Capture::default();
        capture.add(&format!("{name}: done"));
        capture.outcome = Some("changed");
        entry.finish(Finished {
            namespace: "ns",
            name,
            trigger,
            started: SystemTime::now(),
            duration: Duration::from_millis(3),
            capture,
            error: None,
        });
    }

    #[tokio::test]
    async fn a_lagging_tail_is_refilled_from_the_rings() {
        let console = Console::new("test", Readiness::new(), 10_000);
        let entry = console.register(info("c"));
        let mut tail = Tail {
            console: console.clone(),
            receiver: console.inner.tail.subscribe(),
            backlog: VecDeque::new(),
            last: 0,
            controller: None,
        };
        // More than the broadcast holds: the reader lags and must still see every one.
        let total = TAIL_CAPACITY as u64 + 10;
        for i in 0..total {
            finish(&entry, &format!("o{i}"));
        }
        for id in 1..=total {
            let record = tail.next().await.expect("a record");
            assert_eq!(record.id, id);
        }
    }

    #[tokio::test]
    async fn records_carry_their_trigger_and_lines_and_are_found_by_object() {
        let console = Console::new("test", Readiness::new(), 2);
        let entry = console.register(info("c"));
        entry.mark(Some("ns"), "a", Trigger::OwnEvent);
        finish(&entry, "a");
        finish(&entry, "a");
        finish(&entry, "b");
        let report = console.object("ns", "a", true);
        assert_eq!(report.controllers.len(), 1);
        let records = &report.controllers[0].records;
        // History 2: the first record of `a` is gone.
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].trigger, Trigger::Requeue);
        assert_eq!(records[0].lines, ["a: done"]);
        assert_eq!(
            report.controllers[0].content_note.as_deref(),
            Some("not in the controller's cache")
        );
        let all = console.replay(0);
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 3]);
        // A replaced registration is not removed by the old one's stop.
        let newer = console.register(info("c"));
        console.unregister(&entry);
        assert!(console.controller("c").is_some());
        console.unregister(&newer);
        assert!(console.controller("c").is_none());
    }
}
