//! What a `reconcile` or `finalize` call answered: exit code → [`Outcome`], stdout →
//! [`ScriptOutput`], and the identity rule a desired object must keep.
//!
//! Pure: no I/O.

use serde_json::Value;

use super::config::parse_document;

/// The meaning of a script call's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0: nothing to change.
    NoChange,
    /// Exit 2: the script changed something (and may have printed the desired object).
    Changed,
    /// Any other exit code: the script failed.
    Failed(i32),
}

impl Outcome {
    /// Maps an exit code to its meaning: 0 no change, 2 changed, anything else error.
    pub fn from_exit_code(code: i32) -> Self {
        match code {
            0 => Self::NoChange,
            2 => Self::Changed,
            other => Self::Failed(other),
        }
    }
}

/// What a script's stdout (or, in-process, its returned value) holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptOutput {
    /// Nothing at all.
    Empty,
    /// A whole Kubernetes object: the desired state of the input object.
    Object(Value),
    /// Anything else: progress lines, as scripts for the original nuop print them.
    Logs(String),
}

/// stdout that looks like an attempt at an object but is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// Text that starts like JSON but does not parse.
    #[error("output looks like JSON but does not parse: {0}")]
    Unparsable(String),
    /// A mapping with some but not all of apiVersion, kind and metadata.
    #[error("output object lacks `{0}` (an object needs apiVersion, kind and metadata)")]
    Incomplete(&'static str),
    /// stdout passed its cap: what was kept may be a cut object that still parses.
    #[error("stdout was cut at {kept} bytes ({total} written); nothing was written")]
    Cut {
        /// Bytes kept.
        kept: usize,
        /// Bytes the script wrote.
        total: u64,
    },
}

/// Classifies the output of a call that exited 2 (changed): as [`classify_output`], but
/// a stdout that passed its cap is never read as the desired object (tests
/// `a_cut_stdout_is_never_the_desired_object` and
/// `output_safety::an_object_on_a_cut_stdout_is_never_written`) — a cut object can
/// still parse (YAML keeps `data` last) and writing it would lose what was cut.
///
/// # Errors
/// [`OutputError::Cut`] when stdout was cut and no structured value was returned;
/// otherwise as [`classify_output`].
pub fn classify_changed(
    stdout: &crate::script::Captured,
    returned: Option<&Value>,
) -> Result<ScriptOutput, OutputError> {
    if stdout.truncated && !returned.is_some_and(Value::is_object) {
        return Err(OutputError::Cut {
            kept: stdout.text.len(),
            total: stdout.total_bytes,
        });
    }
    classify_output(&stdout.text, returned)
}

/// Classifies a call's output.
///
/// The returned value (embedded executor) wins over stdout when it is structured.
/// stdout is read as one YAML or JSON document: an object with apiVersion, kind and
/// metadata is the desired state; a mapping with only some of them is an error (a script
/// that meant to answer an object and got it wrong must not pass silently); any other text
/// is log lines.
///
/// # Errors
/// [`OutputError`] when the output is a malformed object.
pub fn classify_output(
    stdout: &str,
    returned: Option<&Value>,
) -> Result<ScriptOutput, OutputError> {
    if let Some(value) = returned.filter(|v| v.is_object()) {
        return object_or_error(value.clone());
    }
    let text = stdout.trim();
    if text.is_empty() {
        return Ok(ScriptOutput::Empty);
    }
    match parse_document(text) {
        Ok(value @ Value::Object(_)) => {
            if looks_like_object(&value) {
                object_or_error(value)
            } else {
                Ok(ScriptOutput::Logs(stdout.to_string()))
            }
        }
        Ok(_) => Ok(ScriptOutput::Logs(stdout.to_string())),
        Err(e) if text.starts_with('{') => Err(OutputError::Unparsable(e)),
        Err(_) => Ok(ScriptOutput::Logs(stdout.to_string())),
    }
}

/// A mapping "looks like" an object when it carries any of the identifying fields; a log
/// line such as `status: done` does not.
fn looks_like_object(value: &Value) -> bool {
    ["apiVersion", "kind", "metadata"]
        .iter()
        .any(|k| value.get(k).is_some())
}

fn object_or_error(value: Value) -> Result<ScriptOutput, OutputError> {
    for field in ["apiVersion", "kind", "metadata"] {
        let present = match value.get(field) {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Object(_)) => field == "metadata",
            _ => false,
        };
        if !present {
            return Err(OutputError::Incomplete(field));
        }
    }
    Ok(ScriptOutput::Object(value))
}

/// A desired object that would change the input's identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("script tried to change {field} from {from:?} to {to:?}; nothing was written")]
pub struct IdentityError {
    /// Which identifying field differs.
    pub field: &'static str,
    /// The input's value.
    pub from: String,
    /// The script's value.
    pub to: String,
}

/// Checks that `desired` keeps `input`'s apiVersion, kind, namespace, name, and uid when
/// `desired` states one.
///
/// # Errors
/// [`IdentityError`] naming the first field that differs.
pub fn check_identity(input: &Value, desired: &Value) -> Result<(), IdentityError> {
    let text = |v: &Value, path: &[&str]| -> String {
        path.iter()
            .try_fold(v, |v, k| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let fields: [(&'static str, &[&str]); 4] = [
        ("apiVersion", &["apiVersion"]),
        ("kind", &["kind"]),
        ("metadata.namespace", &["metadata", "namespace"]),
        ("metadata.name", &["metadata", "name"]),
    ];
    for (field, path) in fields {
        let (from, to) = (text(input, path), text(desired, path));
        if from != to {
            return Err(IdentityError { field, from, to });
        }
    }
    let to_uid = text(desired, &["metadata", "uid"]);
    let from_uid = text(input, &["metadata", "uid"]);
    if !to_uid.is_empty() && to_uid != from_uid {
        return Err(IdentityError {
            field: "metadata.uid",
            from: from_uid,
            to: to_uid,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "ns", "uid": "u1"}})
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(Outcome::from_exit_code(0), Outcome::NoChange);
        assert_eq!(Outcome::from_exit_code(2), Outcome::Changed);
        assert_eq!(Outcome::from_exit_code(1), Outcome::Failed(1));
        assert_eq!(Outcome::from_exit_code(137), Outcome::Failed(137));
    }

    #[test]
    fn yaml_and_json_objects_are_desired_state() {
        let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: ns\n";
        assert_eq!(
            classify_output(yaml, None),
            Ok(ScriptOutput::Object(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "ns"}})
            ))
        );
        let json_text = serde_json::to_string(&cm("a")).expect("json");
        assert_eq!(
            classify_output(&json_text, None),
            Ok(ScriptOutput::Object(cm("a")))
        );
    }

    #[test]
    fn returned_record_wins_over_stdout() {
        assert_eq!(
            classify_output("some log line\n", Some(&cm("a"))),
            Ok(ScriptOutput::Object(cm("a")))
        );
    }

    #[test]
    fn plain_text_and_empty_output_are_not_objects() {
        assert_eq!(classify_output("", None), Ok(ScriptOutput::Empty));
        assert_eq!(classify_output("  \n", None), Ok(ScriptOutput::Empty));
        assert_eq!(
            classify_output("labelled 3 configmaps\n", None),
            Ok(ScriptOutput::Logs("labelled 3 configmaps\n".into()))
        );
        assert_eq!(
            classify_output("status: done\n", None),
            Ok(ScriptOutput::Logs("status: done\n".into()))
        );
        assert_eq!(
            classify_output("%%% garbage ::: {{\n", None),
            Ok(ScriptOutput::Logs("%%% garbage ::: {{\n".into()))
        );
    }

    #[test]
    fn malformed_objects_are_errors() {
        assert!(matches!(
            classify_output("{\"apiVersion\": \"v1\", \"kind\":", None),
            Err(OutputError::Unparsable(_))
        ));
        assert_eq!(
            classify_output("apiVersion: v1\nkind: ConfigMap\n", None),
            Err(OutputError::Incomplete("metadata"))
        );
        assert_eq!(
            classify_output("kind: ConfigMap\nmetadata: {name: a}\n", None),
            Err(OutputError::Incomplete("apiVersion"))
        );
    }

    #[test]
    fn identity_must_be_kept() {
        assert_eq!(check_identity(&cm("a"), &cm("a")), Ok(()));
        let renamed = check_identity(&cm("a"), &cm("b")).expect_err("rename");
        assert_eq!(renamed.field, "metadata.name");
        assert_eq!(
            renamed.to_string(),
            "script tried to change metadata.name from \"a\" to \"b\"; nothing was written"
        );
        let mut moved = cm("a");
        moved["metadata"]["namespace"] = json!("other");
        assert_eq!(
            check_identity(&cm("a"), &moved).expect_err("move").field,
            "metadata.namespace"
        );
        let mut rekinded = cm("a");
        rekinded["kind"] = json!("Secret");
        assert_eq!(
            check_identity(&cm("a"), &rekinded).expect_err("kind").field,
            "kind"
        );
        let mut other_uid = cm("a");
        other_uid["metadata"]["uid"] = json!("u2");
        assert_eq!(
            check_identity(&cm("a"), &other_uid).expect_err("uid").field,
            "metadata.uid"
        );
        let mut no_uid = cm("a");
        no_uid["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("uid");
        assert_eq!(check_identity(&cm("a"), &no_uid), Ok(()));
    }

    #[test]
    fn a_cut_stdout_is_never_the_desired_object() {
        let object = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: v";
        let cut = crate::script::Captured {
            text: object.to_string(),
            total_bytes: 10_000_000,
            truncated: true,
        };
        assert_eq!(
            classify_changed(&cut, None),
            Err(OutputError::Cut {
                kept: object.len(),
                total: 10_000_000
            })
        );
        let whole = crate::script::Captured {
            truncated: false,
            ..cut.clone()
        };
        assert!(matches!(
            classify_changed(&whole, None),
            Ok(ScriptOutput::Object(_))
        ));
    }
}
