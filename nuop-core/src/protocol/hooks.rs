//! The `webhooks` and `conversion` fields of a script's `config`: which admission
//! requests the script's `main validate` / `main mutate` answer and which CRD its
//! `main convert` converts.
//!
//! Pure: no I/O. Kinds stay kinds here; the webhook runtime resolves them to plural
//! resources by discovery when it registers the configurations. Every problem is a
//! [`ConfigProblem::At`] naming the path (`webhooks.validate.timeoutSeconds`).
//!
//! ```yaml
//! webhooks:
//!   validate:
//!     operations: [CREATE, UPDATE]      # default: CREATE, UPDATE
//!     rules:                            # default: the controller's own kind
//!       - {groups: [""], versions: [v1], kinds: [ConfigMap], scope: Namespaced}
//!     namespaceSelector: {matchLabels: {policy: strict}}
//!     objectSelector: {matchExpressions: [{key: skip, operator: DoesNotExist}]}
//!     failurePolicy: Fail               # Fail (default) or Ignore
//!     timeoutSeconds: 5                 # 1..=10, default 5
//!     sideEffects: None                 # the only value accepted
//!   mutate: {operations: [CREATE]}
//! conversion: {crd: widgets.example.com}
//! ```

use std::time::Duration;

use serde_json::{Map, Value};

use super::config::{ConfigProblem, kind_of};

/// Default `timeoutSeconds` of a webhook.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest a conversion script may run: the API server gives a conversion webhook
/// 30 s, and the answer must leave before that.
pub const MAX_CONVERSION_TIMEOUT: Duration = Duration::from_secs(25);

/// A script's admission webhooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Webhooks {
    /// `webhooks.validate`: served by `main validate`.
    pub validate: Option<AdmissionHook>,
    /// `webhooks.mutate`: served by `main mutate`.
    pub mutate: Option<AdmissionHook>,
}

impl Webhooks {
    /// Whether no admission webhook is declared.
    pub fn is_empty(&self) -> bool {
        self.validate.is_none() && self.mutate.is_none()
    }
}

/// What the API server does when the webhook cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Reject the request.
    #[default]
    Fail,
    /// Admit the request.
    Ignore,
}

impl FailurePolicy {
    /// As the webhook configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "Fail",
            Self::Ignore => "Ignore",
        }
    }
}

/// Which objects a rule matches by scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleScope {
    /// Namespaced and cluster-scoped (`*`).
    #[default]
    Any,
    /// Namespaced objects only.
    Namespaced,
    /// Cluster-scoped objects only.
    Cluster,
}

impl RuleScope {
    /// As the webhook configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "*",
            Self::Namespaced => "Namespaced",
            Self::Cluster => "Cluster",
        }
    }
}

/// One rule of a webhook: the kinds (not yet plurals) it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRule {
    /// API groups (`""` for core, `*` for all).
    pub groups: Vec<String>,
    /// API versions (`*` for all).
    pub versions: Vec<String>,
    /// Kinds (`ConfigMap`, or `*`); resolved to resources by discovery.
    pub kinds: Vec<String>,
    /// Which scope the rule matches.
    pub scope: RuleScope,
    /// Operations for this rule; the hook's `operations` when not given.
    pub operations: Vec<String>,
}

/// One validating or mutating webhook of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionHook {
    /// The rules; never empty (defaults to the controller's own kind; test
    /// `an_empty_hook_defaults_to_the_controllers_kind`).
    pub rules: Vec<HookRule>,
    /// `namespaceSelector`, a LabelSelector as JSON.
    pub namespace_selector: Option<Value>,
    /// `objectSelector`, a LabelSelector as JSON.
    pub object_selector: Option<Value>,
    /// `failurePolicy`.
    pub failure_policy: FailurePolicy,
    /// `timeoutSeconds`: how long the API server waits for the answer.
    pub timeout: Duration,
}

impl AdmissionHook {
    /// How long the script of this hook may run: the config's `timeout`, but always
    /// below the hook's `timeoutSeconds` (80 % of it), so nuop answers — denies or
    /// admits per `failurePolicy` — before the API server gives up on it.
    pub fn script_timeout(&self, config_timeout: Duration) -> Duration {
        config_timeout.min(self.timeout.mul_f64(0.8))
    }
}

/// `conversion`: the CRD whose versions `main convert` converts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionHook {
    /// The CRD's name, `<plural>.<group>`.
    pub crd: String,
}

impl ConversionHook {
    /// How long the conversion script may run: the config's `timeout`, at most
    /// [`MAX_CONVERSION_TIMEOUT`].
    pub fn script_timeout(config_timeout: Duration) -> Duration {
        config_timeout.min(MAX_CONVERSION_TIMEOUT)
    }
}

const OPERATIONS: [&str; 5] = ["CREATE", "UPDATE", "DELETE", "CONNECT", "*"];

fn at(path: impl Into<String>, reason: impl Into<String>) -> ConfigProblem {
    ConfigProblem::At {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Parses `webhooks`; `own` is the controller's (group, version, kind), the default rule.
///
/// # Errors
/// [`ConfigProblem::At`] naming the path of what is wrong.
pub fn parse_webhooks(
    value: Option<&Value>,
    own: (&str, &str, &str),
) -> Result<Webhooks, ConfigProblem> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(Webhooks::default());
    };
    let map = value.as_object().ok_or_else(|| {
        at(
            "webhooks",
            format!(
                "expected a mapping with validate and/or mutate, found {}",
                kind_of(value)
            ),
        )
    })?;
    let mut hooks = Webhooks::default();
    for (key, hook) in map {
        let path = format!("webhooks.{key}");
        match key.as_str() {
            "validate" => hooks.validate = Some(parse_hook(&path, hook, own)?),
            "mutate" => hooks.mutate = Some(parse_hook(&path, hook, own)?),
            other => {
                return Err(at(
                    path,
                    format!("unknown webhook `{other}`: expected validate or mutate"),
                ));
            }
        }
    }
    Ok(hooks)
}

fn parse_hook(
    path: &str,
    value: &Value,
    own: (&str, &str, &str),
) -> Result<AdmissionHook, ConfigProblem> {
    let empty = Map::new();
    let map = match value {
        Value::Null => &empty,
        Value::Object(map) => map,
        other => {
            return Err(at(
                path,
                format!("expected a mapping, found {}", kind_of(other)),
            ));
        }
    };
    let mut operations = vec!["CREATE".to_string(), "UPDATE".to_string()];
    let mut rules = None;
    let mut hook = AdmissionHook {
        rules: Vec::new(),
        namespace_selector: None,
        object_selector: None,
        failure_policy: FailurePolicy::Fail,
        timeout: DEFAULT_HOOK_TIMEOUT,
    };
    for (key, field) in map {
        let here = format!("{path}.{key}");
        match key.as_str() {
            "operations" => operations = parse_operations(&here, field)?,
            "rules" => rules = Some(field),
            "namespaceSelector" | "namespace_selector" => {
                hook.namespace_selector = Some(parse_selector(&here, field)?);
            }
            "objectSelector" | "object_selector" => {
                hook.object_selector = Some(parse_selector(&here, field)?);
            }
            "failurePolicy" | "failure_policy" => {
                hook.failure_policy = match field.as_str() {
                    Some("Fail") => FailurePolicy::Fail,
                    Some("Ignore") => FailurePolicy::Ignore,
                    _ => return Err(at(here, format!("expected Fail or Ignore, found {field}"))),
                };
            }
            "timeoutSeconds" | "timeout_seconds" => {
                let secs = field.as_u64().filter(|s| (1..=10).contains(s));
                hook.timeout = Duration::from_secs(secs.ok_or_else(|| {
                    at(
                        here,
                        format!(
                            "expected whole seconds from 1 to 10 (the API server's limit), found {field}"
                        ),
                    )
                })?);
            }
            "sideEffects" | "side_effects" => {
                if field.as_str() != Some("None") {
                    return Err(at(
                        here,
                        format!(
                            "only None is supported (k8s writes are refused in webhook phases, and dry-run requests must be safe), found {field}"
                        ),
                    ));
                }
            }
            other => {
                return Err(at(
                    here,
                    format!(
                        "unknown field `{other}`: expected operations, rules, namespaceSelector, objectSelector, failurePolicy, timeoutSeconds or sideEffects"
                    ),
                ));
            }
        }
    }
    hook.rules = match rules {
        None => vec![HookRule {
            groups: vec![own.0.to_string()],
            versions: vec![own.1.to_string()],
            kinds: vec![own.2.to_string()],
            scope: RuleScope::Any,
            operations: operations.clone(),
        }],
        Some(value) => parse_rules(&format!("{path}.rules"), value, &operations, own)?,
    };
    Ok(hook)
}

fn parse_operations(path: &str, value: &Value) -> Result<Vec<String>, ConfigProblem> {
    let list = value.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        at(
            path,
            format!(
                "expected a non-empty list of CREATE, UPDATE, DELETE, CONNECT or *, found {}",
                kind_of(value)
            ),
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, op)| {
            op.as_str()
                .map(str::to_ascii_uppercase)
                .filter(|op| OPERATIONS.contains(&op.as_str()))
                .ok_or_else(|| {
                    at(
                        format!("{path}[{i}]"),
                        format!("expected CREATE, UPDATE, DELETE, CONNECT or *, found {op}"),
                    )
                })
        })
        .collect()
}

fn strings(
    path: &str,
    value: &Value,
    allow_empty_items: bool,
) -> Result<Vec<String>, ConfigProblem> {
    let list = match value {
        Value::String(s) => vec![Value::String(s.clone())],
        Value::Array(list) if !list.is_empty() => list.clone(),
        other => {
            return Err(at(
                path,
                format!(
                    "expected a non-empty list of strings, found {}",
                    kind_of(other)
                ),
            ));
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| match item.as_str() {
            Some(s) if allow_empty_items || !s.is_empty() => Ok(s.to_string()),
            _ => Err(at(
                format!("{path}[{i}]"),
                format!("expected a non-empty string, found {item}"),
            )),
        })
        .collect()
}

fn parse_rules(
    path: &str,
    value: &Value,
    operations: &[String],
    own: (&str, &str, &str),
) -> Result<Vec<HookRule>, ConfigProblem> {
    let list = value.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        at(
            path,
            format!(
                "expected a non-empty list of rules, found {}",
                kind_of(value)
            ),
        )
    })?;
    let mut rules = Vec::new();
    for (i, rule) in list.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let map = rule.as_object().ok_or_else(|| {
            at(
                &here,
                format!("expected a mapping, found {}", kind_of(rule)),
            )
        })?;
        let mut parsed = HookRule {
            groups: vec![own.0.to_string()],
            versions: vec![own.1.to_string()],
            kinds: vec![own.2.to_string()],
            scope: RuleScope::Any,
            operations: operations.to_vec(),
        };
        for (key, field) in map {
            let field_path = format!("{here}.{key}");
            match key.as_str() {
                "groups" | "apiGroups" => parsed.groups = strings(&field_path, field, true)?,
                "versions" | "apiVersions" => parsed.versions = strings(&field_path, field, false)?,
                "kinds" => parsed.kinds = strings(&field_path, field, false)?,
                "operations" => parsed.operations = parse_operations(&field_path, field)?,
                "scope" => {
                    parsed.scope = match field.as_str() {
                        Some("*") => RuleScope::Any,
                        Some("Namespaced") => RuleScope::Namespaced,
                        Some("Cluster") => RuleScope::Cluster,
                        _ => {
                            return Err(at(
                                field_path,
                                format!("expected *, Namespaced or Cluster, found {field}"),
                            ));
                        }
                    }
                }
                other => {
                    return Err(at(
                        field_path,
                        format!(
                            "unknown field `{other}`: expected groups, versions, kinds, scope or operations"
                        ),
                    ));
                }
            }
        }
        rules.push(parsed);
    }
    Ok(rules)
}

/// A LabelSelector: `matchLabels` (string values) and `matchExpressions` (key,
/// operator In/NotIn/Exists/DoesNotExist, values) and nothing else.
fn parse_selector(path: &str, value: &Value) -> Result<Value, ConfigProblem> {
    let map = value.as_object().ok_or_else(|| {
        at(
            path,
            format!(
                "expected a LabelSelector mapping (matchLabels, matchExpressions), found {}",
                kind_of(value)
            ),
        )
    })?;
    for (key, field) in map {
        let here = format!("{path}.{key}");
        match key.as_str() {
            "matchLabels" => {
                let labels = field.as_object().ok_or_else(|| {
                    at(
                        &here,
                        format!("expected a mapping, found {}", kind_of(field)),
                    )
                })?;
                if let Some((k, v)) = labels.iter().find(|(_, v)| !v.is_string()) {
                    return Err(at(
                        format!("{here}.{k}"),
                        format!("expected a string, found {}", kind_of(v)),
                    ));
                }
            }
            "matchExpressions" => {
                let list = field.as_array().ok_or_else(|| {
                    at(&here, format!("expected a list, found {}", kind_of(field)))
                })?;
                for (i, expr) in list.iter().enumerate() {
                    let expr_path = format!("{here}[{i}]");
                    let ok_key = expr
                        .get("key")
                        .and_then(Value::as_str)
                        .is_some_and(|k| !k.is_empty());
                    if !ok_key {
                        return Err(at(expr_path, "needs a `key`"));
                    }
                    match expr.get("operator").and_then(Value::as_str) {
                        Some("In" | "NotIn") => {
                            let values_ok = expr
                                .get("values")
                                .and_then(Value::as_array)
                                .is_some_and(|v| !v.is_empty() && v.iter().all(Value::is_string));
                            if !values_ok {
                                return Err(at(
                                    expr_path,
                                    "operators In and NotIn need a non-empty list of string `values`",
                                ));
                            }
                        }
                        Some("Exists" | "DoesNotExist") => {}
                        _ => {
                            return Err(at(
                                format!("{expr_path}.operator"),
                                "expected In, NotIn, Exists or DoesNotExist",
                            ));
                        }
                    }
                }
            }
            other => {
                return Err(at(
                    here,
                    format!("unknown field `{other}`: expected matchLabels or matchExpressions"),
                ));
            }
        }
    }
    Ok(value.clone())
}

/// Parses `conversion`.
///
/// # Errors
/// [`ConfigProblem::At`] naming the path of what is wrong.
pub fn parse_conversion(value: Option<&Value>) -> Result<Option<ConversionHook>, ConfigProblem> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let map = value.as_object().ok_or_else(|| {
        at(
            "conversion",
            format!("expected a mapping with `crd`, found {}", kind_of(value)),
        )
    })?;
    let mut crd = None;
    for (key, field) in map {
        match key.as_str() {
            "crd" => crd = field.as_str().map(str::to_string),
            other => {
                return Err(at(
                    format!("conversion.{other}"),
                    "unknown field: expected crd",
                ));
            }
        }
    }
    let crd = crd
        .filter(|c| c.contains('.') && !c.starts_with('.'))
        .ok_or_else(|| {
            at(
                "conversion.crd",
                "expected the CRD's name, `<plural>.<group>` (e.g. widgets.example.com)",
            )
        })?;
    Ok(Some(ConversionHook { crd }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OWN: (&str, &str, &str) = ("", "v1", "ConfigMap");

    fn problem_path(value: Value) -> String {
        match parse_webhooks(Some(&value), OWN).expect_err("should be rejected") {
            ConfigProblem::At { path, .. } => path,
            other => panic!("expected an At problem, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_hook_defaults_to_the_controllers_kind() {
        let hooks = parse_webhooks(Some(&json!({"validate": {}})), OWN).expect("valid");
        let validate = hooks.validate.expect("validate");
        assert!(hooks.mutate.is_none());
        assert_eq!(validate.failure_policy, FailurePolicy::Fail);
        assert_eq!(validate.timeout, Duration::from_secs(5));
        assert_eq!(
            validate.rules,
            vec![HookRule {
                groups: vec!["".into()],
                versions: vec!["v1".into()],
                kinds: vec!["ConfigMap".into()],
                scope: RuleScope::Any,
                operations: vec!["CREATE".into(), "UPDATE".into()],
            }]
        );
        assert!(parse_webhooks(None, OWN).expect("none").is_empty());
    }

    #[test]
    fn every_field_is_read() {
        let hooks = parse_webhooks(
            Some(&json!({"mutate": {
                "operations": ["create"],
                "rules": [{"groups": ["apps"], "versions": ["v1"], "kinds": ["Deployment"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchLabels": {"team": "a"}},
                "objectSelector": {"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
                "failurePolicy": "Ignore",
                "timeoutSeconds": 3,
                "sideEffects": "None"
            }})),
            OWN,
        )
        .expect("valid");
        let mutate = hooks.mutate.expect("mutate");
        assert_eq!(mutate.failure_policy, FailurePolicy::Ignore);
        assert_eq!(mutate.timeout, Duration::from_secs(3));
        assert_eq!(mutate.rules[0].kinds, vec!["Deployment"]);
        assert_eq!(mutate.rules[0].operations, vec!["CREATE"]);
        assert_eq!(mutate.rules[0].scope, RuleScope::Namespaced);
        assert_eq!(
            mutate.namespace_selector,
            Some(json!({"matchLabels": {"team": "a"}}))
        );
        assert!(mutate.object_selector.is_some());
    }

    #[test]
    fn problems_name_their_path() {
        let cases = [
            (
                json!({"validate": {"timeoutSeconds": 11}}),
                "webhooks.validate.timeoutSeconds",
            ),
            (
                json!({"validate": {"timeoutSeconds": 0}}),
                "webhooks.validate.timeoutSeconds",
            ),
            (
                json!({"validate": {"sideEffects": "Some"}}),
                "webhooks.validate.sideEffects",
            ),
            (
                json!({"validate": {"failurePolicy": "fail"}}),
                "webhooks.validate.failurePolicy",
            ),
            (
                json!({"validate": {"operations": ["PATCH"]}}),
                "webhooks.validate.operations[0]",
            ),
            (
                json!({"validate": {"operations": []}}),
                "webhooks.validate.operations",
            ),
            (
                json!({"mutate": {"rules": [{"kinds": []}]}}),
                "webhooks.mutate.rules[0].kinds",
            ),
            (
                json!({"mutate": {"rules": [{"scope": "all"}]}}),
                "webhooks.mutate.rules[0].scope",
            ),
            (
                json!({"mutate": {"rules": [{"resources": ["x"]}]}}),
                "webhooks.mutate.rules[0].resources",
            ),
            (
                json!({"mutate": {"namespaceSelector": {"matchLabels": {"a": 1}}}}),
                "webhooks.mutate.namespaceSelector.matchLabels.a",
            ),
            (
                json!({"mutate": {"objectSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}),
                "webhooks.mutate.objectSelector.matchExpressions[0]",
            ),
            (
                json!({"mutate": {"objectSelector": {"labels": {}}}}),
                "webhooks.mutate.objectSelector.labels",
            ),
            (json!({"audit": {}}), "webhooks.audit"),
            (
                json!({"validate": {"colour": 1}}),
                "webhooks.validate.colour",
            ),
            (json!({"validate": []}), "webhooks.validate"),
            (json!(["validate"]), "webhooks"),
        ];
        for (value, path) in cases {
            assert_eq!(problem_path(value.clone()), path, "{value}");
        }
    }

    #[test]
    fn the_script_timeout_stays_below_the_hooks() {
        let hook = parse_webhooks(Some(&json!({"validate": {"timeoutSeconds": 2}})), OWN)
            .expect("valid")
            .validate
            .expect("validate");
        assert_eq!(
            hook.script_timeout(Duration::from_secs(30)),
            Duration::from_millis(1600)
        );
        assert_eq!(
            hook.script_timeout(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            ConversionHook::script_timeout(Duration::from_secs(60)),
            MAX_CONVERSION_TIMEOUT
        );
    }

    #[test]
    fn conversion_names_a_crd() {
        assert_eq!(
            parse_conversion(Some(&json!({"crd": "widgets.example.com"}))).expect("valid"),
            Some(ConversionHook {
                crd: "widgets.example.com".into()
            })
        );
        assert_eq!(parse_conversion(None).expect("none"), None);
        for bad in [
            json!({"crd": "widgets"}),
            json!({}),
            json!("x"),
            json!({"crd": "a.b", "versions": 1}),
        ] {
            assert!(
                matches!(parse_conversion(Some(&bad)), Err(ConfigProblem::At { .. })),
                "{bad}"
            );
        }
    }
}
