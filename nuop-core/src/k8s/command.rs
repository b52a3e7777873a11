//! An [`Invocation`] checked and typed: which command, with which arguments.
//!
//! Pure: no I/O. Both executors hand over the same [`Invocation`]; this is the one place
//! that decides what its arguments mean, so a missing or malformed argument is the same
//! [`ErrorCode::Usage`] error, naming the argument, under either executor.

use serde_json::Value;

use super::selector::{FieldSelector, LabelSelector};
use super::{ErrorCode, Invocation, K8sError};
use crate::cluster::{KindName, PatchType, Propagation};

/// Which namespace(s) a read or write addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Not given: the primary's namespace for namespaced kinds.
    Default,
    /// `-n <ns>`.
    Namespace(String),
    /// `-A`.
    All,
}

/// One or more objects from the pipeline, remembering which it was (a record answers a
/// record, a list a list).
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    /// The objects.
    pub items: Vec<Value>,
    /// Whether the input was one record rather than a list.
    pub single: bool,
}

/// A `k8s` command with typed arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum K8sCommand {
    /// `k8s get <kind> <name>`.
    Get {
        /// The kind.
        kind: KindName,
        /// The name.
        name: String,
        /// `-n`, or the default.
        scope: Scope,
        /// `--live`.
        live: bool,
    },
    /// `k8s list <kind>`.
    List {
        /// The kind.
        kind: KindName,
        /// `-n`, `-A`, or the default.
        scope: Scope,
        /// `-l`.
        labels: Option<LabelSelector>,
        /// `--field-selector`.
        fields: Option<FieldSelector>,
        /// `--live`.
        live: bool,
    },
    /// `$objects | k8s apply`.
    Apply {
        /// What to apply.
        objects: Objects,
        /// `--status`.
        status: bool,
        /// `--dry-run`.
        dry_run: bool,
    },
    /// `$patch | k8s patch <kind> <name>`.
    Patch {
        /// The kind.
        kind: KindName,
        /// The name.
        name: String,
        /// `-n`, or the default.
        scope: Scope,
        /// Merge or JSON patch (`--type`, else by the input's shape).
        patch_type: PatchType,
        /// The document.
        patch: Value,
        /// `--status`.
        status: bool,
    },
    /// `$object | k8s create`.
    Create {
        /// The object.
        object: Value,
        /// `--dry-run`.
        dry_run: bool,
    },
    /// `k8s delete <kind> <name>`.
    Delete {
        /// The kind.
        kind: KindName,
        /// The name.
        name: String,
        /// `-n`, or the default.
        scope: Scope,
        /// `--propagation`.
        propagation: Propagation,
    },
    /// `$objects | k8s own`.
    Own {
        /// The objects to stamp.
        objects: Objects,
    },
    /// `k8s owner-ref`.
    OwnerRef,
    /// `k8s children <kind>`.
    Children {
        /// The kind.
        kind: KindName,
    },
}

fn usage(verb: &str, target: &str, reason: impl Into<String>) -> K8sError {
    K8sError {
        verb: verb.to_string(),
        target: target.to_string(),
        reason: reason.into(),
        code: ErrorCode::Usage,
    }
}

struct Args<'a> {
    inv: &'a Invocation,
}

impl Args<'_> {
    fn verb(&self) -> &str {
        &self.inv.verb
    }

    fn string(&self, name: &str) -> Result<Option<String>, K8sError> {
        match self.inv.args.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(usage(
                self.verb(),
                "arguments",
                format!("`{name}` must not be empty"),
            )),
            Some(other) => Err(usage(
                self.verb(),
                "arguments",
                format!("`{name}` must be a string, not {other}"),
            )),
        }
    }

    fn required(&self, name: &str) -> Result<String, K8sError> {
        self.string(name)?.ok_or_else(|| {
            usage(
                self.verb(),
                "arguments",
                format!("missing required argument `{name}`"),
            )
        })
    }

    fn switch(&self, name: &str) -> Result<bool, K8sError> {
        match self.inv.args.get(name) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(usage(
                self.verb(),
                "arguments",
                format!("`--{name}` is a switch, not {other}"),
            )),
        }
    }

    fn kind(&self) -> Result<KindName, K8sError> {
        Ok(KindName {
            kind: self.required("kind")?,
            api_version: self.string("api-version")?,
        })
    }

    fn scope(&self, all_allowed: bool) -> Result<Scope, K8sError> {
        let namespace = self.string("namespace")?;
        let all = all_allowed && self.switch("all-namespaces")?;
        match (namespace, all) {
            (Some(_), true) => Err(usage(
                self.verb(),
                "arguments",
                "`--namespace` and `--all-namespaces` exclude each other",
            )),
            (Some(ns), false) => Ok(Scope::Namespace(ns)),
            (None, true) => Ok(Scope::All),
            (None, false) => Ok(Scope::Default),
        }
    }

    fn objects(&self) -> Result<Objects, K8sError> {
        match &self.inv.input {
            Value::Object(_) => Ok(Objects {
                items: vec![self.inv.input.clone()],
                single: true,
            }),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_object() {
                        return Err(usage(
                            self.verb(),
                            "input",
                            format!("item {i} of the input is not an object (a record)"),
                        ));
                    }
                }
                Ok(Objects {
                    items: items.clone(),
                    single: false,
                })
            }
            Value::Null => Err(usage(
                self.verb(),
                "input",
                "expects an object or a list of objects as input",
            )),
            other => Err(usage(
                self.verb(),
                "input",
                format!("expects an object or a list of objects as input, not {other}"),
            )),
        }
    }
}

impl K8sCommand {
    /// Checks and types an invocation.
    ///
    /// # Errors
    /// [`ErrorCode::Usage`] naming the unknown verb, the missing or malformed argument,
    /// or what is wrong with the input.
    pub fn parse(inv: &Invocation) -> Result<Self, K8sError> {
        let args = Args { inv };
        let verb = inv.verb.as_str();
        match verb {
            "get" => Ok(Self::Get {
                kind: args.kind()?,
                name: args.required("name")?,
                scope: args.scope(false)?,
                live: args.switch("live")?,
            }),
            "list" => {
                let labels = match inv.args.get("selector") {
                    None | Some(Value::Null) => None,
                    Some(value) => Some(
                        LabelSelector::from_json(value)
                            .map_err(|e| usage(verb, "arguments", format!("`--selector`: {e}")))?,
                    ),
                };
                let fields = match args.string("field-selector")? {
                    None => None,
                    Some(text) => Some(FieldSelector::parse(&text).map_err(|e| {
                        usage(verb, "arguments", format!("`--field-selector`: {e}"))
                    })?),
                };
                Ok(Self::List {
                    kind: args.kind()?,
                    scope: args.scope(true)?,
                    labels,
                    fields,
                    live: args.switch("live")?,
                })
            }
            "apply" => Ok(Self::Apply {
                objects: args.objects()?,
                status: args.switch("status")?,
                dry_run: args.switch("dry-run")?,
            }),
            "patch" => {
                let patch = inv.input.clone();
                let patch_type = match (args.string("type")?.as_deref(), &patch) {
                    (None | Some("merge"), Value::Object(_)) => PatchType::Merge,
                    (None | Some("json"), Value::Array(_)) => PatchType::Json,
                    (Some("merge"), _) => {
                        return Err(usage(verb, "input", "a merge patch must be a record"));
                    }
                    (Some("json"), _) => {
                        return Err(usage(
                            verb,
                            "input",
                            "a JSON patch must be a list of operations",
                        ));
                    }
                    (Some(other), _) => {
                        return Err(usage(
                            verb,
                            "arguments",
                            format!("`--type` must be merge or json, not {other}"),
                        ));
                    }
                    (None, _) => {
                        return Err(usage(
                            verb,
                            "input",
                            "expects a patch as input: a record (merge) or a list (JSON patch)",
                        ));
                    }
                };
                if patch_type == PatchType::Json
                    && serde_json::from_value::<json_patch::Patch>(patch.clone()).is_err()
                {
                    return Err(usage(
                        verb,
                        "input",
                        "the JSON patch is not a list of {op, path, value} operations",
                    ));
                }
                Ok(Self::Patch {
                    kind: args.kind()?,
                    name: args.required("name")?,
                    scope: args.scope(false)?,
                    patch_type,
                    patch,
                    status: args.switch("status")?,
                })
            }
            "create" => {
                let objects = args.objects()?;
                if !objects.single {
                    return Err(usage(verb, "input", "expects one object (a record)"));
                }
                Ok(Self::Create {
                    object: objects.items.into_iter().next().unwrap_or_default(),
                    dry_run: args.switch("dry-run")?,
                })
            }
            "delete" => {
                let propagation = match args.string("propagation")?.as_deref() {
                    None | Some("background") => Propagation::Background,
                    Some("foreground") => Propagation::Foreground,
                    Some("orphan") => Propagation::Orphan,
                    Some(other) => {
                        return Err(usage(
                            verb,
                            "arguments",
                            format!(
                                "`--propagation` must be background, foreground or orphan, not {other}"
                            ),
                        ));
                    }
                };
                Ok(Self::Delete {
                    kind: args.kind()?,
                    name: args.required("name")?,
                    scope: args.scope(false)?,
                    propagation,
                })
            }
            "own" => Ok(Self::Own {
                objects: args.objects()?,
            }),
            "owner-ref" => Ok(Self::OwnerRef),
            "children" => Ok(Self::Children { kind: args.kind()? }),
            other => Err(usage(
                other,
                "arguments",
                format!("there is no command `k8s {other}`"),
            )),
        }
    }
}

/// Checks that an object to write names itself: apiVersion, kind and metadata.name
/// (or metadata.generateName when `generate_name_ok`).
///
/// # Errors
/// [`ErrorCode::Usage`] naming the missing field.
pub fn check_object(verb: &str, object: &Value, generate_name_ok: bool) -> Result<(), K8sError> {
    let has = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    for (pointer, name) in [("/apiVersion", "apiVersion"), ("/kind", "kind")] {
        if !has(pointer) {
            return Err(usage(verb, "input", format!("the object has no {name}")));
        }
    }
    let named = has("/metadata/name") || (generate_name_ok && has("/metadata/generateName"));
    if !named {
        return Err(usage(verb, "input", "the object has no metadata.name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inv(verb: &str, args: Value, input: Value) -> Invocation {
        Invocation {
            verb: verb.into(),
            args: args.as_object().cloned().unwrap_or_default(),
            input,
        }
    }

    fn parse(verb: &str, args: Value, input: Value) -> Result<K8sCommand, K8sError> {
        K8sCommand::parse(&inv(verb, args, input))
    }

    fn usage_reason(verb: &str, args: Value, input: Value) -> String {
        let e = parse(verb, args, input).expect_err("usage error");
        assert_eq!(e.code, ErrorCode::Usage, "{e}");
        e.reason
    }

    #[test]
    fn get_and_list_take_their_arguments_by_name() {
        assert_eq!(
            parse(
                "get",
                json!({"kind": "cm", "name": "a", "namespace": "n", "live": true}),
                Value::Null
            )
            .expect("get"),
            K8sCommand::Get {
                kind: KindName {
                    kind: "cm".into(),
                    api_version: None
                },
                name: "a".into(),
                scope: Scope::Namespace("n".into()),
                live: true,
            }
        );
        let list = parse(
            "list",
            json!({"kind": "ConfigMap", "all-namespaces": true, "selector": {"a": "b"},
                   "field-selector": "metadata.name=x", "api-version": "v1"}),
            Value::Null,
        )
        .expect("list");
        let K8sCommand::List {
            kind,
            scope,
            labels,
            fields,
            live,
        } = list
        else {
            panic!("not a list: {list:?}");
        };
        assert_eq!(kind.api_version.as_deref(), Some("v1"));
        assert_eq!(scope, Scope::All);
        assert_eq!(labels.map(|l| l.to_string()).as_deref(), Some("a=b"));
        assert_eq!(
            fields.map(|f| f.to_string()).as_deref(),
            Some("metadata.name=x")
        );
        assert!(!live);
        assert!(matches!(
            parse("list", json!({"kind": "x"}), Value::Null).expect("list"),
            K8sCommand::List {
                scope: Scope::Default,
                labels: None,
                ..
            }
        ));
    }

    #[test]
    fn missing_and_invalid_arguments_are_usage_errors_naming_them() {
        assert!(usage_reason("get", json!({"kind": "cm"}), Value::Null).contains("`name`"));
        assert!(usage_reason("get", json!({"name": "a"}), Value::Null).contains("`kind`"));
        assert!(
            usage_reason("get", json!({"kind": "cm", "name": 3}), Value::Null).contains("`name`")
        );
        assert!(
            usage_reason("get", json!({"kind": "cm", "name": ""}), Value::Null).contains("`name`")
        );
        assert!(
            usage_reason(
                "get",
                json!({"kind": "cm", "name": "a", "live": "yes"}),
                Value::Null
            )
            .contains("`--live`")
        );
        assert!(
            usage_reason(
                "list",
                json!({"kind": "cm", "namespace": "n", "all-namespaces": true}),
                Value::Null
            )
            .contains("`--all-namespaces`")
        );
        assert!(
            usage_reason(
                "list",
                json!({"kind": "cm", "selector": "a in (b"}),
                Value::Null
            )
            .contains("`--selector`")
        );
        assert!(
            usage_reason(
                "list",
                json!({"kind": "cm", "field-selector": "x"}),
                Value::Null
            )
            .contains("`--field-selector`")
        );
        assert!(
            usage_reason(
                "delete",
                json!({"kind": "cm", "name": "a", "propagation": "now"}),
                Value::Null
            )
            .contains("`--propagation`")
        );
        assert!(
            usage_reason(
                "patch",
                json!({"kind": "cm", "name": "a", "type": "strategic"}),
                json!({})
            )
            .contains("`--type`")
        );
        assert!(usage_reason("frobnicate", json!({}), Value::Null).contains("k8s frobnicate"));
    }

    #[test]
    fn inputs_are_checked() {
        assert!(usage_reason("apply", json!({}), Value::Null).contains("input"));
        assert!(usage_reason("apply", json!({}), json!([{"a": 1}, 2])).contains("item 1"));
        assert!(usage_reason("create", json!({}), json!([{}])).contains("one object"));
        assert!(
            usage_reason("patch", json!({"kind": "cm", "name": "a"}), Value::Null)
                .contains("patch")
        );
        assert!(
            usage_reason(
                "patch",
                json!({"kind": "cm", "name": "a", "type": "merge"}),
                json!([])
            )
            .contains("record")
        );
        assert!(
            usage_reason(
                "patch",
                json!({"kind": "cm", "name": "a"}),
                json!([{"op": "jump"}])
            )
            .contains("JSON patch")
        );
        let apply = parse("apply", json!({"status": true}), json!({"kind": "X"})).expect("apply");
        assert_eq!(
            apply,
            K8sCommand::Apply {
                objects: Objects {
                    items: vec![json!({"kind": "X"})],
                    single: true
                },
                status: true,
                dry_run: false,
            }
        );
        let patch = parse(
            "patch",
            json!({"kind": "cm", "name": "a"}),
            json!([{"op": "add", "path": "/data/x", "value": "1"}]),
        )
        .expect("patch");
        assert!(matches!(
            patch,
            K8sCommand::Patch {
                patch_type: PatchType::Json,
                ..
            }
        ));
    }

    #[test]
    fn objects_to_write_must_name_themselves() {
        assert!(
            check_object(
                "apply",
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
                false
            )
            .is_ok()
        );
        let e = check_object(
            "apply",
            &json!({"apiVersion": "v1", "metadata": {"name": "a"}}),
            false,
        )
        .expect_err("no kind");
        assert!(e.reason.contains("kind"), "{e}");
        let generated =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "a-"}});
        assert!(check_object("create", &generated, true).is_ok());
        assert!(check_object("apply", &generated, false).is_err());
    }
}
