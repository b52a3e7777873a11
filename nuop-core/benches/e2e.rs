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
//!    write on the watch (p50/p99).
//!
//! `embedded-no-events` is the embedded executor with `--write-events false`: nuop
//! records every write as an Event by default, one more etcd write per change that the
//! reference does not make. `managed` is `nuop-managed` fetching the same script from a
//! git repository (file://) with the configuration the manager writes for a NuOperator.
//! `embedded-console` is the embedded executor with the console on
//! (`--console-bind-address 127.0.0.1:0`): every reconcile recorded, to show that
//! recording costs no throughput (issue 16).
//!
//! The replicator workload (`e2e/replicator.rs`) follows in the same run: config-replicator's
//! work (50 sources x 10 namespaces) by nuop's new replicator (embedded and process
//! executor), the kubectl-style replicator and a hand-written kube-rs replicator.
//!
//! Arguments: `--workloads label,replicator` (both), `--objects N` (1000), `--updates N` (100), `--variants a,b,c`
//! (`embedded,embedded-console,embedded-no-events,process,managed,reference`), `--nuop-standard PATH`
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
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
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
fn script(namespace: &str) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "bench", version: "v1", kind: "ConfigMap", namespace: "{namespace}",
     labelSelectors: {{ "{BENCH_LABEL}": "true" }} }} | to yaml
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
    objects: usize,
    updates: usize,
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
        objects: 1000,
        updates: 100,
        variants: [
            "embedded",
            "embedded-console",
            "embedded-no-events",
            "process",
            "managed",
            "reference",
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
            "--objects" => parsed.objects = value().parse().expect("--objects N"),
            "--updates" => parsed.updates = value().parse().expect("--updates N"),
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

async fn create_objects(client: &Client, namespace: &str, count: usize) {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("cm-{i:05}")),
                        labels: Some([(BENCH_LABEL.to_string(), "true".to_string())].into()),
                        ..Default::default()
                    },
                    data: Some([("k".to_string(), "v".to_string())].into()),
                    ..Default::default()
                };
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
    converge: Duration,
    first_write: Duration,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    latencies: Vec<Duration>,
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
    } else if variant == "reference" {
        let mut c = tokio::process::Command::new(std::env::current_exe().expect("own path"));
        c.args([
            "--reference-controller",
            namespace,
            &args.concurrency.to_string(),
        ]);
        c
    } else {
        let scripts = workdir.join(format!("scripts-{variant}"));
        std::fs::create_dir_all(scripts.join("bench")).expect("script dir");
        std::fs::write(scripts.join("bench/mod.nu"), script(namespace)).expect("script");
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
    std::fs::write(repo.join("bench/mod.nu"), script(namespace)).expect("script");
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

async fn run_variant(client: &Client, args: &Args, variant: &str, workdir: &Path) -> Measured {
    let namespace = format!("bench-{variant}-{}", std::process::id());
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
    create_objects(client, &namespace, args.objects).await;
    let mut events = watch_namespace(client.clone(), &namespace).await;
    while events.try_recv().is_ok() {} // the initial list: nothing is labelled yet

    let started = Instant::now();
    let mut child = spawn_controller(args, variant, &namespace, workdir);
    let pid = child.id().expect("child pid");
    let mut labelled = HashSet::new();
    let mut first_write = None;
    let deadline = started + CONVERGE_LIMIT;
    while labelled.len() < args.objects {
        let seen = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{variant}: only {}/{} converged after {CONVERGE_LIMIT:?}; see {}",
                    labelled.len(),
                    args.objects,
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
    let first_write = first_write.map_or(converge, |at| at - started);

    let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let mut latencies = Vec::with_capacity(args.updates);
    for i in 0..args.updates {
        let name = format!("cm-{:05}", i % args.objects);
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
        loop {
            let seen = tokio::time::timeout(Duration::from_secs(60), events.recv())
                .await
                .unwrap_or_else(|_| panic!("{variant}: update {i} of {name} was never reconciled"))
                .expect("watch stream");
            if seen.name == name && seen.labelled {
                latencies.push(seen.at - sent);
                break;
            }
        }
    }

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
        converge,
        first_write,
        cpu_seconds,
        peak_rss_mib,
        latencies,
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_table(args: &Args, results: &mut [Measured]) {
    let reference = results.iter().find(|r| r.variant == "reference").map(|r| {
        (
            args.objects as f64 / r.converge.as_secs_f64(),
            r.latencies.clone(),
        )
    });
    println!(
        "\n{} objects, {} single-object updates, concurrency {} per controller\n",
        args.objects, args.updates, args.concurrency
    );
    println!(
        "| variant | converge s | first write s | objects/s | vs reference | peak RSS MiB | CPU s | update p50 ms | update p99 ms | p50 vs reference |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results.iter_mut() {
        r.latencies.sort();
        let rate = args.objects as f64 / r.converge.as_secs_f64();
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
        println!(
            "| {} | {:.2} | {:.2} | {:.0} | {ratio} | {:.1} | {:.2} | {:.2} | {:.2} | {delta} |",
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

/// The hand-written reference: a kube-rs controller that adds the label with an update
/// guarded by resourceVersion, as nuop writes back.
async fn reference_controller(namespace: String, concurrency: u16) {
    let client = {
        nuop_core::install_crypto_provider();
        Client::try_default()
    }
    .await
    .expect("kube client");
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let config = kube::runtime::controller::Config::default().concurrency(concurrency);
    Controller::new(
        api.clone(),
        watcher::Config::default().labels(&format!("{BENCH_LABEL}=true")),
    )
    .with_config(config)
    .run(
        |cm: Arc<ConfigMap>, api: Arc<Api<ConfigMap>>| async move {
            if cm.labels().get(SEEN_LABEL).map(String::as_str) == Some("true") {
                return Ok::<_, kube::Error>(Action::requeue(Duration::from_secs(300)));
            }
            let mut changed = (*cm).clone();
            changed
                .labels_mut()
                .insert(SEEN_LABEL.to_string(), "true".to_string());
            api.replace(&cm.name_any(), &PostParams::default(), &changed)
                .await?;
            Ok(Action::requeue(Duration::from_secs(10)))
        },
        |_, _, _| Action::requeue(Duration::from_millis(500)),
        Arc::new(api),
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
        reference_controller(namespace, concurrency).await;
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
                    .any(|v| v != "reference" && v != "managed"),
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
    for variant in args.variants.iter().filter(|_| label) {
        eprintln!("bench-e2e: running {variant} with {} objects", args.objects);
        let result = run_variant(&client, &args, variant, workdir.path()).await;
        eprintln!(
            "bench-e2e: {variant} converged in {:.2}s",
            result.converge.as_secs_f64()
        );
        results.push(result);
    }
    if label {
        print_table(&args, &mut results);
    }
    if args.workloads.iter().any(|w| w == "replicator") {
        replicator::run(&client, &args.replicator, workdir.path()).await;
    }
}
