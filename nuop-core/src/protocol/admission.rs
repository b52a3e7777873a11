//! What `main validate`, `main mutate` and `main convert` answered, and what nuop
//! answers the API server from it.
//!
//! Pure: no I/O. The webhook server ([`crate::webhook`]) runs the call and hands the
//! [`CallResult`] here.
//!
//! - validate: exit 0 without output is allowed; a record `{allowed, message?,
//!   warnings?}` is the verdict; any other exit is denied with the stderr tail as the
//!   message (fail closed, as shell-operator does).
//! - mutate: exit 0 without output changes nothing; an object (exit 0 or 2) is the
//!   mutated object, from which nuop computes a JSON patch; the object must keep its
//!   identity ([`check_identity`] plus resourceVersion and managedFields). Any other
//!   exit is an error the failurePolicy decides on.
//! - convert: a list (or `{objects: [...]}`) of as many objects as were sent, each in
//!   the desired apiVersion, with the same kind, name, namespace and uid and otherwise
//!   unchanged metadata except labels and annotations.

use serde_json::{Map, Value};

use super::config::parse_document;
use super::outcome::{IdentityError, check_identity};
use crate::script::CallResult;

/// A script answer nuop cannot use: the failurePolicy decides what the API server hears.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The script exited with an error code (mutate, convert).
    #[error("script exited with code {code}: {stderr}")]
    Failed {
        /// The exit code.
        code: i32,
        /// The end of its stderr.
        stderr: String,
    },
    /// The output is not of the shape the phase answers.
    #[error("{0}")]
    Malformed(String),
    /// The mutated object changes what it is.
    #[error("mutate {0}")]
    Identity(#[from] IdentityError),
}

/// A validate answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Why (shown to the client when denied).
    pub message: Option<String>,
    /// Warnings the client prints (`Warning: …` in kubectl).
    pub warnings: Vec<String>,
}

/// The end of a script's stderr, for messages (the API server shows the message to the
/// client, so it is kept short).
pub fn tail(text: &str) -> String {
    let trimmed = text.trim();
    let start = trimmed.len().saturating_sub(500);
    let start = (start..trimmed.len())
        .find(|i| trimmed.is_char_boundary(*i))
        .unwrap_or(0);
    trimmed[start..].to_string()
}

/// The script's input for validate and mutate: the AdmissionReview's `request` with
/// `oldObject`, `dryRun` and `subResource` always present, so scripts can read them
/// without `?` (test `inputs_carry_every_field`).
pub fn admission_input(request: &Value) -> Value {
    let mut input = request.as_object().cloned().unwrap_or_default();
    for (key, default) in [
        ("object", Value::Null),
        ("oldObject", Value::Null),
        ("dryRun", Value::Bool(false)),
        ("subResource", Value::Null),
        ("userInfo", Value::Object(Map::new())),
    ] {
        let entry = input.entry(key).or_insert(Value::Null);
        if entry.is_null() {
            *entry = default;
        }
    }
    Value::Object(input)
}

/// The script's input for convert: `{desiredAPIVersion, objects}`.
pub fn conversion_input(desired_api_version: &str, objects: &[Value]) -> Value {
    serde_json::json!({"desiredAPIVersion": desired_api_version, "objects": objects})
}

/// The structured answer of a call: the returned value when it is a record or list,
/// else stdout as one YAML or JSON document; `None` when there is no output.
fn answer_value(result: &CallResult) -> Result<Option<Value>, AnswerError> {
    if let Some(value) = result
        .returned
        .as_ref()
        .filter(|v| v.is_object() || v.is_array())
    {
        return Ok(Some(value.clone()));
    }
    let text = result.stdout.text.trim();
    if result.stdout.truncated {
        return Err(AnswerError::Malformed(format!(
            "stdout was cut at {} bytes ({} written)",
            result.stdout.text.len(),
            result.stdout.total_bytes
        )));
    }
    if text.is_empty() {
        return Ok(None);
    }
    parse_document(text)
        .map(Some)
        .map_err(|e| AnswerError::Malformed(format!("output is neither YAML nor JSON: {e}")))
}

/// Reads a validate answer.
///
/// # Errors
/// [`AnswerError::Malformed`] when exit 0 came with output that is not a verdict record.
pub fn validation_verdict(result: &CallResult) -> Result<Verdict, AnswerError> {
    if result.code != 0 {
        let stderr = tail(&result.stderr.text);
        return Ok(Verdict {
            allowed: false,
            message: Some(if stderr.is_empty() {
                format!("validate exited with code {}", result.code)
            } else {
                stderr
            }),
            warnings: Vec::new(),
        });
    }
    let Some(value) = answer_value(result)? else {
        return Ok(Verdict {
            allowed: true,
            message: None,
            warnings: Vec::new(),
        });
    };
    let malformed = |why: &str| {
        AnswerError::Malformed(format!(
            "validate must answer nothing or a record {{allowed, message?, warnings?}}: {why}"
        ))
    };
    let map = value.as_object().ok_or_else(|| malformed("not a record"))?;
    let allowed = map
        .get("allowed")
        .and_then(Value::as_bool)
        .ok_or_else(|| malformed("`allowed` must be true or false"))?;
    let message = match map.get("message") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(malformed("`message` must be a string")),
    };
    let warnings = match map.get("warnings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .map(|w| w.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| malformed("`warnings` must be a list of strings"))?,
        Some(_) => return Err(malformed("`warnings` must be a list of strings")),
    };
    if let Some(unknown) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "allowed" | "message" | "warnings"))
    {
        return Err(malformed(&format!("unknown field `{unknown}`")));
    }
    Ok(Verdict {
        allowed,
        message,
        warnings,
    })
}

/// Reads a mutate answer of `original`: the JSON patch that turns it into the
/// script's object, `None` when nothing changed.
///
/// # Errors
/// [`AnswerError`] when the script failed, answered something other than an object,
/// or changed the object's identity.
pub fn mutation_patch(
    original: &Value,
    result: &CallResult,
) -> Result<Option<json_patch::Patch>, AnswerError> {
    if !matches!(result.code, 0 | 2) {
        return Err(AnswerError::Failed {
            code: result.code,
            stderr: tail(&result.stderr.text),
        });
    }
    let Some(mutated) = answer_value(result)? else {
        return Ok(None);
    };
    if !mutated.is_object() || mutated.get("metadata").is_none() {
        return Err(AnswerError::Malformed(
            "mutate must answer the whole mutated object (or nothing)".into(),
        ));
    }
    check_identity(original, &mutated)?;
    for (field, pointer) in [
        ("metadata.resourceVersion", "/metadata/resourceVersion"),
        ("metadata.managedFields", "/metadata/managedFields"),
    ] {
        let (from, to) = (original.pointer(pointer), mutated.pointer(pointer));
        if to.is_some() && from != to {
            return Err(AnswerError::Identity(IdentityError {
                field,
                from: from.map(Value::to_string).unwrap_or_default(),
                to: to.map(Value::to_string).unwrap_or_default(),
            }));
        }
    }
    let patch = json_patch::diff(original, &mutated);
    Ok((!patch.0.is_empty()).then_some(patch))
}

/// Reads a convert answer for `objects` converted to `desired`.
///
/// # Errors
/// [`AnswerError`] when the script failed, or the answer is not the same objects in
/// the desired apiVersion.
pub fn converted_objects(
    objects: &[Value],
    desired: &str,
    result: &CallResult,
) -> Result<Vec<Value>, AnswerError> {
    if result.code != 0 && result.code != 2 {
        return Err(AnswerError::Failed {
            code: result.code,
            stderr: tail(&result.stderr.text),
        });
    }
    let malformed = |why: String| AnswerError::Malformed(format!("convert: {why}"));
    let converted = match answer_value(result)? {
        Some(Value::Array(list)) => list,
        Some(Value::Object(mut map)) if map.contains_key("objects") => {
            match map.remove("objects") {
                Some(Value::Array(list)) => list,
                _ => return Err(malformed("`objects` must be a list".into())),
            }
        }
        // One object sent, one object answered.
        Some(object @ Value::Object(_)) if objects.len() == 1 => vec![object],
        _ => {
            return Err(malformed(
                "must answer the list of converted objects".into(),
            ));
        }
    };
    if converted.len() != objects.len() {
        return Err(malformed(format!(
            "answered {} objects for {} sent",
            converted.len(),
            objects.len()
        )));
    }
    for (i, (before, after)) in objects.iter().zip(&converted).enumerate() {
        let api_version = after.get("apiVersion").and_then(Value::as_str);
        if api_version != Some(desired) {
            return Err(malformed(format!(
                "object {i} has apiVersion {api_version:?}, not the desired {desired}"
            )));
        }
        if before.get("kind") != after.get("kind") {
            return Err(malformed(format!("object {i} changed its kind")));
        }
        let strip = |object: &Value| {
            let mut metadata = object
                .get("metadata")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            metadata.remove("labels");
            metadata.remove("annotations");
            metadata
        };
        let (from, to) = (strip(before), strip(after));
        if from != to {
            let field = from
                .iter()
                .find(|(k, v)| to.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .or_else(|| to.keys().find(|k| !from.contains_key(*k)).cloned())
                .unwrap_or_default();
            return Err(malformed(format!(
                "object {i} changed metadata.{field} (only labels and annotations may change)"
            )));
        }
    }
    Ok(converted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Captured;
    use serde_json::json;

    fn result(code: i32, stdout: &str, stderr: &str, returned: Option<Value>) -> CallResult {
        let captured = |text: &str| Captured {
            text: text.to_string(),
            total_bytes: text.len() as u64,
            truncated: false,
        };
        CallResult {
            code,
            stdout: captured(stdout),
            stderr: captured(stderr),
            returned,
        }
    }

    fn cm() -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "a", "namespace": "ns", "uid": "u1", "resourceVersion": "7"},
               "data": {"k": "v"}})
    }

    #[test]
    fn validate_shorthands_and_records() {
        let allowed = validation_verdict(&result(0, "", "", None)).expect("verdict");
        assert!(allowed.allowed);
        let denied =
            validation_verdict(&result(1, "", "needs an owner label\n", None)).expect("verdict");
        assert_eq!(
            (denied.allowed, denied.message.as_deref()),
            (false, Some("needs an owner label"))
        );
        let silent = validation_verdict(&result(3, "", "", None)).expect("verdict");
        assert_eq!(
            silent.message.as_deref(),
            Some("validate exited with code 3")
        );
        let record = validation_verdict(&result(
            0,
            "",
            "",
            Some(json!({"allowed": true, "warnings": ["old style"]})),
        ))
        .expect("verdict");
        assert_eq!(record.warnings, vec!["old style"]);
        let yaml = validation_verdict(&result(0, "allowed: false\nmessage: no\n", "", None))
            .expect("verdict");
        assert_eq!((yaml.allowed, yaml.message.as_deref()), (false, Some("no")));
    }

    #[test]
    fn malformed_verdicts_are_errors() {
        for (stdout, returned) in [
            ("just words", None),
            ("", Some(json!({"allowed": "yes"}))),
            ("", Some(json!({"allowed": true, "warnings": [1]}))),
            ("", Some(json!({"allowed": true, "reason": "x"}))),
            ("", Some(json!([1]))),
        ] {
            assert!(
                matches!(
                    validation_verdict(&result(0, stdout, "", returned.clone())),
                    Err(AnswerError::Malformed(_))
                ),
                "{stdout} {returned:?}"
            );
        }
        let mut cut = result(0, "{\"allowed\": true}", "", None);
        cut.stdout.truncated = true;
        assert!(validation_verdict(&cut).is_err());
    }

    #[test]
    fn mutate_answers_a_patch_of_the_change() {
        let mut mutated = cm();
        mutated["metadata"]["labels"] = json!({"team": "a"});
        let patch = mutation_patch(&cm(), &result(0, "", "", Some(mutated.clone())))
            .expect("patch")
            .expect("a change");
        let mut patched = cm();
        json_patch::patch(&mut patched, &patch).expect("applies");
        assert_eq!(patched, mutated);
        assert_eq!(
            mutation_patch(&cm(), &result(0, "", "", None)).expect("no change"),
            None
        );
        assert_eq!(
            mutation_patch(&cm(), &result(2, "", "", Some(cm()))).expect("same object"),
            None
        );
    }

    #[test]
    fn mutate_refuses_identity_changes_and_failures() {
        let mut renamed = cm();
        renamed["metadata"]["name"] = json!("b");
        let err = mutation_patch(&cm(), &result(0, "", "", Some(renamed))).expect_err("rename");
        assert!(
            matches!(&err, AnswerError::Identity(e) if e.field == "metadata.name"),
            "{err}"
        );
        let mut versioned = cm();
        versioned["metadata"]["resourceVersion"] = json!("8");
        assert!(matches!(
            mutation_patch(&cm(), &result(0, "", "", Some(versioned))),
            Err(AnswerError::Identity(IdentityError {
                field: "metadata.resourceVersion",
                ..
            }))
        ));
        assert_eq!(
            mutation_patch(&cm(), &result(1, "", "boom", None)),
            Err(AnswerError::Failed {
                code: 1,
                stderr: "boom".into()
            })
        );
        assert!(matches!(
            mutation_patch(&cm(), &result(0, "", "", Some(json!({"labels": {}})))),
            Err(AnswerError::Malformed(_))
        ));
    }

    fn widget(version: &str) -> Value {
        json!({"apiVersion": format!("example.com/{version}"), "kind": "Widget",
               "metadata": {"name": "w", "namespace": "ns", "uid": "u1"}, "spec": {}})
    }

    #[test]
    fn convert_checks_count_version_and_metadata() {
        let sent = vec![widget("v1")];
        let ok = converted_objects(
            &sent,
            "example.com/v2",
            &result(0, "", "", Some(json!([widget("v2")]))),
        )
        .expect("converted");
        assert_eq!(ok, vec![widget("v2")]);
        let mut labelled = widget("v2");
        labelled["metadata"]["labels"] = json!({"converted": "yes"});
        assert!(
            converted_objects(
                &sent,
                "example.com/v2",
                &result(0, "", "", Some(json!({"objects": [labelled]})))
            )
            .is_ok()
        );
        let cases = [
            json!([]),
            json!([widget("v1")]),
            json!([widget("v2"), widget("v2")]),
            {
                let mut w = widget("v2");
                w["metadata"]["uid"] = json!("u2");
                json!([w])
            },
            {
                let mut w = widget("v2");
                w["kind"] = json!("Gadget");
                json!([w])
            },
        ];
        for answer in cases {
            assert!(
                matches!(
                    converted_objects(
                        &sent,
                        "example.com/v2",
                        &result(0, "", "", Some(answer.clone()))
                    ),
                    Err(AnswerError::Malformed(_))
                ),
                "{answer}"
            );
        }
        assert!(matches!(
            converted_objects(&sent, "example.com/v2", &result(1, "", "no", None)),
            Err(AnswerError::Failed { code: 1, .. })
        ));
    }

    #[test]
    fn inputs_carry_every_field() {
        let input = admission_input(&json!({"uid": "x", "operation": "CREATE", "object": cm()}));
        assert_eq!(input["dryRun"], json!(false));
        assert_eq!(input["oldObject"], Value::Null);
        assert_eq!(input["userInfo"], json!({}));
        assert_eq!(input["object"], cm());
        let input = conversion_input("example.com/v2", &[widget("v1")]);
        assert_eq!(input["desiredAPIVersion"], json!("example.com/v2"));
    }
}
