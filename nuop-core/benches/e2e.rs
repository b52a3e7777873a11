//! End-to-end throughput and latency against the real control plane, side by side:
//! `nuop-standard` with the embedded executor, with the process executor, and a
//! hand-written kube-rs controller doing the same change natively (the reference for
//! "as fast as Rust can go").
//!
//! `make bench-e2e` runs it. For each variant, in a namespace of its own:
//! 1. creates N ConfigMaps labelled `nuop.dev/bench=true` (before the controller runs);
//! 2. starts the controller as a child process and measures, with a watch, the time until
//!    every ConfigMap carries `nuop.dev/seen=true` (objects/s), and the child's peak RSS
//!    and CPU time (its own plus reaped children's, so `nu` processes count);
//! 3. with everything converged, removes the label from one object at a time (100
//!    updates) and measures the time from sending the update to seeing the controller's
//!    write on the watch (p50/p99);
//! 4. at the largest object count only: once the converged objects are requeuing (every
//!    controller requeues each object `--requeue S` seconds after its reconcile, 30 by
//!    default, so the first requeues come due `S` after the first write), creates new
//!    objects one at a time, spread over as long as the convergence took (that is how
//!    long the requeues of the converged objects keep coming due), and measures the time
//!    from the create to the controller's write: are new objects starved by requeues?
//!
//! `--objects` takes a list (`100,1000`): every variant runs once per count, and a memory
//! table gives each variant's RSS right after convergence (VmRSS, not the peak) at each
//! count and the slope of RssAnon (anonymous memory) between the smallest and the largest
//! count, the RSS per 1,000 cached objects, beside the reference's. The slope leaves out
//! what does not grow with the objects (the binary's code pages, which are file-backed and
//! which nuop pages out once ready, Nushell's engine and its clones for concurrent calls,
//! which the smallest count already warms up). Every controller, the reference included, is a
//! child process of its own, so its `/proc/<pid>/status` holds its memory alone.
//! "first write s" is the time from starting the controller to the first write seen on
//! the watch: the time to the first reconcile after start, with N objects to list first.
//!
//! `embedded-no-events` is the embedded executor with `--write-events false`: nuop
//! records every write as an Event by default, one more etcd write per change that the
//! reference does not make. `reference-events` is the reference doing that work too: after
//! each write it records the same Normal Event (reason `Updated`) with kube's `Recorder`,
//! awaited in the reconcile as a hand-written kube-rs controller does. Each row's "vs same
//! work" compares it with the reference that makes the writes it makes: `reference` for
//! `embedded-no-events`, `reference-events` for the variants that record Events. `managed` is `nuop-managed` fetching the same script from a
//! git repository (file://) with the configuration the manager writes for a NuOperator.
//! `embedded-console` is the embedded executor with the console on
//! (`--console-bind-address 127.0.0.1:0`): every reconcile recorded, to show that
//! recording costs no throughput (issue 16).
//!
//! The replicator workload (`e2e/replicator.rs`) follows in the same run: config-replicator's
//! work (50 sources x 10 namespaces) by nuop's new replicator (embedded and process
//! executor), the kubectl-style replicator and a hand-written kube-rs replicator.
//!
//! Arguments: `--workloads label,replicator` (both), `--objects N[,N…]` (1000), `--updates N` (100),
//! `--new-objects N` (20), `--requeue S` (30), `--rounds N` (1: with more, every variant runs N
//! times per count, interleaved, and each row is its median run by converge time, the
//! objects/s of every round beside it; new objects are measured in the first round only),
//! `--variants a,b,c`
//! (`embedded,embedded-console,embedded-no-events,process,managed,reference,reference-events`), `--nuop-standard PATH`
//! and `--nuop-managed PATH` (default: the ones `cargo test --profile ci` built beside this bench),
//! `--concurrency N` (8, the same for every variant), `--baseline PATH` (an older
//! `nuop-standard`, measured as variant `baseline` with the embedded executor beside
//! the current one: before/after a change in one run); for the replicator workload
//! `--replicator-variants a,b` (`replicator,replicator-process,replicator-kubectl,replicator-kube`),
//! `--sources N` (50), `--targets N` (10), `--samples N` (20), `--kube-replicator PATH`
//! (default: `examples/kube-replicator` beside the binaries). Needs `KUBECONFIG`; the process
//! variant needs `nu` (`NUOP_NU` or `PATH`). No assertions: numbers are for reading.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;

// Not `benches/replicator.rs`: cargo would make that a bench target of its own.
#[path = "e2e/replicator.rs"]
mod replicator;

const BENCH_LABEL: &str = "nuop.dev/bench";
const SEEN_LABEL: &str = "nuop.dev/seen";
/// The most time one variant may take to converge before the run is declared stuck.
const CONVERGE_LIMIT: Duration = Duration::from_secs(600);

/// The script under test: the same change the reference controller makes.
///
/// Both requeue times are `requeue`, as the reference's: a write or a no-op, every object
/// comes due again `requeue` seconds after its reconcile.
fn script(namespace: &str, requeue: u64) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "bench", version: "v1", kind: "ConfigMap", namespace: "{namespace}",
     labelSelectors: {{ "{BENCH_LABEL}": "true" }},
     requeue_after_change: {requeue}, requeue_after_noop: {requeue} }} | to yaml
}}
def "main reconcile" [] {{
  let obj = $in | from json
  if ($obj.metadata.labels? | default {{}} | get -o "{SEEN_LABEL}") == "true" {{ exit 0 }}
  print ($obj | upsert metadata.labels."{SEEN_LABEL}" "true" | to json)
  exit 2
}}
"#
    )
}

struct Args {
    /// Object counts, each run by every variant; the largest also measures new objects.
    objects: Vec<usize>,
    updates: usize,
    /// New objects created one at a time once the converged ones requeue (largest count).
    new_objects: usize,
    /// Runs of every variant per count; each row is the median run.
    rounds: usize,
    /// Seconds every controller requeues an object after reconciling it.
    requeue: u64,
    variants: Vec<String>,
    nuop_standard: PathBuf,
    nuop_managed: PathBuf,
    /// An older `nuop-standard` to measure beside this one (variant `baseline`).
    baseline: Option<PathBuf>,
    concurrency: usize,
    /// Which workloads run: `label` (the table above) and `replicator`.
    workloads: Vec<String>,
    replicator: replicator::Args,
}

fn parse_args(args: &[String]) -> Args {
    let mut parsed = Args {
        objects: vec![1000],
        updates: 100,
        new_objects: 20,
        rounds: 1,
        requeue: 30,
        variants: [
            "embedded",
            "embedded-console",
            "embedded-no-events",
            "process",
            "managed",
            "reference",
            "reference-events",
        ]
        .map(String::from)
        .to_vec(),
        nuop_standard: sibling_binary("nuop-standard"),
        nuop_managed: sibling_binary("nuop-managed"),
        baseline: None,
        concurrency: 8,
        workloads: vec!["label".into(), "replicator".into()],
        replicator: replicator::Args::new(sibling_binary("nuop-standard"), 8),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| panic!("{arg} needs a value"))
                .clone()
        };
        match arg.as_str() {
            "--objects" => {
                parsed.objects = value()
                    .split(',')
                    .map(|n| n.parse().expect("--objects N[,N...]"))
                    .collect();
                parsed.objects.sort_unstable();
                parsed.objects.dedup();
            }
            "--updates" => parsed.updates = value().parse().expect("--updates N"),
            "--new-objects" => parsed.new_objects = value().parse().expect("--new-objects N"),
            "--requeue" => parsed.requeue = value().parse().expect("--requeue S"),
            "--rounds" => parsed.rounds = value().parse::<usize>().expect("--rounds N").max(1),
            "--variants" => parsed.variants = value().split(',').map(str::to_string).collect(),
            "--nuop-standard" => parsed.nuop_standard = value().into(),
            "--nuop-managed" => parsed.nuop_managed = value().into(),
            "--concurrency" => parsed.concurrency = value().parse().expect("--concurrency N"),
            "--baseline" => parsed.baseline = Some(value().into()),
            "--workloads" => parsed.workloads = value().split(',').map(str::to_string).collect(),
            "--replicator-variants" => {
                parsed.replicator.variants = value().split(',').map(str::to_string).collect();
            }
            "--sources" => parsed.replicator.sources = value().parse().expect("--sources N"),
            "--targets" => parsed.replicator.targets = value().parse().expect("--targets N"),
            "--samples" => parsed.replicator.samples = value().parse().expect("--samples N"),
            "--kube-replicator" => parsed.replicator.kube_replicator = value().into(),
            // `cargo bench` passes `--bench`; filters are not used.
            _ => {}
        }
    }
    if parsed.baseline.is_some() && !parsed.variants.iter().any(|v| v == "baseline") {
        parsed.variants.insert(1, "baseline".into());
    }
    parsed.replicator.nuop_standard = parsed.nuop_standard.clone();
    parsed.replicator.concurrency = parsed.concurrency;
    parsed
}

/// `name` in the profile directory this bench was built into (`target/<profile>/`, where
/// `cargo test` of the same profile puts the workspace's binaries).
fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// One watch event reduced to what the measurements need.
struct Seen {
    name: String,
    labelled: bool,
    at: Instant,
}

/// Forwards every ConfigMap event of `namespace` as a [`Seen`]; returns once the initial
/// list is done.
async fn watch_namespace(client: Client, namespace: &str) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let api = Api::<ConfigMap>::namespaced(client, namespace);
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut events = std::pin::pin!(watcher(
            api,
            watcher::Config::default().labels(&format!("{BENCH_LABEL}=true"))
        ));
        while let Some(event) = events.next().await {
            let at = Instant::now();
            match event {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => {
                    let labelled = cm.labels().get(SEEN_LABEL).map(String::as_str) == Some("true");
                    if tx
                        .send(Seen {
                            name: cm.name_any(),
                            labelled,
                            at,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("bench watch error (the watcher retries): {e}"),
            }
        }
    });
    ready_rx
        .await
        .expect("the bench watch completes its first list");
    rx
}

/// The bench's ConfigMap `name`, labelled for the controllers.
fn bench_configmap(name: String) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some([(BENCH_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

async fn create_objects(client: &Client, namespace: &str, count: usize) {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm = bench_configmap(format!("cm-{i:05}"));
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("create the bench ConfigMaps");
}

/// CPU seconds (own + reaped children) and peak RSS in MiB of a live process.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11..15]
        .iter()
        .map(|f| f.parse::<f64>().expect("tick count"))
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    (ticks / clock_ticks_per_second(), hwm_kib / 1024.0)
}

/// Resident set size in MiB of a live process now (VmRSS).
/// VmRSS and RssAnon of `pid` now, in MiB.
fn rss_now(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| -> f64 {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"));
        kib / 1024.0
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct Measured {
    variant: String,
    objects: usize,
    converge: Duration,
    /// VmRSS right after convergence: the caches full, the burst over.
    rss_mib: f64,
    /// RssAnon at the same moment: the caches and every other allocation, without the
    /// binary's file-backed code pages (which nuop pages out after start-up).
    anon_mib: f64,
    /// Create-to-write of new objects while the converged ones requeue (largest count).
    new_latencies: Vec<Duration>,
    first_write: Duration,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    latencies: Vec<Duration>,
    /// Objects/s of every round of this variant at this count (`--rounds`), in run order.
    round_rates: Vec<f64>,
}

/// One row per variant and count: the run with the median converge time, carrying the
/// objects/s of every round and the new-object latencies of the round that measured them.
fn median_runs(runs: Vec<Measured>) -> Vec<Measured> {
    let mut groups: Vec<Vec<Measured>> = Vec::new();
    for run in runs {
        match groups
            .iter_mut()
            .find(|g| g[0].variant == run.variant && g[0].objects == run.objects)
        {
            Some(group) => group.push(run),
            None => groups.push(vec![run]),
        }
    }
    groups
        .into_iter()
        .map(|mut group| {
            let rates: Vec<f64> = group
                .iter()
                .map(|r| r.objects as f64 / r.converge.as_secs_f64())
                .collect();
            let new_latencies = group
                .iter_mut()
                .map(|r| std::mem::take(&mut r.new_latencies))
                .find(|l| !l.is_empty())
                .unwrap_or_default();
            group.sort_by_key(|r| r.converge);
            let mut median = group.swap_remove(group.len() / 2);
            median.round_rates = rates;
            median.new_latencies = new_latencies;
            median
        })
        .collect()
}

/// The child process for one variant.
fn spawn_controller(
    args: &Args,
    variant: &str,
    namespace: &str,
    workdir: &Path,
) -> tokio::process::Child {
    let log = std::fs::File::create(workdir.join(format!("{variant}.log"))).expect("log file");
    let mut command = if variant == "managed" {
        managed_command(args, namespace, workdir)
    } else if variant == "reference" || variant == "reference-events" {
        let mut c = tokio::process::Command::new(std::env::current_exe().expect("own path"));
        c.args([
            "--reference-controller",
            namespace,
            &args.concurrency.to_string(),
            &args.requeue.to_string(),
            if variant == "reference" {
                "no-events"
            } else {
                "events"
            },
        ]);
        c
    } else {
        let scripts = workdir.join(format!("scripts-{variant}"));
        std::fs::create_dir_all(scripts.join("bench")).expect("script dir");
        std::fs::write(
            scripts.join("bench/mod.nu"),
            script(namespace, args.requeue),
        )
        .expect("script");
        // `baseline`: an older build (`--baseline PATH`) with the embedded executor, to
        // compare a change before/after in one run.
        let (binary, variant) = match (variant, &args.baseline) {
            ("baseline", Some(path)) => (path.as_path(), "embedded"),
            _ => (args.nuop_standard.as_path(), variant),
        };
        let mut c = tokio::process::Command::new(binary);
        c.arg("--scripts").arg(&scripts);
        let variant = match variant.strip_suffix("-console") {
            Some(executor) => {
                c.args(["--console-bind-address", "127.0.0.1:0"]);
                executor
            }
            None => variant,
        };
        // `embedded-no-events`: the embedded executor without Normal Events for writes.
        let (executor, write_events) = match variant.strip_suffix("-no-events") {
            Some(executor) => (executor, "false"),
            None => (variant, "true"),
        };
        c.args(["--write-events", write_events]);
        c.args([
            "--executor",
            executor,
            "--concurrency",
            &args.concurrency.to_string(),
        ]);
        // Probes on a free port, metrics off: nothing else may bind.
        c.args([
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

/// `nuop-managed` fetching the bench script from a git repository (file://), with the
/// configuration the manager would write for a NuOperator with one mapping.
fn managed_command(args: &Args, namespace: &str, workdir: &Path) -> tokio::process::Command {
    let repo = workdir.join("repo-managed");
    std::fs::create_dir_all(repo.join("bench")).expect("repo dir");
    std::fs::write(repo.join("bench/mod.nu"), script(namespace, args.requeue)).expect("script");
    for git in [
        &["init", "-q", "-b", "main"][..],
        &["add", "."],
        &[
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@nuop.dev",
            "commit",
            "-qm",
            "bench",
        ],
    ] {
        let status = std::process::Command::new("git")
            .args(git)
            .current_dir(&repo)
            .status()
            .expect("git runs");
        assert!(status.success(), "git {git:?} failed");
    }
    let config = workdir.join("nuop.yaml");
    std::fs::write(
        &config,
        format!(
            "nuOperator: {{namespace: {namespace}, name: bench}}\n\
             sources:\n- location: file://{}\n\
             mappings:\n- name: bench\n  version: v1\n  kind: ConfigMap\n  \
             labelSelectors: {{\"{BENCH_LABEL}\": \"true\"}}\n\
             syncInterval: 3600\n",
            repo.display()
        ),
    )
    .expect("write nuop.yaml");
    let mut c = tokio::process::Command::new(&args.nuop_managed);
    c.arg("--config").arg(&config);
    c.arg("--cache-dir").arg(workdir.join("cache-managed"));
    c.args([
        "--concurrency",
        &args.concurrency.to_string(),
        "--metrics-bind-address",
        "0",
        "--health-probe-bind-address",
        "127.0.0.1:0",
    ]);
    c
}

/// One variant at one object count; `new_objects` also measures new objects while the
/// converged ones requeue.
async fn run_variant(
    client: &Client,
    args: &Args,
    variant: &str,
    objects: usize,
    new_objects: bool,
    workdir: &Path,
) -> Measured {
    let namespace = format!("bench-{variant}-{objects}-{}", std::process::id());
    // A directory per run: the managed variant's git repository must start empty.
    let workdir = &workdir.join(objects.to_string());
    std::fs::create_dir_all(workdir).expect("run directory");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the bench namespace");
    create_objects(client, &namespace, objects).await;
    let mut events = watch_namespace(client.clone(), &namespace).await;
    while events.try_recv().is_ok() {} // the initial list: nothing is labelled yet

    let started = Instant::now();
    let mut child = spawn_controller(args, variant, &namespace, workdir);
    let pid = child.id().expect("child pid");
    let mut labelled = HashSet::new();
    let mut first_write = None;
    let deadline = started + CONVERGE_LIMIT;
    while labelled.len() < objects {
        let seen = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{variant}: only {}/{} converged after {CONVERGE_LIMIT:?}; see {}",
                    labelled.len(),
                    objects,
                    workdir.join(format!("{variant}.log")).display()
                )
            })
            .expect("watch stream");
        if seen.labelled {
            first_write.get_or_insert(seen.at);
            labelled.insert(seen.name);
        }
    }
    let converge = started.elapsed();
    let (rss_mib, anon_mib) = rss_now(pid);
    let first_write = first_write.map_or(converge, |at| at - started);

    let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let mut latencies = Vec::with_capacity(args.updates);
    for i in 0..args.updates {
        let name = format!("cm-{:05}", i % objects);
        let sent = Instant::now();
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {SEEN_LABEL: null}}, "data": {"k": format!("v{i}")}}),
            ),
        )
        .await
        .expect("update one object");
        let what = format!("{variant}: update {i} of {name}");
        latencies
            .push(until_labelled(&mut events, &name, Duration::from_secs(60), &what).await - sent);
    }

    let new_latencies = if new_objects {
        new_object_latencies(
            &api,
            &mut events,
            args,
            variant,
            started + first_write,
            converge,
        )
        .await
    } else {
        Vec::new()
    };

    let (cpu_seconds, peak_rss_mib) = usage(pid);
    child.kill().await.expect("stop the controller");
    Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await
        .expect("delete the bench namespace");
    // The namespace controller deletes N objects now; the next variant must not compete
    // with that for the API server.
    let namespaces = Api::<Namespace>::all(client.clone());
    let gone_by = Instant::now() + Duration::from_secs(300);
    while namespaces
        .get_opt(&namespace)
        .await
        .expect("read the bench namespace")
        .is_some()
        && Instant::now() < gone_by
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Measured {
        variant: variant.to_string(),
        objects,
        converge,
        rss_mib,
        anon_mib,
        new_latencies,
        first_write,
        cpu_seconds,
        peak_rss_mib,
        latencies,
        round_rates: Vec::new(),
    }
}

/// Creates `args.new_objects` new ConfigMaps one at a time once the converged objects
/// requeue, and returns the time from each create to the controller's write on the watch.
///
/// Every object comes due `args.requeue` seconds after its reconcile, so the requeues of
/// the converged objects start `requeue` after the first write and keep coming for about
/// as long as the convergence took (they come due in the order and at the pace the
/// writes happened); the creates are spread over that span, at least 100 ms apart.
/// Waits on the bench's watch for the controller's write that labels `name`, and returns
/// when it was seen; panics naming `what` after `limit`.
async fn until_labelled(
    events: &mut mpsc::UnboundedReceiver<Seen>,
    name: &str,
    limit: Duration,
    what: &str,
) -> Instant {
    loop {
        let seen = tokio::time::timeout(limit, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{what} was never reconciled"))
            .expect("watch stream");
        if seen.name == name && seen.labelled {
            return seen.at;
        }
    }
}

async fn new_object_latencies(
    api: &Api<ConfigMap>,
    events: &mut mpsc::UnboundedReceiver<Seen>,
    args: &Args,
    variant: &str,
    first_write: Instant,
    converge: Duration,
) -> Vec<Duration> {
    let requeues_from = first_write + Duration::from_secs(args.requeue);
    tokio::time::sleep_until(requeues_from.into()).await;
    let spacing = (converge / args.new_objects.max(1) as u32)
        .clamp(Duration::from_millis(100), Duration::from_secs(2));
    let mut latencies = Vec::with_capacity(args.new_objects);
    for i in 0..args.new_objects {
        let next = Instant::now() + spacing;
        let name = format!("new-{i:05}");
        let sent = Instant::now();
        api.create(&PostParams::default(), &bench_configmap(name.clone()))
            .await
            .expect("create a new object");
        let what = format!("{variant}: new object {name}");
        latencies.push(until_labelled(events, &name, Duration::from_secs(120), &what).await - sent);
        tokio::time::sleep_until(next.into()).await;
    }
    latencies
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The table of one object count.
/// The reference that makes the same writes as `variant`: without Events for the
/// variants that record none, with them for every other nuop variant (Events are on by
/// default).
fn same_work_reference(variant: &str) -> &'static str {
    match variant {
        "reference" | "embedded-no-events" => "reference",
        _ => "reference-events",
    }
}

fn print_table(args: &Args, objects: usize, results: &mut [&mut Measured]) {
    let reference = results.iter().find(|r| r.variant == "reference").map(|r| {
        (
            objects as f64 / r.converge.as_secs_f64(),
            r.latencies.clone(),
        )
    });
    let rate_of = |variant: &str| {
        results
            .iter()
            .find(|r| r.variant == variant)
            .map(|r| objects as f64 / r.converge.as_secs_f64())
    };
    let (plain, with_events) = (rate_of("reference"), rate_of("reference-events"));
    println!(
        "\n{} objects, {} single-object updates, concurrency {} per controller, requeue {} s\n",
        objects, args.updates, args.concurrency, args.requeue
    );
    let rounds = args.rounds > 1;
    println!(
        "| variant | converge s | first write s | objects/s |{} vs reference | vs same work | peak RSS MiB | CPU s | update p50 ms | update p99 ms | p50 vs reference |",
        if rounds { " objects/s per round |" } else { "" }
    );
    println!(
        "| --- | ---: | ---: | ---: |{} ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        if rounds { " ---: |" } else { "" }
    );
    for r in results.iter_mut() {
        r.latencies.sort();
        let rate = objects as f64 / r.converge.as_secs_f64();
        let (p50, p99) = (
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
        );
        let (ratio, delta) = match &reference {
            Some((ref_rate, ref_lat)) => {
                let mut ref_lat = ref_lat.clone();
                ref_lat.sort();
                (
                    format!("{:.2}", rate / ref_rate),
                    format!("{:+.2} ms", ms(p50) - ms(percentile(&ref_lat, 0.5))),
                )
            }
            None => ("n/a".into(), "n/a".into()),
        };
        let same_work = match same_work_reference(&r.variant) {
            "reference" => plain,
            _ => with_events,
        }
        .map_or_else(|| "n/a".into(), |base| format!("{:.2}", rate / base));
        let per_round = if rounds {
            let rates: Vec<String> = r.round_rates.iter().map(|x| format!("{x:.0}")).collect();
            format!(" {} |", rates.join(" / "))
        } else {
            String::new()
        };
        println!(
            "| {} | {:.2} | {:.2} | {:.0} |{per_round} {ratio} | {same_work} | {:.1} | {:.2} | {:.2} | {:.2} | {delta} |",
            r.variant,
            r.converge.as_secs_f64(),
            r.first_write.as_secs_f64(),
            rate,
            r.peak_rss_mib,
            r.cpu_seconds,
            ms(p50),
            ms(p99),
        );
    }
}

/// Each variant's RSS right after convergence at every count, and the slope of its
/// anonymous memory between the smallest and the largest count: RSS per 1,000 cached
/// objects.
fn print_memory(args: &Args, results: &[Measured]) {
    let (Some(&low), Some(&high)) = (args.objects.first(), args.objects.last()) else {
        return;
    };
    let run = |variant: &str, objects: usize| {
        results
            .iter()
            .find(|r| r.variant == variant && r.objects == objects)
    };
    let rss = |variant: &str, objects: usize| run(variant, objects).map(|r| r.rss_mib);
    // The slope of anonymous memory: the file-backed code pages do not grow with the
    // objects, and nuop pages them out once it is ready (runtime::pages), so whether
    // that happened before the reading would swing a VmRSS slope by ~10 MiB.
    let anon = |variant: &str, objects: usize| run(variant, objects).map(|r| r.anon_mib);
    let per_1000 = |variant: &str| {
        Some((anon(variant, high)? - anon(variant, low)?) * 1000.0 / (high - low) as f64)
    };
    let reference = per_1000("reference");
    let counts: Vec<String> = args
        .objects
        .iter()
        .map(|n| format!("RSS MiB at {n}"))
        .collect();
    println!(
        "\nmemory: VmRSS right after convergence; per 1,000 cached objects = slope of RssAnon from {low} to {high} objects\n"
    );
    println!(
        "| variant | {} | RSS per 1,000 cached MiB | vs reference |",
        counts.join(" | ")
    );
    println!("| --- |{} ---: | ---: |", " ---: |".repeat(counts.len()));
    let mut variants: Vec<&str> = Vec::new();
    for r in results {
        if !variants.contains(&r.variant.as_str()) {
            variants.push(&r.variant);
        }
    }
    for variant in variants {
        let at: Vec<String> = args
            .objects
            .iter()
            .map(|&n| rss(variant, n).map_or("n/a".into(), |m| format!("{m:.1}")))
            .collect();
        let slope = per_1000(variant).filter(|_| high > low);
        let ratio = match (slope, reference.filter(|r| *r > 0.0)) {
            (Some(s), Some(r)) => format!("{:.2}", s / r),
            _ => "n/a".into(),
        };
        println!(
            "| {variant} | {} | {} | {ratio} |",
            at.join(" | "),
            slope.map_or("n/a".into(), |s| format!("{s:.2}"))
        );
    }
}

/// New objects reconciled while the converged ones requeue (the largest count).
fn print_new_objects(args: &Args, results: &mut [Measured]) {
    let Some(&objects) = args.objects.last() else {
        return;
    };
    println!(
        "\nnew objects while {objects} converged objects requeue every {} s: create to write\n",
        args.requeue
    );
    println!("| variant | new objects | p50 ms | p90 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for r in results
        .iter_mut()
        .filter(|r| r.objects == objects && !r.new_latencies.is_empty())
    {
        r.new_latencies.sort();
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.variant,
            r.new_latencies.len(),
            ms(percentile(&r.new_latencies, 0.5)),
            ms(percentile(&r.new_latencies, 0.9)),
            ms(*r.new_latencies.last().expect("not empty")),
        );
    }
}

/// The hand-written reference: a kube-rs controller that adds the label with an update
/// guarded by resourceVersion, as nuop writes back, and requeues every object `requeue`
/// seconds after its reconcile, as the bench script asks nuop to. With `events`, each
/// write is followed by the Normal Event nuop records for it, published with kube's
/// `Recorder` in the reconcile (a failed Event does not fail the reconcile).
async fn reference_controller(namespace: String, concurrency: u16, requeue: u64, events: bool) {
    let client = {
        nuop_core::install_crypto_provider();
        Client::try_default()
    }
    .await
    .expect("kube client");
    let recorder = events.then(|| {
        Arc::new(Recorder::new(
            client.clone(),
            Reporter {
                controller: "reference".into(),
                instance: None,
            },
        ))
    });
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);
    Controller::new(
        api.clone(),
        watcher::Config::default().labels(&format!("{BENCH_LABEL}=true")),
    )
    .with_config(config)
    .run(
        |cm: Arc<ConfigMap>, ctx: Arc<(Api<ConfigMap>, Option<Arc<Recorder>>)>| async move {
            let (api, recorder) = &*ctx;
            if cm.labels().get(SEEN_LABEL).map(String::as_str) == Some("true") {
                return Ok::<_, kube::Error>(Action::requeue(Duration::from_secs(requeue)));
            }
            let mut changed = (*cm).clone();
            changed
                .labels_mut()
                .insert(SEEN_LABEL.to_string(), "true".to_string());
            api.replace(&cm.name_any(), &PostParams::default(), &changed)
                .await?;
            if let Some(recorder) = recorder {
                let event = Event {
                    type_: EventType::Normal,
                    reason: "Updated".into(),
                    note: Some("script changes written".into()),
                    action: "Update".into(),
                    secondary: None,
                };
                let _ = recorder.publish(&event, &cm.object_ref(&())).await;
            }
            Ok(Action::requeue(Duration::from_secs(requeue)))
        },
        |_, _, _| Action::requeue(Duration::from_millis(500)),
        Arc::new((api, recorder)),
    )
    .for_each(|_| async {})
    .await;
}

#[tokio::main]
async fn main() {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("--reference-controller") {
        let namespace = raw.get(1).expect("namespace").clone();
        let concurrency = raw.get(2).and_then(|c| c.parse().ok()).unwrap_or(8);
        let requeue = raw.get(3).and_then(|c| c.parse().ok()).unwrap_or(30);
        let events = raw.get(4).map(String::as_str) == Some("events");
        reference_controller(namespace, concurrency, requeue, events).await;
        return;
    }
    let args = parse_args(&raw);
    let label = args.workloads.iter().any(|w| w == "label");
    for (binary, needed) in [
        (
            &args.nuop_standard,
            label
                && args
                    .variants
                    .iter()
                    .any(|v| !v.starts_with("reference") && v != "managed"),
        ),
        (
            &args.nuop_managed,
            label && args.variants.iter().any(|v| v == "managed"),
        ),
    ] {
        assert!(
            !needed || binary.exists(),
            "{} does not exist: build it with `cargo test --workspace --profile ci --no-run` (make test and make bench-e2e do)",
            binary.display()
        );
    }
    let client = {
        nuop_core::install_crypto_provider();
        Client::try_default()
    }
    .await
    .expect("KUBECONFIG must name a reachable cluster (make bench-e2e starts one)");
    let workdir = tempfile::tempdir().expect("workdir");
    let mut results = Vec::new();
    let largest = args.objects.last().copied().unwrap_or_default();
    for &objects in args.objects.iter().filter(|_| label) {
        for round in 0..args.rounds {
            for variant in &args.variants {
                eprintln!(
                    "bench-e2e: running {variant} with {objects} objects (round {} of {})",
                    round + 1,
                    args.rounds
                );
                let result = run_variant(
                    &client,
                    &args,
                    variant,
                    objects,
                    round == 0 && objects == largest && args.new_objects > 0,
                    // A directory per round too: the managed variant's git repository
                    // must start empty.
                    &workdir.path().join(format!("round-{round}")),
                )
                .await;
                eprintln!(
                    "bench-e2e: {variant} converged in {:.2}s",
                    result.converge.as_secs_f64()
                );
                results.push(result);
            }
        }
    }
    let mut results = median_runs(results);
    if label {
        for &objects in &args.objects {
            let mut rows: Vec<&mut Measured> = results
                .iter_mut()
                .filter(|r| r.objects == objects)
                .collect();
            print_table(&args, objects, &mut rows);
        }
        print_memory(&args, &results);
        print_new_objects(&args, &mut results);
    }
    if args.workloads.iter().any(|w| w == "replicator") {
        replicator::run(&client, &args.replicator, workdir.path()).await;
    }
}
