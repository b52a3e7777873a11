//! Per-call cost of the two executors on the same script and input, side by side.
//!
//! `make bench` runs this (the `ci` build). The script is `tests/scripts/add-label`:
//! it parses a ConfigMap from YAML, adds a label and prints the object as YAML — the
//! shape of a script written for the original nuop. Prints p50/p90/p99 per call for each
//! executor and the ratio of their medians. No assertions: numbers are for reading.
//!
//! Then `k8s` reads against `kubectl`: 1,000 ConfigMaps are created in a namespace of
//! the local control plane (`KUBECONFIG`; the bench fails when it is unreachable or
//! `kubectl` is missing), listed once into a reflector store, and one embedded reconcile
//! call is timed per read: `k8s get` of one of them and `k8s list` of all of them, served
//! by nuop's `LiveCluster` from that store as a controller's declared cache (see
//! [`K8S_CLUSTER`]; no API request), against the same reads by spawning
//! `kubectl get … -o json | from json` from the script, and against a call that reads
//! nothing (the call's own cost). `--k8s-objects N` (1000), `--k8s-calls N` (2000, the
//! cached reads), `--kubectl-calls N` (30).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client};
use nuop_core::cluster::{CachedKind, Cluster, LiveCluster};
use nuop_core::k8s::{Session, SessionParts};
use nuop_core::protocol::Phase;
use nuop_core::script::{CallRequest, ExecutorKind, Script, ScriptRunner};
use serde_json::{Value, json};

struct Stats {
    p50: Duration,
    p90: Duration,
    p99: Duration,
    mean: Duration,
    calls: usize,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let total: Duration = samples.iter().sum();
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        mean: total / samples.len() as u32,
        calls: samples.len(),
    }
}

async fn measure(runner: &ScriptRunner, input: &str, warmup: usize, calls: usize) -> Stats {
    let request = || CallRequest {
        phase: Phase::Reconcile,
        input: Some(input.to_string()),
        controller: "bench".into(),
        timeout: Duration::from_secs(30),
        k8s: None,
    };
    for _ in 0..warmup {
        let r = runner.call(request()).await.expect("warm-up call");
        assert_eq!(r.code, 2, "the bench script must report a change");
    }
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let r = runner.call(request()).await.expect("call");
        samples.push(started.elapsed());
        assert_eq!(r.code, 2);
    }
    stats(samples)
}

/// Times `calls` reconcile calls of `runner` (after `warmup`), each with a fresh
/// [`Session`] over `cluster` as the controller makes one per call; every call must exit
/// 0 (the scripts check what they read and fail otherwise).
async fn measure_reads(
    runner: &ScriptRunner,
    cluster: &Arc<dyn Cluster>,
    primary: &Value,
    warmup: usize,
    calls: usize,
) -> Stats {
    let request = || {
        let timeout = Duration::from_secs(30);
        CallRequest {
            phase: Phase::Reconcile,
            input: Some(primary.to_string()),
            controller: "bench".into(),
            timeout,
            k8s: Some(Session::new(SessionParts {
                controller: "bench".into(),
                primary: primary.clone(),
                owns: Vec::new(),
                cluster: cluster.clone(),
                runtime: tokio::runtime::Handle::current(),
                deadline: Instant::now() + timeout,
            })),
        }
    };
    let mut samples = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let started = Instant::now();
        let r = runner.call(request()).await.expect("call");
        let elapsed = started.elapsed();
        assert_eq!(r.code, 0, "the read bench script failed: {}", r.stderr.text);
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    stats(samples)
}

/// Where the bench's `k8s` reads are served from.
const K8S_CLUSTER: &str = "LiveCluster over a reflector Store filled by one LIST (a CachedKind)";

/// A reconcile script whose body is `body` (it must end the call with `exit 0`).
fn read_script(dir: &Path, name: &str, body: &str) -> ScriptRunner {
    let script_dir = dir.join(name);
    std::fs::create_dir_all(&script_dir).expect("script dir");
    std::fs::write(
        script_dir.join("mod.nu"),
        format!(
            "def \"main config\" [] {{ {{name: \"{name}\", version: \"v1\", kind: \"ConfigMap\"}} | to yaml }}\n\
             def \"main reconcile\" [] {{\n{body}\n}}\n"
        ),
    )
    .expect("write script");
    ScriptRunner::load_with(
        ExecutorKind::Embedded,
        &Script::at(script_dir),
        nuop_core::testing::nu_binary(),
    )
    .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// `k8s get`/`k8s list` from a cache against spawning `kubectl get`, on `objects`
/// ConfigMaps of a fresh namespace of the local control plane.
async fn k8s_reads(objects: usize, cached_calls: usize, kubectl_calls: usize) {
    let kubectl = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    assert!(
        kubectl.as_ref().is_ok_and(|o| o.status.success()),
        "make bench compares k8s reads with `kubectl get`: kubectl must be on PATH ({kubectl:?})"
    );
    nuop_core::install_crypto_provider();
    let client = Client::try_default().await.expect(
        "KUBECONFIG must name the local control plane (make bench starts it: hack/control-plane up)",
    );
    let namespace = format!("bench-k8s-{}", std::process::id());
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
        .expect("create the bench namespace (is the control plane up?)");
    let api = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    stream::iter(0..objects)
        .map(|i| {
            let api = api.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("cm-{i:05}")),
                        labels: Some([("app".to_string(), format!("a{}", i % 10))].into()),
                        ..Default::default()
                    },
                    data: Some([("k".to_string(), format!("value {i}"))].into()),
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .expect("create the bench ConfigMaps");

    // The cache: a reflector store filled from one LIST, managedFields stripped (as
    // nuop's informers do), handed to the LiveCluster as the controller hands its caches.
    let resource = ApiResource::erase::<ConfigMap>(&());
    let listed = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource)
        .list(&ListParams::default())
        .await
        .expect("list them");
    let mut writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
    writer.apply_watcher_event(&watcher::Event::Init);
    for mut object in listed.items {
        object.metadata.managed_fields = None;
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let cluster: Arc<dyn Cluster> = Arc::new(LiveCluster::new(
        client.clone(),
        vec![CachedKind {
            resource,
            namespaced: true,
            namespace: Some(namespace.clone()),
            labels: None,
            fields: None,
            store: writer.as_reader(),
        }],
    ));
    let primary = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm-00000", "namespace": namespace, "uid": "0e6c"}});

    let dir = tempfile::tempdir().expect("tempdir");
    let one = format!("cm-{:05}", objects / 2);
    let check_get = "if $cm.metadata.name? == null { error make {msg: \"not found\"} }\n  exit 0";
    let check_list =
        // The namespace also holds kube-root-ca.crt.
        format!("if $n < {objects} {{ error make {{msg: $\"($n) objects\"}} }}\n  exit 0");
    let runners = [
        (
            "nothing",
            read_script(dir.path(), "nothing", "  exit 0"),
            cached_calls,
        ),
        (
            "k8s get",
            read_script(
                dir.path(),
                "k8s-get",
                &format!("  let cm = k8s get configmap {one}\n  {check_get}"),
            ),
            cached_calls,
        ),
        (
            "kubectl get",
            read_script(
                dir.path(),
                "kubectl-get",
                &format!(
                    "  let cm = ^kubectl get configmap {one} -n {namespace} -o json | from json\n  {check_get}"
                ),
            ),
            kubectl_calls,
        ),
        (
            "k8s list",
            read_script(
                dir.path(),
                "k8s-list",
                &format!("  let n = k8s list configmaps | length\n  {check_list}"),
            ),
            (cached_calls / 10).max(10),
        ),
        (
            "kubectl list",
            read_script(
                dir.path(),
                "kubectl-list",
                &format!(
                    "  let n = ^kubectl get configmaps -n {namespace} -o json | from json | get items | length\n  {check_list}"
                ),
            ),
            kubectl_calls,
        ),
    ];
    let mut measured = Vec::new();
    for (name, runner, calls) in &runners {
        let warmup = (calls / 10).clamp(1, 50);
        measured.push((
            *name,
            measure_reads(runner, &cluster, &primary, warmup, *calls).await,
        ));
    }
    let _ = Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::background())
        .await;
    // Every `k8s` read above must have come from the cache, or the numbers mean nothing.
    let uncached: f64 =
        prometheus::core::Collector::collect(&nuop_core::metrics::METRICS.k8s_uncached_reads)
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value())
            .sum();
    assert_eq!(
        uncached, 0.0,
        "the k8s reads went to the API server ({uncached} uncached reads): the cache did not cover them"
    );

    println!();
    println!(
        "k8s reads vs kubectl: one embedded reconcile call per read, {objects} ConfigMaps in one namespace"
    );
    println!("k8s commands served by: {K8S_CLUSTER}; kubectl against the local control plane");
    println!(
        "{:<13} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "read", "calls", "p50", "p90", "p99", "mean"
    );
    for (name, s) in &measured {
        println!(
            "{name:<13} {:>8} {:>12.1?} {:>12.1?} {:>12.1?} {:>12.1?}",
            s.calls, s.p50, s.p90, s.p99, s.mean
        );
    }
    let p50 = |name: &str| {
        measured
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s.p50.as_secs_f64())
            .expect("measured")
    };
    for (cached, spawned) in [("k8s get", "kubectl get"), ("k8s list", "kubectl list")] {
        println!(
            "ratio {spawned}/{cached} at p50: {:.0}x",
            p50(spawned) / p50(cached)
        );
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let embedded_calls = arg("--embedded-calls", 20_000);
    let process_calls = arg("--process-calls", 300);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/add-label");
    let script = Script::at(dir);
    let nu = nuop_core::testing::nu_binary();
    let input = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "bench", "namespace": "default", "uid": "0e6c", "resourceVersion": "1",
                     "labels": {"x": "y", "app": "bench"}, "annotations": {"owner": "platform"}},
        "data": {"a": "1", "b": "two", "c": "three"}
    })
    .to_string();

    let load_started = Instant::now();
    let embedded = ScriptRunner::load_with(ExecutorKind::Embedded, &script, nu.clone())
        .expect("load embedded");
    let load = load_started.elapsed();
    let process =
        ScriptRunner::load_with(ExecutorKind::Process, &script, nu).expect("load process");

    let e = measure(&embedded, &input, 500, embedded_calls).await;
    let p = measure(&process, &input, 10, process_calls).await;

    println!("executor per-call cost: add-label (YAML in, label added, YAML out, exit 2)");
    println!("embedded script load (parse + top level): {load:?}");
    println!(
        "{:<10} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "executor", "calls", "p50", "p90", "p99", "mean"
    );
    for (name, s) in [("embedded", &e), ("process", &p)] {
        println!(
            "{name:<10} {:>8} {:>12.1?} {:>12.1?} {:>12.1?} {:>12.1?}",
            s.calls, s.p50, s.p90, s.p99, s.mean
        );
    }
    println!(
        "ratio process/embedded at p50: {:.0}x",
        p.p50.as_secs_f64() / e.p50.as_secs_f64()
    );

    k8s_reads(
        arg("--k8s-objects", 1000),
        arg("--k8s-calls", 2000),
        arg("--kubectl-calls", 30),
    )
    .await;
}
