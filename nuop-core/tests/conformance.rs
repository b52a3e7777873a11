//! Conformance: the same scripts through both executors give the same results.
//!
//! Uses the real `nu` binary (installed by `make tools`) and the real embedded engine.
//! Scripts live in `tests/scripts/<name>/mod.nu`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nuop_core::protocol::{Outcome, OutputError, Phase, ScriptOutput, classify_output};
use nuop_core::script::{
    CallRequest, CallResult, ExecError, ExecutorKind, LoadError, Script, ScriptRunner,
};
use nuop_core::testing::nu_binary;
use serde_json::{Value, json};

const BOTH: [ExecutorKind; 2] = [ExecutorKind::Embedded, ExecutorKind::Process];

fn script(name: &str) -> Script {
    Script::at(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/scripts")
            .join(name),
    )
}

fn runner(kind: ExecutorKind, name: &str) -> ScriptRunner {
    ScriptRunner::load_with(kind, &script(name), nu_binary())
        .unwrap_or_else(|e| panic!("{kind}: loading {name} failed: {e}"))
}

fn configmap() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "demo", "namespace": "ns", "uid": "u-1", "labels": {"x": "y"}},
        "data": {"k": "v"}
    })
}

async fn call(
    kind: ExecutorKind,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> Result<CallResult, ExecError> {
    runner(kind, name)
        .call(CallRequest {
            phase,
            input: Some(configmap().to_string()),
            controller: name.to_string(),
            timeout,
            k8s: None,
        })
        .await
}

async fn finished(kind: ExecutorKind, name: &str, phase: Phase) -> CallResult {
    call(kind, name, phase, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{kind}: {name} {phase} did not finish: {e}"))
}

#[tokio::test]
async fn no_change_exits_zero_with_empty_output() {
    for kind in BOTH {
        let mut input = configmap();
        input["metadata"]["labels"]["nuop.dev/seen"] = json!("true");
        let result = runner(kind, "add-label")
            .call(CallRequest {
                phase: Phase::Reconcile,
                input: Some(input.to_string()),
                controller: "add-label".into(),
                timeout: Duration::from_secs(30),
                k8s: None,
            })
            .await
            .expect("call");
        assert_eq!(
            Outcome::from_exit_code(result.code),
            Outcome::NoChange,
            "{kind}"
        );
        assert_eq!(
            classify_output(&result.stdout.text, result.returned.as_ref()),
            Ok(ScriptOutput::Empty),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn change_with_a_yaml_object_is_the_desired_state() {
    let mut outputs = Vec::new();
    for kind in BOTH {
        let result = finished(kind, "add-label", Phase::Reconcile).await;
        assert_eq!(
            Outcome::from_exit_code(result.code),
            Outcome::Changed,
            "{kind}: {result:?}"
        );
        assert_eq!(result.stderr.text.trim(), "labelling demo", "{kind}");
        let ScriptOutput::Object(obj) =
            classify_output(&result.stdout.text, result.returned.as_ref()).expect("output")
        else {
            panic!("{kind}: expected an object, got {:?}", result.stdout)
        };
        assert_eq!(obj["metadata"]["labels"]["nuop.dev/seen"], "true", "{kind}");
        assert_eq!(obj["metadata"]["labels"]["x"], "y", "{kind}");
        assert_eq!(obj["data"], configmap()["data"], "{kind}");
        outputs.push(obj);
    }
    assert_eq!(
        outputs[0], outputs[1],
        "both executors answer the same object"
    );
}

#[tokio::test]
async fn json_scripts_see_their_environment() {
    for kind in BOTH {
        let result = finished(kind, "json-changed", Phase::Reconcile).await;
        assert_eq!(result.code, 2, "{kind}: {result:?}");
        let ScriptOutput::Object(obj) = classify_output(&result.stdout.text, None).expect("output")
        else {
            panic!("{kind}: expected an object")
        };
        assert_eq!(
            obj["metadata"]["annotations"]["nuop.dev/phase"], "reconcile",
            "{kind}"
        );
        assert_eq!(
            obj["metadata"]["annotations"]["nuop.dev/controller"], "json-changed",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn error_exit_is_an_error_with_its_message() {
    for kind in BOTH {
        let result = finished(kind, "error-exit", Phase::Reconcile).await;
        assert_eq!(
            Outcome::from_exit_code(result.code),
            Outcome::Failed(1),
            "{kind}"
        );
        assert_eq!(result.stderr.text.trim(), "something went wrong", "{kind}");
    }
}

#[tokio::test]
async fn unexpected_exit_codes_are_errors_and_keep_output() {
    for kind in BOTH {
        let result = finished(kind, "odd-exit", Phase::Reconcile).await;
        assert_eq!(
            Outcome::from_exit_code(result.code),
            Outcome::Failed(7),
            "{kind}"
        );
        assert_eq!(result.stdout.text.trim(), "partial progress", "{kind}");
    }
}

#[tokio::test]
async fn finalize_runs_and_config_carries_finalizer_and_requeue_times() {
    for kind in BOTH {
        let r = runner(kind, "finalizer");
        let config = r.config(Duration::from_secs(30)).await.expect("config");
        assert_eq!(
            config.finalizer.as_deref(),
            Some("nuop.dev/cleanup"),
            "{kind}"
        );
        assert_eq!(
            config.requeue_after_change,
            Duration::from_secs(5),
            "{kind}"
        );
        assert_eq!(config.requeue_after_noop, Duration::from_secs(42), "{kind}");
        assert_eq!(config.timeout, Duration::from_secs(3), "{kind}");
        let result = finished(kind, "finalizer", Phase::Finalize).await;
        assert_eq!(result.code, 0, "{kind}");
        assert_eq!(
            result.stderr.text.trim(),
            "cleaning up after demo",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn config_of_original_style_scripts_parses_in_both() {
    for kind in BOTH {
        let config = runner(kind, "add-label")
            .config(Duration::from_secs(30))
            .await
            .expect("config");
        assert_eq!(config.name, "add-label");
        assert_eq!(
            config.label_selector_string().as_deref(),
            Some("x=y"),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn invalid_config_names_the_script_and_field() {
    for kind in BOTH {
        let err = runner(kind, "bad-config")
            .config(Duration::from_secs(30))
            .await
            .expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid config of script bad-config: unknown field `requeue_after_chnage` (did you mean `requeue_after_change`?)",
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_hanging_nushell_loop_is_stopped_at_its_timeout() {
    for kind in BOTH {
        let started = Instant::now();
        let err = call(kind, "hang", Phase::Reconcile, Duration::from_millis(500))
            .await
            .expect_err("timeout");
        let ExecError::Timeout { after, .. } = &err else {
            panic!("{kind}: expected timeout, got {err}")
        };
        assert_eq!(*after, Duration::from_millis(500));
        // Bounded by the grace period, not by the script: the loop never ends on its own.
        // That the loop really stopped (not only the call returned) is shown by
        // `safety::a_timed_out_loop_really_ends`, which counts live evaluations.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{kind}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_hanging_external_is_killed_at_the_timeout() {
    for kind in BOTH {
        let started = Instant::now();
        let err = call(kind, "hang", Phase::Finalize, Duration::from_millis(800))
            .await
            .expect_err("timeout");
        assert!(matches!(err, ExecError::Timeout { .. }), "{kind}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{kind}: took {:?}",
            started.elapsed()
        );
        // `sleep 600` must not survive its call.
        let survivors = std::process::Command::new("pgrep")
            .args(["-f", "^sleep 600$"])
            .output()
            .expect("pgrep");
        assert!(
            survivors.stdout.is_empty(),
            "{kind}: sleep survived: {}",
            String::from_utf8_lossy(&survivors.stdout)
        );
    }
}

#[tokio::test]
async fn ten_megabytes_of_stderr_neither_hang_nor_flood() {
    for kind in BOTH {
        let result = finished(kind, "stderr-flood", Phase::Reconcile).await;
        assert_eq!(result.code, 0, "{kind}");
        assert_eq!(result.stdout.text.trim(), "done", "{kind}");
        assert!(result.stderr.truncated, "{kind}");
        assert_eq!(result.stderr.total_bytes, 10 * 1024 * 1024, "{kind}");
        assert_eq!(
            result.stderr.text.len(),
            nuop_core::script::DEFAULT_CAPTURE_LIMIT,
            "{kind}"
        );
        let note = format!(
            "[nuop: output truncated: kept {} of 10485760 bytes]",
            nuop_core::script::DEFAULT_CAPTURE_LIMIT
        );
        assert!(result.stderr.with_note().ends_with(&note), "{kind}");
    }
}

#[tokio::test]
async fn garbage_output_is_log_lines_and_a_broken_object_is_an_error() {
    for kind in BOTH {
        let result = finished(kind, "garbage", Phase::Reconcile).await;
        assert_eq!(result.code, 2, "{kind}");
        assert_eq!(
            classify_output(&result.stdout.text, result.returned.as_ref()),
            Ok(ScriptOutput::Logs("%%% this is not { an object\n".into())),
            "{kind}"
        );
        let result = finished(kind, "garbage", Phase::Finalize).await;
        assert!(
            matches!(
                classify_output(&result.stdout.text, None),
                Err(OutputError::Unparsable(_))
            ),
            "{kind}: {:?}",
            result.stdout
        );
    }
}

#[tokio::test]
async fn external_commands_run_and_their_output_is_captured() {
    for kind in BOTH {
        let result = finished(kind, "external", Phase::Reconcile).await;
        assert_eq!(result.code, 0, "{kind}: {result:?}");
        assert_eq!(result.stdout.text.trim(), "external saw demo", "{kind}");
    }
}

#[tokio::test]
async fn a_syntax_error_names_file_and_line() {
    let err = ScriptRunner::load_with(ExecutorKind::Embedded, &script("syntax-error"), nu_binary())
        .err()
        .expect("the embedded executor parses at load time");
    let LoadError::Syntax {
        path,
        line,
        message,
    } = &err
    else {
        panic!("expected a syntax error, got {err}")
    };
    assert!(path.ends_with("syntax-error/mod.nu"), "{}", path.display());
    assert_eq!(*line, 5);
    assert!(message.contains("nbalanced"), "{message}");
    // The process executor finds out when it runs: an error exit, with nu's message.
    let result = finished(ExecutorKind::Process, "syntax-error", Phase::Reconcile).await;
    assert_eq!(result.code, 1);
    assert!(
        result.stderr.text.contains("nbalanced"),
        "{}",
        result.stderr.text
    );
}

#[tokio::test]
async fn a_missing_reconcile_command_is_an_error_in_both() {
    let err = call(
        ExecutorKind::Embedded,
        "no-reconcile",
        Phase::Reconcile,
        Duration::from_secs(30),
    )
    .await
    .expect_err("missing");
    assert_eq!(
        err.to_string(),
        "script no-reconcile has no `main reconcile` command"
    );
    let result = finished(ExecutorKind::Process, "no-reconcile", Phase::Reconcile).await;
    assert_ne!(result.code, 0);
    assert!(
        result.stderr.text.contains("main"),
        "{}",
        result.stderr.text
    );
}

#[tokio::test]
async fn embedded_calls_run_concurrently_and_exit_does_not_end_the_process() {
    let r = runner(ExecutorKind::Embedded, "add-label");
    let calls = (0..32).map(|_| {
        r.call(CallRequest {
            phase: Phase::Reconcile,
            input: Some(configmap().to_string()),
            controller: "add-label".into(),
            timeout: Duration::from_secs(30),
            k8s: None,
        })
    });
    let results = futures::future::join_all(calls).await;
    for result in results {
        let result = result.expect("call");
        assert_eq!(result.code, 2);
        assert_eq!(
            result.stderr.text.trim(),
            "labelling demo",
            "each call's output stays its own"
        );
    }
}

#[test]
fn loading_a_script_leaves_the_process_working_directory_alone() {
    let before = std::env::current_dir().expect("cwd");
    let script = script("add-label");
    ScriptRunner::load_with(ExecutorKind::Embedded, &script, nu_binary()).expect("load");
    assert_eq!(
        std::env::current_dir().expect("cwd"),
        before,
        "loading {} moved the operator's working directory",
        script.dir.display()
    );
}
