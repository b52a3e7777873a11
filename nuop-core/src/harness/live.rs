//! `nuop-standard test --live`: the same cases against a real API server, to show that
//! the fake cluster behaves like the real one.
//!
//! # Namespaces are remapped
//!
//! Every namespace a case names (the input's, its cluster objects', the names of its
//! `Namespace` objects) becomes a fresh namespace `<run>-<name>` on the server, where
//! `<run>` is random per case and executor (`nl3f9a0c-a` for `a`), labelled
//! `nuop.dev/test: "true"` and deleted afterwards. The case's objects are created there
//! (an object being deleted, `metadata.deletionTimestamp`, is created with its
//! finalizers and then deleted, so the server marks it), the script runs against it,
//! and every string of the actual result has the server's names put back before the
//! expectations are checked, so one case file holds for both.
//!
//! The script sees only its case: [`Scoped`] answers reads outside the case's
//! namespaces as the fake would (null, an empty list), filters cluster-wide lists to
//! them (a `k8s list namespaces` lists the case's namespaces, not the server's), maps
//! a namespace the script names literally (`--namespace a`) to the server's, and
//! refuses writes anywhere else, so a case writes only to its own namespaces. Its lists
//! are consistent reads (as with `--live`), never the API server's watch cache, which
//! may not yet hold what the case created a moment before.
//!
//! An owner reference to the input's uid (a case may give the input one) names the
//! server's uid for the input, and the server's uid reads back as the case's.
//!
//! Label and annotation values of the case's objects are remapped word by word (a
//! word is a run of letters, digits and `-`): a label `replica-of: src.settings` or an
//! annotation `include: "a,b"` names the server's namespaces. So a case's namespace
//! names should not also be words of those values with another meaning.
//!
//! Limits: the kinds a case uses must be served (install CRDs first); namespace names
//! inside other strings (data, spec) are not remapped on the way in; cluster-scoped kinds other than `Namespace` cannot be written; the server
//! adds what the fake does not (a `kube-root-ca.crt` ConfigMap in every namespace,
//! defaults), which subset expectations ignore.
//!
//! Pure: [`case_namespaces`], [`remap`], [`map_back`]. I/O: the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::case::Case;
use crate::cluster::{Cluster, KindName, LiveCluster, PatchType, Propagation, Request, Target};
use crate::k8s::{ErrorCode, K8sError};

/// The label on every namespace a live case creates.
pub const TEST_LABEL: &str = "nuop.dev/test";

/// The field manager that creates a case's objects.
const SETUP_MANAGER: &str = "nuop-test";

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

fn is_namespace(object: &Value) -> bool {
    text(object, "/kind") == Some("Namespace") && text(object, "/apiVersion") == Some("v1")
}

/// The namespaces a case names: its input's, its objects', and its Namespace objects'
/// names.
pub fn case_namespaces(case: &Case) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for object in std::iter::once(&case.input).chain(&case.cluster) {
        if is_namespace(object) {
            names.extend(text(object, "/metadata/name").map(str::to_string));
        }
        names.extend(text(object, "/metadata/namespace").map(str::to_string));
    }
    names
}

/// `text` with every whole word (a run of letters, digits and `-`) that is a key of
/// `names` replaced by its value: `src.settings` → `nl1-src.settings`, `a,b` → `nl1-a,nl1-b`.
pub fn remap_words(text: &str, names: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(names.get(word.as_str()).unwrap_or(word));
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `object` with its namespace (and a Namespace's name) as `names` maps them, and the
/// namespaces named as whole words in its label and annotation values.
pub fn remap(object: &Value, names: &BTreeMap<String, String>) -> Value {
    let mut object = object.clone();
    for field in ["/metadata/labels", "/metadata/annotations"] {
        if let Some(Value::Object(values)) = object.pointer_mut(field) {
            for value in values.values_mut() {
                if let Value::String(text) = value {
                    *text = remap_words(text, names);
                }
            }
        }
    }
    let pointers: &[&str] = if is_namespace(&object) {
        &["/metadata/name", "/metadata/namespace"]
    } else {
        &["/metadata/namespace"]
    };
    for pointer in pointers {
        if let Some(slot) = object.pointer_mut(pointer)
            && let Some(mapped) = slot.as_str().and_then(|s| names.get(s))
        {
            *slot = Value::String(mapped.clone());
        }
    }
    object
}

/// `value` with every occurrence of a server-side name in its strings (and keys)
/// replaced by the case's name: `back` maps server names to case names.
pub fn map_back(value: &Value, back: &BTreeMap<String, String>) -> Value {
    let replace = |s: &str| {
        back.iter().fold(s.to_string(), |s, (live, case)| {
            s.replace(live.as_str(), case)
        })
    };
    match value {
        Value::String(s) => Value::String(replace(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| map_back(v, back)).collect()),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (replace(k), map_back(v, back)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A random prefix for one live case's namespaces.
fn run_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("nl{:06x}", h.finish() & 0xff_ffff)
}

/// A live cluster narrowed to one case's namespaces (see the module doc).
pub struct Scoped {
    inner: LiveCluster,
    /// Case name → server name.
    names: BTreeMap<String, String>,
}

fn outside(request: &Request, namespace: &str) -> K8sError {
    K8sError {
        verb: request.verb().to_string(),
        target: format!("namespace {namespace}"),
        reason: "a live test case may write only in its own namespaces".into(),
        code: ErrorCode::Forbidden,
    }
}

impl Scoped {
    /// The server's name for a namespace the script named: a case name is mapped,
    /// one of the case's server names stays, anything else is outside (`None`).
    fn namespace(&self, ns: &str) -> Option<String> {
        if let Some(live) = self.names.get(ns) {
            return Some(live.clone());
        }
        self.names
            .values()
            .any(|live| live == ns)
            .then(|| ns.to_string())
    }

    fn inside(&self, object: &Value) -> bool {
        let live = |n: Option<&str>| n.is_some_and(|n| self.names.values().any(|l| l == n));
        match text(object, "/metadata/namespace") {
            Some(ns) => live(Some(ns)),
            None if text(object, "/kind") == Some("Namespace") => {
                live(text(object, "/metadata/name"))
            }
            None => true,
        }
    }

    /// `target` inside the case (namespace, or a Namespace's name, mapped), or `None`.
    async fn scope(&self, target: &Target) -> Result<Option<Target>, K8sError> {
        let kind = self.inner.resolve(&target.kind).await?;
        let mut target = target.clone();
        if kind.namespaced {
            match target.namespace.as_deref().map(|ns| self.namespace(ns)) {
                Some(Some(ns)) => target.namespace = Some(ns),
                _ => return Ok(None),
            }
        } else if kind.kind == "Namespace" {
            match self.namespace(&target.name) {
                Some(name) => target.name = name,
                None => return Ok(None),
            }
        }
        Ok(Some(target))
    }

    async fn run(&self, manager: &str, request: &Request) -> Result<Value, K8sError> {
        match request {
            Request::Get { target, live } => match self.scope(target).await? {
                Some(target) => {
                    let get = Request::Get {
                        target,
                        live: *live,
                    };
                    self.inner.execute(manager, &get).await
                }
                None => Ok(Value::Null),
            },
            Request::List {
                kind,
                namespace,
                labels,
                fields,
                live,
            } => {
                let namespace = match namespace.as_deref().map(|ns| self.namespace(ns)) {
                    None => None,
                    Some(Some(ns)) => Some(ns),
                    Some(None) => return Ok(json!([])),
                };
                // Always a consistent read (see the module doc): from the watch cache
                // a case failed now and then. The script's own `--live` is recorded
                // above this layer, in the session.
                let _ = live;
                let list = Request::List {
                    kind: kind.clone(),
                    namespace,
                    labels: labels.clone(),
                    fields: fields.clone(),
                    live: true,
                };
                let items = self.inner.execute(manager, &list).await?;
                Ok(match items {
                    Value::Array(items) => {
                        Value::Array(items.into_iter().filter(|o| self.inside(o)).collect())
                    }
                    other => other,
                })
            }
            Request::Apply {
                object,
                status,
                dry_run,
            } => {
                let object = self.scope_object(request, object).await?;
                let apply = Request::Apply {
                    object,
                    status: *status,
                    dry_run: *dry_run,
                };
                self.inner.execute(manager, &apply).await
            }
            Request::Create { object, dry_run } => {
                let object = self.scope_object(request, object).await?;
                let create = Request::Create {
                    object,
                    dry_run: *dry_run,
                };
                self.inner.execute(manager, &create).await
            }
            Request::Patch {
                target,
                patch_type,
                patch,
                status,
            } => {
                let Some(target) = self.scope(target).await? else {
                    return Err(outside(request, target.namespace.as_deref().unwrap_or("")));
                };
                let patch = Request::Patch {
                    target,
                    patch_type: *patch_type,
                    patch: patch.clone(),
                    status: *status,
                };
                self.inner.execute(manager, &patch).await
            }
            Request::Delete {
                target,
                propagation,
            } => {
                let Some(target) = self.scope(target).await? else {
                    return Err(outside(request, target.namespace.as_deref().unwrap_or("")));
                };
                let delete = Request::Delete {
                    target,
                    propagation: *propagation,
                };
                self.inner.execute(manager, &delete).await
            }
        }
    }

    /// An object to write, with its namespace mapped; an error when it is outside.
    async fn scope_object(&self, request: &Request, object: &Value) -> Result<Value, K8sError> {
        let kind = KindName {
            kind: text(object, "/kind").unwrap_or_default().to_string(),
            api_version: text(object, "/apiVersion").map(str::to_string),
        };
        let target = Target {
            kind,
            namespace: text(object, "/metadata/namespace").map(str::to_string),
            name: text(object, "/metadata/name")
                .unwrap_or_default()
                .to_string(),
        };
        let resolved = self.inner.resolve(&target.kind).await?;
        if !resolved.namespaced && resolved.kind != "Namespace" {
            return Err(outside(request, "(cluster-scoped)"));
        }
        let Some(scoped) = self.scope(&target).await? else {
            return Err(outside(request, target.namespace.as_deref().unwrap_or("")));
        };
        let mut object = object.clone();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            if resolved.namespaced {
                meta.insert("namespace".into(), json!(scoped.namespace));
            } else {
                meta.insert("name".into(), json!(scoped.name));
            }
        }
        Ok(object)
    }
}

impl Cluster for Scoped {
    fn execute<'a>(
        &'a self,
        field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        Box::pin(self.run(field_manager, request))
    }

    fn resolve<'a>(
        &'a self,
        kind: &'a KindName,
    ) -> BoxFuture<'a, Result<crate::cluster::ResolvedKind, K8sError>> {
        self.inner.resolve(kind)
    }
}

/// One live case's namespaces on the server, to read back and delete.
pub struct LiveCase {
    /// The cluster the script's commands go to.
    pub cluster: Arc<Scoped>,
    /// Server name → case name.
    pub back: BTreeMap<String, String>,
}

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

/// An object as it is created: without server-set and read-only fields.
fn creatable(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
    object
}

impl LiveCase {
    /// Creates the case's namespaces and objects on the server behind `client`, and
    /// returns it with the input as the server holds it (case names mapped).
    ///
    /// # Errors
    /// When a namespace or object cannot be created (the case, not the script, is at
    /// fault, or the server lacks a kind).
    pub async fn create(client: kube::Client, case: &Case) -> Result<(Self, Value), String> {
        let prefix = run_prefix();
        let names: BTreeMap<String, String> = case_namespaces(case)
            .into_iter()
            .map(|n| {
                let live = format!("{prefix}-{n}");
                (n, live)
            })
            .collect();
        if let Some((n, _)) = names.iter().find(|(_, live)| live.len() > 63) {
            return Err(format!(
                "namespace {n}: too long for a live run's prefix ({prefix}-)"
            ));
        }
        let back = names.iter().map(|(c, l)| (l.clone(), c.clone())).collect();
        let cluster = Arc::new(Scoped {
            inner: LiveCluster::new(client, Vec::new()),
            names: names.clone(),
        });
        let mut live = Self { cluster, back };
        let result = live.populate(case, &names).await;
        match result {
            Ok(primary) => {
                // The input's uid in the case (owner references name it) stands for the
                // server's.
                if let (Some(case_uid), Some(live_uid)) = (
                    text(&case.input, "/metadata/uid"),
                    text(&primary, "/metadata/uid"),
                ) {
                    live.back.insert(live_uid.to_string(), case_uid.to_string());
                }
                Ok((live, primary))
            }
            Err(e) => {
                live.delete().await;
                Err(e)
            }
        }
    }

    async fn populate(
        &self,
        case: &Case,
        names: &BTreeMap<String, String>,
    ) -> Result<Value, String> {
        let inner = &self.cluster.inner;
        let given: BTreeMap<String, Value> = case
            .cluster
            .iter()
            .filter(|o| is_namespace(o))
            .filter_map(|o| text(o, "/metadata/name").map(|n| (n.to_string(), o.clone())))
            .collect();
        for (case_name, live_name) in names {
            let mut ns = given.get(case_name).map_or_else(
                || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": case_name}}),
                creatable,
            );
            ns = remap(&ns, names);
            ns["metadata"]["labels"][TEST_LABEL] = json!("true");
            if let Some(status) = ns.as_object_mut() {
                status.remove("status");
            }
            let create = Request::Create {
                object: ns,
                dry_run: false,
            };
            inner
                .execute(SETUP_MANAGER, &create)
                .await
                .map_err(|e| format!("cluster: namespace {live_name}: {e}"))?;
        }
        // The input first (as the case's cluster holds it, if it does), so that owner
        // references to its uid can name the server's.
        let input_target = target_of(&case.input);
        let input = case
            .cluster
            .iter()
            .find(|o| target_of(o) == input_target)
            .unwrap_or(&case.input);
        if !is_namespace(input) {
            self.put(input, names)
                .await
                .map_err(|e| format!("input: {e}"))?;
        }
        let get = Request::Get {
            target: target_of(&remap(&case.input, names)),
            live: true,
        };
        let primary = inner
            .execute(SETUP_MANAGER, &get)
            .await
            .map_err(|e| format!("input: {e}"))?;
        if primary.is_null() {
            return Err("input: not on the server after creating it".into());
        }
        let uids = match (
            text(input, "/metadata/uid"),
            text(&primary, "/metadata/uid"),
        ) {
            (Some(case_uid), Some(live_uid)) => Some((case_uid, live_uid)),
            _ => None,
        };
        for object in case
            .cluster
            .iter()
            .filter(|o| !is_namespace(o) && target_of(o) != input_target)
        {
            let mut object = object.clone();
            if let (Some((case_uid, live_uid)), Some(Value::Array(refs))) =
                (uids, object.pointer_mut("/metadata/ownerReferences"))
            {
                for r in refs {
                    if r["uid"] == case_uid {
                        r["uid"] = json!(live_uid);
                    }
                }
            }
            self.put(&object, names)
                .await
                .map_err(|e| format!("cluster: {e}"))?;
        }
        Ok(primary)
    }

    /// Creates one object (status through the status subresource when the server
    /// dropped it; deleted afterwards when it is being deleted).
    async fn put(&self, object: &Value, names: &BTreeMap<String, String>) -> Result<(), String> {
        let inner = &self.cluster.inner;
        let object = remap(object, names);
        let deleting = object
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|v| !v.is_null());
        let create = Request::Create {
            object: creatable(&object),
            dry_run: false,
        };
        let created = inner
            .execute(SETUP_MANAGER, &create)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(status) = object.get("status")
            && created.get("status") != Some(status)
        {
            let patch = Request::Patch {
                target: target_of(&object),
                patch_type: PatchType::Merge,
                patch: json!({"status": status}),
                status: true,
            };
            // Kinds without a status subresource took the status with the object.
            if let Err(e) = inner.execute(SETUP_MANAGER, &patch).await
                && e.code != ErrorCode::NotFound
            {
                return Err(e.to_string());
            }
        }
        if deleting {
            let delete = Request::Delete {
                target: target_of(&object),
                propagation: Propagation::Background,
            };
            inner
                .execute(SETUP_MANAGER, &delete)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Every object of `kinds` in the case's namespaces (and the case's Namespaces),
    /// as the server holds them.
    pub async fn objects(&self, kinds: &[KindName]) -> Vec<Value> {
        let inner = &self.cluster.inner;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for kind in kinds {
            let Ok(resolved) = inner.resolve(kind).await else {
                continue;
            };
            if !seen.insert((resolved.group.clone(), resolved.kind.clone())) {
                continue;
            }
            if resolved.namespaced {
                for ns in self.back.keys() {
                    let list = Request::List {
                        kind: kind.clone(),
                        namespace: Some(ns.clone()),
                        labels: None,
                        fields: None,
                        live: true,
                    };
                    if let Ok(Value::Array(items)) = inner.execute(SETUP_MANAGER, &list).await {
                        out.extend(items);
                    }
                }
            } else if resolved.kind == "Namespace" {
                for ns in self.back.keys() {
                    let get = Request::Get {
                        target: Target {
                            kind: kind.clone(),
                            namespace: None,
                            name: ns.clone(),
                        },
                        live: true,
                    };
                    if let Ok(o) = inner.execute(SETUP_MANAGER, &get).await
                        && !o.is_null()
                    {
                        out.push(o);
                    }
                }
            }
        }
        out
    }

    /// Deletes the case's namespaces (not waiting for them to go), after taking the
    /// finalizers off `objects` so that nothing holds them.
    pub async fn delete_with(&self, objects: &[Value]) {
        let inner = &self.cluster.inner;
        for object in objects {
            let has_finalizers = object
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if has_finalizers && !is_namespace(object) {
                let patch = Request::Patch {
                    target: target_of(object),
                    patch_type: PatchType::Merge,
                    patch: json!({"metadata": {"finalizers": null}}),
                    status: false,
                };
                if let Err(e) = inner.execute(SETUP_MANAGER, &patch).await {
                    tracing::warn!("live test cleanup: {e}");
                }
            }
        }
        self.delete().await;
    }

    async fn delete(&self) {
        let inner = &self.cluster.inner;
        for ns in self.back.keys() {
            let delete = Request::Delete {
                target: Target {
                    kind: KindName {
                        kind: "Namespace".into(),
                        api_version: Some("v1".into()),
                    },
                    namespace: None,
                    name: ns.clone(),
                },
                propagation: Propagation::Background,
            };
            if let Err(e) = inner.execute(SETUP_MANAGER, &delete).await {
                tracing::warn!("live test cleanup: namespace {ns}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn case(input: Value, cluster: Vec<Value>) -> Case {
        Case {
            file: PathBuf::from("t.yaml"),
            name: "t".into(),
            phase: None,
            timeout: None,
            status_subresource: false,
            input,
            cluster,
            expect: serde_json::Map::new(),
            request: serde_json::Map::new(),
        }
    }

    #[test]
    fn a_case_names_its_input_objects_and_namespace_objects_namespaces() {
        let c = case(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "src"}}),
            vec![
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "b"}}),
                json!({"apiVersion": "example.com/v1", "kind": "Namespace", "metadata": {"name": "not-core"}}),
            ],
        );
        let names: Vec<String> = case_namespaces(&c).into_iter().collect();
        assert_eq!(names, ["a", "b", "src"]);
    }

    #[test]
    fn remapping_changes_namespaces_and_namespace_names_only() {
        let names: BTreeMap<String, String> = [("a".to_string(), "nl1-a".to_string())].into();
        assert_eq!(
            remap(
                &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "a"}, "data": {"ns": "a"}}),
                &names
            ),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "nl1-a"}, "data": {"ns": "a"}})
        );
        assert_eq!(
            remap(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
                &names
            ),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "nl1-a"}})
        );
        assert_eq!(
            remap(
                &json!({"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "x",
                    "labels": {"a": "a.s", "b": "ab"}, "annotations": {"c": "a, b,a"}}}),
                &names
            ),
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "x",
                "labels": {"a": "nl1-a.s", "b": "ab"}, "annotations": {"c": "nl1-a, b,nl1-a"}}})
        );
        let back: BTreeMap<String, String> = [("nl1-a".to_string(), "a".to_string())].into();
        assert_eq!(
            map_back(
                &json!({"events": [{"message": "copied to nl1-a/s"}], "nl1-a": 1, "n": 2}),
                &back
            ),
            json!({"events": [{"message": "copied to a/s"}], "a": 1, "n": 2})
        );
    }
}
