//! The `k8s` commands in the embedded engine: every case of `k8s_cases` against the
//! fake cluster (no control plane), the call's limits (deadline, timeout, cancellation),
//! refusal outside a call, parse errors for wrong flags, and a few commands against the
//! real control plane through `LiveCluster`.
//!
//! The control-plane tests need `hack/control-plane up` (see `nuop_core::testing`); they
//! fail, not skip, without it.

#[path = "k8s_cases/clusters.rs"]
mod clusters;
#[path = "k8s_cases/mod.rs"]
mod k8s_cases;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nuop_core::cluster::{Cluster, FakeCluster, LiveCluster, Request};
use nuop_core::k8s::{ErrorCode, Invocation, Session, SessionParts};
use nuop_core::protocol::Phase;
use nuop_core::script::{
    CallRequest, CallResult, ExecError, ExecutorKind, LoadError, Script, ScriptRunner,
};
use serde_json::{Value, json};

use clusters::{Hanging, Lagging};
use k8s_cases::{cases, owns, primary};

/// A script directory whose `main reconcile` runs `body` and answers `{result: ...}`.
fn script_with(body: &str) -> (tempfile::TempDir, Script) {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = format!(
        "def \"main config\" [] {{ {{name: cases, version: v1, kind: ConfigMap}} }}\n\
         def \"main reconcile\" [] {{\n  let result = do {{\n{body}\n  }}\n  {{result: $result}}\n}}\n"
    );
    std::fs::write(dir.path().join("mod.nu"), source).expect("write mod.nu");
    let script = Script::at(dir.path());
    (dir, script)
}

fn session(cluster: Arc<dyn Cluster>, deadline: Instant) -> Arc<Session> {
    Session::new(SessionParts {
        controller: "cases".into(),
        primary: primary(),
        owns: owns(),
        cluster,
        runtime: tokio::runtime::Handle::current(),
        deadline,
    })
}

async fn call(
    script: &Script,
    session: Option<Arc<Session>>,
    timeout: Duration,
) -> Result<CallResult, ExecError> {
    let runner = ScriptRunner::load(ExecutorKind::Embedded, script)
        .unwrap_or_else(|e| panic!("loading {} failed: {e}", script.entry.display()));
    runner
        .call(CallRequest {
            phase: Phase::Reconcile,
            input: Some(primary().to_string()),
            controller: "cases".into(),
            timeout,
            k8s: session,
        })
        .await
}

fn answer(result: &CallResult) -> Value {
    assert_eq!(
        result.code, 0,
        "the call failed: {}{}",
        result.stderr.text, result.stdout.text
    );
    result
        .returned
        .as_ref()
        .and_then(|r| r.get("result"))
        .cloned()
        .unwrap_or_else(|| panic!("no result: {result:?}"))
}

fn in_a_minute() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_passes_on_the_fake_cluster() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut objects = case.objects.clone();
        objects.push(primary());
        let cluster: Arc<dyn Cluster> = if case.lagging_reads {
            Arc::new(Lagging::new(objects))
        } else {
            Arc::new(FakeCluster::new(objects).expect("fake"))
        };
        let (_dir, script) = script_with(case.script);
        let result = call(
            &script,
            Some(session(cluster, in_a_minute())),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        if result.code != 0 {
            failures.push(format!(
                "{}: exit {}: {}",
                case.name, result.code, result.stderr.text
            ));
            continue;
        }
        let got = answer(&result);
        if got != case.expect {
            failures.push(format!(
                "{}: expected {}, got {got}",
                case.name, case.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_records_what_the_call_issued() {
    let fake: Arc<dyn Cluster> = Arc::new(FakeCluster::new(vec![primary()]).expect("fake"));
    let s = session(fake, in_a_minute());
    let (_dir, script) = script_with(
        "k8s get configmap src | ignore; {apiVersion: v1, kind: ConfigMap, metadata: {name: c}} | k8s apply | ignore; k8s owner-ref | ignore; k8s delete configmap c",
    );
    let result = call(&script, Some(s.clone()), Duration::from_secs(30))
        .await
        .expect("call");
    assert_eq!(answer(&result), Value::Null);
    let verbs: Vec<&str> = s.issued().iter().map(Request::verb).collect();
    assert_eq!(verbs, vec!["get", "apply", "delete"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_after_the_deadline_is_interrupted() {
    let fake: Arc<dyn Cluster> = Arc::new(FakeCluster::new(vec![primary()]).expect("fake"));
    let s = session(fake, Instant::now());
    let (_dir, script) = script_with(
        "try { k8s get configmap src } catch {|e| {code: $e.details.code, msg: $e.msg} }",
    );
    let result = call(&script, Some(s.clone()), Duration::from_secs(30))
        .await
        .expect("call");
    assert_eq!(
        answer(&result),
        json!({"code": "nuop::k8s::interrupted",
               "msg": "k8s get configmap src: the call's timeout has passed"})
    );
    assert!(s.issued().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_cancels_the_command_in_flight() {
    let hanging = Arc::new(Hanging::default());
    let waiting = hanging.waiting.clone();
    // The session's own deadline is far away: only the executor's timeout can stop it.
    let s = session(hanging, Instant::now() + Duration::from_secs(3_600));
    let (_dir, script) = script_with("k8s get configmap src");
    let result = call(&script, Some(s.clone()), Duration::from_millis(500)).await;
    assert!(
        matches!(result, Err(ExecError::Timeout { .. })),
        "{result:?}"
    );
    nuop_core::testing::eventually(
        "the hanging request to be dropped",
        Duration::from_secs(30),
        || {
            let n = waiting.load(Ordering::SeqCst);
            async move { (n == 0).then_some(()) }
        },
    )
    .await;
    let later = Invocation {
        verb: "get".into(),
        args: json!({"kind": "configmaps", "name": "src"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        input: Value::Null,
    };
    let e = s.invoke(&later).await.expect_err("cancelled");
    assert_eq!(e.code, ErrorCode::Interrupted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_outside_a_call_are_refused() {
    // In a call without a session (config, or no cluster).
    let (_dir, script) = script_with(
        "try { k8s list configmaps } catch {|e| {code: $e.details.code, msg: $e.msg} }",
    );
    let result = call(&script, None, Duration::from_secs(30))
        .await
        .expect("call");
    assert_eq!(
        answer(&result),
        json!({"code": "nuop::k8s::outside_call",
               "msg": "k8s list outside a call: k8s commands run only in reconcile/finalize"})
    );
    // At the top level, when the script is loaded.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mod.nu"),
        "let cms = k8s list configmaps\ndef \"main config\" [] { {name: x, version: v1, kind: ConfigMap} }\ndef \"main reconcile\" [] { exit 0 }\n",
    )
    .expect("write");
    let loaded = ScriptRunner::load(ExecutorKind::Embedded, &Script::at(dir.path()));
    match loaded {
        Err(LoadError::Eval { message, .. }) => {
            assert!(
                message.contains("k8s commands run only in reconcile/finalize"),
                "{message}"
            );
        }
        Err(other) => panic!("unexpected load error: {other}"),
        Ok(_) => panic!("a top-level k8s command must fail the load"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_flag_is_a_parse_error_with_file_and_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("wrong-flag");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("mod.nu"),
        "def \"main config\" [] { {name: wrong-flag, version: v1, kind: ConfigMap} }\n\ndef \"main reconcile\" [] {\n  k8s get configmap x --bogus\n}\n",
    )
    .expect("write");
    match ScriptRunner::load(ExecutorKind::Embedded, &Script::at(&dir)) {
        Err(LoadError::Syntax { line, message, .. }) => {
            assert_eq!(line, 4, "{message}");
            assert!(message.contains("bogus"), "{message}");
        }
        Err(other) => panic!("expected a syntax error, got {other}"),
        Ok(_) => panic!("a wrong flag must not load"),
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let broken = nuop_core::devtools::check(
        root.path(),
        ExecutorKind::Embedded,
        false,
        &mut out,
        &mut err,
    )
    .await
    .expect("check");
    let err = String::from_utf8_lossy(&err);
    assert_eq!(broken, 1, "{err}");
    assert!(
        err.contains(&format!("{}:4", dir.join("mod.nu").display())),
        "{err}"
    );
}

/// Against the real API server: writes, reads, and errors as the server words them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_cluster_commands_against_the_control_plane() {
    let env = nuop_core::testing::TestEnv::new("k8s-live").await;
    let ns = env.namespace.clone();
    let live: Arc<dyn Cluster> = Arc::new(LiveCluster::new(env.client.clone(), Vec::new()));
    let mut primary = primary();
    primary["metadata"]["namespace"] = json!(ns);
    let created = live
        .execute(
            "nuop-cases",
            &Request::Create {
                object: primary.clone(),
                dry_run: false,
            },
        )
        .await
        .expect("create the primary");
    assert!(created["metadata"].get("managedFields").is_none());
    let s = Session::new(SessionParts {
        controller: "cases".into(),
        primary: created,
        owns: owns(),
        cluster: live,
        runtime: tokio::runtime::Handle::current(),
        deadline: in_a_minute(),
    });
    let (_dir, script) = script_with(
        r#"
        let made = {apiVersion: v1, kind: ConfigMap, metadata: {name: child}, data: {a: '1'}} | k8s apply
        let patched = {data: {b: '2'}} | k8s patch configmap child
        let json = [{op: add, path: /data/c, value: '3'}] | k8s patch configmap child --type json
        let listed = k8s list configmaps -l nuop.dev/controller=cases | get metadata.name
        let children = k8s children configmaps | get metadata.name
        let conflict = try { {apiVersion: v1, kind: ConfigMap, metadata: {name: child}} | k8s create; 'created' } catch {|e| $e.details.code }
        let unknown = try { k8s get gizmos x } catch {|e| $e.details.code }
        let forbidden = try { {apiVersion: v1, kind: ConfigMap, metadata: {name: 'Not_Valid'}} | k8s apply } catch {|e| {code: $e.details.code, msg: $e.msg} }
        k8s delete configmap child
        k8s delete configmap child
        {
            owner: $made.metadata.ownerReferences.0.uid
            managed_fields: ($made.metadata.managedFields? | is-empty)
            data: $json.data
            listed: $listed
            children: $children
            conflict: $conflict
            unknown: $unknown
            invalid: $forbidden.code
            invalid_names_it: ($forbidden.msg | str starts-with "k8s apply configmap ")
            after_delete: (k8s get configmap child --live)
        }
        "#,
    );
    let result = call(&script, Some(s.clone()), Duration::from_secs(60))
        .await
        .expect("call");
    let got = answer(&result);
    assert!(s.issued().iter().any(|r| r.verb() == "apply"));
    assert_eq!(got["data"], json!({"a": "1", "b": "2", "c": "3"}), "{got}");
    assert_eq!(got["listed"], json!(["child"]), "{got}");
    assert_eq!(got["children"], json!(["child"]), "{got}");
    assert_eq!(got["conflict"], "nuop::k8s::already_exists", "{got}");
    assert_eq!(got["unknown"], "nuop::k8s::unknown_kind", "{got}");
    assert_eq!(got["invalid"], "nuop::k8s::invalid", "{got}");
    assert_eq!(got["invalid_names_it"], true, "{got}");
    assert_eq!(got["after_delete"], Value::Null, "{got}");
    assert_eq!(got["managed_fields"], true, "{got}");
    assert!(
        got["owner"]
            .as_str()
            .is_some_and(|u| !u.is_empty() && u != "uid-src"),
        "{got}"
    );
    let metrics = nuop_core::metrics::METRICS.render();
    assert!(
        metrics.contains("nuop_k8s_uncached_reads_total{controller=\"cases\",kind=\"ConfigMap\"}"),
        "uncached reads are counted"
    );
}
