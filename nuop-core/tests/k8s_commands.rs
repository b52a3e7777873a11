//! The `k8s` commands' conformance suite: every case of `k8s_cases` runs on both
//! executors (the embedded engine, and `nu` children through the generated module and
//! the operator's socket) against the fake cluster, and each executor must give the
//! case's answer and issue the same requests as the other. Beside the table: the
//! commands' signatures are the same on both, both refuse commands outside a call and
//! after the deadline alike, a wrong flag is a parse error on both, a timeout of the
//! process executor cancels the command in flight, and both executors give the same
//! answers against the real control plane (`LiveCluster`).
//!
//! Needs the `nu` binary (`NUOP_NU`, or `make tools`) and, for the control-plane test,
//! `hack/control-plane up` (see `nuop_core::testing`); they fail, not skip, without them.

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
use nuop_core::script::{CallRequest, CallResult, ExecError, ExecutorKind, Script, ScriptRunner};
use serde_json::{Value, json};

use clusters::{Hanging, Lagging};
use k8s_cases::{cases, owns, primary};

const BOTH: [ExecutorKind; 2] = [ExecutorKind::Embedded, ExecutorKind::Process];

/// The `main config` every script here has.
const CONFIG: &str = "def \"main config\" [] { {name: cases, version: v1, kind: ConfigMap} }";

/// A script directory whose `main reconcile` runs `body` and answers `{result: ...}`.
fn script_with(body: &str) -> (tempfile::TempDir, Script) {
    script_from(&format!(
        "{CONFIG}\ndef \"main reconcile\" [] {{\n  let result = do {{\n{body}\n  }}\n  {{result: $result}}\n}}\n"
    ))
}

/// A script directory holding `source` as its `mod.nu`.
fn script_from(source: &str) -> (tempfile::TempDir, Script) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mod.nu"), source).expect("write mod.nu");
    let script = Script::at(dir.path());
    (dir, script)
}

fn session_for(cluster: Arc<dyn Cluster>, primary: Value, deadline: Instant) -> Arc<Session> {
    Session::new(SessionParts {
        controller: "cases".into(),
        primary,
        owns: owns(),
        cluster,
        runtime: tokio::runtime::Handle::current(),
        deadline,
    })
}

fn session(cluster: Arc<dyn Cluster>, deadline: Instant) -> Arc<Session> {
    session_for(cluster, primary(), deadline)
}

fn load(kind: ExecutorKind, script: &Script) -> ScriptRunner {
    ScriptRunner::load_with(kind, script, nuop_core::testing::nu_binary())
        .unwrap_or_else(|e| panic!("loading {} failed: {e}", script.entry.display()))
}

async fn call(
    kind: ExecutorKind,
    script: &Script,
    primary: &Value,
    session: Option<Arc<Session>>,
    timeout: Duration,
) -> Result<CallResult, ExecError> {
    load(kind, script)
        .call(CallRequest {
            phase: Phase::Reconcile,
            input: Some(primary.to_string()),
            controller: "cases".into(),
            timeout,
            k8s: session,
        })
        .await
}

/// The `result` a call answered: the embedded engine returns it as a value, a `nu`
/// child prints it as JSON.
fn answer(kind: ExecutorKind, result: &CallResult) -> Result<Value, String> {
    if result.code != 0 {
        return Err(format!(
            "{kind}: exit {}: {}{}",
            result.code, result.stderr.text, result.stdout.text
        ));
    }
    let returned = match kind {
        ExecutorKind::Embedded => result.returned.clone(),
        ExecutorKind::Process => serde_json::from_str(result.stdout.text.trim()).ok(),
    };
    returned
        .and_then(|r| r.get("result").cloned())
        .ok_or_else(|| format!("{kind}: no result in {result:?}"))
}

fn sorted(requests: &[Request]) -> Vec<String> {
    let mut texts: Vec<String> = requests.iter().map(|r| format!("{r:?}")).collect();
    texts.sort();
    texts
}

fn in_a_minute() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_answers_alike_on_both_executors() {
    let mut failures = Vec::new();
    for case in cases() {
        let mut issued: Vec<Vec<Request>> = Vec::new();
        for kind in BOTH {
            let mut objects = case.objects.clone();
            objects.push(primary());
            let cluster: Arc<dyn Cluster> = if case.lagging_reads {
                Arc::new(Lagging::new(objects))
            } else {
                Arc::new(FakeCluster::new(objects).expect("fake"))
            };
            let s = session(cluster, in_a_minute());
            let (_dir, script) = script_with(case.script);
            let result = call(
                kind,
                &script,
                &primary(),
                Some(s.clone()),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|e| panic!("{} ({kind}): {e}", case.name));
            match answer(kind, &result) {
                Ok(got) if got == case.expect => {}
                Ok(got) => failures.push(format!(
                    "{} ({kind}): expected {}, got {got}",
                    case.name, case.expect
                )),
                Err(e) => failures.push(format!("{}: {e}", case.name)),
            }
            issued.push(s.issued());
        }
        // `par-each` issues its requests in no particular order.
        let same = issued[0] == issued[1]
            || (case.script.contains("par-each") && sorted(&issued[0]) == sorted(&issued[1]));
        if !same {
            failures.push(format!(
                "{}: the executors issued different requests:\n  embedded {:?}\n  process  {:?}",
                case.name, issued[0], issued[1]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_without_a_json_form_are_handed_over_alike() {
    // Dates, file sizes, ranges, floats and nulls in a command's input and in a
    // selector record, as each executor turns them into JSON (`k8s own` echoes its
    // input, the session's requests keep the selector). Durations and binary data
    // differ: see the caveats of `nuop_core::k8s::module`.
    let (_dir, script) = script_with(
        "let d = {when: 2024-01-02T03:04:05Z, size: 1kb, range: (1..3), float: 1.5, nothing: null}; let owned = {apiVersion: v1, kind: ConfigMap, metadata: {name: x}, data: $d} | k8s own | get data; k8s list configmaps -l {app: web} | ignore; $owned",
    );
    let mut answers = Vec::new();
    for kind in BOTH {
        let fake: Arc<dyn Cluster> = Arc::new(FakeCluster::new(vec![primary()]).expect("fake"));
        let s = session(fake, in_a_minute());
        let result = call(
            kind,
            &script,
            &primary(),
            Some(s.clone()),
            Duration::from_secs(30),
        )
        .await
        .expect("call");
        answers.push((answer(kind, &result), s.issued()));
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_have_the_same_signatures_on_both_executors() {
    // Every k8s command with its help, parameters (names, shapes, short flags, help)
    // and input/output types, as Nushell itself describes them.
    let (_dir, script) = script_with(
        "scope commands | where name =~ '^k8s' | select name description signatures | sort-by name",
    );
    let mut answers = Vec::new();
    for kind in BOTH {
        let result = call(kind, &script, &primary(), None, Duration::from_secs(30))
            .await
            .expect("call");
        answers.push(answer(kind, &result).unwrap_or_else(|e| panic!("{e}")));
    }
    let names: Vec<&str> = answers[0]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let mut expected: Vec<String> = nuop_core::k8s::SPECS.iter().map(|s| s.name()).collect();
    expected.push("k8s".into());
    expected.sort();
    assert_eq!(names, expected);
    let (embedded, process) = (
        answers[0].as_array().cloned().unwrap_or_default(),
        answers[1].as_array().cloned().unwrap_or_default(),
    );
    let differing: Vec<String> = embedded
        .iter()
        .zip(&process)
        .filter(|(e, p)| e != p)
        .map(|(e, p)| format!("embedded {e}\nprocess  {p}"))
        .collect();
    assert!(differing.is_empty(), "{}", differing.join("\n\n"));
    assert_eq!(embedded.len(), process.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_a_call_and_after_the_deadline_both_refuse_alike() {
    let probe = "try { k8s list configmaps } catch {|e| {code: $e.details.code, msg: $e.msg} }";
    let (_dir, script) = script_with(probe);
    for kind in BOTH {
        // A call without a session (config, or a controller without a cluster).
        let result = call(kind, &script, &primary(), None, Duration::from_secs(30))
            .await
            .expect("call");
        assert_eq!(
            answer(kind, &result),
            Ok(json!({"code": "nuop::k8s::outside_call",
                      "msg": "k8s list outside a call: k8s commands run only in reconcile/finalize"})),
            "{kind}"
        );
        // A session whose deadline has passed.
        let fake: Arc<dyn Cluster> = Arc::new(FakeCluster::new(vec![primary()]).expect("fake"));
        let s = session(fake, Instant::now());
        let result = call(
            kind,
            &script,
            &primary(),
            Some(s.clone()),
            Duration::from_secs(30),
        )
        .await
        .expect("call");
        assert_eq!(
            answer(kind, &result),
            Ok(json!({"code": "nuop::k8s::interrupted",
                      "msg": "k8s list configmaps: the call's timeout has passed"})),
            "{kind}"
        );
        assert!(s.issued().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_top_level_command_is_outside_the_call_in_a_nu_child() {
    // The embedded engine runs the top level once, at load, where it fails the load
    // (k8s_embedded::commands_outside_a_call_are_refused); a `nu` child runs it on every
    // call, and there it must not reach the call's session either.
    let (_dir, script) = script_from(&format!(
        "let cms = k8s list configmaps\n{CONFIG}\ndef \"main reconcile\" [] {{ {{result: ($cms | length)}} }}\n"
    ));
    let fake: Arc<dyn Cluster> = Arc::new(FakeCluster::new(vec![primary()]).expect("fake"));
    let s = session(fake, in_a_minute());
    let result = call(
        ExecutorKind::Process,
        &script,
        &primary(),
        Some(s.clone()),
        Duration::from_secs(30),
    )
    .await
    .expect("call");
    assert_ne!(result.code, 0, "{result:?}");
    assert!(
        result
            .stderr
            .text
            .contains("k8s list outside a call: k8s commands run only in reconcile/finalize"),
        "{}",
        result.stderr.text
    );
    assert!(s.issued().is_empty());
    // The same script's `main` does reach it once the top level is done.
    let (_dir, script) = script_from(&format!(
        "let before = (try {{ k8s owner-ref | ignore; 'reached' }} catch {{ 'refused' }})\n{CONFIG}\ndef \"main reconcile\" [] {{ {{result: [$before (k8s owner-ref | get uid)]}} }}\n"
    ));
    let fake: Arc<dyn Cluster> = Arc::new(FakeCluster::new(vec![primary()]).expect("fake"));
    let result = call(
        ExecutorKind::Process,
        &script,
        &primary(),
        Some(session(fake, in_a_minute())),
        Duration::from_secs(30),
    )
    .await
    .expect("call");
    assert_eq!(
        answer(ExecutorKind::Process, &result),
        Ok(json!(["refused", "uid-src"]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_flag_is_a_parse_error_on_both_executors() {
    let (dir, script) = script_from(&format!(
        "{CONFIG}\n\ndef \"main reconcile\" [] {{\n  k8s get configmap x --bogus\n}}\n"
    ));
    // Embedded: at load. Process: `nu` parses the whole script before running `config`.
    match ScriptRunner::load_with(
        ExecutorKind::Embedded,
        &script,
        nuop_core::testing::nu_binary(),
    ) {
        Err(nuop_core::script::LoadError::Syntax { line, message, .. }) => {
            assert_eq!(line, 4, "{message}");
            assert!(message.contains("bogus"), "{message}");
        }
        Err(other) => panic!("expected a syntax error, got {other}"),
        Ok(_) => panic!("a wrong flag must not load"),
    }
    let runner = load(ExecutorKind::Process, &script);
    let error = runner
        .config(Duration::from_secs(30))
        .await
        .expect_err("a wrong flag fails config");
    let text = error.to_string();
    assert!(text.contains("doesn't have flag `bogus`"), "{text}");
    assert!(text.contains("mod.nu:4"), "{text}");
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_of_a_nu_child_cancels_its_command_in_flight() {
    let hanging = Arc::new(Hanging::default());
    let waiting = hanging.waiting.clone();
    // The session's own deadline is far away: only the executor's timeout can stop it.
    let s = session(hanging, Instant::now() + Duration::from_secs(3_600));
    let (_dir, script) = script_with("k8s get configmap src");
    // Long enough for `nu` to start and send the command on a loaded machine.
    let result = call(
        ExecutorKind::Process,
        &script,
        &primary(),
        Some(s.clone()),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        matches!(result, Err(ExecError::Timeout { .. })),
        "{result:?}"
    );
    // The command reached the cluster: the timeout stopped it in flight.
    assert_eq!(s.issued().len(), 1);
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

/// Against the real API server through `LiveCluster`, with each executor in turn: the
/// same writes, reads and errors, answered alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_executors_answer_alike_against_the_control_plane() {
    let env = nuop_core::testing::TestEnv::new("k8s-commands").await;
    let live: Arc<dyn Cluster> = Arc::new(LiveCluster::new(env.client.clone(), Vec::new()));
    let mut primary = primary();
    primary["metadata"]["namespace"] = json!(env.namespace);
    let created = live
        .execute(
            "nuop-cases",
            &Request::Create {
                object: primary,
                dry_run: false,
            },
        )
        .await
        .expect("create the primary");
    let uid = created["metadata"]["uid"].clone();
    let (_dir, script) = script_with(
        r#"
        let made = {apiVersion: v1, kind: ConfigMap, metadata: {name: child}, data: {a: '1'}} | k8s apply
        let patched = {data: {b: '2'}} | k8s patch configmap child
        let json = [{op: add, path: /data/c, value: '3'}] | k8s patch configmap child --type json
        let listed = k8s list configmaps -l {nuop.dev/controller: cases} | get metadata.name
        let children = k8s children configmaps | get metadata.name
        let conflict = try { {apiVersion: v1, kind: ConfigMap, metadata: {name: child}} | k8s create; 'created' } catch {|e| $e.details.code }
        let missing = try { {data: {}} | k8s patch configmap nope } catch {|e| {code: $e.details.code, msg: $e.msg} }
        let invalid = try { {apiVersion: v1, kind: ConfigMap, metadata: {name: 'Not_Valid'}} | k8s apply } catch {|e| $e.details.code }
        k8s delete configmap child
        k8s delete configmap child
        {
            owner: $made.metadata.ownerReferences.0.uid
            labels: $made.metadata.labels
            data: $json.data
            listed: $listed
            children: $children
            conflict: $conflict
            missing: $missing
            invalid: $invalid
            after_delete: (k8s get configmap child --live)
        }
        "#,
    );
    let mut answers = Vec::new();
    for kind in BOTH {
        let s = session_for(live.clone(), created.clone(), in_a_minute());
        let result = call(
            kind,
            &script,
            &created,
            Some(s.clone()),
            Duration::from_secs(60),
        )
        .await
        .expect("call");
        let got = answer(kind, &result).unwrap_or_else(|e| panic!("{e}"));
        let verbs: Vec<&str> = s.issued().iter().map(Request::verb).collect();
        answers.push((got, verbs));
    }
    let (got, _) = &answers[0];
    assert_eq!(got["owner"], uid, "{got}");
    assert_eq!(got["data"], json!({"a": "1", "b": "2", "c": "3"}), "{got}");
    assert_eq!(got["listed"], json!(["child"]), "{got}");
    assert_eq!(got["children"], json!(["child"]), "{got}");
    assert_eq!(got["conflict"], "nuop::k8s::already_exists", "{got}");
    assert_eq!(got["missing"]["code"], "nuop::k8s::not_found", "{got}");
    assert_eq!(got["invalid"], "nuop::k8s::invalid", "{got}");
    assert_eq!(got["after_delete"], Value::Null, "{got}");
    assert_eq!(answers[0], answers[1]);
}
