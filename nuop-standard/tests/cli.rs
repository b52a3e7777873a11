//! The script author's tools, run as the real `nuop-standard` binary: `check` over a
//! scripts root with good and broken scripts, and `exec` of each phase with both
//! executors, including the bad scripts of `nuop-core/tests/scripts` (clear message,
//! right exit code, nothing hangs).
//!
//! The process executor needs `nu`: `nuop_core::testing::nu_binary` panics when it is
//! missing, and the binary gets it through `NUOP_NU`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nuop_core::testing::{nu_binary, repo_root};

/// Generous: only here so that a hung call fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(120);

const CONFIG_MAP: &str = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","namespace":"n","labels":{"x":"y"}},"data":{"k":"v"}}"#;

fn scripts() -> PathBuf {
    repo_root().join("nuop-core/tests/scripts")
}

/// Runs `nuop-standard <args>` with `stdin`, failing the test if it does not finish.
fn run(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nuop-standard"))
        .args(args)
        .env("NUOP_NU", nu_binary())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nuop-standard");
    let mut input = child.stdin.take().expect("stdin");
    let text = stdin.to_string();
    // Written from a thread: a script that never reads stdin must not block the test.
    std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    finished
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("nuop-standard {args:?} did not finish"))
        .expect("wait for nuop-standard")
}

fn exec(script: &str, phase: &str, executor: &str, extra: &[&str], stdin: &str) -> Output {
    let dir = scripts().join(script);
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["exec", dir, phase, "--executor", executor];
    args.extend_from_slice(extra);
    run(&args, stdin)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_lists_each_controller_and_names_each_broken_script() {
    let root = scripts();
    let out = run(&["check", root.to_str().expect("utf-8 path")], "");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "broken scripts fail the check: {stderr}"
    );
    assert!(
        stdout.contains("add-label\tv1/ConfigMap\tlabels=x=y"),
        "one line per controller: {stdout}"
    );
    assert!(stdout.contains("finalizer=nuop.dev/cleanup"), "{stdout}");
    assert!(
        stderr.contains(
            "unknown field `requeue_after_chnage` (did you mean `requeue_after_change`?)"
        ),
        "the bad config names the field: {stderr}"
    );
    assert!(
        stderr.contains("syntax-error/mod.nu:5"),
        "the syntax error names file and line: {stderr}"
    );
    assert!(
        stderr.contains("has no `main reconcile` command"),
        "a missing subcommand is named: {stderr}"
    );
    for broken in ["bad-config", "syntax-error", "no-reconcile"] {
        assert!(
            !stdout.lines().any(|l| l.starts_with(broken)),
            "{broken} must not be listed as a controller: {stdout}"
        );
    }
}

#[test]
fn check_passes_on_the_examples() {
    let root = repo_root().join("examples");
    let out = run(&["check", root.to_str().expect("utf-8 path")], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().count(),
        6,
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn exec_reconcile_prints_the_changed_object_and_exits_2_with_both_executors() {
    for executor in ["embedded", "process"] {
        let out = exec("add-label", "reconcile", executor, &[], CONFIG_MAP);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{executor}: {}",
            text(&out.stderr)
        );
        let object: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("stdout is the object as JSON");
        assert_eq!(object["metadata"]["name"], "a", "{executor}");
        assert!(
            object["metadata"]["labels"]
                .as_object()
                .is_some_and(|l| l.len() > 1),
            "{executor}: the label was added: {object}"
        );
        assert!(
            text(&out.stderr).contains("labelling a"),
            "{executor}: logs go to stderr"
        );
    }
}

#[test]
fn exec_reads_yaml_too_and_refuses_what_is_not_an_object() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: n\n";
    let out = exec("add-label", "reconcile", "embedded", &[], yaml);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let out = exec(
        "add-label",
        "reconcile",
        "embedded",
        &[],
        "- just\n- a list\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("stdin must hold one object"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_config_prints_the_controller_line() {
    let out = exec("finalizer", "config", "embedded", &[], "");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("finalizer=nuop.dev/cleanup"));
}

#[test]
fn exec_failures_exit_1_with_the_reason() {
    let cases = [
        ("error-exit", "reconcile", "script exited with code 1"),
        ("odd-exit", "reconcile", "script exited with code 7"),
        ("garbage", "finalize", "error:"),
    ];
    for executor in ["embedded", "process"] {
        for (script, phase, expected) in cases {
            let out = exec(script, phase, executor, &[], CONFIG_MAP);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{script} {executor}: {stderr}");
            assert!(stderr.contains(expected), "{script} {executor}: {stderr}");
        }
    }
}

#[test]
fn exec_a_hanging_script_is_stopped_at_its_timeout() {
    for executor in ["embedded", "process"] {
        for phase in ["reconcile", "finalize"] {
            let out = exec("hang", phase, executor, &["--timeout", "1"], CONFIG_MAP);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{executor} {phase}: {stderr}");
            assert!(
                stderr.contains("timed out") || stderr.contains("timeout"),
                "{executor} {phase}: the timeout is named: {stderr}"
            );
        }
    }
}

#[test]
fn exec_broken_scripts_exit_1_and_say_why() {
    let out = exec("syntax-error", "reconcile", "embedded", &[], CONFIG_MAP);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("syntax-error/mod.nu:5"),
        "{}",
        text(&out.stderr)
    );

    let out = exec("no-reconcile", "reconcile", "embedded", &[], CONFIG_MAP);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has no `main reconcile` command"),
        "{}",
        text(&out.stderr)
    );

    let out = exec("does-not-exist", "reconcile", "embedded", &[], CONFIG_MAP);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_with_a_cluster_file_serves_k8s_commands_and_lists_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("mod.nu"),
        r#"def "main config" [] { {name: copier, version: v1, kind: ConfigMap} }
def "main reconcile" [] {
  let src = $in | from json
  let webs = k8s list configmaps -A -l app=web | get metadata.name
  {apiVersion: v1, kind: ConfigMap, metadata: {name: $src.metadata.name, namespace: team-b}, data: $src.data} | k8s apply | ignore
  print -e $"webs: ($webs | str join ',')"
  exit 0
}
"#,
    )
    .expect("write mod.nu");
    let objects = dir.path().join("cluster.yaml");
    std::fs::write(
        &objects,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w, namespace: team-c, labels: {app: web}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team-b}\n",
    )
    .expect("write cluster");
    let script = dir.path().to_str().expect("utf-8 path");
    let cluster = objects.to_str().expect("utf-8 path");
    let out = run(
        &["exec", script, "reconcile", "--cluster", cluster],
        CONFIG_MAP,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("webs: w"),
        "the script read the file's objects: {stderr}"
    );
    assert!(stderr.contains("k8s commands issued: 2"), "{stderr}");
    assert!(
        stderr.contains("  list configmaps -A -l 'app=web'"),
        "{stderr}"
    );
    assert!(stderr.contains("  apply v1/ConfigMap team-b/a"), "{stderr}");

    std::fs::write(&objects, "- {kind: ConfigMap}\n").expect("write bad cluster");
    let bad = run(
        &["exec", script, "reconcile", "--cluster", cluster],
        CONFIG_MAP,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("error: --cluster: object 1"),
        "{}",
        text(&bad.stderr)
    );
}
