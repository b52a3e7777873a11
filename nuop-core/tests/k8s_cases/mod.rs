//! The `k8s` command cases as data, for every executor's test file to run: a script
//! snippet (the body of `main reconcile`, whose value is the answer), the objects of the
//! fake cluster it runs against, and the JSON it must answer. The primary object of
//! every case is [`primary`]; the session owns ConfigMaps ([`owns`]).
//!
//! Include with `#[path = "k8s_cases/mod.rs"] mod k8s_cases;`.

#![allow(dead_code)]

use nuop_core::protocol::{Mapper, RelatedKind, Trigger};
use serde_json::{Value, json};

/// One case.
pub struct Case {
    /// Names the case in failures.
    pub name: &'static str,
    /// The body of `main reconcile`; its value is compared with `expect`.
    pub script: &'static str,
    /// The fake cluster's objects besides the primary.
    pub objects: Vec<Value>,
    /// The answer, as JSON.
    pub expect: Value,
    /// Whether reads lag behind writes (a cluster whose reads come from a snapshot taken
    /// before the call, as a watch cache that has not caught up): read-your-writes cases.
    pub lagging_reads: bool,
}

/// The object every case's call is about.
pub fn primary() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "src", "namespace": "team-a", "uid": "uid-src", "labels": {"app": "web"}},
           "data": {"k": "v"}})
}

/// The kinds the session owns: ConfigMaps.
pub fn owns() -> Vec<RelatedKind> {
    vec![RelatedKind {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespaces: Vec::new(),
        label_selectors: Default::default(),
        field_selectors: Default::default(),
        on: Trigger::Spec,
        map: Mapper::Owner,
    }]
}

/// A ConfigMap.
pub fn configmap(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": {"k": name}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn child(name: &str) -> Value {
    let mut c = configmap("team-a", name, json!({"nuop.dev/controller": "cases"}));
    c["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "src", "uid": "uid-src", "controller": true}]);
    c
}

fn world() -> Vec<Value> {
    vec![
        configmap("team-a", "other", json!({"app": "db"})),
        configmap("team-b", "copy", json!({"app": "web"})),
        namespace("team-a"),
        namespace("team-b"),
    ]
}

/// Every case.
pub fn cases() -> Vec<Case> {
    let case = |name, script, objects, expect| Case {
        name,
        script,
        objects,
        expect,
        lagging_reads: false,
    };
    let lagging = |name, script, objects, expect| Case {
        name,
        script,
        objects,
        expect,
        lagging_reads: true,
    };
    vec![
        case(
            "get",
            "k8s get configmap other | get data.k",
            world(),
            json!("other"),
        ),
        case(
            "get by plural",
            "k8s get configmaps other | get metadata.uid | str starts-with fake-uid",
            world(),
            json!(true),
        ),
        case(
            "get absent is null",
            "k8s get ConfigMap nope",
            world(),
            Value::Null,
        ),
        case(
            "get in another namespace",
            "k8s get configmap copy -n team-b | get metadata.namespace",
            world(),
            json!("team-b"),
        ),
        case(
            "get cluster-scoped",
            "k8s get namespace team-b | get metadata.name",
            world(),
            json!("team-b"),
        ),
        case(
            "list defaults to the primary's namespace",
            "k8s list configmaps | get metadata.name",
            world(),
            json!(["other", "src"]),
        ),
        case(
            "list all namespaces",
            "k8s list configmaps -A | get metadata.name",
            world(),
            json!(["other", "src", "copy"]),
        ),
        case(
            "list by label string",
            "k8s list configmaps -A -l 'app in (web),app!=db' | get metadata.name",
            world(),
            json!(["src", "copy"]),
        ),
        case(
            "list by label record",
            "k8s list configmaps -A -l {app: db} | get metadata.name",
            world(),
            json!(["other"]),
        ),
        case(
            "list by field",
            "k8s list configmaps -A --field-selector metadata.name=copy | get metadata.namespace",
            world(),
            json!(["team-b"]),
        ),
        case(
            "list cluster-scoped",
            "k8s list namespaces | get metadata.name",
            world(),
            json!(["team-a", "team-b"]),
        ),
        case(
            "list of nothing is an empty list",
            "k8s list secrets",
            world(),
            json!([]),
        ),
        case(
            "apply a record answers a record; owned kinds get the owner",
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: made}, data: {a: '1'}} | k8s apply | {ns: $in.metadata.namespace, owner: $in.metadata.ownerReferences.0.uid, labels: $in.metadata.labels}",
            world(),
            json!({"ns": "team-a", "owner": "uid-src",
                   "labels": {"app.kubernetes.io/managed-by": "nuop", "nuop.dev/controller": "cases"}}),
        ),
        case(
            "apply a list answers a list; copies elsewhere stay unowned",
            "[{apiVersion: v1, kind: ConfigMap, metadata: {name: x, namespace: team-b}}, {apiVersion: v1, kind: Secret, metadata: {name: y}}] | k8s apply | each {|o| [$o.kind ($o.metadata.ownerReferences? | default [] | length)] }",
            world(),
            json!([["ConfigMap", 0], ["Secret", 0]]),
        ),
        case(
            "apply merges into the existing object",
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: other}, data: {n: '2'}} | k8s apply | get data",
            world(),
            json!({"k": "other", "n": "2"}),
        ),
        case(
            "apply --dry-run writes nothing",
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: dry}} | k8s apply --dry-run | ignore; k8s get configmap dry",
            world(),
            Value::Null,
        ),
        case(
            "merge patch",
            "{data: {k: changed}} | k8s patch configmap other | get data.k",
            world(),
            json!("changed"),
        ),
        case(
            "json patch",
            "[{op: add, path: /data/extra, value: x}] | k8s patch configmap copy -n team-b --type json | get data",
            world(),
            json!({"k": "copy", "extra": "x"}),
        ),
        case(
            "status patch",
            "{status: {ready: true}} | k8s patch configmap other --status | get status.ready",
            world(),
            json!(true),
        ),
        case(
            "create",
            "{apiVersion: v1, kind: Secret, metadata: {name: new}, stringData: {a: b}} | k8s create | get metadata.namespace",
            world(),
            json!("team-a"),
        ),
        case(
            "create of an existing object fails with already_exists",
            "try { {apiVersion: v1, kind: ConfigMap, metadata: {name: other}} | k8s create; 'created' } catch {|e| {code: $e.details.code, msg: $e.msg} }",
            world(),
            json!({"code": "nuop::k8s::already_exists",
                   "msg": "k8s create configmap team-a/other: configmaps \"other\" already exists"}),
        ),
        case(
            "delete, and delete of an absent object is no error",
            "k8s delete configmap other; k8s delete configmap other; k8s get configmap other",
            world(),
            Value::Null,
        ),
        case(
            "patch of an absent object fails with not_found",
            "try { {data: {}} | k8s patch configmap nope } catch {|e| {code: $e.details.code, msg: $e.msg} }",
            world(),
            json!({"code": "nuop::k8s::not_found",
                   "msg": "k8s patch configmap team-a/nope: configmaps \"nope\" not found"}),
        ),
        case(
            "an unknown kind fails with unknown_kind",
            "try { k8s list gizmos } catch {|e| $e.details.code }",
            world(),
            json!("nuop::k8s::unknown_kind"),
        ),
        case(
            "bad arguments fail with usage",
            "try { k8s list configmaps -n team-a -A } catch {|e| $e.details.code }",
            world(),
            json!("nuop::k8s::usage"),
        ),
        case(
            "own stamps without a request",
            "{apiVersion: v1, kind: Secret, metadata: {name: s}} | k8s own | get metadata.ownerReferences.0 | reject uid",
            world(),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "src", "controller": true, "blockOwnerDeletion": true}),
        ),
        case(
            "own refuses another namespace",
            "try { {apiVersion: v1, kind: Secret, metadata: {name: s, namespace: team-b}} | k8s own } catch {|e| $e.details.code }",
            world(),
            json!("nuop::k8s::usage"),
        ),
        case(
            "owner-ref",
            "k8s owner-ref | get uid",
            world(),
            json!("uid-src"),
        ),
        case(
            "children are the primary's owned objects",
            "k8s children configmaps | get metadata.name",
            {
                let mut w = world();
                w.push(child("kid-1"));
                w.push(child("kid-2"));
                w
            },
            json!(["kid-1", "kid-2"]),
        ),
        case(
            "par-each threads run k8s commands",
            "[other src other] | par-each {|n| k8s get configmap $n | get metadata.name } | sort",
            world(),
            json!(["other", "other", "src"]),
        ),
        case(
            "commands in closures ignore the closure's input",
            "[team-a team-b] | each {|ns| k8s list configmaps -n $ns | length }",
            world(),
            json!([2, 1]),
        ),
        lagging(
            "reads see the call's applies",
            "{apiVersion: v1, kind: ConfigMap, metadata: {name: made, labels: {app: web}}} | k8s apply | ignore; {get: (k8s get configmap made | get metadata.name), list: (k8s list configmaps -l app=web | get metadata.name), children: (k8s children configmaps | get metadata.name)}",
            world(),
            json!({"get": "made", "list": ["made", "src"], "children": ["made"]}),
        ),
        lagging(
            "reads see the call's deletes and patches",
            "k8s delete configmap other; {data: {k: patched}} | k8s patch configmap copy -n team-b | ignore; {other: (k8s get configmap other), names: (k8s list configmaps -A | get metadata.name), copy: (k8s get configmap copy -n team-b | get data.k)}",
            world(),
            json!({"other": null, "names": ["src", "copy"], "copy": "patched"}),
        ),
        case(
            "the parent command prints help",
            "k8s | str contains 'k8s get'",
            world(),
            json!(true),
        ),
    ]
}
