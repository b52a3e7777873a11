//! Expectations against what a case's call did: matching, readable differences with
//! JSON pointers, and `--update`'s rewrite of the expectations from the actual result.
//!
//! Pure: no I/O. The actual result is one JSON record (built by the runner):
//!
//! | key | what |
//! |---|---|
//! | `exit` | the script's exit code, null when it did not end by itself (timeout) |
//! | `outcome` | `no-change`, `changed`, `failed` or `ignored` (the runtime would not call) |
//! | `error` | what the runtime would report (its Warning Event's message), or null |
//! | `output` | the object the script answered (exit 2), or null |
//! | `object` | the input object in the cluster after the runtime wrote the answer, null when gone |
//! | `status` | `object.status` |
//! | `commands` | the `k8s` commands issued, in order (`{verb, kind, apiVersion, namespace, name, ...}`) |
//! | `cluster` | every object in the cluster afterwards |
//! | `events` | the Events the runtime would publish (`{type, reason, action, message}`) |
//! | `requeue` | seconds until the next reconcile, `never` (waits for a change) or `backoff` |
//! | `logs` | the script's log lines (stderr, and stdout when it is not an object) |
//!
//! Server-assigned metadata (`uid`, `resourceVersion`, `creationTimestamp`,
//! `generation`, `managedFields`, the `uid` of owner references) is removed from every
//! object before matching ([`normalize`]), so that expectations hold on the fake and on
//! a real API server alike.
//!
//! # Matching rules
//!
//! - `output`, `object`, `status`: a subset: every key the expectation names must be
//!   there with that value (recursively); a `null` means "absent or null"; lists must
//!   have the same length and match item by item. `outputExact`, `objectExact`: equal.
//! - `commands`: the same commands in any order, each expected one matching (as a
//!   subset) a different issued one; `commandsOrdered`: the same, in order.
//! - `events`: in order, each a subset.
//! - `cluster`: each object (found by apiVersion, kind, namespace and name) is a subset
//!   of the one in the cluster; `absent`: none of these exists.
//! - `logs`: each pattern (a regular expression) matches some log line.
//! - `error`: the pattern matches the error; `null`: no error.
//! - `exit`, `outcome`, `requeue`: equal.

use serde_json::{Map, Value};

/// One difference between an expectation and the actual result.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Where: a JSON pointer into the actual result (`/output/data/k`), or a description
    /// of the object for `cluster` (`/cluster/v1/ConfigMap/a/s/data/k`).
    pub pointer: String,
    /// The expected value; `None` when the actual one is unexpected.
    pub expected: Option<Value>,
    /// The actual value; `None` when missing.
    pub actual: Option<Value>,
    /// What kind of difference, when the values alone do not say it.
    pub note: Option<String>,
}

/// A value as one line, cut at 240 characters.
pub fn compact(value: &Value) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    if text.len() <= 240 {
        return text;
    }
    let mut end = 240;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "/"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: ")?;
        if let Some(note) = &self.note {
            write!(f, "{note}")?;
            match (&self.expected, &self.actual) {
                (Some(e), Some(a)) => write!(f, ": expected {}, got {}", compact(e), compact(a)),
                (Some(e), None) => write!(f, ": {}", compact(e)),
                (None, Some(a)) => write!(f, ": {}", compact(a)),
                (None, None) => Ok(()),
            }
        } else {
            match (&self.expected, &self.actual) {
                (Some(e), Some(a)) => write!(f, "expected {}, got {}", compact(e), compact(a)),
                (Some(e), None) => write!(f, "expected {}, got nothing", compact(e)),
                (None, Some(a)) => write!(f, "unexpected {}", compact(a)),
                (None, None) => write!(f, "differs"),
            }
        }
    }
}

/// Metadata a server assigns: not compared.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
];

/// `object` without server-assigned metadata (see the module doc). Anything but an
/// object with `metadata` is returned as it is.
pub fn normalize(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            meta.remove(*field);
        }
        if let Some(Value::Array(refs)) = meta.get_mut("ownerReferences") {
            for r in refs {
                if let Some(r) = r.as_object_mut() {
                    r.remove("uid");
                }
            }
        }
    }
    object
}

/// `actual` cut down to the shape of `expected`: the keys `expected` names (a missing
/// key stays missing, or is null when `expected` says null), lists of the same length
/// item by item. Comparing `expected` with this is the subset match.
pub fn project(actual: &Value, expected: &Value) -> Value {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => Value::Object(
            e.iter()
                .filter_map(|(k, ev)| match a.get(k) {
                    Some(av) => Some((k.clone(), project(av, ev))),
                    None if ev.is_null() => Some((k.clone(), Value::Null)),
                    None => None,
                })
                .collect(),
        ),
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            Value::Array(a.iter().zip(e).map(|(av, ev)| project(av, ev)).collect())
        }
        _ => actual.clone(),
    }
}

/// The differences between `expected` and `actual`, as JSON pointers under `prefix`.
pub fn exact_diff(prefix: &str, expected: &Value, actual: &Value) -> Vec<Mismatch> {
    json_patch::diff(expected, actual)
        .0
        .into_iter()
        .map(|op| {
            use json_patch::PatchOperation as Op;
            let path = match &op {
                Op::Add(o) => o.path.to_string(),
                Op::Remove(o) => o.path.to_string(),
                Op::Replace(o) => o.path.to_string(),
                Op::Move(o) => o.path.to_string(),
                Op::Copy(o) => o.path.to_string(),
                Op::Test(o) => o.path.to_string(),
            };
            Mismatch {
                pointer: format!("{prefix}{path}"),
                expected: expected.pointer(&path).cloned(),
                actual: actual.pointer(&path).cloned(),
                note: None,
            }
        })
        .collect()
}

/// The differences of a subset match (see [`project`]).
pub fn subset_diff(prefix: &str, expected: &Value, actual: &Value) -> Vec<Mismatch> {
    exact_diff(prefix, expected, &project(actual, expected))
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The identity an expected `cluster`/`absent` entry names: (apiVersion or none, kind,
/// namespace, name). `name`/`namespace` may be given flat (`{kind, namespace, name}`).
fn identity(entry: &Value) -> (Option<&str>, &str, Option<&str>, &str) {
    (
        text(entry, "/apiVersion"),
        text(entry, "/kind").unwrap_or_default(),
        text(entry, "/metadata/namespace").or_else(|| text(entry, "/namespace")),
        text(entry, "/metadata/name")
            .or_else(|| text(entry, "/name"))
            .unwrap_or_default(),
    )
}

/// The object of `cluster` an entry names.
fn find<'a>(cluster: &'a [Value], entry: &Value) -> Option<&'a Value> {
    let (api_version, kind, namespace, name) = identity(entry);
    cluster.iter().find(|o| {
        api_version.is_none_or(|v| text(o, "/apiVersion") == Some(v))
            && text(o, "/kind") == Some(kind)
            && text(o, "/metadata/namespace") == namespace
            && text(o, "/metadata/name") == Some(name)
    })
}

fn describe(entry: &Value) -> String {
    let (api_version, kind, namespace, name) = identity(entry);
    let mut s = String::from("/cluster/");
    if let Some(v) = api_version {
        s.push_str(&format!("{v}/"));
    }
    s.push_str(kind);
    s.push('/');
    if let Some(ns) = namespace {
        s.push_str(&format!("{ns}/"));
    }
    s.push_str(name);
    s
}

/// Pairs each expected command with a distinct actual one it matches (in order or not).
/// Returns for each expected item the index of its actual one.
fn pair(expected: &[Value], actual: &[Value], ordered: bool) -> Vec<Option<usize>> {
    let mut used = vec![false; actual.len()];
    let mut next = 0;
    expected
        .iter()
        .map(|e| {
            let start = if ordered { next } else { 0 };
            let found = (start..actual.len())
                .find(|&i| !used[i] && subset_diff("", e, &actual[i]).is_empty());
            if let Some(i) = found {
                used[i] = true;
                next = i + 1;
            }
            found
        })
        .collect()
}

fn regex_matches(pattern: &str, text: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|r| r.is_match(text))
}

/// Every difference between the expectations and the actual result.
pub fn check(expect: &Map<String, Value>, actual: &Value) -> Vec<Mismatch> {
    let mut found = Vec::new();
    let null = Value::Null;
    let get = |key: &str| actual.get(key).unwrap_or(&null);
    for (key, expected) in expect {
        let pointer = format!("/{key}");
        match key.as_str() {
            "exit" | "outcome" | "requeue" => {
                found.extend(exact_diff(&pointer, expected, get(key)));
            }
            "outputExact" | "objectExact" => {
                let target = key.trim_end_matches("Exact");
                found.extend(exact_diff(&format!("/{target}"), expected, get(target)));
            }
            "output" | "object" | "status" => {
                found.extend(subset_diff(&pointer, expected, get(key)));
            }
            "error" => match (expected, get("error")) {
                (Value::Null, Value::Null) => {}
                (Value::String(pattern), Value::String(error)) if regex_matches(pattern, error) => {
                }
                (e, a) => found.push(Mismatch {
                    pointer,
                    expected: Some(e.clone()),
                    actual: Some(a.clone()),
                    note: Some(if e.is_null() {
                        "expected no error".into()
                    } else {
                        "the error does not match the pattern".into()
                    }),
                }),
            },
            "commands" | "commandsOrdered" => {
                let (expected, issued) = (list(expected), list(get("commands")));
                let ordered = key == "commandsOrdered";
                let pairs = pair(expected, issued, ordered);
                for (e, p) in expected.iter().zip(&pairs) {
                    if p.is_none() {
                        found.push(Mismatch {
                            pointer: "/commands".into(),
                            expected: Some(e.clone()),
                            actual: None,
                            note: Some(if ordered {
                                "no command issued matches (in this order)".into()
                            } else {
                                "no command issued matches".into()
                            }),
                        });
                    }
                }
                for (i, a) in issued.iter().enumerate() {
                    if !pairs.contains(&Some(i)) {
                        found.push(Mismatch {
                            pointer: format!("/commands/{i}"),
                            expected: None,
                            actual: Some(a.clone()),
                            note: Some("unexpected command".into()),
                        });
                    }
                }
            }
            "events" => found.extend(subset_diff(&pointer, expected, get("events"))),
            "cluster" => {
                let cluster = list(get("cluster"));
                for entry in list(expected) {
                    match find(cluster, entry) {
                        Some(object) => found.extend(subset_diff(&describe(entry), entry, object)),
                        None => found.push(Mismatch {
                            pointer: describe(entry),
                            expected: Some(entry.clone()),
                            actual: None,
                            note: Some("not in the cluster".into()),
                        }),
                    }
                }
            }
            "absent" => {
                let cluster = list(get("cluster"));
                for entry in list(expected) {
                    if let Some(object) = find(cluster, entry) {
                        found.push(Mismatch {
                            pointer: describe(entry),
                            expected: None,
                            actual: Some(object.clone()),
                            note: Some("expected absent, but it exists".into()),
                        });
                    }
                }
            }
            "logs" => {
                let lines = list(get("logs"));
                for (i, pattern) in list(expected).iter().enumerate() {
                    let p = pattern.as_str().unwrap_or_default();
                    if !lines
                        .iter()
                        .any(|l| regex_matches(p, l.as_str().unwrap_or_default()))
                    {
                        found.push(Mismatch {
                            pointer: format!("/logs/{i}"),
                            expected: Some(pattern.clone()),
                            actual: None,
                            note: Some(format!(
                                "no log line matches the pattern (of {} lines)",
                                lines.len()
                            )),
                        });
                    }
                }
            }
            // Validated cases hold no other key.
            _ => {}
        }
    }
    found
}

/// A command cut to what identifies it: verb, kind, apiVersion, namespace, name and,
/// for lists and patches, the selectors and patch type.
pub fn concise_command(command: &Value) -> Value {
    let keep = [
        "verb",
        "kind",
        "apiVersion",
        "namespace",
        "name",
        "labels",
        "fields",
        "type",
    ];
    match command {
        Value::Object(map) => Value::Object(
            keep.iter()
                .filter_map(|k| map.get(*k).map(|v| ((*k).to_string(), v.clone())))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The expectations rewritten from `actual` (`--update`): each key that does not hold
/// is replaced by what happened, keeping its shape (a subset stays a subset of the same
/// keys, matching commands and patterns stay as written). Keys that hold are kept as
/// they are. With no expectations at all, a snapshot: exit, outcome, output (if any),
/// commands, events and requeue.
pub fn updated(expect: &Map<String, Value>, actual: &Value) -> Map<String, Value> {
    let null = Value::Null;
    let get = |key: &str| actual.get(key).unwrap_or(&null);
    if expect.is_empty() {
        let mut snapshot = Map::new();
        for key in [
            "exit", "outcome", "error", "output", "commands", "events", "requeue",
        ] {
            let value = get(key);
            if matches!(key, "error" | "output") && value.is_null() {
                continue;
            }
            let value = match key {
                "commands" => Value::Array(list(value).iter().map(concise_command).collect()),
                "error" => Value::String(regex::escape(value.as_str().unwrap_or_default())),
                _ => value.clone(),
            };
            snapshot.insert(key.into(), value);
        }
        return snapshot;
    }
    let mut out = Map::new();
    for (key, expected) in expect {
        let mut one = Map::new();
        one.insert(key.clone(), expected.clone());
        if check(&one, actual).is_empty() {
            out.insert(key.clone(), expected.clone());
            continue;
        }
        let value = match key.as_str() {
            "exit" | "outcome" | "requeue" => get(key).clone(),
            "outputExact" | "objectExact" => get(key.trim_end_matches("Exact")).clone(),
            "output" | "object" | "status" => match get(key) {
                a @ Value::Object(_) if expected.is_object() => project(a, expected),
                a => a.clone(),
            },
            "error" => match get("error") {
                Value::String(e) => Value::String(regex::escape(e)),
                _ => Value::Null,
            },
            "commands" | "commandsOrdered" => {
                let (expected, issued) = (list(expected), list(get("commands")));
                let pairs = pair(expected, issued, key == "commandsOrdered");
                Value::Array(
                    issued
                        .iter()
                        .enumerate()
                        .map(|(i, a)| match pairs.iter().position(|p| *p == Some(i)) {
                            Some(e) => expected[e].clone(),
                            None => concise_command(a),
                        })
                        .collect(),
                )
            }
            "events" => {
                let (expected, events) = (list(expected), list(get("events")));
                Value::Array(
                    events
                        .iter()
                        .enumerate()
                        .map(|(i, a)| match expected.get(i) {
                            Some(e)
                                if e.is_object()
                                    && !project(a, e).as_object().is_none_or(Map::is_empty) =>
                            {
                                project(a, e)
                            }
                            _ => a.clone(),
                        })
                        .collect(),
                )
            }
            "cluster" => {
                let cluster = list(get("cluster"));
                Value::Array(
                    list(expected)
                        .iter()
                        .filter_map(|e| find(cluster, e).map(|o| project(o, e)))
                        .collect(),
                )
            }
            "absent" => {
                let cluster = list(get("cluster"));
                Value::Array(
                    list(expected)
                        .iter()
                        .filter(|e| find(cluster, e).is_none())
                        .cloned()
                        .collect(),
                )
            }
            "logs" => {
                let lines = list(get("logs"));
                Value::Array(
                    list(expected)
                        .iter()
                        .filter(|p| {
                            lines.iter().any(|l| {
                                regex_matches(
                                    p.as_str().unwrap_or_default(),
                                    l.as_str().unwrap_or_default(),
                                )
                            })
                        })
                        .cloned()
                        .collect(),
                )
            }
            _ => expected.clone(),
        };
        out.insert(key.clone(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect(v: Value) -> Map<String, Value> {
        v.as_object().expect("mapping").clone()
    }

    fn actual() -> Value {
        json!({
            "exit": 2, "outcome": "changed", "error": null,
            "output": {"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "s", "namespace": "n", "labels": {"a": "1"}},
                       "data": {"k": "v", "x": "y"}},
            "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "n"}},
            "status": null,
            "commands": [
                {"verb": "list", "kind": "namespaces"},
                {"verb": "apply", "kind": "ConfigMap", "apiVersion": "v1", "namespace": "a", "name": "s",
                 "object": {"data": {"k": "v"}}},
                {"verb": "apply", "kind": "ConfigMap", "apiVersion": "v1", "namespace": "b", "name": "s"},
            ],
            "cluster": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "a"}, "data": {"k": "v"}},
            ],
            "events": [{"type": "Normal", "reason": "Updated", "action": "Update", "message": "script changes written"}],
            "requeue": 10,
            "logs": ["created copy a/s", "created copy b/s"],
        })
    }

    fn lines(e: Value) -> Vec<String> {
        check(&expect(e), &actual())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn matching_expectations_have_no_differences() {
        assert_eq!(
            lines(json!({
                "exit": 2, "outcome": "changed", "error": null, "requeue": 10,
                "output": {"metadata": {"labels": {"a": "1", "gone": null}}, "data": {"k": "v"}},
                "commands": [
                    {"verb": "apply", "namespace": "b"},
                    {"verb": "apply", "namespace": "a", "object": {"data": {"k": "v"}}},
                    {"verb": "list"},
                ],
                "commandsOrdered": [{"verb": "list"}, {"verb": "apply"}, {"verb": "apply"}],
                "cluster": [{"kind": "ConfigMap", "metadata": {"name": "s", "namespace": "a"}, "data": {"k": "v"}}],
                "absent": [{"kind": "ConfigMap", "namespace": "c", "name": "s"}],
                "events": [{"reason": "Updated"}],
                "logs": ["^created copy a/", "b/s$"],
            })),
            Vec::<String>::new()
        );
    }

    #[test]
    fn differences_are_json_pointers_with_both_values() {
        assert_eq!(
            lines(json!({
                "exit": 0,
                "output": {"data": {"k": "w", "new": "1"}},
                "outputExact": {"apiVersion": "v1"},
                "error": "timed out",
            })),
            vec![
                "/exit: expected 0, got 2",
                "/output/data/k: expected \"w\", got \"v\"",
                "/output/data/new: expected \"1\", got nothing",
                "/output/kind: unexpected \"ConfigMap\"",
                "/output/metadata: unexpected {\"name\":\"s\",\"namespace\":\"n\",\"labels\":{\"a\":\"1\"}}",
                "/output/data: unexpected {\"k\":\"v\",\"x\":\"y\"}",
                "/error: the error does not match the pattern: expected \"timed out\", got null",
            ]
        );
    }

    #[test]
    fn commands_cluster_events_and_logs_name_what_is_missing_or_extra() {
        assert_eq!(
            lines(json!({
                "commands": [{"verb": "apply", "namespace": "a"}, {"verb": "delete"}],
                "commandsOrdered": [{"verb": "apply"}, {"verb": "list"}],
                "cluster": [
                    {"kind": "ConfigMap", "metadata": {"name": "s", "namespace": "a"}, "data": {"k": "x"}},
                    {"kind": "Secret", "metadata": {"name": "s", "namespace": "a"}},
                ],
                "absent": [{"kind": "ConfigMap", "namespace": "a", "name": "s"}],
                "events": [{"reason": "StatusUpdated"}],
                "logs": ["deleted"],
            })),
            vec![
                "/commands: no command issued matches: {\"verb\":\"delete\"}",
                "/commands/0: unexpected command: {\"verb\":\"list\",\"kind\":\"namespaces\"}",
                "/commands/2: unexpected command: {\"verb\":\"apply\",\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"namespace\":\"b\",\"name\":\"s\"}",
                "/commands: no command issued matches (in this order): {\"verb\":\"list\"}",
                "/commands/0: unexpected command: {\"verb\":\"list\",\"kind\":\"namespaces\"}",
                "/commands/2: unexpected command: {\"verb\":\"apply\",\"kind\":\"ConfigMap\",\"apiVersion\":\"v1\",\"namespace\":\"b\",\"name\":\"s\"}",
                "/cluster/ConfigMap/a/s/data/k: expected \"x\", got \"v\"",
                "/cluster/Secret/a/s: not in the cluster: {\"kind\":\"Secret\",\"metadata\":{\"name\":\"s\",\"namespace\":\"a\"}}",
                "/cluster/ConfigMap/a/s: expected absent, but it exists: {\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"s\",\"namespace\":\"a\"},\"data\":{\"k\":\"v\"}}",
                "/events/0/reason: expected \"StatusUpdated\", got \"Updated\"",
                "/logs/0: no log line matches the pattern (of 2 lines): \"deleted\"",
            ]
        );
    }

    #[test]
    fn normalize_drops_what_servers_assign() {
        let object = json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "3",
            "creationTimestamp": "t", "generation": 2,
            "ownerReferences": [{"kind": "X", "name": "o", "uid": "u0"}]}});
        assert_eq!(
            normalize(&object),
            json!({"metadata": {"name": "a", "ownerReferences": [{"kind": "X", "name": "o"}]}})
        );
        assert_eq!(normalize(&json!(3)), json!(3));
    }

    #[test]
    fn update_fixes_what_fails_and_keeps_what_holds() {
        let wrong = expect(json!({
            "exit": 0,
            "output": {"data": {"k": "w", "new": "1"}},
            "commands": [{"verb": "apply", "namespace": "a"}, {"verb": "delete"}],
            "logs": ["created", "deleted"],
            "cluster": [{"kind": "ConfigMap", "metadata": {"name": "s", "namespace": "a"}, "data": {"k": "x"}},
                        {"kind": "Secret", "metadata": {"name": "s", "namespace": "a"}}],
            "error": null,
            "requeue": 10,
        }));
        let fixed = updated(&wrong, &actual());
        assert_eq!(check(&fixed, &actual()), vec![], "{fixed:?}");
        assert_eq!(fixed["exit"], json!(2));
        assert_eq!(fixed["output"], json!({"data": {"k": "v"}}));
        assert_eq!(
            fixed["commands"],
            json!([{"verb": "list", "kind": "namespaces"},
                   {"verb": "apply", "namespace": "a"},
                   {"verb": "apply", "kind": "ConfigMap", "apiVersion": "v1", "namespace": "b", "name": "s"}])
        );
        assert_eq!(fixed["logs"], json!(["created"]));
        assert_eq!(fixed["requeue"], json!(10));
        let snapshot = updated(&Map::new(), &actual());
        assert_eq!(check(&snapshot, &actual()), vec![]);
        assert_eq!(
            snapshot.keys().collect::<Vec<_>>(),
            ["exit", "outcome", "output", "commands", "events", "requeue"]
        );
    }
}
