//! Per-call cost of the two executors on the same script and input, side by side.
//!
//! `make bench` runs this (release build). The script is `tests/scripts/add-label`:
//! it parses a ConfigMap from YAML, adds a label and prints the object as YAML — the
//! shape of a script written for the original nuop. Prints p50/p90/p99 per call for each
//! executor and the ratio of their medians. No assertions: numbers are for reading.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nuop_core::protocol::Phase;
use nuop_core::script::{CallRequest, ExecutorKind, Script, ScriptRunner};
use serde_json::json;

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
}
