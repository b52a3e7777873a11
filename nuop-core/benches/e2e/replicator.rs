//! The replicator workload of `make bench-e2e`: config-replicator's job done four ways,
//! one after the other, on the same shape of data.
//!
//! Per variant, in namespaces of its own: S source ConfigMaps (50) labelled
//! `nuop.dev/replicate: "true"` in `<prefix>-src`, each with
//! `nuop.dev/replicate-include` naming T target namespaces (10) plus one that does not
//! exist yet, all created before the controller starts. The include annotation keeps
//! the copies inside the benchmark's namespaces on a shared cluster; every variant
//! honours it. Then:
//! 1. converge: time from starting the controller until all S×T copies exist with the
//!    source's data (copies/s = S×T / that time, start-up included);
//! 2. restore deleted: N copies (20) of N different sources are deleted at once; the
//!    time from each delete to the copy's return (p50);
//! 3. restore edited: N copies of N other sources get a changed value at once; the time
//!    from each edit to the copy carrying the source's data again (p50);
//! 4. new namespace: the namespace the include annotation named in advance is created;
//!    the time until it holds all S copies;
//! 5. LIST requests: `apiserver_request_total{verb="LIST"}` for configmaps and
//!    namespaces from the API server's own `/metrics` (admin client), read after step 1
//!    and after step 4: the steady-state reconciles of steps 2–4 (and any periodic
//!    ones in that window). The counter is the API server's, so other clients of the
//!    cluster add to it; run the benchmark on an otherwise idle control plane.
//!
//! Variants: `replicator` (nuop-standard, embedded executor, `examples/config-replicator`
//! with `k8s` commands and watches), `replicator-process` (the same script, process
//! executor), `replicator-kubectl` (embedded, `tests/scripts/kubectl-replicator`: the
//! kubectl-style script written for the original nuop) and `replicator-kube` (the
//! hand-written kube-rs replicator, `examples/kube-replicator.rs`, the limit). Each nuop
//! variant's copy of its script watches sources in `<prefix>-src` only (a `namespace`
//! added to its config answer); everything else is the script as shipped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

use super::{ms, percentile, sibling_binary, usage};

const REPLICATE_LABEL: &str = "nuop.dev/replicate";
const REPLICA_LABEL: &str = "nuop.dev/replica-of";
const INCLUDE: &str = "nuop.dev/replicate-include";
const CONVERGE_LIMIT: Duration = Duration::from_secs(300);
/// How long one restore or new-namespace phase may take. The kubectl-style replicator
/// has no watches: it restores at its next periodic requeue (60 s).
const PHASE_LIMIT: Duration = Duration::from_secs(150);

/// Every variant, in the order they run.
pub const VARIANTS: [&str; 4] = [
    "replicator",
    "replicator-process",
    "replicator-kubectl",
    "replicator-kube",
];

/// The replicator workload's arguments.
pub struct Args {
    pub variants: Vec<String>,
    pub sources: usize,
    pub targets: usize,
    pub samples: usize,
    pub concurrency: usize,
    pub nuop_standard: PathBuf,
    pub kube_replicator: PathBuf,
}

impl Args {
    /// Defaults: every variant, 50 sources × 10 targets, 20 samples per restore phase.
    pub fn new(nuop_standard: PathBuf, concurrency: usize) -> Self {
        Self {
            variants: VARIANTS.map(String::from).to_vec(),
            sources: 50,
            targets: 10,
            samples: 20,
            concurrency,
            nuop_standard,
            kube_replicator: sibling_binary("examples/kube-replicator"),
        }
    }
}

/// One variant's numbers.
pub struct Measured {
    variant: String,
    converge: Duration,
    deleted: Vec<Duration>,
    edited: Vec<Duration>,
    new_namespace: Option<Duration>,
    lists: ListDelta,
    window: Duration,
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

#[derive(Default, Clone, Copy)]
struct ListDelta {
    configmaps: f64,
    namespaces: f64,
}

/// `apiserver_request_total{verb="LIST"}` summed per resource, from the API server's
/// own metrics.
async fn list_requests(client: &Client) -> ListDelta {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    let text = client
        .request_text(request)
        .await
        .expect("read the API server's /metrics (the admin client may)");
    let mut total = ListDelta::default();
    for line in text.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        if !labels.contains("verb=\"LIST\"") {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if labels.contains("resource=\"configmaps\"") {
            total.configmaps += value;
        } else if labels.contains("resource=\"namespaces\"") {
            total.namespaces += value;
        }
    }
    total
}

fn source_name(i: usize) -> String {
    format!("src-{i:03}")
}

fn source_data(name: &str) -> BTreeMap<String, String> {
    [("value".to_string(), format!("v-{name}"))].into()
}

/// One watch event on a copy.
struct CopyEvent {
    key: (String, String),
    uid: String,
    resource_version: u64,
    correct: bool,
    at: Instant,
}

/// The benchmark's view of every copy of this variant's sources, from one watch.
struct Tracker {
    events: mpsc::UnboundedReceiver<CopyEvent>,
    /// The last event per (namespace, name).
    latest: HashMap<(String, String), CopyEvent>,
}

impl Tracker {
    /// Watches copies of sources in `source_ns`; returns once the first list is done.
    async fn start(client: Client, source_ns: &str) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let prefix = format!("{source_ns}.");
        let api = Api::<ConfigMap>::all(client);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut stream = std::pin::pin!(watcher(
                api,
                watcher::Config::default().labels(REPLICA_LABEL)
            ));
            while let Some(event) = stream.next().await {
                let at = Instant::now();
                let (cm, deleted) = match event {
                    Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => (cm, false),
                    Ok(watcher::Event::Delete(cm)) => (cm, true),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(());
                        }
                        continue;
                    }
                    Ok(watcher::Event::Init) => continue,
                    Err(e) => {
                        eprintln!("bench watch error (the watcher retries): {e}");
                        continue;
                    }
                };
                if !cm
                    .labels()
                    .get(REPLICA_LABEL)
                    .is_some_and(|tag| tag.starts_with(&prefix))
                {
                    continue;
                }
                let name = cm.name_any();
                let event = CopyEvent {
                    correct: !deleted && cm.data.as_ref() == Some(&source_data(&name)),
                    key: (cm.namespace().unwrap_or_default(), name),
                    uid: cm.uid().unwrap_or_default(),
                    resource_version: cm
                        .resource_version()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    at,
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        ready_rx.await.expect("the copy watch lists once");
        Self {
            events,
            latest: HashMap::new(),
        }
    }

    /// The next event before `deadline`, also kept as the copy's latest.
    async fn next(&mut self, deadline: Instant) -> Option<&CopyEvent> {
        let event = tokio::time::timeout_at(deadline.into(), self.events.recv())
            .await
            .ok()?
            .expect("the copy watch runs");
        let key = event.key.clone();
        self.latest.insert(key.clone(), event);
        self.latest.get(&key)
    }

    fn correct_copies(&self) -> usize {
        self.latest.values().filter(|e| e.correct).count()
    }
}

async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    labels: Some([("nuop.dev/bench".to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// The script a nuop variant runs: `source` with `namespace: <ns>` added to its config
/// answer, so it watches this variant's sources only.
fn narrowed(source: &str, namespace: &str) -> String {
    const CONFIG: &str = "def \"main config\" [] {\n  {\n";
    assert_eq!(
        source.matches(CONFIG).count(),
        1,
        "the replicator script's config must start with `{CONFIG:?}`"
    );
    source.replacen(
        CONFIG,
        &format!("{CONFIG}    namespace: \"{namespace}\"\n"),
        1,
    )
}

fn spawn(args: &Args, variant: &str, source_ns: &str, workdir: &Path) -> tokio::process::Child {
    let log = std::fs::File::create(workdir.join(format!("{variant}.log"))).expect("log file");
    let concurrency = args.concurrency.to_string();
    let mut command = if variant == "replicator-kube" {
        let mut c = tokio::process::Command::new(&args.kube_replicator);
        c.args(["--namespace", source_ns, "--concurrency", &concurrency]);
        c
    } else {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (script, executor) = match variant {
            "replicator" => (manifest.join("../examples/config-replicator"), "embedded"),
            "replicator-process" => (manifest.join("../examples/config-replicator"), "process"),
            "replicator-kubectl" => (
                manifest.join("tests/scripts/kubectl-replicator"),
                "embedded",
            ),
            other => panic!("unknown replicator variant {other}"),
        };
        let text = std::fs::read_to_string(script.join("mod.nu")).expect("read the script");
        let dir = workdir.join(format!("scripts-{variant}/config-replicator"));
        std::fs::create_dir_all(&dir).expect("script dir");
        std::fs::write(dir.join("mod.nu"), narrowed(&text, source_ns)).expect("write the script");
        let mut c = tokio::process::Command::new(&args.nuop_standard);
        c.arg("--scripts")
            .arg(dir.parent().expect("scripts dir"))
            .args(["--executor", executor, "--concurrency", &concurrency])
            .args([
                "--metrics-bind-address",
                "0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
            ]);
        c
    };
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the {variant} controller: {e}"))
}

/// Waits until each of `pending` (copy → when it was disturbed, the resourceVersion or
/// uid it must move past) holds the source's data again; the latencies of those that did.
async fn restores(
    tracker: &mut Tracker,
    mut pending: HashMap<(String, String), (Instant, Disturbed)>,
) -> Vec<Duration> {
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut latencies = Vec::new();
    while !pending.is_empty() {
        let Some(event) = tracker.next(deadline).await else {
            break;
        };
        let Some((sent, disturbed)) = pending.get(&event.key) else {
            continue;
        };
        let back = event.correct
            && match disturbed {
                Disturbed::Deleted { uid } => event.uid != *uid,
                Disturbed::Edited { resource_version } => {
                    event.resource_version > *resource_version
                }
            };
        if back {
            latencies.push(event.at - *sent);
            let key = event.key.clone();
            pending.remove(&key);
        }
    }
    latencies
}

enum Disturbed {
    Deleted { uid: String },
    Edited { resource_version: u64 },
}

async fn run_variant(client: &Client, args: &Args, variant: &str, workdir: &Path) -> Measured {
    let prefix = format!(
        "{}-{}",
        variant.replace("replicator", "rep"),
        std::process::id()
    );
    let source_ns = format!("{prefix}-src");
    let targets: Vec<String> = (0..args.targets)
        .map(|t| format!("{prefix}-t{t:02}"))
        .collect();
    let new_ns = format!("{prefix}-new");
    for ns in std::iter::once(&source_ns).chain(&targets) {
        create_namespace(client, ns).await;
    }
    let include = targets
        .iter()
        .chain([&new_ns])
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let sources = Api::<ConfigMap>::namespaced(client.clone(), &source_ns);
    future::try_join_all((0..args.sources).map(|i| {
        let name = source_name(i);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(REPLICATE_LABEL.to_string(), "true".to_string())].into()),
                annotations: Some([(INCLUDE.to_string(), include.clone())].into()),
                ..Default::default()
            },
            data: Some(source_data(&name)),
            ..Default::default()
        };
        let sources = sources.clone();
        async move { sources.create(&PostParams::default(), &cm).await }
    }))
    .await
    .expect("create the sources");
    let mut tracker = Tracker::start(client.clone(), &source_ns).await;

    let started = Instant::now();
    let mut child = spawn(args, variant, &source_ns, workdir);
    let pid = child.id().expect("child pid");
    let total = args.sources * args.targets;
    let deadline = started + CONVERGE_LIMIT;
    while tracker.correct_copies() < total {
        if tracker.next(deadline).await.is_none() {
            panic!(
                "{variant}: {}/{total} copies after {CONVERGE_LIMIT:?}; see {}",
                tracker.correct_copies(),
                workdir.join(format!("{variant}.log")).display()
            );
        }
    }
    let converge = started.elapsed();
    eprintln!(
        "bench-e2e: {variant}: {total} copies in {:.2}s",
        converge.as_secs_f64()
    );

    let lists_before = list_requests(client).await;
    let window_started = Instant::now();
    let copy_api = |ns: &str| Api::<ConfigMap>::namespaced(client.clone(), ns);
    let pairs = |offset: usize| -> Vec<(String, String)> {
        (0..args.samples)
            .map(|k| (targets[k % targets.len()].clone(), source_name(offset + k)))
            .collect()
    };

    // Deleted copies, all at once.
    let mut pending = HashMap::new();
    let deletes = pairs(0).into_iter().map(|(ns, name)| {
        let uid = tracker.latest[&(ns.clone(), name.clone())].uid.clone();
        let api = copy_api(&ns);
        async move {
            let sent = Instant::now();
            api.delete(&name, &DeleteParams::background())
                .await
                .expect("delete a copy");
            ((ns, name), (sent, Disturbed::Deleted { uid }))
        }
    });
    pending.extend(future::join_all(deletes).await);
    let deleted = restores(&mut tracker, pending).await;
    eprintln!(
        "bench-e2e: {variant}: {}/{} deleted copies restored",
        deleted.len(),
        args.samples
    );

    // Edited copies (other sources), all at once.
    let edits = pairs(args.samples).into_iter().map(|(ns, name)| {
        let api = copy_api(&ns);
        async move {
            let sent = Instant::now();
            let edited = api
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"data": {"value": "edited"}})),
                )
                .await
                .expect("edit a copy");
            let resource_version = edited
                .resource_version()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            ((ns, name), (sent, Disturbed::Edited { resource_version }))
        }
    });
    let pending = future::join_all(edits).await.into_iter().collect();
    let edited = restores(&mut tracker, pending).await;
    eprintln!(
        "bench-e2e: {variant}: {}/{} edited copies restored",
        edited.len(),
        args.samples
    );

    // A new namespace gets every source's copy.
    let sent = Instant::now();
    create_namespace(client, &new_ns).await;
    let deadline = sent + PHASE_LIMIT;
    let in_new = |t: &Tracker| {
        t.latest
            .values()
            .filter(|e| e.correct && e.key.0 == new_ns)
            .count()
    };
    let mut new_namespace = None;
    while in_new(&tracker) < args.sources {
        let Some(event) = tracker.next(deadline).await else {
            break;
        };
        let at = event.at;
        if in_new(&tracker) == args.sources {
            new_namespace = Some(at - sent);
        }
    }
    let window = window_started.elapsed();
    let lists_after = list_requests(client).await;

    let (cpu_seconds, peak_rss_mib) = usage(pid);
    child.kill().await.expect("stop the controller");
    // Sources carry the replicator's finalizer and nothing runs it any more.
    future::join_all((0..args.sources).map(|i| {
        let sources = sources.clone();
        async move {
            let _ = sources
                .patch(
                    &source_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }))
    .await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let all: Vec<&String> = std::iter::once(&source_ns)
        .chain(&targets)
        .chain([&new_ns])
        .collect();
    for ns in &all {
        let _ = namespaces.delete(ns, &DeleteParams::background()).await;
    }
    // The namespace controller deletes every copy now; the next variant must not compete
    // with it for the API server (nor count its LISTs).
    let gone_by = Instant::now() + Duration::from_secs(300);
    for ns in &all {
        while Instant::now() < gone_by
            && namespaces
                .get_opt(ns)
                .await
                .expect("read a bench namespace")
                .is_some()
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Measured {
        variant: variant.to_string(),
        converge,
        deleted,
        edited,
        new_namespace,
        lists: ListDelta {
            configmaps: lists_after.configmaps - lists_before.configmaps,
            namespaces: lists_after.namespaces - lists_before.namespaces,
        },
        window,
        cpu_seconds,
        peak_rss_mib,
    }
}

/// Runs every requested variant and prints the table.
pub async fn run(client: &Client, args: &Args, workdir: &Path) {
    for (binary, needed) in [
        (
            &args.kube_replicator,
            args.variants.iter().any(|v| v == "replicator-kube"),
        ),
        (
            &args.nuop_standard,
            args.variants.iter().any(|v| v != "replicator-kube"),
        ),
    ] {
        assert!(
            !needed || binary.exists(),
            "{} does not exist: build it with `cargo test --workspace --profile ci --no-run` (make test and make bench-e2e do)",
            binary.display()
        );
    }
    let mut results = Vec::new();
    for variant in &args.variants {
        eprintln!(
            "bench-e2e: running {variant}: {} sources x {} namespaces",
            args.sources, args.targets
        );
        results.push(run_variant(client, args, variant, workdir).await);
    }
    print_table(args, &mut results);
}

fn print_table(args: &Args, results: &mut [Measured]) {
    let copies = (args.sources * args.targets) as f64;
    let rate = |m: &Measured| copies / m.converge.as_secs_f64();
    let limit = results
        .iter()
        .find(|r| r.variant == "replicator-kube")
        .map(rate);
    println!(
        "\nreplicator: {} sources x {} namespaces = {copies} copies, {} deleted and {} edited copies restored (p50), concurrency {}\n",
        args.sources, args.targets, args.samples, args.samples, args.concurrency
    );
    println!(
        "| variant | converge s | copies/s | vs kube-rs | deleted p50 ms | edited p50 ms | new namespace s | LIST configmaps | LIST namespaces | window s | peak RSS MiB | CPU s |"
    );
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let p50 = |samples: &mut Vec<Duration>| {
        samples.sort();
        match samples.len() {
            0 => format!("none of {}", args.samples),
            n if n < args.samples => {
                format!(
                    "{:.1} ({n}/{} back)",
                    ms(percentile(samples, 0.5)),
                    args.samples
                )
            }
            _ => format!("{:.1}", ms(percentile(samples, 0.5))),
        }
    };
    for r in results.iter_mut() {
        let ratio = limit.map_or("n/a".into(), |l| format!("{:.2}", rate(r) / l));
        let new_namespace = r
            .new_namespace
            .map_or(format!("> {}", PHASE_LIMIT.as_secs()), |d| {
                format!("{:.2}", d.as_secs_f64())
            });
        println!(
            "| {} | {:.2} | {:.0} | {ratio} | {} | {} | {new_namespace} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} |",
            r.variant,
            r.converge.as_secs_f64(),
            rate(r),
            p50(&mut r.deleted),
            p50(&mut r.edited),
            r.lists.configmaps,
            r.lists.namespaces,
            r.window.as_secs_f64(),
            r.peak_rss_mib,
            r.cpu_seconds,
        );
    }
}
