//! The script author's tools behind `nuop-standard check` and `nuop-standard exec`:
//! work on scripts without a cluster.
//!
//! Does I/O (reads scripts, runs them, writes reports to the given writers); the report
//! formatting is in small pure functions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{FakeCluster, KindName, PatchType, Propagation, Request};
use crate::k8s::{Session, SessionParts};
use crate::protocol::{
    Outcome, Phase, ScriptConfig, ScriptOutput, classify_output, parse_document,
};
use crate::script::embedded::lint;
use crate::script::{CallRequest, ExecutorKind, Script, ScriptRunner, discover};

/// One line describing a controller, as `check` prints it.
pub fn describe(config: &ScriptConfig) -> String {
    let gvk = if config.group.is_empty() {
        format!("{}/{}", config.version, config.kind)
    } else {
        format!("{}/{}/{}", config.group, config.version, config.kind)
    };
    let mut line = format!("{}\t{gvk}", config.name);
    if let Some(l) = config.label_selector_string() {
        line.push_str(&format!("\tlabels={l}"));
    }
    if let Some(f) = config.field_selector_string() {
        line.push_str(&format!("\tfields={f}"));
    }
    if !config.namespaces.is_empty() {
        line.push_str(&format!("\tnamespaces={}", config.namespaces.join(",")));
    }
    if let Some(f) = &config.finalizer {
        line.push_str(&format!("\tfinalizer={f}"));
    }
    let hooks: Vec<&str> = [
        (config.webhooks.validate.is_some(), "validate"),
        (config.webhooks.mutate.is_some(), "mutate"),
        (config.conversion.is_some(), "convert"),
    ]
    .into_iter()
    .filter_map(|(declared, name)| declared.then_some(name))
    .collect();
    if !hooks.is_empty() {
        line.push_str(&format!("\twebhooks={}", hooks.join(",")));
    }
    line
}

/// Loads every `<root>/*/mod.nu`, runs `config`, and reports one line per controller
/// and one error per broken script, plus the static findings of
/// [`crate::script::embedded::lint`]: parse errors with file:line:column, `^kubectl`,
/// deprecated commands, `k8s` commands on kinds the config does not declare, and phases
/// that no config reaches. With `json`, every finding is one line on `out` in the shape
/// of `nu --ide-check` (`{"type":"diagnostic","severity","message","span":{start,end}}`,
/// plus `file`, `line` and `column`), and nothing else is printed there. Returns how
/// many scripts are broken.
///
/// # Errors
/// When `root` cannot be read or a report cannot be written.
pub async fn check(
    root: &Path,
    kind: ExecutorKind,
    json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<usize> {
    let found = discover(root)?;
    for skipped in &found.skipped {
        writeln!(
            err,
            "warning: skipped {}: {}",
            skipped.dir.display(),
            skipped.reason
        )?;
    }
    let mut broken = 0;
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for script in &found.scripts {
        let source = std::fs::read_to_string(&script.entry).unwrap_or_default();
        let entry = script.entry.display().to_string();
        let analysis = {
            let (entry, source) = (entry.clone(), source.clone());
            tokio::task::spawn_blocking(move || lint::analyze(&entry, &source))
                .await
                .unwrap_or_default()
        };
        if analysis
            .diagnostics
            .iter()
            .any(|d| d.severity == lint::Severity::Error)
        {
            broken += 1;
            for d in &analysis.diagnostics {
                report(d, json, out, err)?;
            }
            continue;
        }
        match load_config(kind, script).await {
            Ok(config) => {
                if let Some(first) = names.insert(config.name.clone(), script.name.clone()) {
                    broken += 1;
                    writeln!(
                        err,
                        "error: {}: controller name `{}` is already used by script {first}",
                        script.dir.display(),
                        config.name
                    )?;
                } else {
                    for warning in crate::root::config_warnings(&config) {
                        writeln!(err, "warning: {}: {warning}", script.dir.display())?;
                    }
                    for d in analysis
                        .diagnostics
                        .iter()
                        .cloned()
                        .chain(config_findings(&config, &analysis, &source, &entry))
                    {
                        report(&d, json, out, err)?;
                    }
                    let unavailable = unavailable_commands(&source);
                    if kind == ExecutorKind::Embedded && !unavailable.is_empty() {
                        broken += 1;
                        for (line, command, family) in unavailable {
                            writeln!(
                                err,
                                "error: {}:{line}: `{command}` is not in nuop's embedded engine ({family}); \
                                 run this script with `--executor process`, or do without it",
                                script.entry.display()
                            )?;
                        }
                    } else if !json {
                        writeln!(out, "{}", describe(&config))?;
                    }
                }
            }
            Err(message) => {
                broken += 1;
                if json {
                    let d = lint::Diagnostic {
                        severity: lint::Severity::Error,
                        message,
                        file: entry.clone(),
                        line: 1,
                        column: 1,
                        start: 0,
                        end: 0,
                    };
                    report(&d, json, out, err)?;
                } else {
                    writeln!(err, "error: {}: {message}", script.dir.display())?;
                }
            }
        }
    }
    if found.scripts.is_empty() {
        writeln!(err, "warning: no */mod.nu under {}", root.display())?;
    }
    Ok(broken)
}

/// Writes one finding: `warning: file:line:column: message` on `err`, or its JSON line
/// on `out`.
fn report(
    d: &lint::Diagnostic,
    json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<()> {
    if json {
        writeln!(out, "{}", diagnostic_json(d))
    } else {
        let level = match d.severity {
            lint::Severity::Error => "error",
            lint::Severity::Warning => "warning",
        };
        writeln!(
            err,
            "{level}: {}:{}:{}: {}",
            d.file, d.line, d.column, d.message
        )
    }
}

/// A finding as `nu --ide-check` prints one, with its file, line and column added.
pub fn diagnostic_json(d: &lint::Diagnostic) -> String {
    serde_json::json!({
        "type": "diagnostic",
        "severity": d.severity.as_str(),
        "message": d.message,
        "span": {"start": d.start, "end": d.end},
        "file": d.file,
        "line": d.line,
        "column": d.column,
    })
    .to_string()
}

/// The findings that need the config: `k8s` commands on kinds it does not declare (a
/// read of an undeclared kind goes to the API server every time), and phases nothing
/// calls (`main finalize` without a finalizer, `main map` without a `map: script`
/// watch).
pub fn config_findings(
    config: &ScriptConfig,
    analysis: &lint::Analysis,
    source: &str,
    entry: &str,
) -> Vec<lint::Diagnostic> {
    let mut found = Vec::new();
    let declared: Vec<&str> = std::iter::once(config.kind.as_str())
        .chain(
            config
                .owns
                .iter()
                .chain(&config.watches)
                .chain(&config.reads)
                .map(|r| r.kind.as_str()),
        )
        .collect();
    for k in &analysis.kinds {
        if !declared.iter().any(|d| lint::names_kind(&k.kind, d)) {
            let mut d = k.at.clone();
            d.message = format!(
                "`k8s {} {}`: the config declares no such kind under owns, watches or reads, \
                 so {} goes to the API server on every call",
                k.verb,
                k.kind,
                if matches!(k.verb.as_str(), "get" | "list") {
                    "the read is not cached and"
                } else {
                    "the write is not watched and"
                }
            );
            found.push(d);
        }
    }
    let line_of = |phase: Phase| {
        source
            .lines()
            .position(|l| crate::script::defines_phase(l, phase))
            .map_or(1, |i| i + 1)
    };
    let at = |line: usize, message: String| lint::Diagnostic {
        severity: lint::Severity::Warning,
        message,
        file: entry.to_string(),
        line,
        column: 1,
        start: source.lines().take(line - 1).map(|l| l.len() + 1).sum(),
        end: source
            .lines()
            .take(line)
            .map(|l| l.len() + 1)
            .sum::<usize>()
            .saturating_sub(1),
    };
    if config.finalizer.is_none() && crate::script::defines_phase(source, Phase::Finalize) {
        found.push(at(
            line_of(Phase::Finalize),
            "`main finalize` is never called: the config declares no `finalizer`".into(),
        ));
    }
    let maps_by_script = config
        .watches
        .iter()
        .any(|w| w.map == crate::protocol::Mapper::Script);
    if !maps_by_script && crate::script::defines_phase(source, Phase::Map) {
        found.push(at(
            line_of(Phase::Map),
            "`main map` is never called: no `watches` entry has `map: script`".into(),
        ));
    }
    for (declared, phase, field) in crate::root::declared_webhook_phases(config) {
        if !declared && crate::script::defines_phase(source, phase) {
            found.push(at(
                line_of(phase),
                format!("`main {phase}` is never called: the config declares no `{field}`"),
            ));
        }
    }
    found
}

async fn load_config(kind: ExecutorKind, script: &Script) -> Result<ScriptConfig, String> {
    let runner = ScriptRunner::load_off_runtime(
        kind,
        script,
        crate::script::process::nu_binary(),
        crate::script::embedded::DEFAULT_LOAD_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    let config = runner
        .config(crate::protocol::DEFAULT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(reason) = crate::root::missing_phase(&config, |p| runner.has_phase(p)) {
        return Err(reason);
    }
    Ok(config)
}

/// Command families the embedded engine leaves out on purpose, by the commands that
/// belong to them: SQLite (`stor`, `query db`, `into sqlite`, `schema`), plugins, and
/// the interactive shell's commands. Under `nu` (the process executor) they exist.
const LEFT_OUT: &[(&str, &str)] = &[
    ("stor", "SQLite: nuop is built without it"),
    ("query db", "SQLite: nuop is built without it"),
    ("into sqlite", "SQLite: nuop is built without it"),
    ("schema", "SQLite: nuop is built without it"),
    ("plugin", "plugins are not loaded"),
    ("history", "interactive shell commands"),
    ("commandline", "interactive shell commands"),
    ("keybindings", "interactive shell commands"),
    ("explore", "interactive shell commands"),
    (
        "input",
        "interactive shell commands: a controller has no terminal",
    ),
];

/// The commands of [`LEFT_OUT`] that Nushell source uses, with their 1-based lines:
/// a command word at the start of a line or after `|`, `;`, `(` or `{`. Comments and
/// the contents of strings are not looked at.
pub fn unavailable_commands(source: &str) -> Vec<(usize, &'static str, &'static str)> {
    let mut found = Vec::new();
    for (number, line) in source.lines().enumerate() {
        let code = strip_strings_and_comment(line);
        let starts = std::iter::once(0).chain(
            code.char_indices()
                .filter(|(_, c)| matches!(c, '|' | ';' | '(' | '{'))
                .map(|(i, _)| i + 1),
        );
        for start in starts {
            let rest = code[start..].trim_start();
            for (command, family) in LEFT_OUT {
                let hit = rest.strip_prefix(command).is_some_and(|after| {
                    after.is_empty() || after.starts_with([' ', '\t', ')', '}', '|', ';'])
                });
                if hit
                    && !found
                        .iter()
                        .any(|(n, c, _)| *n == number + 1 && c == command)
                {
                    found.push((number + 1, *command, *family));
                }
            }
        }
    }
    found
}

/// A line with its string literals blanked out and its `#` comment removed.
fn strip_strings_and_comment(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => out.push(' '),
            None if matches!(c, '"' | '\'' | '`') => {
                quote = Some(c);
                out.push(c);
            }
            None if c == '#' => break,
            None => out.push(c),
        }
    }
    out
}

/// One line per request a script issued, as `exec --cluster` lists them:
/// `get configmaps team-a/app`, `list configmaps -A -l a=b`, `apply v1/ConfigMap n/x`.
pub fn describe_request(request: &Request) -> String {
    let at = |namespace: &Option<String>, name: &str| match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    };
    let object = |o: &serde_json::Value| {
        let t = |p: &str| {
            o.pointer(p)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?")
        };
        let ns = o
            .pointer("/metadata/namespace")
            .and_then(serde_json::Value::as_str);
        let name = o
            .pointer("/metadata/name")
            .or_else(|| o.pointer("/metadata/generateName"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("?");
        format!(
            "{}/{} {}",
            t("/apiVersion"),
            t("/kind"),
            at(&ns.map(str::to_string), name)
        )
    };
    let kind = |k: &KindName| match &k.api_version {
        Some(v) => format!("{} --api-version {v}", k.kind),
        None => k.kind.clone(),
    };
    let flag = |on: bool, name: &str| {
        if on {
            format!(" --{name}")
        } else {
            String::new()
        }
    };
    match request {
        Request::Get { target, live } => format!(
            "get {} {}{}",
            kind(&target.kind),
            at(&target.namespace, &target.name),
            flag(*live, "live")
        ),
        Request::List {
            kind: k,
            namespace,
            labels,
            fields,
            live,
        } => {
            let mut line = format!("list {}", kind(k));
            match namespace {
                Some(ns) => line.push_str(&format!(" -n {ns}")),
                None => line.push_str(" -A"),
            }
            if let Some(l) = labels {
                line.push_str(&format!(" -l '{l}'"));
            }
            if let Some(f) = fields {
                line.push_str(&format!(" --field-selector '{f}'"));
            }
            line + &flag(*live, "live")
        }
        Request::Apply {
            object: o,
            status,
            dry_run,
        } => format!(
            "apply {}{}{}",
            object(o),
            flag(*status, "status"),
            flag(*dry_run, "dry-run")
        ),
        Request::Patch {
            target,
            patch_type,
            patch,
            status,
        } => format!(
            "patch {} {} --type {} {}{}",
            kind(&target.kind),
            at(&target.namespace, &target.name),
            match patch_type {
                PatchType::Merge => "merge",
                PatchType::Json => "json",
            },
            patch,
            flag(*status, "status")
        ),
        Request::Create { object: o, dry_run } => {
            format!("create {}{}", object(o), flag(*dry_run, "dry-run"))
        }
        Request::Delete {
            target,
            propagation,
        } => format!(
            "delete {} {}{}",
            kind(&target.kind),
            at(&target.namespace, &target.name),
            match propagation {
                Propagation::Background => "",
                Propagation::Foreground => " --propagation foreground",
                Propagation::Orphan => " --propagation orphan",
            }
        ),
    }
}

/// Runs one phase of one script on an object read from `input` (YAML or JSON), writing
/// the answer to `out` and the script's log to `err`. Returns the exit code to end with:
/// the script's own (0 or 2), or 1 for any error including a timeout.
///
/// With `cluster` (the text of a file of objects: a YAML or JSON list, multi-document
/// YAML, or a `kind: List`), the script's `k8s` commands are served by an in-memory
/// [`FakeCluster`] holding those objects and the input object (added when the file does
/// not hold it, so it has a uid for owner references; the script gets the cluster's
/// copy), and the commands it issued are listed on `err` after its log, one per line
/// under `k8s commands issued:`.
///
/// # Errors
/// When the reports cannot be written.
#[allow(clippy::too_many_arguments)]
pub async fn exec(
    dir: &Path,
    phase: Phase,
    kind: ExecutorKind,
    timeout: Option<Duration>,
    input: &str,
    cluster: Option<&str>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> std::io::Result<i32> {
    let script = Script::at(dir);
    if !script.entry.is_file() {
        writeln!(err, "error: {} not found", script.entry.display())?;
        return Ok(1);
    }
    let runner = match ScriptRunner::load(kind, &script) {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(1);
        }
    };
    let fake = match cluster.map(FakeCluster::from_text).transpose() {
        Ok(fake) => fake.map(Arc::new),
        Err(e) => {
            writeln!(err, "error: --cluster: {e}")?;
            return Ok(1);
        }
    };
    // Without `--timeout`, the script's own configured timeout, as in the operator; the
    // config's `owns` when a cluster serves the commands.
    let config = if timeout.is_none() || fake.is_some() {
        runner.config(crate::protocol::DEFAULT_TIMEOUT).await.ok()
    } else {
        None
    };
    let timeout = timeout
        .or_else(|| config.as_ref().map(|c| c.timeout))
        .unwrap_or(crate::protocol::DEFAULT_TIMEOUT);

    if phase == Phase::Config {
        return match runner.config(timeout).await {
            Ok(config) => {
                writeln!(out, "{}", describe(&config))?;
                Ok(0)
            }
            Err(e) => {
                writeln!(err, "error: {e}")?;
                Ok(1)
            }
        };
    }

    let object = match parse_document(input) {
        Ok(v) if v.is_object() => v,
        Ok(_) => {
            writeln!(
                err,
                "error: stdin must hold one object (YAML or JSON mapping)"
            )?;
            return Ok(1);
        }
        Err(e) => {
            writeln!(err, "error: stdin is neither YAML nor JSON: {e}")?;
            return Ok(1);
        }
    };
    let controller = config
        .as_ref()
        .map_or_else(|| script.name.clone(), |c| c.name.clone());
    let (object, session) = match &fake {
        None => (object, None),
        Some(fake) => {
            let object = match primary_in(fake, &object).await {
                Ok(o) => o,
                Err(e) => {
                    writeln!(err, "error: --cluster: the input object: {e}")?;
                    return Ok(1);
                }
            };
            let session = Session::new(SessionParts {
                controller: controller.clone(),
                primary: object.clone(),
                owns: config.as_ref().map(|c| c.owns.clone()).unwrap_or_default(),
                cluster: fake.clone(),
                runtime: tokio::runtime::Handle::current(),
                deadline: std::time::Instant::now() + timeout,
            });
            (object, Some(session))
        }
    };
    let result = runner
        .call(CallRequest {
            phase,
            input: Some(object.to_string()),
            controller,
            timeout,
            k8s: session.clone(),
        })
        .await;
    let issued = session.as_ref().map(|s| s.issued());
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(issued) = &issued {
                write_issued(err, issued)?;
            }
            writeln!(err, "error: {e}")?;
            return Ok(1);
        }
    };
    write!(err, "{}", result.stderr.with_note())?;
    if let Some(issued) = &issued {
        write_issued(err, issued)?;
    }
    let outcome = Outcome::from_exit_code(result.code);
    match classify_output(&result.stdout.text, result.returned.as_ref()) {
        Ok(ScriptOutput::Object(obj)) => {
            if let Err(e) = crate::protocol::check_identity(&object, &obj) {
                writeln!(err, "error: {e}")?;
                return Ok(1);
            }
            let text = serde_json::to_string_pretty(&obj).unwrap_or_default();
            writeln!(out, "{text}")?;
        }
        Ok(ScriptOutput::Logs(text)) => write!(err, "{text}")?,
        Ok(ScriptOutput::Empty) => {}
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(1);
        }
    }
    Ok(match outcome {
        Outcome::NoChange => 0,
        Outcome::Changed => 2,
        Outcome::Failed(code) => {
            writeln!(err, "error: script exited with code {code}")?;
            1
        }
    })
}

/// The primary as the fake cluster holds it, added first when absent.
pub(crate) async fn primary_in(
    fake: &FakeCluster,
    object: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    use crate::cluster::{Cluster, Target};
    let text = |p: &str| {
        object
            .pointer(p)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let target = Target {
        kind: KindName {
            kind: text("/kind").unwrap_or_default(),
            api_version: text("/apiVersion"),
        },
        namespace: text("/metadata/namespace"),
        name: text("/metadata/name").unwrap_or_default(),
    };
    fake.learn_kind(object);
    let get = Request::Get {
        target,
        live: false,
    };
    match fake.execute("", &get).await {
        Ok(found) if found.is_object() => Ok(found),
        Ok(_) => fake
            .execute(
                "",
                &Request::Create {
                    object: object.clone(),
                    dry_run: false,
                },
            )
            .await
            .map_err(|e| e.reason),
        Err(e) => Err(e.reason),
    }
}

fn write_issued(err: &mut impl Write, issued: &[Request]) -> std::io::Result<()> {
    writeln!(err, "k8s commands issued: {}", issued.len())?;
    for request in issued {
        writeln!(err, "  {}", describe_request(request))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_config_value;
    use serde_json::json;

    #[test]
    fn left_out_commands_are_named_with_their_line() {
        let source = "def \"main reconcile\" [] {\n  stor create -t t -c {a: str}\n  # stor open\n  print \"query db\"\n  let r = (open x.db | query db 'select 1')\n  history | length\n  let storage = 1\n}\n";
        let found: Vec<(usize, &str)> = unavailable_commands(source)
            .into_iter()
            .map(|(line, command, _)| (line, command))
            .collect();
        assert_eq!(found, vec![(2, "stor"), (5, "query db"), (6, "history")]);
        assert!(unavailable_commands("print (input-output)").is_empty());
    }

    #[test]
    fn issued_requests_read_like_commands() {
        let target = crate::cluster::Target {
            kind: KindName {
                kind: "configmaps".into(),
                api_version: None,
            },
            namespace: Some("n".into()),
            name: "a".into(),
        };
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}});
        let lines: Vec<String> = [
            Request::Get {
                target: target.clone(),
                live: true,
            },
            Request::List {
                kind: target.kind.clone(),
                namespace: None,
                labels: Some("a=b".into()),
                fields: Some("metadata.name=a".into()),
                live: false,
            },
            Request::Apply {
                object: object.clone(),
                status: false,
                dry_run: true,
            },
            Request::Patch {
                target: target.clone(),
                patch_type: PatchType::Merge,
                patch: json!({"data": {"k": "v"}}),
                status: true,
            },
            Request::Create {
                object,
                dry_run: false,
            },
            Request::Delete {
                target,
                propagation: Propagation::Orphan,
            },
        ]
        .iter()
        .map(describe_request)
        .collect();
        assert_eq!(
            lines,
            vec![
                "get configmaps n/a --live",
                "list configmaps -A -l 'a=b' --field-selector 'metadata.name=a'",
                "apply v1/ConfigMap n/a --dry-run",
                r#"patch configmaps n/a --type merge {"data":{"k":"v"}} --status"#,
                "create v1/ConfigMap n/a",
                "delete configmaps n/a --propagation orphan",
            ]
        );
    }

    #[test]
    fn describe_names_everything_check_promises() {
        let config = parse_config_value(
            "s",
            &json!({"name": "r", "group": "apps", "version": "v1", "kind": "Deployment",
                    "labelSelectors": {"a": "b"}, "fieldSelectors": {"metadata.name": "x"},
                    "namespaces": ["n1"], "finalizer": "nuop.dev/f"}),
        )
        .expect("config");
        assert_eq!(
            describe(&config),
            "r\tapps/v1/Deployment\tlabels=a=b\tfields=metadata.name=x\tnamespaces=n1\tfinalizer=nuop.dev/f"
        );
        let core = parse_config_value(
            "s",
            &json!({"name": "c", "version": "v1", "kind": "ConfigMap"}),
        )
        .expect("config");
        assert_eq!(describe(&core), "c\tv1/ConfigMap");
    }
}
