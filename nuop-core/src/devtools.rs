//! The script author's tools behind `nuop-standard check` and `nuop-standard exec`:
//! work on scripts without a cluster.
//!
//! Does I/O (reads scripts, runs them, writes reports to the given writers); the report
//! formatting is in small pure functions.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::protocol::{
    Outcome, Phase, ScriptConfig, ScriptOutput, classify_output, parse_document,
};
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
    line
}

/// Loads every `<root>/*/mod.nu`, runs `config`, and reports one line per controller
/// and one error per broken script. Returns how many scripts are broken.
///
/// # Errors
/// When `root` cannot be read or a report cannot be written.
pub async fn check(
    root: &Path,
    kind: ExecutorKind,
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
                    writeln!(out, "{}", describe(&config))?;
                }
            }
            Err(message) => {
                broken += 1;
                writeln!(err, "error: {}: {message}", script.dir.display())?;
            }
        }
    }
    if found.scripts.is_empty() {
        writeln!(err, "warning: no */mod.nu under {}", root.display())?;
    }
    Ok(broken)
}

async fn load_config(kind: ExecutorKind, script: &Script) -> Result<ScriptConfig, String> {
    let runner = ScriptRunner::load(kind, script).map_err(|e| e.to_string())?;
    let config = runner
        .config(crate::protocol::DEFAULT_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if kind == ExecutorKind::Embedded {
        for phase in [Phase::Reconcile] {
            if let ScriptRunner::Embedded(s) = &runner
                && !s.has_phase(phase)
            {
                return Err(format!(
                    "script {} has no `main {phase}` command",
                    script.name
                ));
            }
        }
    }
    Ok(config)
}

/// Runs one phase of one script on an object read from `input` (YAML or JSON), writing
/// the answer to `out` and the script's log to `err`. Returns the exit code to end with:
/// the script's own (0 or 2), or 1 for any error including a timeout.
///
/// # Errors
/// When the reports cannot be written.
pub async fn exec(
    dir: &Path,
    phase: Phase,
    kind: ExecutorKind,
    timeout: Option<Duration>,
    input: &str,
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
    let timeout = timeout.unwrap_or(crate::protocol::DEFAULT_TIMEOUT);

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
    let result = runner
        .call(CallRequest {
            phase,
            input: Some(object.to_string()),
            controller: script.name.clone(),
            timeout,
        })
        .await;
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(1);
        }
    };
    write!(err, "{}", result.stderr.with_note())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_config_value;
    use serde_json::json;

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
