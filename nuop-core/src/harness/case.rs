//! The test case file: parsing and validation.
//!
//! Pure apart from the `read` callback the caller passes for `file:` references, so the
//! whole format is unit-tested on strings. Every problem is a [`CaseError`] naming the
//! file and the field (`expect.commands[1]`, `input.file`), not a panic nor a
//! case that silently checks less than it says (`malformed_cases_name_the_file_and_the_field`).
//!
//! # The format
//!
//! ```yaml
//! name: copies go to every active namespace   # default: the file name
//! phase: reconcile            # reconcile | finalize; default: what the runtime would do
//! timeout: 5                  # seconds; default: the script's configured timeout
//! statusSubresource: true     # default: false for ConfigMap, Secret, ... (see below)
//! input:                      # the object of the call, or {file: fixtures/x.yaml}
//!   {apiVersion: v1, kind: ConfigMap, metadata: {name: s, namespace: src}}
//! cluster:                    # what the fake cluster holds, a list (items may be
//!   - {file: fixtures/ns.yaml}  # {file: ...} holding one or more objects) or {file: ...}
//! expect:                     # every key is optional; see `expect.rs`
//!   exit: 2
//! ```
//!
//! Webhook phases (`phase: validate | mutate | convert`) take the object of the request
//! as `input` and the rest of the request under `request` (`operation` [CREATE, or
//! UPDATE with `oldObject`], `oldObject`, `dryRun`, `userInfo`, `subResource`; for
//! convert `desiredAPIVersion`), and expect `allowed`, `message` (a pattern), `warnings`
//! (patterns), `outcome` (allowed, denied, mutated, error) and `output` (the mutated
//! object, or the list of converted objects). They write nothing; with `--live` their
//! `k8s` reads go to the real API server and the case's `cluster` is not created there.
//!
//! `map` is a reserved phase name and answered "not supported yet"; so is `clock` (the
//! fake cluster stamps the wall clock).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::protocol::Phase;

/// Keys a case may have at its top level.
const CASE_KEYS: &[&str] = &[
    "name",
    "phase",
    "timeout",
    "statusSubresource",
    "input",
    "cluster",
    "expect",
    "request",
    "clock",
];

/// Keys `expect` may have.
pub const EXPECT_KEYS: &[&str] = &[
    "exit",
    "outcome",
    "error",
    "output",
    "outputExact",
    "object",
    "objectExact",
    "status",
    "commands",
    "commandsOrdered",
    "cluster",
    "absent",
    "events",
    "requeue",
    "logs",
    "allowed",
    "message",
    "warnings",
];

/// The outcomes `expect.outcome` may name.
pub const OUTCOMES: &[&str] = &[
    "no-change",
    "changed",
    "failed",
    "ignored",
    "allowed",
    "denied",
    "mutated",
    "error",
];

/// Keys `request` (webhook phases) may have.
const REQUEST_KEYS: &[&str] = &[
    "operation",
    "oldObject",
    "dryRun",
    "userInfo",
    "subResource",
    "desiredAPIVersion",
];

/// Kinds without a status subresource: for them `.status` is written with the object.
const NO_STATUS_SUBRESOURCE: &[&str] = &[
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Endpoints",
    "Event",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// One test case.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    /// The case file.
    pub file: PathBuf,
    /// What the case is about (default: the file's stem).
    pub name: String,
    /// The phase to run; `None`: what the runtime would run for the input (finalize for
    /// an object being deleted with the controller's finalizer, else reconcile).
    pub phase: Option<Phase>,
    /// The call's time limit; `None`: the script's configured `timeout`.
    pub timeout: Option<Duration>,
    /// Whether the primary's kind has a status subresource.
    pub status_subresource: bool,
    /// The object of the call.
    pub input: Value,
    /// The objects the fake cluster holds before the call.
    pub cluster: Vec<Value>,
    /// The expectations, validated: only [`EXPECT_KEYS`], each of the right shape.
    pub expect: Map<String, Value>,
    /// The rest of a webhook request (only [`REQUEST_KEYS`]); empty for other phases.
    pub request: Map<String, Value>,
}

/// A malformed case file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{message}", file.display(), if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct CaseError {
    /// The case file.
    pub file: PathBuf,
    /// The field at fault (`expect.exit`), empty for the file as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The name of a value's JSON type, for messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The documents of a fixture file: a YAML or JSON list, multi-document YAML, or a
/// `kind: List` with `items`.
///
/// # Errors
/// When the text is not YAML/JSON or holds something other than objects.
pub fn objects_in(text: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Value> = match serde_json::from_str::<Value>(text) {
        Ok(v) => vec![v],
        Err(_) => serde_saphyr::from_multiple_with_options::<Value>(
            text,
            serde_saphyr::options! { strict_booleans: true },
        )
        .map_err(|e| e.to_string())?,
    };
    let mut objects = Vec::new();
    for document in documents {
        match document {
            Value::Null => {}
            Value::Array(items) => objects.extend(items),
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str) == Some("List") => {
                if let Some(Value::Array(items)) = map.get("items") {
                    objects.extend(items.iter().cloned());
                }
            }
            object @ Value::Object(_) => objects.push(object),
            other => return Err(format!("expected objects, found {}", type_name(&other))),
        }
    }
    Ok(objects)
}

/// A `{file: path}` reference: the path, when `value` is exactly that.
fn file_reference(value: &Value) -> Option<&Value> {
    let map = value.as_object()?;
    (map.len() == 1).then(|| map.get("file")).flatten()
}

struct Parser<'a> {
    file: &'a Path,
    read: &'a mut dyn FnMut(&Path) -> Result<String, String>,
}

impl Parser<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> CaseError {
        CaseError {
            file: self.file.to_path_buf(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The objects a `{file: ...}` reference at `field` holds.
    fn load(&mut self, field: &str, path: &Value) -> Result<Vec<Value>, CaseError> {
        let Some(path) = path.as_str().filter(|p| !p.is_empty()) else {
            return Err(self.error(
                &format!("{field}.file"),
                format!("expected a path, found {}", type_name(path)),
            ));
        };
        let full = self
            .file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(path);
        let text = (self.read)(&full).map_err(|e| {
            self.error(&format!("{field}.file"), format!("cannot read {path}: {e}"))
        })?;
        objects_in(&text).map_err(|e| self.error(&format!("{field}.file"), format!("{path}: {e}")))
    }

    fn object(&self, field: &str, value: &Value) -> Result<(), CaseError> {
        for (key, pointer) in [
            ("apiVersion", "/apiVersion"),
            ("kind", "/kind"),
            ("metadata.name", "/metadata/name"),
        ] {
            if value
                .pointer(pointer)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(self.error(
                    field,
                    format!("an object needs apiVersion, kind and metadata.name; {key} is missing"),
                ));
            }
        }
        Ok(())
    }
}

/// Parses one case file's text. `read` reads the files `file:` references name
/// (resolved against the case file's directory).
///
/// # Errors
/// A [`CaseError`] naming the file and the field at fault.
pub fn parse_case(
    file: &Path,
    text: &str,
    read: &mut dyn FnMut(&Path) -> Result<String, String>,
) -> Result<Case, CaseError> {
    let mut p = Parser { file, read };
    let root = crate::protocol::parse_document(text)
        .map_err(|e| p.error("", format!("not a YAML mapping: {e}")))?;
    let Value::Object(root) = root else {
        return Err(p.error(
            "",
            format!("expected a mapping, found {}", type_name(&root)),
        ));
    };
    if let Some(unknown) = root.keys().find(|k| !CASE_KEYS.contains(&k.as_str())) {
        return Err(p.error(
            unknown,
            format!("unknown field; a case has {}", CASE_KEYS[..8].join(", ")),
        ));
    }
    if root.contains_key("clock") {
        return Err(p.error(
            "clock",
            "not supported yet: the fake cluster stamps objects with the wall clock",
        ));
    }
    let name = match root.get("name") {
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(other) => {
            return Err(p.error(
                "name",
                format!("expected a non-empty string, found {}", type_name(other)),
            ));
        }
    };
    let phase = match root.get("phase") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "reconcile" => Some(Phase::Reconcile),
            "finalize" => Some(Phase::Finalize),
            "validate" => Some(Phase::Validate),
            "mutate" => Some(Phase::Mutate),
            "convert" => Some(Phase::Convert),
            "map" | "config" => {
                return Err(p.error(
                    "phase",
                    format!("`{s}` is not supported yet; expected reconcile, finalize, validate, mutate or convert"),
                ));
            }
            other => {
                return Err(p.error(
                    "phase",
                    format!("unknown phase `{other}`; expected reconcile, finalize, validate, mutate or convert"),
                ));
            }
        },
        Some(other) => {
            return Err(p.error(
                "phase",
                format!(
                    "expected reconcile, finalize, validate, mutate or convert, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let timeout = match root.get("timeout") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64().filter(|s| *s > 0.0 && s.is_finite()) {
            Some(secs) => Some(Duration::from_secs_f64(secs)),
            None => {
                return Err(p.error(
                    "timeout",
                    format!("expected a positive number of seconds, found {v}"),
                ));
            }
        },
    };
    let input = match root.get("input") {
        None => return Err(p.error("input", "missing: the object of the call")),
        Some(value) => match file_reference(value) {
            Some(path) => {
                let mut objects = p.load("input", &path.clone())?;
                if objects.len() != 1 {
                    return Err(p.error(
                        "input.file",
                        format!("expected one object, found {}", objects.len()),
                    ));
                }
                objects.remove(0)
            }
            None => value.clone(),
        },
    };
    p.object("input", &input)?;
    let status_subresource = match root.get("statusSubresource") {
        None | Some(Value::Null) => {
            let kind = input.get("kind").and_then(Value::as_str).unwrap_or("");
            !NO_STATUS_SUBRESOURCE.contains(&kind)
        }
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(p.error(
                "statusSubresource",
                format!("expected true or false, found {}", type_name(other)),
            ));
        }
    };
    let mut cluster = Vec::new();
    match root.get("cluster") {
        None | Some(Value::Null) => {}
        Some(value) => {
            if let Some(path) = file_reference(value) {
                cluster = p.load("cluster", &path.clone())?;
            } else if let Value::Array(items) = value {
                for (i, item) in items.iter().enumerate() {
                    let field = format!("cluster[{i}]");
                    match file_reference(item) {
                        Some(path) => cluster.extend(p.load(&field, &path.clone())?),
                        None => {
                            p.object(&field, item)?;
                            cluster.push(item.clone());
                        }
                    }
                }
            } else {
                return Err(p.error(
                    "cluster",
                    format!(
                        "expected a list of objects or {{file: ...}}, found {}",
                        type_name(value)
                    ),
                ));
            }
        }
    }
    for (i, object) in cluster.iter().enumerate() {
        p.object(&format!("cluster[{i}]"), object)?;
    }
    let expect = match root.get("expect") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map.clone(),
        Some(other) => {
            return Err(p.error(
                "expect",
                format!("expected a mapping, found {}", type_name(other)),
            ));
        }
    };
    validate_expect(&expect).map_err(|(field, message)| p.error(&field, message))?;
    let request = match root.get("request") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) if phase.is_some_and(Phase::is_webhook) => {
            if let Some(unknown) = map.keys().find(|k| !REQUEST_KEYS.contains(&k.as_str())) {
                return Err(p.error(
                    &format!("request.{unknown}"),
                    format!("unknown field; a request has {}", REQUEST_KEYS.join(", ")),
                ));
            }
            map.clone()
        }
        Some(Value::Object(_)) => {
            return Err(p.error(
                "request",
                "only webhook phases (validate, mutate, convert) take a request",
            ));
        }
        Some(other) => {
            return Err(p.error(
                "request",
                format!("expected a mapping, found {}", type_name(other)),
            ));
        }
    };
    Ok(Case {
        request,
        file: file.to_path_buf(),
        name,
        phase,
        timeout,
        status_subresource,
        input,
        cluster,
        expect,
    })
}

/// Checks the shape of every expectation; the error is `(field, message)`.
///
/// # Errors
/// The first field of the wrong shape.
pub fn validate_expect(expect: &Map<String, Value>) -> Result<(), (String, String)> {
    let fail = |field: String, message: String| Err((field, message));
    for (key, value) in expect {
        let field = format!("expect.{key}");
        let found = type_name(value);
        match key.as_str() {
            "exit" => {
                if !value.is_i64() {
                    return fail(field, format!("expected an exit code, found {found}"));
                }
            }
            "outcome" => {
                if !value.as_str().is_some_and(|s| OUTCOMES.contains(&s)) {
                    return fail(
                        field,
                        format!("expected one of {}, found {value}", OUTCOMES.join(", ")),
                    );
                }
            }
            "error" => match value {
                Value::Null => {}
                Value::String(pattern) => {
                    if let Err(e) = regex::Regex::new(pattern) {
                        return fail(field, format!("not a regular expression: {e}"));
                    }
                }
                _ => return fail(field, format!("expected a pattern or null, found {found}")),
            },
            "output" | "outputExact" | "object" | "objectExact" => {
                // A list: the objects a conversion answered.
                if !(value.is_object() || value.is_null() || value.is_array()) {
                    return fail(field, format!("expected an object or null, found {found}"));
                }
            }
            "status" => {}
            "allowed" => {
                if !value.is_boolean() {
                    return fail(field, format!("expected true or false, found {found}"));
                }
            }
            "message" => match value {
                Value::Null => {}
                Value::String(pattern) => {
                    if let Err(e) = regex::Regex::new(pattern) {
                        return fail(field, format!("not a regular expression: {e}"));
                    }
                }
                _ => return fail(field, format!("expected a pattern or null, found {found}")),
            },
            "commands" | "commandsOrdered" | "events" | "cluster" | "absent" => {
                let Value::Array(items) = value else {
                    return fail(field, format!("expected a list, found {found}"));
                };
                for (i, item) in items.iter().enumerate() {
                    let field = format!("{field}[{i}]");
                    let Value::Object(map) = item else {
                        return fail(
                            field,
                            format!("expected a mapping, found {}", type_name(item)),
                        );
                    };
                    let needs: &[&str] = match key.as_str() {
                        "commands" | "commandsOrdered" => &["verb"],
                        "cluster" | "absent" => &["kind"],
                        _ => &[],
                    };
                    for need in needs {
                        if !map.get(*need).is_some_and(Value::is_string) {
                            return fail(field, format!("needs `{need}`"));
                        }
                    }
                    if matches!(key.as_str(), "cluster" | "absent")
                        && item
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .is_none()
                        && map.get("name").and_then(Value::as_str).is_none()
                    {
                        return fail(field, "needs metadata.name (or name)".into());
                    }
                }
            }
            "requeue" => {
                let ok = match value {
                    Value::Number(n) => n.as_f64().is_some_and(|s| s >= 0.0),
                    Value::String(s) => s == "never" || s == "backoff",
                    _ => false,
                };
                if !ok {
                    return fail(
                        field,
                        format!("expected seconds, \"never\" or \"backoff\", found {value}"),
                    );
                }
            }
            "logs" | "warnings" => {
                let Value::Array(items) = value else {
                    return fail(field, format!("expected a list of patterns, found {found}"));
                };
                for (i, item) in items.iter().enumerate() {
                    let Some(pattern) = item.as_str() else {
                        return fail(
                            format!("{field}[{i}]"),
                            format!("expected a pattern, found {}", type_name(item)),
                        );
                    };
                    if let Err(e) = regex::Regex::new(pattern) {
                        return fail(
                            format!("{field}[{i}]"),
                            format!("not a regular expression: {e}"),
                        );
                    }
                }
            }
            _ => {
                return fail(
                    field,
                    format!(
                        "unknown expectation; expected one of {}",
                        EXPECT_KEYS.join(", ")
                    ),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Case, CaseError> {
        parse_case(Path::new("s/tests/a.yaml"), text, &mut |path: &Path| {
            match path.to_str() {
                Some("s/tests/fixtures/one.yaml") => {
                    Ok("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n".into())
                }
                Some("s/tests/fixtures/two.yaml") => Ok(
                    "- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n"
                        .into(),
                ),
                _ => Err("no such file".into()),
            }
        })
    }

    fn message(text: &str) -> String {
        parse(text).expect_err("malformed").to_string()
    }

    const INPUT: &str =
        "input: {apiVersion: v1, kind: ConfigMap, metadata: {name: s, namespace: n}}\n";

    #[test]
    fn a_minimal_case_takes_its_name_from_the_file() {
        let case = parse(INPUT).expect("case");
        assert_eq!(case.name, "a");
        assert_eq!(case.phase, None);
        assert!(
            !case.status_subresource,
            "ConfigMap has no status subresource"
        );
        assert!(case.cluster.is_empty() && case.expect.is_empty());
    }

    #[test]
    fn files_are_read_relative_to_the_case() {
        let case = parse(
            "input: {file: fixtures/one.yaml}\ncluster:\n  - {file: fixtures/two.yaml}\n  - {apiVersion: v1, kind: Namespace, metadata: {name: c}}\nphase: finalize\ntimeout: 0.5\n",
        )
        .expect("case");
        assert_eq!(case.input["kind"], "Namespace");
        assert!(case.status_subresource);
        assert_eq!(case.cluster.len(), 3);
        assert_eq!(case.phase, Some(Phase::Finalize));
        assert_eq!(case.timeout, Some(Duration::from_millis(500)));
        let whole = parse("input: {file: fixtures/one.yaml}\ncluster: {file: fixtures/two.yaml}\n")
            .expect("case");
        assert_eq!(whole.cluster.len(), 2);
    }

    #[test]
    fn malformed_cases_name_the_file_and_the_field() {
        let cases = [
            ("", "s/tests/a.yaml: expected a mapping, found null"),
            ("input: [1\n", "s/tests/a.yaml: not a YAML mapping"),
            ("cluster: []\n", "s/tests/a.yaml: input: missing"),
            (
                "input: {kind: X}\n",
                "s/tests/a.yaml: input: an object needs apiVersion",
            ),
            (
                "input: {file: nope.yaml}\n",
                "s/tests/a.yaml: input.file: cannot read nope.yaml",
            ),
            (
                "input: {file: fixtures/two.yaml}\n",
                "input.file: expected one object, found 2",
            ),
            ("inptu: {}\n", "s/tests/a.yaml: inptu: unknown field"),
            ("phase: map\n", "phase: `map` is not supported yet"),
            (
                "request: {operation: CREATE}\n",
                "request: only webhook phases (validate, mutate, convert) take a request",
            ),
            (
                "phase: validate\nrequest: {verb: CREATE}\n",
                "request.verb: unknown field",
            ),
            (
                "expect: {allowed: yes}\n",
                "expect.allowed: expected true or false",
            ),
            ("phase: reconcle\n", "phase: unknown phase `reconcle`"),
            ("clock: 2026-01-01T00:00:00Z\n", "clock: not supported yet"),
            ("timeout: -1\n", "timeout: expected a positive number"),
            (
                "cluster: [{kind: X}]\n",
                "cluster[0]: an object needs apiVersion",
            ),
            ("cluster: 3\n", "cluster: expected a list of objects"),
            (
                "expect: {exit: two}\n",
                "expect.exit: expected an exit code",
            ),
            (
                "expect: {outcome: done}\n",
                "expect.outcome: expected one of",
            ),
            (
                "expect: {commands: [{kind: X}]}\n",
                "expect.commands[0]: needs `verb`",
            ),
            (
                "expect: {cluster: [{kind: X}]}\n",
                "expect.cluster[0]: needs metadata.name",
            ),
            (
                "expect: {logs: ['(']}\n",
                "expect.logs[0]: not a regular expression",
            ),
            (
                "expect: {requeue: soon}\n",
                "expect.requeue: expected seconds",
            ),
            (
                "expect: {outptu: {}}\n",
                "expect.outptu: unknown expectation",
            ),
            ("expect: [1]\n", "expect: expected a mapping, found a list"),
        ];
        for (text, wanted) in cases {
            let text = if text.starts_with("input")
                || text.starts_with("inptu")
                || text.is_empty()
                || text.starts_with("cluster: []")
            {
                text.to_string()
            } else {
                format!("{INPUT}{text}")
            };
            let got = message(&text);
            assert!(got.contains(wanted), "{text:?}: {got}");
        }
    }

    #[test]
    fn fixture_files_may_be_lists_or_multiple_documents() {
        let many = objects_in("a: 1\n---\nb: 2\n").expect("yaml");
        assert_eq!(many.len(), 2);
        let list = objects_in(r#"{"kind": "List", "items": [{"a": 1}]}"#).expect("json");
        assert_eq!(list, vec![serde_json::json!({"a": 1})]);
        assert!(objects_in("3\n").is_err());
    }
}
