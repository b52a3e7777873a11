//! Script execution you can trust: no script line can lose data, take down the operator
//! or outlive its call (issue 18).
//!
//! Uses the real `nu` binary and the real embedded engine, like `conformance.rs`. The
//! tests here measure process-wide things (live evaluations, memory, processes), so they
//! run one at a time: each holds [`serial`] for its whole length.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nuop_core::protocol::Phase;
use nuop_core::script::{
    CallRequest, CallResult, DEFAULT_CAPTURE_LIMIT, ExecError, ExecutorKind, LoadError, Script,
    ScriptRunner, embedded,
};
use nuop_core::testing::nu_binary;
use serde_json::json;

const BOTH: [ExecutorKind; 2] = [ExecutorKind::Embedded, ExecutorKind::Process];

/// Held by each test for its whole length (an async lock: tests hold it across awaits;
/// a test that panics releases it).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts")
}

fn runner(kind: ExecutorKind, name: &str) -> ScriptRunner {
    ScriptRunner::load_with(kind, &Script::at(scripts_dir().join(name)), nu_binary())
        .unwrap_or_else(|e| panic!("{kind}: loading {name} failed: {e}"))
}

fn request(phase: Phase, data: serde_json::Value, timeout: Duration) -> CallRequest {
    CallRequest {
        phase,
        input: Some(
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1"},
                "data": data,
            })
            .to_string(),
        ),
        controller: "safety".into(),
        timeout,
        k8s: None,
    }
}

/// Processes whose command line is exactly `cmdline` (NUL-separated words).
fn processes_running(cmdline: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = cmdline
        .iter()
        .flat_map(|w| [w.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let state = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // A zombie has exited: it is not "running on".
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            (cmd == wanted && !zombie).then_some(pid)
        })
        .collect()
}

/// Waits (bounded) until `done` holds; false if it never did.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn commands_that_would_act_on_the_operator_are_refused() {
    let _serial = serial().await;
    let refused = runner(ExecutorKind::Embedded, "refused");
    let umask_before = std::fs::read_to_string("/proc/self/status").expect("status");
    for cmd in ["exec", "ulimit", "umask", "job spawn"] {
        let result = refused
            .call(request(
                Phase::Reconcile,
                json!({"cmd": cmd}),
                Duration::from_secs(20),
            ))
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        assert_eq!(result.code, 1, "{cmd}: {result:?}");
        assert!(
            result.stderr.text.contains(&format!(
                "`{cmd}` is not available in nuop's embedded executor"
            )),
            "{cmd}: {}",
            result.stderr.text
        );
        assert!(
            !result.stdout.text.contains("the command returned"),
            "{cmd}"
        );
    }
    assert!(
        result_of_exec_suggests_an_alternative(&refused).await,
        "exec's message says what to do instead"
    );
    // The operator process is still this one, its limits and mask unchanged, and it
    // still runs scripts.
    let umask_after = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = |s: &str, key: &str| s.lines().find(|l| l.starts_with(key)).map(str::to_string);
    assert_eq!(line(&umask_before, "Umask"), line(&umask_after, "Umask"));
    assert!(
        processes_running(&["sleep", "600"]).is_empty(),
        "no job or exec survived"
    );
    let ok = runner(ExecutorKind::Embedded, "bare-config")
        .call(request(
            Phase::Reconcile,
            json!({}),
            Duration::from_secs(20),
        ))
        .await
        .expect("a later call runs");
    assert_eq!(ok.code, 0);
}

async fn result_of_exec_suggests_an_alternative(refused: &ScriptRunner) -> bool {
    let result = refused
        .call(request(
            Phase::Reconcile,
            json!({"cmd": "exec"}),
            Duration::from_secs(20),
        ))
        .await
        .expect("call");
    result.stderr.text.contains("`^cmd ...` and then `exit`")
}

#[tokio::test]
async fn a_cancelled_call_stops_its_loop_and_its_externals() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in BOTH {
        for phase in [Phase::Reconcile, Phase::Finalize] {
            let marker = dir.path().join(format!("{kind}-{phase}"));
            let cancel = runner(kind, "cancel");
            let call = cancel.call(request(
                phase,
                json!({"marker": marker.display().to_string()}),
                Duration::from_secs(120),
            ));
            // Dropping the future is the cancellation: the call's own timeout is far off.
            let dropped = tokio::time::timeout(Duration::from_millis(700), call).await;
            assert!(
                dropped.is_err(),
                "{kind} {phase}: the call was still running"
            );
            assert!(
                eventually(Duration::from_secs(10), || processes_running(&[
                    "sleep", "31.5"
                ])
                .is_empty())
                .await,
                "{kind} {phase}: the external outlived its cancelled call"
            );
            assert!(
                eventually(Duration::from_secs(10), || embedded::live_evaluations()
                    == 0)
                .await,
                "{kind} {phase}: the evaluation kept running after its call was cancelled"
            );
            // Had anything of the call run on, it would have written the marker by now:
            // the loop takes minutes, but only the interrupt ends it early.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !marker.exists(),
                "{kind} {phase}: the script ran on after cancellation"
            );
        }
    }
}

#[tokio::test]
async fn a_timed_out_loop_really_ends() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for kind in BOTH {
        let marker = dir.path().join(format!("{kind}-timeout"));
        let err = runner(kind, "cancel")
            .call(request(
                Phase::Finalize,
                json!({"marker": marker.display().to_string()}),
                Duration::from_millis(500),
            ))
            .await
            .expect_err("times out");
        assert!(matches!(err, ExecError::Timeout { .. }), "{kind}: {err}");
        assert!(
            eventually(Duration::from_secs(10), || embedded::live_evaluations()
                == 0)
            .await,
            "{kind}: the loop was abandoned, not stopped"
        );
        assert!(!marker.exists(), "{kind}: the loop ran to its end");
    }
}

/// This process's resident memory plus what its memfds hold (RSS does not show memfd
/// pages), in bytes.
fn held_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    let memfds: u64 = std::fs::read_dir("/proc/self/fd")
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:"))
                })
                .filter_map(|fd| std::fs::metadata(fd.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    rss_kib * 1024 + memfds
}

#[tokio::test]
async fn a_flood_of_output_is_bounded_in_memory() {
    let _serial = serial().await;
    const LIMIT: u64 = 64 * 1024 * 1024;
    for kind in BOTH {
        for phase in [Phase::Reconcile, Phase::Finalize] {
            let flood = runner(kind, "flood");
            let baseline = held_memory();
            let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler = {
                let (peak, stop) = (peak.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        peak.fetch_max(held_memory(), std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            };
            let result: CallResult = flood
                .call(request(phase, json!({}), Duration::from_secs(120)))
                .await
                .unwrap_or_else(|e| panic!("{kind} {phase}: {e}"));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            sampler.join().expect("sampler");
            let grew = peak
                .load(std::sync::atomic::Ordering::SeqCst)
                .saturating_sub(baseline);
            assert!(
                grew < LIMIT,
                "{kind} {phase}: held {} MiB above baseline while flooding",
                grew / (1024 * 1024)
            );
            assert_eq!(result.code, 0, "{kind} {phase}");
            for (name, stream) in [("stdout", &result.stdout), ("stderr", &result.stderr)] {
                assert!(stream.truncated, "{kind} {phase} {name}");
                assert_eq!(
                    stream.text.len(),
                    DEFAULT_CAPTURE_LIMIT,
                    "{kind} {phase} {name}"
                );
                assert_eq!(
                    stream.total_bytes, 500_000_000,
                    "{kind} {phase} {name}: everything written is counted"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_top_level_that_hangs_is_a_load_error() {
    let _serial = serial().await;
    let script = Script::at(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hanging-scripts/top-level-hang"),
    );
    let started = Instant::now();
    let err = ScriptRunner::load_within(
        ExecutorKind::Embedded,
        &script,
        nu_binary(),
        Duration::from_millis(800),
    )
    .err()
    .expect("the load is stopped");
    assert!(matches!(err, LoadError::Timeout { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("top-level-hang/mod.nu"), "{message}");
    assert!(message.contains("did not finish within"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the load returned"
    );
    assert!(
        eventually(Duration::from_secs(10), || processes_running(&[
            "sleep", "602"
        ])
        .is_empty())
        .await,
        "the top level's external was killed"
    );
}

#[tokio::test]
async fn standard_mode_rejects_a_hanging_script_and_starts_the_others() {
    let _serial = serial().await;
    let root = tempfile::tempdir().expect("tempdir");
    let hanging = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hanging-scripts");
    copy_script(
        &hanging.join("top-level-hang"),
        &root.path().join("top-level-hang"),
    );
    for name in ["bare-config", "no-finalize"] {
        copy_script(&scripts_dir().join(name), &root.path().join(name));
    }
    let (loaded, rejected) = nuop_core::root::load_root_within(
        root.path(),
        ExecutorKind::Embedded,
        Duration::from_millis(800),
    )
    .await
    .expect("root readable");
    let names: Vec<&str> = loaded.iter().map(|l| l.config.name.as_str()).collect();
    assert_eq!(names, vec!["bare-config"]);
    let reason = |script: &str| {
        rejected
            .iter()
            .find(|r| r.script == script)
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| panic!("{script} not rejected: {rejected:?}"))
    };
    assert!(reason("top-level-hang").contains("did not finish within"));
    assert!(reason("no-finalize").contains("no `main finalize`"));
}

fn copy_script(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::copy(from.join("mod.nu"), to.join("mod.nu")).expect("copy");
}

#[tokio::test]
async fn a_rewritten_call_id_reaches_no_other_call() {
    let _serial = serial().await;
    // finalize: the id rewritten before `^sleep 603`; reconcile: `sh -c 'env -i sleep
    // 604; true'`, a grandchild that cleared its environment (found as a descendant of
    // a tagged process). An external that itself replaces its environment (`^env -i
    // cmd`, which execs) is not found: the documented limit of the /proc scan.
    for (phase, sleep) in [(Phase::Finalize, "603"), (Phase::Reconcile, "604")] {
        let err = runner(ExecutorKind::Embedded, "call-id")
            .call(request(phase, json!({}), Duration::from_millis(800)))
            .await
            .expect_err("times out");
        let ExecError::Timeout { .. } = &err else {
            panic!("{phase}: expected a timeout, got {err}")
        };
        assert!(
            eventually(Duration::from_secs(10), || processes_running(&[
                "sleep", sleep
            ])
            .is_empty())
            .await,
            "{phase}: an external escaped its call's kill"
        );
    }
}

#[tokio::test]
async fn output_after_a_rewritten_call_id_stays_in_its_call() {
    let _serial = serial().await;
    let script = "def \"main config\" [] { {name: x, version: v1, kind: ConfigMap} }\n\
                  def \"main reconcile\" [] { $env.NUOP_CALL_ID = \"someone-else\"; print \"mine\"; exit 0 }\n";
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mod.nu"), script).expect("write");
    let runner =
        ScriptRunner::load_with(ExecutorKind::Embedded, &Script::at(dir.path()), nu_binary())
            .expect("load");
    let result = runner
        .call(request(
            Phase::Reconcile,
            json!({}),
            Duration::from_secs(20),
        ))
        .await
        .expect("call");
    assert_eq!(result.stdout.text, "mine\n");
}

#[tokio::test]
async fn a_process_timeout_keeps_the_stderr_read_so_far() {
    let _serial = serial().await;
    for kind in BOTH {
        let err = runner(kind, "hang")
            .call(request(
                Phase::Reconcile,
                json!({}),
                Duration::from_millis(1500),
            ))
            .await
            .expect_err("times out");
        let stderr = err.stderr().expect("a timeout carries stderr");
        assert!(
            stderr.text.contains("about to hang"),
            "{kind}: {:?}",
            stderr.text
        );
    }
}

#[tokio::test]
async fn a_script_path_with_quotes_and_hashes_runs() {
    let _serial = serial().await;
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("we'#ird \"dir\" $(x)");
    copy_script(&scripts_dir().join("bare-config"), &dir);
    for kind in BOTH {
        let runner = ScriptRunner::load_with(kind, &Script::at(&dir), nu_binary())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let config = runner.config(Duration::from_secs(20)).await;
        let config = config.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(config.name, "bare-config", "{kind}");
    }
}

#[tokio::test]
async fn a_bare_record_config_means_the_same_in_both_executors() {
    let _serial = serial().await;
    let mut configs = Vec::new();
    for kind in BOTH {
        let config = runner(kind, "bare-config")
            .config(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(config.requeue_after_noop, Duration::from_secs(77), "{kind}");
        configs.push(config);
    }
    assert_eq!(configs[0], configs[1]);
}

#[tokio::test]
async fn nu_deprecation_warnings_are_not_repeated_in_every_calls_log() {
    let _serial = serial().await;
    let runner = runner(ExecutorKind::Process, "deprecated");
    for _ in 0..2 {
        let result = runner
            .call(request(
                Phase::Reconcile,
                json!({}),
                Duration::from_secs(20),
            ))
            .await
            .expect("call");
        assert_eq!(result.code, 0);
        assert!(
            result.stderr.text.contains("log line for demo"),
            "{:?}",
            result.stderr
        );
        assert!(
            !result.stderr.text.contains("Warning: nu::"),
            "the warning is logged once, not in each call's stderr: {:?}",
            result.stderr.text
        );
    }
}

#[tokio::test]
async fn externals_keep_the_scripts_own_redirections() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.txt");
    let script = format!(
        "def \"main config\" [] {{ {{name: x, version: v1, kind: ConfigMap}} }}\n\
         def \"main reconcile\" [] {{\n\
           ^echo to-file o> '{}'\n\
           let piped = (^echo piped | str trim)\n\
           ^sh -c 'echo to-stderr >&2' e>| ignore\n\
           ^echo captured\n\
           print $\"got ($piped)\"\n\
           exit 0\n\
         }}\n",
        file.display()
    );
    std::fs::write(dir.path().join("mod.nu"), script).expect("write");
    for kind in BOTH {
        let runner =
            ScriptRunner::load_with(kind, &Script::at(dir.path()), nu_binary()).expect("load");
        let result = runner
            .call(request(
                Phase::Reconcile,
                json!({}),
                Duration::from_secs(20),
            ))
            .await
            .expect("call");
        assert_eq!(result.code, 0, "{kind}: {result:?}");
        assert_eq!(result.stdout.text, "captured\ngot piped\n", "{kind}");
        assert!(
            !result.stderr.text.contains("to-stderr"),
            "{kind}: {:?}",
            result.stderr
        );
        assert_eq!(
            std::fs::read_to_string(&file).expect("file"),
            "to-file\n",
            "{kind}"
        );
    }
}
