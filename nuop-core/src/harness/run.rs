//! Running cases: finding them, loading each script once per executor, running every
//! case's call against its own cluster, and replaying what the runtime does around the
//! call (finalizer, write-back, Events, requeue).
//!
//! Does I/O: reads case files and scripts, runs scripts, rewrites case files with
//! `--update`. What the runtime would do with an answer comes from the same pure
//! functions the reconcile pipeline uses ([`crate::reconcile::write::plan_write`],
//! [`crate::reconcile::finalizer`], [`crate::protocol`]); only the API calls go to the
//! case's cluster instead of the watched object's API.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::case::{Case, CaseError, parse_case};
use super::expect::{Mismatch, check, normalize, updated};
use super::junit::{JunitCase, Problem};
use super::live::{LiveCase, map_back};
use crate::cluster::{Cluster, FakeCluster, KindName, PatchType, Propagation, Request, Target};
use crate::k8s::{Session, SessionParts};
use crate::protocol::{
    Outcome, Phase, ScriptConfig, ScriptOutput, check_identity, classify_changed, classify_output,
};
use crate::reconcile::ReconcileError;
use crate::reconcile::finalizer::{
    Step, add_finalizer_patch, has_finalizer, next_step, remove_finalizer_patch,
};
use crate::reconcile::write::{check_answer, plan_write};
use crate::script::{CallRequest, ExecutorKind, Script, ScriptRunner, discover};

/// Where a script's cases live, relative to its directory.
pub const CASES_DIR: &str = "tests";

/// How long past its own timeout a call may take to stop before the case fails
/// without waiting for it any longer.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `nuop-standard test` was asked to do.
#[derive(Clone)]
pub struct Options {
    /// The executors every case runs on.
    pub executors: Vec<ExecutorKind>,
    /// Rewrite failing expectations from the actual results.
    pub update: bool,
    /// Cases run at once.
    pub jobs: usize,
    /// Run against this API server instead of the fake cluster (see [`super::live`]).
    pub live: Option<kube::Client>,
}

/// How one case ended on one executor.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every expectation held.
    Passed,
    /// Some did not.
    Failed(Vec<Mismatch>),
    /// The case could not run: a malformed file, a script that does not load.
    Error(String),
}

/// One case on one executor.
#[derive(Debug, Clone)]
pub struct CaseRun {
    /// The script's directory name.
    pub script: String,
    /// The case file.
    pub file: PathBuf,
    /// The case's name.
    pub name: String,
    /// The executor; none for a case file that did not parse.
    pub executor: Option<ExecutorKind>,
    /// Whether it ran against a real API server (`--live`).
    pub live: bool,
    /// How long it ran.
    pub time: Duration,
    /// How it ended.
    pub verdict: Verdict,
    /// What the call did (see [`super::expect`]), when it ran.
    pub actual: Option<Value>,
    /// Whether `--update` rewrote the case's expectations so that they now hold.
    pub updated: bool,
}

impl CaseRun {
    /// Whether it counts as passed: every expectation held, or `--update` fixed them.
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed || self.updated
    }

    /// `file: name [executor]`.
    pub fn title(&self) -> String {
        let live = if self.live { " live" } else { "" };
        match self.executor {
            Some(e) => format!("{}: {} [{e}{live}]", self.file.display(), self.name),
            None => format!("{}: {}", self.file.display(), self.name),
        }
    }

    /// The report's lines for this run: `ok …`, or `FAIL …` / `ERROR …` followed by one
    /// indented line per difference.
    pub fn report(&self) -> Vec<String> {
        let mut lines = Vec::new();
        match &self.verdict {
            Verdict::Passed => lines.push(format!("ok    {}", self.title())),
            Verdict::Failed(mismatches) => {
                let tag = if self.updated { "UPDATED" } else { "FAIL " };
                lines.push(format!("{tag} {}", self.title()));
                lines.extend(mismatches.iter().map(|m| format!("      {m}")));
                // What the runtime would report (a timeout, a failed script), for context.
                if let Some(error) = self.actual.as_ref().and_then(|a| a["error"].as_str())
                    && !mismatches.iter().any(|m| m.pointer == "/error")
                {
                    let first = error.lines().next().unwrap_or_default();
                    lines.push(format!("      error: {first}"));
                }
            }
            Verdict::Error(message) => {
                lines.push(format!("ERROR {}", self.title()));
                lines.extend(message.lines().map(|l| format!("      {l}")));
            }
        }
        lines
    }

    /// The run as the JUnit report shows it.
    pub fn junit(&self) -> JunitCase {
        let stem = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let live = if self.live { " live" } else { "" };
        let name = match self.executor {
            Some(e) => format!("{} [{e}{live}]", self.name),
            None => self.name.clone(),
        };
        let problem = match &self.verdict {
            _ if self.passed() => None,
            Verdict::Passed => None,
            Verdict::Failed(m) => Some(Problem {
                error: false,
                message: format!("{} expectation(s) did not hold", m.len()),
                details: m
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            }),
            Verdict::Error(e) => Some(Problem {
                error: true,
                message: e.lines().next().unwrap_or_default().to_string(),
                details: e.clone(),
            }),
        };
        JunitCase {
            suite: self.script.clone(),
            classname: format!("{}.{stem}", self.script),
            name,
            time: self.time,
            problem,
        }
    }
}

/// The scripts under `dirs`, each with its case files: a directory holding `mod.nu`
/// is one script, any other is a scripts root (`*/mod.nu`). Scripts without a
/// `tests/` directory are left out.
///
/// # Errors
/// When a directory cannot be read.
pub fn find_cases(dirs: &[PathBuf]) -> std::io::Result<Vec<(Script, Vec<PathBuf>)>> {
    let mut scripts = Vec::new();
    for dir in dirs {
        if dir.join(crate::script::ENTRY_POINT).is_file() {
            scripts.push(Script::at(dir));
        } else {
            scripts.extend(discover(dir)?.scripts);
        }
    }
    let mut found = Vec::new();
    for script in scripts {
        let tests = script.dir.join(CASES_DIR);
        let Ok(entries) = std::fs::read_dir(&tests) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        if !files.is_empty() {
            found.push((script, files));
        }
    }
    Ok(found)
}

/// A path as the report shows it: relative to the working directory when under it.
fn shown(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
}

/// Runs every case under `dirs` on every executor of `options`, writing one report line
/// per run (and the differences of each failure) to `out`, then `N passed, N failed`.
/// Returns the runs.
///
/// # Errors
/// When a directory cannot be read or the report cannot be written.
pub async fn run(
    dirs: &[PathBuf],
    options: &Options,
    out: &mut impl Write,
) -> std::io::Result<Vec<CaseRun>> {
    let mut runs: Vec<CaseRun> = Vec::new();
    let mut jobs = Vec::new();
    let found = find_cases(dirs)?;
    for (script, files) in &found {
        let mut cases = Vec::new();
        for file in files {
            let shown_file = shown(file);
            let text = std::fs::read_to_string(file);
            let parsed = text
                .map_err(|e| CaseError {
                    file: shown_file.clone(),
                    field: String::new(),
                    message: e.to_string(),
                })
                .and_then(|text| {
                    parse_case(&shown_file, &text, &mut |p: &Path| {
                        std::fs::read_to_string(p).map_err(|e| e.to_string())
                    })
                });
            match parsed {
                Ok(case) => cases.push(Arc::new(case)),
                Err(e) => runs.push(CaseRun {
                    script: script.name.clone(),
                    file: shown_file.clone(),
                    name: shown_file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    executor: None,
                    live: false,
                    time: Duration::ZERO,
                    verdict: Verdict::Error(e.to_string()),
                    actual: None,
                    updated: false,
                }),
            }
        }
        if cases.is_empty() {
            continue;
        }
        for &executor in &options.executors {
            let loaded = Arc::new(load(executor, script).await);
            for case in &cases {
                jobs.push((script.name.clone(), executor, loaded.clone(), case.clone()));
            }
        }
    }
    let parse_errors = runs.len();
    let live = options.live.as_ref();
    let results: Vec<(usize, CaseRun)> = futures::stream::iter(jobs.into_iter().enumerate())
        .map(|(i, (script, executor, loaded, case))| async move {
            let started = Instant::now();
            let (verdict, actual) = match &*loaded {
                Err(e) => (Verdict::Error(e.clone()), None),
                Ok(loaded) => match run_case(&loaded.0, &loaded.1, &case, live).await {
                    Err(e) => (Verdict::Error(e), None),
                    Ok(actual) => {
                        let mismatches = if case.expect.is_empty() {
                            // A case that checks nothing must not pass.
                            vec![Mismatch {
                                pointer: "expect".into(),
                                expected: None,
                                actual: None,
                                note: Some(
                                    "no expectations; `--update` records what happened".into(),
                                ),
                            }]
                        } else {
                            check(&case.expect, &actual)
                        };
                        let verdict = if mismatches.is_empty() {
                            Verdict::Passed
                        } else {
                            Verdict::Failed(mismatches)
                        };
                        (verdict, Some(actual))
                    }
                },
            };
            (
                i,
                CaseRun {
                    script,
                    file: case.file.clone(),
                    name: case.name.clone(),
                    executor: Some(executor),
                    live: live.is_some(),
                    time: started.elapsed(),
                    verdict,
                    actual,
                    updated: false,
                },
            )
        })
        .buffer_unordered(options.jobs.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut results = results;
    results.sort_by_key(|(i, _)| *i);
    runs.extend(results.into_iter().map(|(_, run)| run));
    if options.update {
        update_files(&mut runs[parse_errors..], out)?;
    }
    for run in &runs {
        for line in run.report() {
            writeln!(out, "{line}")?;
        }
    }
    if runs.is_empty() {
        writeln!(
            out,
            "no test cases: expected <script>/{CASES_DIR}/*.yaml under {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    let passed = runs.iter().filter(|r| r.passed()).count();
    writeln!(out, "{passed} passed, {} failed", runs.len() - passed)?;
    Ok(runs)
}

/// `--update`: rewrites the `expect` block of every case file with a failed run, from
/// the first executor's actual result, and marks the runs whose every executor now
/// passes the new expectations.
fn update_files(runs: &mut [CaseRun], out: &mut impl Write) -> std::io::Result<()> {
    let mut files: Vec<PathBuf> = runs
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::Failed(_)))
        .map(|r| r.file.clone())
        .collect();
    files.dedup();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let Ok(case) = parse_case(&file, &text, &mut |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| e.to_string())
        }) else {
            continue;
        };
        let of_file: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].file == file).collect();
        let Some(first) = of_file.iter().find_map(|&i| runs[i].actual.as_ref()) else {
            continue;
        };
        let new_expect = updated(&case.expect, first);
        let holds = |run: &CaseRun| {
            run.actual
                .as_ref()
                .is_some_and(|a| check(&new_expect, a).is_empty())
        };
        if !of_file.iter().all(|&i| holds(&runs[i])) {
            writeln!(
                out,
                "not updated: {}: the executors' results differ; no expectations fit both",
                file.display()
            )?;
            continue;
        }
        std::fs::write(&file, super::replace_expect(&text, &new_expect))?;
        writeln!(out, "updated {}", file.display())?;
        for &i in &of_file {
            if matches!(runs[i].verdict, Verdict::Failed(_)) {
                runs[i].updated = true;
            }
        }
    }
    Ok(())
}

/// The JUnit XML report of `runs` (see [`super::junit`]), stamped with the current
/// time and this host's name.
pub fn junit_report(runs: &[CaseRun]) -> String {
    let cases: Vec<JunitCase> = runs.iter().map(CaseRun::junit).collect();
    let now = crate::cluster::fake::timestamp();
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    super::junit::render(&cases, now.trim_end_matches('Z'), &hostname)
}

type Loaded = Result<(ScriptRunner, ScriptConfig), String>;

/// Loads a script for one executor and asks its `config`.
async fn load(kind: ExecutorKind, script: &Script) -> Loaded {
    let runner = ScriptRunner::load_off_runtime(
        kind,
        script,
        crate::script::process::nu_binary(),
        crate::script::embedded::DEFAULT_LOAD_TIMEOUT,
    )
    .await
    .map_err(|e| format!("cannot load {}: {e}", script.entry.display()))?;
    let config = runner
        .config(crate::protocol::DEFAULT_TIMEOUT)
        .await
        .map_err(|e| format!("{}: config: {e}", script.dir.display()))?;
    Ok((runner, config))
}

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

/// The object's target, as the runtime addresses it.
fn target_of(object: &Value) -> Target {
    Target {
        kind: KindName {
            kind: text(object, "/kind").unwrap_or_default().to_string(),
            api_version: text(object, "/apiVersion").map(str::to_string),
        },
        namespace: text(object, "/metadata/namespace").map(str::to_string),
        name: text(object, "/metadata/name")
            .unwrap_or_default()
            .to_string(),
    }
}

/// A `k8s` command as cases name it: `{verb, kind, apiVersion, namespace, name, ...}`.
pub fn command_view(request: &Request) -> Value {
    let mut m = Map::new();
    m.insert("verb".into(), json!(request.verb()));
    let kind = |m: &mut Map<String, Value>, k: &KindName| {
        m.insert("kind".into(), json!(k.kind));
        if let Some(v) = &k.api_version {
            m.insert("apiVersion".into(), json!(v));
        }
    };
    let target = |m: &mut Map<String, Value>, t: &Target| {
        kind(m, &t.kind);
        if let Some(ns) = &t.namespace {
            m.insert("namespace".into(), json!(ns));
        }
        m.insert("name".into(), json!(t.name));
    };
    let object = |m: &mut Map<String, Value>, o: &Value| {
        for (key, pointer) in [
            ("kind", "/kind"),
            ("apiVersion", "/apiVersion"),
            ("namespace", "/metadata/namespace"),
            ("name", "/metadata/name"),
        ] {
            if let Some(v) = text(o, pointer) {
                m.insert(key.into(), json!(v));
            }
        }
        m.insert("object".into(), normalize(o));
    };
    let flag = |m: &mut Map<String, Value>, on: bool, name: &str| {
        if on {
            m.insert(name.into(), json!(true));
        }
    };
    match request {
        Request::Get { target: t, live } => {
            target(&mut m, t);
            flag(&mut m, *live, "live");
        }
        Request::List {
            kind: k,
            namespace,
            labels,
            fields,
            live,
        } => {
            kind(&mut m, k);
            if let Some(ns) = namespace {
                m.insert("namespace".into(), json!(ns));
            }
            if let Some(l) = labels {
                m.insert("labels".into(), json!(l));
            }
            if let Some(f) = fields {
                m.insert("fields".into(), json!(f));
            }
            flag(&mut m, *live, "live");
        }
        Request::Apply {
            object: o,
            status,
            dry_run,
        } => {
            object(&mut m, o);
            flag(&mut m, *status, "status");
            flag(&mut m, *dry_run, "dryRun");
        }
        Request::Create { object: o, dry_run } => {
            object(&mut m, o);
            flag(&mut m, *dry_run, "dryRun");
        }
        Request::Patch {
            target: t,
            patch_type,
            patch,
            status,
        } => {
            target(&mut m, t);
            let kind = match patch_type {
                PatchType::Merge => "merge",
                PatchType::Json => "json",
            };
            m.insert("type".into(), json!(kind));
            m.insert("patch".into(), patch.clone());
            flag(&mut m, *status, "status");
        }
        Request::Delete {
            target: t,
            propagation,
        } => {
            target(&mut m, t);
            match propagation {
                Propagation::Background => {}
                Propagation::Foreground => {
                    m.insert("propagation".into(), json!("foreground"));
                }
                Propagation::Orphan => {
                    m.insert("propagation".into(), json!("orphan"));
                }
            }
        }
    }
    Value::Object(m)
}

fn event(kind: &str, reason: &str, action: &str, message: &str) -> Value {
    json!({"type": kind, "reason": reason, "action": action, "message": message})
}

fn seconds(d: Duration) -> Value {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        json!(d.as_secs())
    } else {
        json!(secs)
    }
}

/// The end of a stream, as the runtime puts it into errors and Events.
fn tail(text: &str) -> String {
    let trimmed = text.trim();
    let mut start = trimmed.len().saturating_sub(800);
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    trimmed[start..].to_string()
}

/// What the call ended with, before the cluster is read back.
struct Ended {
    exit: Option<i32>,
    outcome: &'static str,
    output: Value,
    requeue: Value,
}

/// Runs one case on a prepared script: the case's objects in a fresh [`FakeCluster`]
/// (or, with `live`, in fresh namespaces of that API server, see [`super::live`]),
/// the runtime's step for the input, the call, and what the runtime does with its
/// answer. Returns the actual result (see [`super::expect`]).
///
/// # Errors
/// When the case's objects cannot be put into the cluster (a case error, not a failure
/// of the script).
pub async fn run_case(
    runner: &ScriptRunner,
    config: &ScriptConfig,
    case: &Case,
    live: Option<&kube::Client>,
) -> Result<Value, String> {
    // Webhook phases write nothing and their object is not stored yet (it is being
    // admitted): the case's `cluster` goes into a fake, or, with --live, reads go to the
    // real API server as they are (the case's objects are not created there).
    if let Some(phase) = case.phase.filter(|p| p.is_webhook()) {
        let (cluster, fake): (Arc<dyn Cluster>, _) = match live {
            None => {
                let fake = Arc::new(
                    FakeCluster::new(case.cluster.clone()).map_err(|e| format!("cluster: {e}"))?,
                );
                (fake.clone(), Some(fake))
            }
            Some(client) => (
                Arc::new(crate::cluster::LiveCluster::new(client.clone(), Vec::new())),
                None,
            ),
        };
        return webhook_case(
            runner,
            config,
            case,
            phase,
            cluster,
            case.input.clone(),
            fake,
            None,
        )
        .await;
    }
    let (cluster, primary, fake, live): (Arc<dyn Cluster>, Value, _, _) = match live {
        None => {
            // The input is one of the cluster's objects from the start, so that a uid
            // the case gives it (owner references name it) is kept.
            let mut objects = case.cluster.clone();
            if !objects
                .iter()
                .any(|o| target_of(o) == target_of(&case.input))
            {
                objects.push(case.input.clone());
            }
            let fake = Arc::new(FakeCluster::new(objects).map_err(|e| format!("cluster: {e}"))?);
            let primary = crate::devtools::primary_in(&fake, &case.input)
                .await
                .map_err(|e| format!("input: {e}"))?;
            (fake.clone(), primary, Some(fake), None)
        }
        Some(client) => {
            let (live, primary) = LiveCase::create(client.clone(), case).await?;
            (live.cluster.clone(), primary, None, Some(live))
        }
    };
    let controller = config.name.clone();
    let field_manager = format!("nuop-{controller}");
    let finalizer = config.finalizer.as_deref();
    let target = target_of(&primary);
    let mut events = Vec::new();
    let mut logs: Vec<String> = Vec::new();
    let mut error: Option<ReconcileError> = None;
    let mut write_error: Option<String> = None;
    let mut session = None;

    let deleting = primary
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null());
    let step = match case.phase {
        Some(Phase::Finalize) => Step::Finalize,
        Some(_) => match finalizer {
            Some(f) if !deleting && !has_finalizer(&primary, f) => Step::AddFinalizer,
            _ => Step::Reconcile,
        },
        None => next_step(&primary, finalizer),
    };
    let mut object = primary.clone();
    let ended = 'call: {
        if step == Step::Ignore {
            break 'call Ended {
                exit: None,
                outcome: "ignored",
                output: Value::Null,
                requeue: json!("never"),
            };
        }
        if let (Step::AddFinalizer, Some(f)) = (&step, finalizer) {
            let add = Request::Patch {
                target: target.clone(),
                patch_type: PatchType::Json,
                patch: absent_is_null(add_finalizer_patch(&object, f), &object),
                status: false,
            };
            match cluster.execute(&field_manager, &add).await {
                Ok(updated) => {
                    object = updated;
                    events.push(event(
                        "Normal",
                        "FinalizerAdded",
                        "AddFinalizer",
                        &format!("added finalizer {f}"),
                    ));
                }
                Err(e) => {
                    write_error = Some(format!("failed to add finalizer: {e}"));
                    break 'call Ended {
                        exit: None,
                        outcome: "failed",
                        output: Value::Null,
                        requeue: json!("backoff"),
                    };
                }
            }
        }
        let phase = if step == Step::Finalize {
            Phase::Finalize
        } else {
            Phase::Reconcile
        };
        let timeout = case.timeout.unwrap_or(config.timeout);
        let s = Session::new(SessionParts {
            controller: controller.clone(),
            primary: object.clone(),
            owns: config.owns.clone(),
            cluster: cluster.clone(),
            runtime: tokio::runtime::Handle::current(),
            deadline: Instant::now() + timeout,
        });
        session = Some(s.clone());
        let call = runner.call(CallRequest {
            phase,
            input: Some(object.to_string()),
            controller: controller.clone(),
            timeout,
            k8s: Some(s.clone()),
        });
        let result = match tokio::time::timeout(timeout + STOP_GRACE, call).await {
            Ok(r) => r,
            Err(_) => {
                s.cancel();
                write_error = Some(format!(
                    "the {phase} call did not stop within {STOP_GRACE:?} after its timeout of {timeout:?}"
                ));
                break 'call Ended {
                    exit: None,
                    outcome: "failed",
                    output: Value::Null,
                    requeue: json!("backoff"),
                };
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(stderr) = e.stderr() {
                    logs.extend(log_lines(&stderr.text));
                }
                error = Some(ReconcileError::Exec(e));
                break 'call Ended {
                    exit: None,
                    outcome: "failed",
                    output: Value::Null,
                    requeue: Value::Null,
                };
            }
        };
        logs.extend(log_lines(&result.stderr.text));
        let printed = classify_output(&result.stdout.text, result.returned.as_ref());
        if let Ok(ScriptOutput::Logs(text)) = &printed {
            logs.extend(log_lines(text));
        }
        let outcome = Outcome::from_exit_code(result.code);
        let mut ended = Ended {
            exit: Some(result.code),
            outcome: match outcome {
                Outcome::NoChange => "no-change",
                Outcome::Changed => "changed",
                Outcome::Failed(_) => "failed",
            },
            output: Value::Null,
            requeue: Value::Null,
        };
        if let Outcome::Failed(code) = outcome {
            let stdout = match printed {
                Ok(ScriptOutput::Object(_)) => String::new(),
                _ => tail(&result.stdout.text),
            };
            error = Some(ReconcileError::ScriptFailed {
                code,
                stderr: tail(&result.stderr.text),
                stdout,
            });
            break 'call ended;
        }
        if phase == Phase::Finalize {
            ended.requeue = json!("never");
            if let Some(f) = finalizer
                && let Some(patch) = remove_finalizer_patch(&object, f)
            {
                let remove = Request::Patch {
                    target: target.clone(),
                    patch_type: PatchType::Json,
                    patch,
                    status: false,
                };
                match cluster.execute(&field_manager, &remove).await {
                    Ok(_) => events.push(event(
                        "Normal",
                        "Finalized",
                        "Finalize",
                        &format!("finalize succeeded; removed finalizer {f}"),
                    )),
                    Err(e) if e.code == crate::k8s::ErrorCode::NotFound => {}
                    Err(e) => {
                        write_error = Some(format!("failed to remove finalizer: {e}"));
                        ended.requeue = json!("backoff");
                    }
                }
            }
            break 'call ended;
        }
        if outcome == Outcome::NoChange {
            ended.requeue = seconds(config.requeue_after_noop);
            break 'call ended;
        }
        ended.requeue = seconds(config.requeue_after_change);
        let desired = match classify_changed(&result.stdout, result.returned.as_ref()) {
            Ok(ScriptOutput::Object(desired)) => desired,
            Ok(_) => break 'call ended,
            Err(e) => {
                error = Some(ReconcileError::InvalidOutput(e));
                break 'call ended;
            }
        };
        ended.output = normalize(&desired);
        if let Err(e) = check_identity(&object, &desired) {
            error = Some(ReconcileError::Identity(e));
            break 'call ended;
        }
        if let Err(e) = check_answer(&object, &desired, finalizer) {
            error = Some(ReconcileError::Answer(e));
            break 'call ended;
        }
        let plan = plan_write(&object, &desired, case.status_subresource);
        let mut resource_version = None;
        if let Some(patch) = plan.main {
            let write = Request::Patch {
                target: target.clone(),
                patch_type: PatchType::Merge,
                patch,
                status: false,
            };
            match cluster.execute(&field_manager, &write).await {
                Ok(written) => {
                    resource_version =
                        text(&written, "/metadata/resourceVersion").map(str::to_string);
                    events.push(event(
                        "Normal",
                        "Updated",
                        "Update",
                        "script changes written",
                    ));
                }
                Err(e) => {
                    write_error = Some(format!("failed to patch object: {e}"));
                    ended.requeue = json!("backoff");
                    break 'call ended;
                }
            }
        }
        if let Some(mut patch) = plan.status {
            if let Some(rv) = resource_version {
                patch["metadata"]["resourceVersion"] = Value::String(rv);
            }
            let write = Request::Patch {
                target: target.clone(),
                patch_type: PatchType::Merge,
                patch,
                status: true,
            };
            match cluster.execute(&field_manager, &write).await {
                Ok(_) => events.push(event(
                    "Normal",
                    "StatusUpdated",
                    "UpdateStatus",
                    "script status written",
                )),
                Err(e) => {
                    write_error = Some(format!("failed to patch status: {e}"));
                    ended.requeue = json!("backoff");
                }
            }
        }
        ended
    };

    let mut ended = ended;
    let error_text = match (&error, &write_error) {
        (Some(e), _) => {
            events.push(event("Warning", e.category(), "Reconcile", &e.to_string()));
            ended.requeue = json!(if e.is_permanent() { "never" } else { "backoff" });
            Some(e.to_string())
        }
        (None, Some(message)) => {
            events.push(event("Warning", "ApiError", "Reconcile", message));
            Some(message.clone())
        }
        (None, None) => None,
    };
    let after = cluster
        .execute(
            &field_manager,
            &Request::Get {
                target: target.clone(),
                live: true,
            },
        )
        .await
        .map(|o| normalize(&o))
        .unwrap_or(Value::Null);
    let issued = session.map(|s| s.issued()).unwrap_or_default();
    let commands: Vec<Value> = issued.iter().map(command_view).collect();
    let objects = match (&fake, &live) {
        (Some(fake), _) => fake.objects(),
        (None, Some(live)) => live.objects(&kinds_of(case, &issued)).await,
        (None, None) => Vec::new(),
    };
    let actual = json!({
        "exit": ended.exit,
        "outcome": ended.outcome,
        "error": error_text,
        "output": ended.output,
        "status": after.get("status").cloned().unwrap_or(Value::Null),
        "object": after,
        "commands": commands,
        "cluster": objects.iter().map(normalize).collect::<Vec<_>>(),
        "events": events,
        "requeue": ended.requeue,
        "logs": logs,
    });
    Ok(match live {
        None => actual,
        Some(live) => {
            live.delete_with(&objects).await;
            map_back(&actual, &live.back)
        }
    })
}

/// Runs a webhook case (`phase: validate | mutate | convert`) as the webhook server
/// would: the request built from `input` and `request`, the script's `k8s` commands
/// read-only, the answer decided by [`crate::webhook::review::decide`] (or the
/// conversion checks). Nothing is written, so the cluster stays as the case put it.
#[allow(clippy::too_many_arguments)]
async fn webhook_case(
    runner: &ScriptRunner,
    config: &ScriptConfig,
    case: &Case,
    phase: Phase,
    cluster: Arc<dyn Cluster>,
    primary: Value,
    fake: Option<Arc<FakeCluster>>,
    live: Option<LiveCase>,
) -> Result<Value, String> {
    use crate::webhook::review::{call_admission, call_conversion, decide};
    let recording = Arc::new(crate::cluster::Recording::new(cluster));
    let mut served_config = config.clone();
    if let Some(timeout) = case.timeout {
        served_config.timeout = timeout;
    }
    let served = crate::webhook::Served {
        config: served_config,
        runner: runner.clone(),
        cluster: Some(recording.clone() as Arc<dyn Cluster>),
    };
    let mut logs = Vec::new();
    let (exit, outcome, error, allowed, message, warnings, output) = if phase == Phase::Convert {
        let desired = case
            .request
            .get("desiredAPIVersion")
            .and_then(Value::as_str)
            .ok_or("request.desiredAPIVersion: a convert case names the version to convert to")?;
        match call_conversion(&served, desired, std::slice::from_ref(&primary)).await {
            Ok(objects) => (
                Value::Null,
                "allowed",
                Value::Null,
                true,
                Value::Null,
                Vec::new(),
                Value::Array(objects.iter().map(normalize).collect()),
            ),
            Err(reason) => (
                Value::Null,
                "error",
                Value::String(reason),
                false,
                Value::Null,
                Vec::new(),
                Value::Null,
            ),
        }
    } else {
        let hook = match phase {
            Phase::Validate => config.webhooks.validate.as_ref(),
            _ => config.webhooks.mutate.as_ref(),
        }
        .ok_or_else(|| format!("the script's config declares no `webhooks.{phase}`"))?;
        let mut request: Map<String, Value> = case.request.clone();
        let operation = if request.contains_key("oldObject") {
            "UPDATE"
        } else {
            "CREATE"
        };
        request
            .entry("operation")
            .or_insert_with(|| json!(operation));
        let (group, version) = crate::cluster::split_api_version(
            primary
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("v1"),
        );
        request.insert("uid".into(), json!("nuop-test"));
        request.insert(
            "kind".into(),
            json!({"group": group, "version": version, "kind": primary["kind"]}),
        );
        request.insert("name".into(), primary["metadata"]["name"].clone());
        if let Some(ns) = primary.pointer("/metadata/namespace") {
            request.insert("namespace".into(), ns.clone());
        }
        request.insert("object".into(), primary.clone());
        let input = crate::protocol::admission::admission_input(&Value::Object(request));
        let called = call_admission(&served, phase, hook, &input).await;
        match &called {
            Ok(result) => logs.extend(log_lines(&result.stderr.text)),
            Err(e) => {
                if let Some(stderr) = e.stderr() {
                    logs.extend(log_lines(&stderr.text));
                }
            }
        }
        let decision = decide(phase, hook.failure_policy, &config.name, &input, &called);
        let output = match &decision.patch {
            Some(patch) => {
                let mut patched = primary.clone();
                json_patch::patch(&mut patched, patch)
                    .map_err(|e| format!("the computed patch does not apply: {e}"))?;
                normalize(&patched)
            }
            None => Value::Null,
        };
        (
            called.as_ref().map_or(Value::Null, |r| json!(r.code)),
            decision.answer.label(),
            decision.error.map_or(Value::Null, Value::String),
            decision.allowed,
            decision.message.map_or(Value::Null, Value::String),
            decision.warnings,
            output,
        )
    };
    let issued = recording.requests();
    let commands: Vec<Value> = issued.iter().map(command_view).collect();
    let objects = match (&fake, &live) {
        (Some(fake), _) => fake.objects(),
        (None, Some(live)) => live.objects(&kinds_of(case, &issued)).await,
        (None, None) => Vec::new(),
    };
    let object = normalize(&primary);
    let actual = json!({
        "exit": exit,
        "outcome": outcome,
        "error": error,
        "allowed": allowed,
        "message": message,
        "warnings": warnings,
        "output": output,
        "status": object.get("status").cloned().unwrap_or(Value::Null),
        "object": object,
        "commands": commands,
        "cluster": objects.iter().map(normalize).collect::<Vec<_>>(),
        "events": [],
        "requeue": Value::Null,
        "logs": logs,
    });
    Ok(match live {
        None => actual,
        Some(live) => {
            live.delete_with(&objects).await;
            map_back(&actual, &live.back)
        }
    })
}

/// The kinds a live case's cluster state is read back for: the input's, the case's
/// objects', those its expectations name and those its commands touched.
fn kinds_of(case: &Case, issued: &[Request]) -> Vec<KindName> {
    let of = |o: &Value| KindName {
        kind: text(o, "/kind").unwrap_or_default().to_string(),
        api_version: text(o, "/apiVersion").map(str::to_string),
    };
    let mut kinds: Vec<KindName> = std::iter::once(&case.input)
        .chain(&case.cluster)
        .map(of)
        .collect();
    for key in ["cluster", "absent"] {
        if let Some(Value::Array(entries)) = case.expect.get(key) {
            kinds.extend(entries.iter().filter(|e| e.get("kind").is_some()).map(of));
        }
    }
    for request in issued {
        match request {
            Request::Get { target, .. }
            | Request::Patch { target, .. }
            | Request::Delete { target, .. } => kinds.push(target.kind.clone()),
            Request::List { kind, .. } => kinds.push(kind.clone()),
            Request::Apply { object, .. } | Request::Create { object, .. } => {
                kinds.push(of(object));
            }
        }
    }
    kinds.retain(|k| !k.kind.is_empty());
    kinds.dedup();
    kinds
}

/// A JSON Patch without its `test` ops of `null` at paths `object` lacks: the API
/// server's JSON Patch treats a missing path as null there (the runtime's guarded
/// finalizer patch relies on it), the `json-patch` crate behind the fake cluster does
/// not. Both then agree.
fn absent_is_null(patch: Value, object: &Value) -> Value {
    match patch {
        Value::Array(ops) => Value::Array(
            ops.into_iter()
                .filter(|op| {
                    !(op["op"] == "test"
                        && op["value"].is_null()
                        && op["path"]
                            .as_str()
                            .is_some_and(|p| object.pointer(p).is_none()))
                })
                .collect(),
        ),
        other => other,
    }
}

fn log_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_as_cases_name_them() {
        let target = Target {
            kind: KindName {
                kind: "configmaps".into(),
                api_version: None,
            },
            namespace: Some("n".into()),
            name: "a".into(),
        };
        assert_eq!(
            command_view(&Request::Get {
                target: target.clone(),
                live: false
            }),
            json!({"verb": "get", "kind": "configmaps", "namespace": "n", "name": "a"})
        );
        assert_eq!(
            command_view(&Request::List {
                kind: target.kind.clone(),
                namespace: None,
                labels: Some("a=b".into()),
                fields: None,
                live: true
            }),
            json!({"verb": "list", "kind": "configmaps", "labels": "a=b", "live": true})
        );
        assert_eq!(
            command_view(&Request::Apply {
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "a", "namespace": "n", "uid": "x"}}),
                status: false,
                dry_run: true
            }),
            json!({"verb": "apply", "kind": "ConfigMap", "apiVersion": "v1", "namespace": "n",
                   "name": "a", "dryRun": true,
                   "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}}})
        );
        assert_eq!(
            command_view(&Request::Delete {
                target,
                propagation: Propagation::Orphan
            }),
            json!({"verb": "delete", "kind": "configmaps", "namespace": "n", "name": "a",
                   "propagation": "orphan"})
        );
    }

    #[test]
    fn failures_list_each_difference_under_their_title() {
        let run = CaseRun {
            script: "g".into(),
            file: PathBuf::from("g/tests/a.yaml"),
            name: "says hello".into(),
            executor: Some(ExecutorKind::Process),
            live: false,
            time: Duration::ZERO,
            verdict: Verdict::Failed(vec![Mismatch {
                pointer: "/exit".into(),
                expected: Some(json!(0)),
                actual: Some(json!(2)),
                note: None,
            }]),
            actual: None,
            updated: false,
        };
        assert_eq!(
            run.report(),
            vec![
                "FAIL  g/tests/a.yaml: says hello [process]",
                "      /exit: expected 0, got 2"
            ]
        );
        let junit = run.junit();
        assert_eq!(junit.classname, "g.a");
        assert_eq!(junit.name, "says hello [process]");
        assert!(junit.problem.is_some_and(|p| !p.error));
    }
}
