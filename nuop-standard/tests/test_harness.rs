//! `nuop-standard test`, run as the real binary over the fixture scripts in
//! `tests/harness/`: cases that pass on both executors, a wrong expectation (a diff with
//! JSON pointers, exit 1) that `--update` fixes, the JUnit report checked against the
//! JUnit schema's rules, a hanging script (a failure naming the timeout, not a hung run)
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
fn the_junit_report_follows_the_junit_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("junit.xml");
    let report_arg = report.to_str().expect("utf-8 path");
    let out = run(&["test", "good", "malformed", "hangs", "--junit", report_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let xml = std::fs::read_to_string(&report).expect("report written");
    let counts = validate_junit(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    // good: 8 passed; malformed: 2 passed + 1 error; hangs: 2 failures.
    assert_eq!(counts, (13, 2, 1), "{xml}");
    assert!(
        xml.contains("<failure message=\"1 expectation(s) did not hold\" type=\"mismatch\">/exit: expected 0, got null</failure>"),
        "{xml}"
    );
}

/// Checks `xml` against the rules of the strictest common JUnit schema (the Ant
/// formatter's, windyroad `JUnit.xsd`): element order, required and allowed
/// attributes, their types, and that the counts agree with the cases. Returns
/// (tests, failures, errors) over all suites.
fn elements<'a, 'i>(n: roxmltree::Node<'a, 'i>) -> Vec<roxmltree::Node<'a, 'i>> {
    n.children().filter(roxmltree::Node::is_element).collect()
}

fn validate_junit(xml: &str) -> Result<(usize, usize, usize), String> {
    use roxmltree::{Document, Node};
    let doc = Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = doc.root_element();
    let attributes_are = |n: Node<'_, '_>, names: &[&str]| -> Result<(), String> {
        let mut got: Vec<&str> = n.attributes().map(|a| a.name()).collect();
        got.sort_unstable();
        let mut want = names.to_vec();
        want.sort_unstable();
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "<{}> has attributes {got:?}, the schema wants {want:?}",
                n.tag_name().name()
            ))
        }
    };
    let uint = |n: Node<'_, '_>, a: &str| -> Result<usize, String> {
        n.attribute(a)
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| {
                format!(
                    "<{}> {a} is not a non-negative integer",
                    n.tag_name().name()
                )
            })
    };
    let decimal = |n: Node<'_, '_>| -> Result<(), String> {
        let v = n.attribute("time").unwrap_or_default();
        let ok = !v.is_empty()
            && v.chars().all(|c| c.is_ascii_digit() || c == '.')
            && v.matches('.').count() <= 1;
        if ok {
            Ok(())
        } else {
            Err(format!("time {v:?} is not a decimal"))
        }
    };
    if root.tag_name().name() != "testsuites" {
        return Err("the root is not <testsuites>".into());
    }
    attributes_are(root, &[])?;
    let (mut tests, mut failures, mut errors) = (0, 0, 0);
    for suite in elements(root) {
        if suite.tag_name().name() != "testsuite" {
            return Err(format!("<{}> inside <testsuites>", suite.tag_name().name()));
        }
        attributes_are(
            suite,
            &[
                "name",
                "timestamp",
                "hostname",
                "tests",
                "failures",
                "errors",
                "time",
                "package",
                "id",
            ],
        )?;
        let stamp = suite.attribute("timestamp").unwrap_or_default();
        let shape: String = stamp
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        if shape != "dddd-dd-ddTdd:dd:dd" {
            return Err(format!(
                "timestamp {stamp:?} is not an ISO 8601 date-time without zone"
            ));
        }
        decimal(suite)?;
        uint(suite, "id")?;
        let children = elements(suite);
        let names: Vec<&str> = children.iter().map(|c| c.tag_name().name()).collect();
        let n = names.len();
        if n < 3
            || names[0] != "properties"
            || names[n - 2] != "system-out"
            || names[n - 1] != "system-err"
            || names[1..n - 2].iter().any(|c| *c != "testcase")
        {
            return Err(format!(
                "<testsuite> children {names:?}: the schema wants properties, testcase*, system-out, system-err"
            ));
        }
        for property in elements(children[0]) {
            if property.tag_name().name() != "property" {
                return Err("<properties> holds something other than <property>".into());
            }
            attributes_are(property, &["name", "value"])?;
        }
        let (mut f, mut e) = (0, 0);
        for case in &children[1..n - 2] {
            attributes_are(*case, &["name", "classname", "time"])?;
            decimal(*case)?;
            let inner = elements(*case);
            if inner.len() > 1 {
                return Err("a <testcase> holds more than one failure or error".into());
            }
            for problem in inner {
                match problem.tag_name().name() {
                    "failure" => f += 1,
                    "error" => e += 1,
                    other => return Err(format!("<{other}> inside <testcase>")),
                }
                attributes_are(problem, &["message", "type"])?;
                if problem.children().any(|c| c.is_element()) {
                    return Err("a failure holds elements; the schema wants text".into());
                }
            }
        }
        if uint(suite, "tests")? != n - 3
            || uint(suite, "failures")? != f
            || uint(suite, "errors")? != e
        {
            return Err("a suite's tests/failures/errors do not count its cases".into());
        }
        tests += n - 3;
        failures += f;
        errors += e;
    }
    Ok((tests, failures, errors))
}
