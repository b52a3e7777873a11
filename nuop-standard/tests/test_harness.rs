//! `nuop-standard test`, run as the real binary over the fixture scripts in
//! `tests/harness/`: cases that pass on both executors, a wrong expectation (a diff with
//! JSON pointers, exit 1) that `--update` fixes, the JUnit report validated against
//! `tests/data/junit.xsd` with xmllint, a hanging script (a failure naming the timeout, not a hung run)
//! and a malformed case file (an error naming the file and the field).
//!
//! The process executor needs `nu`: `nuop_core::testing::nu_binary` panics when it is
//! missing, and the binary gets it through `NUOP_NU`. The `--live` test needs the local
//! control plane (`nuop_core::testing::kubeconfig_path` starts it or panics).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use nuop_core::testing::{nu_binary, repo_root};

/// Generous: only here so that a hung run fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(120);

fn fixtures() -> PathBuf {
    repo_root().join("nuop-standard/tests/harness")
}

/// Runs `nuop-standard <args>` in `cwd`, failing the test if it does not finish.
fn run_in(cwd: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nuop-standard"));
    command
        .args(args)
        .current_dir(cwd)
        .env("NUOP_NU", nu_binary());
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(command.output());
    });
    finished
        .recv_timeout(HANG_GUARD)
        .unwrap_or_else(|_| panic!("nuop-standard {args:?} did not finish"))
        .expect("run nuop-standard")
}

fn run(args: &[&str]) -> Output {
    run_in(&fixtures(), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_line(text: &str) -> &str {
    text.lines().last().unwrap_or_default()
}

/// Copies a fixture script directory (with its tests) into `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn passing_cases_pass_on_both_executors() {
    let out = run(&["test", "good"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(last_line(&text), "8 passed, 0 failed", "{text}");
    for executor in ["embedded", "process"] {
        assert!(
            text.contains(&format!(
                "ok    good/labeler/tests/adds-label.yaml: adds the label [{executor}]"
            )),
            "{text}"
        );
    }
    let one = run(&["test", "good/labeler", "--executor", "process"]);
    assert_eq!(last_line(&stdout(&one)), "2 passed, 0 failed");
}

#[test]
fn k8s_commands_are_served_by_the_fake_cluster_on_both_executors() {
    let out = run(&["test", "k8s"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for executor in ["embedded", "process"] {
        assert!(
            text.contains(&format!(
                "ok    k8s/copier/tests/copies.yaml: copies to s-copy [{executor}]"
            )),
            "{text}"
        );
        // Its `use nuop-k8s.nu *` (for editors) imports nuop's real commands.
        assert!(
            text.contains(&format!(
                "ok    k8s/stubbed/tests/follows.yaml: takes the source's data [{executor}]"
            )),
            "{text}"
        );
    }
    assert_eq!(last_line(&text), "6 passed, 0 failed", "{text}");
}

/// `nu --ide-check 100 <script>`, with `lib` as its library directory when given:
/// the diagnostics' messages (hints left out).
fn ide_check(lib: Option<&Path>, script: &Path) -> Vec<String> {
    let mut command = Command::new(nu_binary());
    if let Some(lib) = lib {
        command.arg("-I").arg(lib);
    }
    let out = command
        .args(["--no-config-file", "--ide-check", "100"])
        .arg(script)
        .output()
        .expect("run nu --ide-check");
    assert!(out.status.success(), "nu --ide-check: {out:?}");
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON line"))
        .filter(|d| d["type"] == "diagnostic")
        .map(|d| format!("{}: {}", d["severity"], d["message"]))
        .collect()
}

#[test]
fn the_stubs_let_nu_ide_check_know_the_k8s_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stubs = dir.path().join("nuop-k8s.nu");
    let out = run(&["stubs", "--output", stubs.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let written = std::fs::read_to_string(&stubs).expect("stubs written");
    assert!(written.contains("export def \"k8s get\" ["), "{written}");
    assert_eq!(
        stdout(&run(&["stubs"])),
        written,
        "stdout gets the same module"
    );

    // The fixture script `use`s the stubs and calls `k8s get` with flags.
    let script = fixtures().join("k8s/stubbed/mod.nu");
    assert_eq!(
        ide_check(Some(dir.path()), &script),
        Vec::<String>::new(),
        "a correct script is clean"
    );
    assert!(
        ide_check(None, &script)
            .iter()
            .any(|d| d.contains("Module not found")),
        "without the stubs the `use` line is what fails"
    );
    // Known commands, not externals: a wrong flag is reported.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir(&wrong).expect("mkdir");
    let source = std::fs::read_to_string(&script).expect("script");
    std::fs::write(
        wrong.join("mod.nu"),
        source.replace("--namespace $cm", "--nope $cm"),
    )
    .expect("write");
    let found = ide_check(Some(dir.path()), &wrong.join("mod.nu"));
    assert!(
        found
            .iter()
            .any(|d| d == "\"Error\": \"The `k8s get` command doesn't have flag `nope`.\""),
        "{found:?}"
    );

    let named_k8s = dir.path().join("k8s.nu");
    let out = run(&["stubs", "-o", named_k8s.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name it nuop-k8s.nu"),
        "{out:?}"
    );
    assert!(!named_k8s.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runs_the_same_cases_against_the_control_plane() {
    let kubeconfig = nuop_core::testing::kubeconfig_path();
    let client = nuop_core::testing::client().await;
    let crd = std::fs::read_to_string(fixtures().join("good/cleaner/crd.yaml")).expect("crd");
    let crd = nuop_core::protocol::parse_document(&crd).expect("crd yaml");
    let crd = serde_json::from_value(crd).expect("a CRD");
    nuop_core::testing::create_crd(&client, &crd).await;

    let mut command = Command::new(env!("CARGO_BIN_EXE_nuop-standard"));
    command
        .args(["test", "good", "k8s", "--live"])
        .current_dir(fixtures())
        .env("NUOP_NU", nu_binary())
        .env("NUOP_TEST_KUBECONFIG", &kubeconfig);
    let out = tokio::time::timeout(HANG_GUARD, tokio::process::Command::from(command).output())
        .await
        .expect("nuop-standard test --live did not finish")
        .expect("run nuop-standard");
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for executor in ["embedded", "process"] {
        for line in [
            format!(
                "ok    good/cleaner/tests/finalize.yaml: finalize removes the finalizer and the object goes [{executor} live]"
            ),
            format!("ok    k8s/copier/tests/copies.yaml: copies to s-copy [{executor} live]"),
        ] {
            assert!(text.contains(&line), "{line:?} in {text}");
        }
    }
    assert_eq!(last_line(&text), "14 passed, 0 failed", "{text}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_update_fixes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &fixtures().join("good/labeler"),
        &dir.path().join("labeler"),
    );
    let case = dir.path().join("labeler/tests/adds-label.yaml");
    let text = std::fs::read_to_string(&case).expect("case");
    let wrong = text
        .replace("exit: 2", "exit: 0")
        .replace("greeted: \"yes\", x: y", "greeted: \"no\", x: y");
    std::fs::write(&case, &wrong).expect("write case");

    let out = run_in(dir.path(), &["test", "labeler"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("FAIL  labeler/tests/adds-label.yaml: adds the label [embedded]\n      /exit: expected 0, got 2\n      /output/metadata/labels/greeted: expected \"no\", got \"yes\""),
        "{report}"
    );
    assert_eq!(last_line(&report), "2 passed, 2 failed", "{report}");

    let out = run_in(dir.path(), &["test", "labeler", "--update"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("updated labeler/tests/adds-label.yaml"),
        "{report}"
    );
    assert_eq!(last_line(&report), "4 passed, 0 failed", "{report}");
    let fixed = std::fs::read_to_string(&case).expect("case");
    assert!(
        fixed.starts_with("# A ConfigMap without the label gets it.\n"),
        "comments before expect stay: {fixed}"
    );
    assert!(fixed.contains("exit: 2"), "{fixed}");
    assert!(!fixed.contains("\"no\""), "{fixed}");

    let out = run_in(dir.path(), &["test", "labeler"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(last_line(&stdout(&out)), "4 passed, 0 failed");
}

#[test]
fn a_case_without_expectations_fails_until_update_records_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(
        &fixtures().join("good/labeler"),
        &dir.path().join("labeler"),
    );
    std::fs::remove_file(dir.path().join("labeler/tests/already.yaml")).expect("rm");
    let case = dir.path().join("labeler/tests/adds-label.yaml");
    let text = std::fs::read_to_string(&case).expect("case");
    let bare = &text[..text.find("expect:").expect("expect block")];
    std::fs::write(&case, bare).expect("write case");

    let out = run_in(dir.path(), &["test", "labeler", "--executor", "embedded"]);
    let report = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("expect: no expectations; `--update` records what happened"),
        "{report}"
    );
    let out = run_in(dir.path(), &["test", "labeler", "--update"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let snapshot = std::fs::read_to_string(&case).expect("case");
    let recorded = &snapshot[bare.len()..];
    for line in [
        "expect:",
        "  exit: 2",
        "  outcome: changed",
        "  requeue: 5",
        "  commands: []",
    ] {
        assert!(recorded.contains(line), "{line:?} in {recorded}");
    }
    let out = run_in(dir.path(), &["test", "labeler"]);
    assert_eq!(last_line(&stdout(&out)), "2 passed, 0 failed");
}

#[test]
fn a_hanging_script_fails_naming_the_timeout() {
    let out = run(&["test", "hangs"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for executor in ["embedded", "process"] {
        assert!(
            text.contains(&format!(
                "FAIL  hangs/sleeper/tests/hangs.yaml: a hanging reconcile [{executor}]"
            )),
            "{text}"
        );
    }
    assert_eq!(
        text.matches("error: script sleeper reconcile timed out after 1s and was stopped")
            .count(),
        2,
        "{text}"
    );
    assert_eq!(last_line(&text), "0 passed, 2 failed", "{text}");
}

#[test]
fn a_malformed_case_is_an_error_naming_the_file_and_the_field() {
    let out = run(&["test", "malformed"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("ERROR malformed/labeler/tests/bad.yaml: bad\n      malformed/labeler/tests/bad.yaml: expect.exit: expected an exit code, found a string"),
        "{text}"
    );
    assert_eq!(
        last_line(&text),
        "2 passed, 1 failed",
        "the good case still runs: {text}"
    );
}

#[test]
fn check_reports_each_static_problem_with_file_line_and_column() {
    let root = repo_root().join("nuop-standard/tests/check");
    let root_arg = root.to_str().expect("utf-8 path");
    let out = run(&["check", root_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lints = root.join("lints/mod.nu");
    let lints = lints.display();
    for wanted in [
        format!("error: {}:6:37: The `k8s get` command doesn't have flag `nope`.", root.join("badflag/mod.nu").display()),
        format!("warning: {lints}:9:15: `kubectl` spawns a process per call"),
        format!("warning: {lints}:10:26: `k8s list secrets`: the config declares no such kind"),
        format!("warning: {lints}:12:23: Flag deprecated."),
        format!("warning: {lints}:16:1: `main finalize` is never called: the config declares no `finalizer`"),
        "nofinalize: script nofinalize declares finalizer `nuop.dev/x` but has no `main finalize` command".to_string(),
    ] {
        assert!(stderr.contains(&wanted), "{wanted:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("configmaps copy"),
        "a declared kind is not reported: {stderr}"
    );
    assert_eq!(stdout(&out), "lints\tv1/ConfigMap\n");

    let out = run(&["check", root_arg, "--format", "json"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON diagnostic per line"))
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for d in &lines {
        assert_eq!(d["type"], "diagnostic");
        assert!(
            d["severity"] == "Error" || d["severity"] == "Warning",
            "{d}"
        );
        assert!(
            d["span"]["start"].is_u64() && d["span"]["end"].is_u64(),
            "{d}"
        );
        assert!(
            d["message"].is_string() && d["file"].is_string() && d["line"].is_u64(),
            "{d}"
        );
    }
    let flag = &lines[0];
    assert_eq!(
        (flag["line"].as_u64(), flag["column"].as_u64()),
        (Some(6), Some(37)),
        "{flag}"
    );
    let source = std::fs::read_to_string(root.join("badflag/mod.nu")).expect("source");
    let span =
        |k: &str| usize::try_from(flag["span"][k].as_u64().unwrap_or_default()).unwrap_or_default();
    assert_eq!(
        &source[span("start")..span("end")],
        "--nope",
        "the span covers the flag"
    );
}

#[test]
fn no_cases_is_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(dir.path(), &["test"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no test cases"), "{text}");
}

#[test]
fn the_junit_report_validates_against_the_junit_xsd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("junit.xml");
    let report_arg = report.to_str().expect("utf-8 path");
    let out = run(&["test", "good", "malformed", "hangs", "--junit", report_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let xml = std::fs::read_to_string(&report).expect("report written");
    if let Err(e) = xmllint_schema(&report) {
        panic!("{e}\n{xml}");
    }
    // good: 8 passed; malformed: 2 passed + 1 error; hangs: 2 failures.
    assert_eq!(totals(&xml), (13, 2, 1), "{xml}");
    assert!(
        xml.contains("<failure message=\"1 expectation(s) did not hold\" type=\"mismatch\">/exit: expected 0, got null</failure>"),
        "{xml}"
    );
}

/// The schema check itself can fail: a report missing a required attribute, with the
/// children of a suite out of order, or with a zoned timestamp is refused.
#[test]
fn the_junit_xsd_refuses_broken_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let suite = |attrs: &str, body: &str| {
        format!(
            "<testsuites><testsuite name=\"s\" {attrs} hostname=\"h\" tests=\"1\" failures=\"0\" errors=\"0\" time=\"0.1\" package=\"p\" id=\"0\">{body}</testsuite></testsuites>"
        )
    };
    let good_case = "<testcase name=\"c\" classname=\"s.c\" time=\"0.1\"/>";
    let stamp = "timestamp=\"2026-12-01T10:00:00\"";
    let ok = suite(
        stamp,
        &format!("<properties/>{good_case}<system-out/><system-err/>"),
    );
    let broken = [
        (
            "no classname",
            suite(
                stamp,
                "<properties/><testcase name=\"c\" time=\"0.1\"/><system-out/><system-err/>",
            ),
        ),
        (
            "system-out before the cases",
            suite(
                stamp,
                &format!("<properties/><system-out/>{good_case}<system-err/>"),
            ),
        ),
        (
            "a zoned timestamp",
            suite(
                "timestamp=\"2026-12-01T10:00:00Z\"",
                &format!("<properties/>{good_case}<system-out/><system-err/>"),
            ),
        ),
    ];
    let path = dir.path().join("report.xml");
    std::fs::write(&path, &ok).expect("write");
    xmllint_schema(&path).unwrap_or_else(|e| panic!("the well-formed report: {e}"));
    for (what, xml) in broken {
        std::fs::write(&path, &xml).expect("write");
        assert!(
            xmllint_schema(&path).is_err(),
            "{what}: the schema accepted {xml}"
        );
    }
}

/// Validates the file at `report` against `tests/data/junit.xsd` with `xmllint`
/// (Debian's libxml2-utils, which `make test` installs). Panics when xmllint is missing.
fn xmllint_schema(report: &Path) -> Result<(), String> {
    let schema = repo_root().join("nuop-standard/tests/data/junit.xsd");
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&schema)
        .arg(report)
        .output()
        .unwrap_or_else(|e| {
            panic!("xmllint is needed to validate JUnit reports (apt-get install libxml2-utils, or `make test`): {e}")
        });
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// (tests, failures, errors) summed over the suites, checked against the cases they
/// hold: the one rule of the format an XSD cannot express.
fn totals(xml: &str) -> (usize, usize, usize) {
    let doc = roxmltree::Document::parse(xml).expect("XML");
    let count = |n: roxmltree::Node<'_, '_>, a: &str| -> usize {
        n.attribute(a)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("<testsuite> {a} is not a count"))
    };
    let (mut tests, mut failures, mut errors) = (0, 0, 0);
    for suite in doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
    {
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let with = |tag: &str| {
            cases
                .iter()
                .filter(|c| c.children().any(|p| p.has_tag_name(tag)))
                .count()
        };
        assert_eq!(count(suite, "tests"), cases.len(), "tests of {suite:?}");
        assert_eq!(count(suite, "failures"), with("failure"), "failures");
        assert_eq!(count(suite, "errors"), with("error"), "errors");
        tests += cases.len();
        failures += with("failure");
        errors += with("error");
    }
    (tests, failures, errors)
}
