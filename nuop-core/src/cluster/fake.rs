//! An in-memory cluster, for `nuop-standard exec --cluster`, script tests and unit tests.
//!
//! No I/O: a map of objects behind a mutex. It knows the [`builtin_kinds`] and every
//! apiVersion/kind among the objects it was built from (their plural is the lower-case
//! kind plus `s`, their scope whether the first such object had a namespace; add others
//! with [`FakeCluster::with_kind`]). It assigns `uid`, `resourceVersion`,
//! `creationTimestamp` and `generation`, honours label and field selectors (any field
//! path), namespaced and cluster-scoped kinds, finalizers on delete (the object gets a
//! `deletionTimestamp` and stays until they are removed) and background/foreground
//! garbage collection of dependents (by ownerReference UID).
//!
//! # Caveats
//! `apply` is a simplification of server-side apply: the applied object is merged into
//! the existing one as a JSON merge patch (RFC 7386), so lists are replaced whole and
//! fields another manager set are kept unless the applied object names them; there is
//! no field ownership and no conflict between managers. A `resourceVersion` in an
//! applied or patched object that is not the current one is a conflict, as on a real
//! server. Namespaces need not exist for objects to be created in them.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::{
    Cluster, KindName, PatchType, Propagation, Request, ResolvedKind, Target, builtin_kinds,
    list_target, object_target, resolve_among, split_api_version,
};
use crate::k8s::selector::{FieldSelector, LabelSelector};
use crate::k8s::{ErrorCode, K8sError};

/// group, kind, namespace, name.
type Key = (String, String, Option<String>, String);

/// An in-memory cluster.
pub struct FakeCluster {
    state: Mutex<State>,
}

struct State {
    kinds: Vec<ResolvedKind>,
    objects: BTreeMap<Key, Value>,
    version: u64,
}

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn error(verb: &str, target: String, code: ErrorCode, reason: String) -> K8sError {
    K8sError {
        verb: verb.into(),
        target,
        reason,
        code,
    }
}

/// `now` as RFC 3339 UTC with seconds (as the API server writes timestamps).
pub(crate) fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// The object without metadata and status: what a change of bumps `generation`.
fn spec_part(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(map) = o.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    o
}

fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    let meta = &mut object["metadata"];
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let Value::Object(meta) = meta else {
        unreachable!("metadata was made a record above")
    };
    meta
}

impl FakeCluster {
    /// A cluster holding `objects` (each needs apiVersion, kind and metadata.name).
    ///
    /// # Errors
    /// A message naming the object (by position) that lacks one of those.
    pub fn new(objects: Vec<Value>) -> Result<Self, String> {
        let mut state = State {
            kinds: builtin_kinds(),
            objects: BTreeMap::new(),
            version: 0,
        };
        for (i, mut object) in objects.into_iter().enumerate() {
            let (Some(_), Some(_), Some(_)) = (
                text(&object, "/apiVersion"),
                text(&object, "/kind"),
                text(&object, "/metadata/name"),
            ) else {
                return Err(format!(
                    "object {} has no apiVersion, kind or metadata.name",
                    i + 1
                ));
            };
            state.learn(&object);
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
            let resolved = state.kind_of(&object).map_err(|e| e.reason)?;
            let key = State::key(&resolved, &object);
            let stamped = state.stamp(object, None);
            state.objects.insert(key, stamped);
        }
        Ok(Self {
            state: Mutex::new(state),
        })
    }

    /// A cluster from a file's text: a YAML or JSON list of objects, multi-document
    /// YAML, or a `kind: List` with `items`.
    ///
    /// # Errors
    /// When the text is neither, or an object lacks apiVersion, kind or metadata.name.
    pub fn from_text(text: &str) -> Result<Self, String> {
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
                Value::Object(ref map)
                    if map.get("kind").and_then(Value::as_str) == Some("List") =>
                {
                    if let Some(Value::Array(items)) = map.get("items") {
                        objects.extend(items.iter().cloned());
                    }
                }
                object @ Value::Object(_) => objects.push(object),
                other => return Err(format!("expected objects, found {other}")),
            }
        }
        Self::new(objects)
    }

    /// The same cluster serving one more kind.
    #[must_use]
    pub fn with_kind(self, kind: ResolvedKind) -> Self {
        self.lock().kinds.push(kind);
        self
    }

    /// Serves the kind of `object` (apiVersion/kind) too, if it is not known yet: its
    /// plural is the lower-case kind plus `s`, its scope whether `object` has a namespace.
    pub fn learn_kind(&self, object: &Value) {
        self.lock().learn(object);
    }

    /// Every object, ordered by group, kind, namespace and name.
    pub fn objects(&self) -> Vec<Value> {
        self.lock().objects.values().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the map consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self, request: &Request) -> Result<Value, K8sError> {
        let mut state = self.lock();
        match request {
            Request::Get { target, .. } => {
                let (resolved, key) = state.target_key("get", target)?;
                let _ = resolved;
                Ok(state.objects.get(&key).cloned().unwrap_or(Value::Null))
            }
            Request::List {
                kind,
                namespace,
                labels,
                fields,
                ..
            } => {
                let resolved = state.resolve("list", kind)?;
                let target =
                    list_target(&resolved.plural, resolved.namespaced, namespace.as_deref());
                let bad = |what: &str, e: String| {
                    error(
                        "list",
                        target.clone(),
                        ErrorCode::Invalid,
                        format!("{what}: {e}"),
                    )
                };
                let labels = labels
                    .as_deref()
                    .map(LabelSelector::parse)
                    .transpose()
                    .map_err(|e| bad("label selector", e))?;
                let fields = fields
                    .as_deref()
                    .map(FieldSelector::parse)
                    .transpose()
                    .map_err(|e| bad("field selector", e))?;
                let items = state
                    .objects
                    .iter()
                    .filter(|((g, k, ns, _), o)| {
                        *g == resolved.group
                            && *k == resolved.kind
                            && (!resolved.namespaced
                                || namespace.is_none()
                                || ns.as_deref() == namespace.as_deref())
                            && labels.as_ref().is_none_or(|l| l.matches_object(o))
                            && fields.as_ref().is_none_or(|f| f.matches(o))
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                Ok(Value::Array(items))
            }
            Request::Apply {
                object,
                status,
                dry_run,
            } => state.apply(object, *status, *dry_run),
            Request::Patch {
                target,
                patch_type,
                patch,
                status,
            } => state.patch(target, *patch_type, patch, *status),
            Request::Create { object, dry_run } => state.create(object, *dry_run),
            Request::Delete {
                target,
                propagation,
            } => state.delete(target, *propagation),
        }
    }
}

impl State {
    /// Serves the kind of `object` if it is not known yet.
    fn learn(&mut self, object: &Value) {
        let (Some(api_version), Some(kind)) = (text(object, "/apiVersion"), text(object, "/kind"))
        else {
            return;
        };
        let (group, _) = split_api_version(api_version);
        if !self
            .kinds
            .iter()
            .any(|k| k.group == group && k.kind == kind)
        {
            let namespaced = text(object, "/metadata/namespace").is_some();
            let plural = format!("{}s", kind.to_lowercase());
            self.kinds
                .push(ResolvedKind::new(api_version, kind, &plural, namespaced));
        }
    }

    fn served(&self) -> Vec<(ResolvedKind, bool)> {
        self.kinds.iter().map(|k| (k.clone(), true)).collect()
    }

    fn resolve(&self, verb: &str, kind: &KindName) -> Result<ResolvedKind, K8sError> {
        resolve_among(&self.served(), kind).map_err(|e| K8sError {
            verb: verb.into(),
            ..e
        })
    }

    fn kind_of(&self, object: &Value) -> Result<ResolvedKind, K8sError> {
        self.resolve(
            "resolve",
            &KindName {
                kind: text(object, "/kind").unwrap_or_default().to_string(),
                api_version: text(object, "/apiVersion").map(str::to_string),
            },
        )
    }

    fn key(resolved: &ResolvedKind, object: &Value) -> Key {
        (
            resolved.group.clone(),
            resolved.kind.clone(),
            text(object, "/metadata/namespace")
                .filter(|_| resolved.namespaced)
                .map(str::to_string),
            text(object, "/metadata/name")
                .unwrap_or_default()
                .to_string(),
        )
    }

    fn target_key(&self, verb: &str, target: &Target) -> Result<(ResolvedKind, Key), K8sError> {
        let resolved = self.resolve(verb, &target.kind)?;
        let namespace = target.namespace.clone().filter(|_| resolved.namespaced);
        if resolved.namespaced && namespace.is_none() {
            return Err(error(
                verb,
                object_target(&resolved.kind, None, &target.name),
                ErrorCode::Usage,
                "a namespace is required for a namespaced kind".into(),
            ));
        }
        let key = (
            resolved.group.clone(),
            resolved.kind.clone(),
            namespace,
            target.name.clone(),
        );
        Ok((resolved, key))
    }

    /// Sets what the server sets on a write: uid and creationTimestamp once, a new
    /// resourceVersion on every write, generation 1 then +1 per change outside metadata/status.
    fn stamp(&mut self, mut object: Value, previous: Option<&Value>) -> Value {
        self.version += 1;
        let version = self.version;
        let generation = match previous {
            None => 1,
            Some(p) => {
                let g = p
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_part(p) == spec_part(&object) {
                    g
                } else {
                    g + 1
                }
            }
        };
        let kept =
            |field: &str| previous.and_then(|p| p.pointer(&format!("/metadata/{field}")).cloned());
        let uid = kept("uid");
        let created = kept("creationTimestamp");
        let meta = meta_mut(&mut object);
        match uid {
            Some(uid) => {
                meta.insert("uid".into(), uid);
            }
            None => {
                meta.entry("uid")
                    .or_insert_with(|| Value::String(format!("fake-uid-{version}")));
            }
        }
        match created {
            Some(created) => {
                meta.insert("creationTimestamp".into(), created);
            }
            None => {
                meta.entry("creationTimestamp")
                    .or_insert_with(|| Value::String(timestamp()));
            }
        }
        meta.insert("resourceVersion".into(), Value::String(version.to_string()));
        meta.insert("generation".into(), Value::from(generation));
        meta.remove("managedFields");
        object
    }

    /// A `resourceVersion` in a write that is not the stored one is a conflict.
    fn check_version(
        verb: &str,
        target: &str,
        resolved: &ResolvedKind,
        written: &Value,
        existing: Option<&Value>,
    ) -> Result<(), K8sError> {
        let Some(wanted) = text(written, "/metadata/resourceVersion") else {
            return Ok(());
        };
        let current = existing.and_then(|e| text(e, "/metadata/resourceVersion"));
        if current == Some(wanted) {
            return Ok(());
        }
        Err(error(
            verb,
            target.into(),
            ErrorCode::Conflict,
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                resolved.qualified(),
                text(written, "/metadata/name").unwrap_or_default()
            ),
        ))
    }

    fn apply(&mut self, object: &Value, status: bool, dry_run: bool) -> Result<Value, K8sError> {
        let resolved = self.kind_of(object).map_err(|e| K8sError {
            verb: "apply".into(),
            ..e
        })?;
        let key = Self::key(&resolved, object);
        let target = object_target(&resolved.kind, key.2.as_deref(), &key.3);
        if resolved.namespaced && key.2.is_none() {
            return Err(error(
                "apply",
                target,
                ErrorCode::Usage,
                "the object needs metadata.namespace".into(),
            ));
        }
        let existing = self.objects.get(&key).cloned();
        Self::check_version("apply", &target, &resolved, object, existing.as_ref())?;
        let merged = match (&existing, status) {
            (None, true) => {
                return Err(error(
                    "apply",
                    target,
                    ErrorCode::NotFound,
                    format!("{} \"{}\" not found", resolved.qualified(), key.3),
                ));
            }
            (None, false) => {
                let mut fresh = object.clone();
                if let Some(map) = fresh.as_object_mut() {
                    map.remove("status");
                }
                fresh
            }
            (Some(existing), true) => {
                let mut merged = existing.clone();
                if let Some(s) = object.get("status") {
                    json_patch::merge(&mut merged, &serde_json::json!({"status": s}));
                }
                merged
            }
            (Some(existing), false) => {
                let mut patch = object.clone();
                if let Some(map) = patch.as_object_mut() {
                    map.remove("status");
                }
                let mut merged = existing.clone();
                json_patch::merge(&mut merged, &patch);
                merged
            }
        };
        let stored = self.stamp(merged, existing.as_ref());
        if !dry_run {
            self.objects.insert(key, stored.clone());
        }
        Ok(stored)
    }

    fn patch(
        &mut self,
        target: &Target,
        patch_type: PatchType,
        patch: &Value,
        status: bool,
    ) -> Result<Value, K8sError> {
        let (resolved, key) = self.target_key("patch", target)?;
        let target_text = object_target(&resolved.kind, key.2.as_deref(), &key.3);
        let Some(existing) = self.objects.get(&key).cloned() else {
            return Err(error(
                "patch",
                target_text,
                ErrorCode::NotFound,
                format!("{} \"{}\" not found", resolved.qualified(), key.3),
            ));
        };
        let mut patched = existing.clone();
        match patch_type {
            PatchType::Merge => {
                Self::check_version("patch", &target_text, &resolved, patch, Some(&existing))?;
                json_patch::merge(&mut patched, patch);
            }
            PatchType::Json => {
                let ops: json_patch::Patch =
                    serde_json::from_value(patch.clone()).map_err(|e| {
                        error(
                            "patch",
                            target_text.clone(),
                            ErrorCode::Invalid,
                            e.to_string(),
                        )
                    })?;
                json_patch::patch(&mut patched, &ops).map_err(|e| {
                    error(
                        "patch",
                        target_text.clone(),
                        ErrorCode::Invalid,
                        e.to_string(),
                    )
                })?;
            }
        }
        // The status subresource changes only status; the main resource never does.
        let mut result = existing.clone();
        match patched.as_object() {
            Some(map) if status => {
                if let Some(s) = map.get("status") {
                    result["status"] = s.clone();
                }
            }
            Some(map) => {
                let status_before = existing.get("status").cloned();
                result = Value::Object(map.clone());
                match status_before {
                    Some(s) => result["status"] = s,
                    None => {
                        if let Some(m) = result.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            None => {
                return Err(error(
                    "patch",
                    target_text,
                    ErrorCode::Invalid,
                    "the patched object is not an object".into(),
                ));
            }
        }
        // Identity fields do not move.
        for field in ["name", "namespace", "uid"] {
            if let Some(v) = existing.pointer(&format!("/metadata/{field}")) {
                meta_mut(&mut result).insert(field.into(), v.clone());
            }
        }
        let stored = self.stamp(result, Some(&existing));
        let stored = self.settle(key, stored);
        Ok(stored)
    }

    /// Stores an object; one being deleted whose last finalizer is gone is removed.
    fn settle(&mut self, key: Key, object: Value) -> Value {
        let deleting = object.pointer("/metadata/deletionTimestamp").is_some();
        let finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if deleting && !finalizers {
            self.objects.remove(&key);
            if let Some(uid) = text(&object, "/metadata/uid").map(str::to_string) {
                self.collect_dependents(&uid);
            }
        } else {
            self.objects.insert(key, object.clone());
        }
        object
    }

    fn create(&mut self, object: &Value, dry_run: bool) -> Result<Value, K8sError> {
        let resolved = self.kind_of(object).map_err(|e| K8sError {
            verb: "create".into(),
            ..e
        })?;
        let mut object = object.clone();
        if text(&object, "/metadata/name").is_none()
            && let Some(prefix) = text(&object, "/metadata/generateName").map(str::to_string)
        {
            let name = format!("{prefix}{:05x}", (self.version + 1) * 7_919 % 0x100000);
            meta_mut(&mut object).insert("name".into(), Value::String(name));
        }
        let key = Self::key(&resolved, &object);
        let target = object_target(&resolved.kind, key.2.as_deref(), &key.3);
        if resolved.namespaced && key.2.is_none() {
            return Err(error(
                "create",
                target,
                ErrorCode::Usage,
                "the object needs metadata.namespace".into(),
            ));
        }
        if self.objects.contains_key(&key) {
            return Err(error(
                "create",
                target,
                ErrorCode::AlreadyExists,
                format!("{} \"{}\" already exists", resolved.qualified(), key.3),
            ));
        }
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
            meta.remove("uid");
        }
        let stored = self.stamp(object, None);
        if !dry_run {
            self.objects.insert(key, stored.clone());
        }
        Ok(stored)
    }

    fn delete(&mut self, target: &Target, propagation: Propagation) -> Result<Value, K8sError> {
        let (_, key) = self.target_key("delete", target)?;
        let Some(existing) = self.objects.get(&key).cloned() else {
            return Ok(Value::Null);
        };
        let has_finalizers = existing
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if existing.pointer("/metadata/deletionTimestamp").is_none() {
                let mut marked = existing.clone();
                meta_mut(&mut marked)
                    .insert("deletionTimestamp".into(), Value::String(timestamp()));
                let marked = self.stamp(marked, Some(&existing));
                self.objects.insert(key, marked);
            }
            return Ok(Value::Null);
        }
        self.objects.remove(&key);
        if propagation != Propagation::Orphan
            && let Some(uid) = text(&existing, "/metadata/uid")
        {
            self.collect_dependents(uid);
        }
        Ok(Value::Null)
    }

    /// Deletes (transitively) every object with an ownerReference to `uid`.
    fn collect_dependents(&mut self, uid: &str) {
        let mut gone = vec![uid.to_string()];
        while let Some(owner) = gone.pop() {
            let dependents: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, o)| crate::k8s::owner::is_owned_by(o, &owner))
                .map(|(k, _)| k.clone())
                .collect();
            for key in dependents {
                if let Some(o) = self.objects.remove(&key)
                    && let Some(uid) = text(&o, "/metadata/uid")
                {
                    gone.push(uid.to_string());
                }
            }
        }
    }
}

impl Cluster for FakeCluster {
    fn execute<'a>(
        &'a self,
        _field_manager: &'a str,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<Value, K8sError>> {
        Box::pin(async move { self.run(request) })
    }

    fn resolve<'a>(&'a self, kind: &'a KindName) -> BoxFuture<'a, Result<ResolvedKind, K8sError>> {
        Box::pin(async move { resolve_among(&self.lock().served(), kind) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(ns: &str, name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": ns, "labels": labels}, "data": {"k": "v"}})
    }

    fn kind(k: &str) -> KindName {
        KindName {
            kind: k.into(),
            api_version: None,
        }
    }

    fn target(k: &str, ns: Option<&str>, name: &str) -> Target {
        Target {
            kind: kind(k),
            namespace: ns.map(Into::into),
            name: name.into(),
        }
    }

    fn run(c: &FakeCluster, r: Request) -> Result<Value, K8sError> {
        c.run(&r)
    }

    fn list(
        c: &FakeCluster,
        ns: Option<&str>,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Vec<String> {
        let found = run(
            c,
            Request::List {
                kind: kind("configmaps"),
                namespace: ns.map(Into::into),
                labels: labels.map(Into::into),
                fields: fields.map(Into::into),
                live: false,
            },
        )
        .expect("list");
        found
            .as_array()
            .expect("array")
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn objects_get_server_fields_and_selectors_filter() {
        let c = FakeCluster::new(vec![
            cm("a", "x", json!({"app": "web"})),
            cm("b", "y", json!({"app": "db"})),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}),
        ])
        .expect("fake");
        let x = run(
            &c,
            Request::Get {
                target: target("ConfigMap", Some("a"), "x"),
                live: false,
            },
        )
        .expect("get");
        assert!(
            x["metadata"]["uid"]
                .as_str()
                .is_some_and(|u| u.starts_with("fake-uid-"))
        );
        assert!(
            x["metadata"]["creationTimestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z') && t.len() == 20)
        );
        assert_eq!(list(&c, None, None, None), vec!["a/x", "b/y"]);
        assert_eq!(list(&c, Some("b"), None, None), vec!["b/y"]);
        assert_eq!(list(&c, None, Some("app in (web)"), None), vec!["a/x"]);
        assert_eq!(list(&c, None, None, Some("metadata.name!=x")), vec!["b/y"]);
        // A namespace given for a cluster-scoped kind is ignored.
        let ns = run(
            &c,
            Request::Get {
                target: target("namespaces", Some("zzz"), "a"),
                live: false,
            },
        )
        .expect("ns");
        assert_eq!(ns["metadata"]["name"], "a");
        let none = run(
            &c,
            Request::Get {
                target: target("configmaps", Some("a"), "nope"),
                live: false,
            },
        )
        .expect("absent");
        assert_eq!(none, Value::Null);
    }

    #[test]
    fn writes_behave_like_the_api_server() {
        let c = FakeCluster::new(vec![cm("a", "x", json!({}))]).expect("fake");
        let e = run(
            &c,
            Request::Create {
                object: cm("a", "x", json!({})),
                dry_run: false,
            },
        )
        .expect_err("exists");
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert_eq!(e.reason, "configmaps \"x\" already exists");
        let applied = run(&c, Request::Apply {
            object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "a"}, "data": {"n": "1"}}),
            status: false, dry_run: false,
        }).expect("apply");
        assert_eq!(applied["data"], json!({"k": "v", "n": "1"}));
        assert_eq!(applied["metadata"]["generation"], 2);
        let stale = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "a", "resourceVersion": "1"}});
        let e = run(
            &c,
            Request::Apply {
                object: stale,
                status: false,
                dry_run: false,
            },
        )
        .expect_err("stale");
        assert_eq!(e.code, ErrorCode::Conflict);
        let patched = run(
            &c,
            Request::Patch {
                target: target("configmaps", Some("a"), "x"),
                patch_type: PatchType::Json,
                patch: json!([{"op": "remove", "path": "/data/k"}]),
                status: false,
            },
        )
        .expect("json patch");
        assert_eq!(patched["data"], json!({"n": "1"}));
        let e = run(
            &c,
            Request::Patch {
                target: target("configmaps", Some("a"), "nope"),
                patch_type: PatchType::Merge,
                patch: json!({}),
                status: false,
            },
        )
        .expect_err("absent");
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = run(
            &c,
            Request::Patch {
                target: target("configmaps", Some("a"), "x"),
                patch_type: PatchType::Json,
                patch: json!([{"op": "remove", "path": "/nope/x"}]),
                status: false,
            },
        )
        .expect_err("bad path");
        assert_eq!(e.code, ErrorCode::Invalid);
        let dry = run(
            &c,
            Request::Create {
                object: cm("a", "dry", json!({})),
                dry_run: true,
            },
        )
        .expect("dry run");
        assert_eq!(dry["metadata"]["name"], "dry");
        assert_eq!(list(&c, None, None, None), vec!["a/x"]);
        assert_eq!(
            run(
                &c,
                Request::Delete {
                    target: target("configmaps", Some("a"), "nope"),
                    propagation: Propagation::Background
                }
            )
            .expect("absent delete"),
            Value::Null
        );
        let e = run(
            &c,
            Request::Get {
                target: target("configmaps", None, "x"),
                live: false,
            },
        )
        .expect_err("no ns");
        assert_eq!(e.code, ErrorCode::Usage);
    }

    #[test]
    fn status_writes_touch_only_status() {
        let c = FakeCluster::new(vec![cm("a", "x", json!({}))]).expect("fake");
        let p = run(
            &c,
            Request::Patch {
                target: target("configmaps", Some("a"), "x"),
                patch_type: PatchType::Merge,
                patch: json!({"status": {"ok": true}, "data": {"k": "changed"}}),
                status: true,
            },
        )
        .expect("status patch");
        assert_eq!(p["status"], json!({"ok": true}));
        assert_eq!(p["data"]["k"], "v");
        let m = run(
            &c,
            Request::Patch {
                target: target("configmaps", Some("a"), "x"),
                patch_type: PatchType::Merge,
                patch: json!({"status": {"ok": false}, "data": {"k": "changed"}}),
                status: false,
            },
        )
        .expect("main patch");
        assert_eq!(m["status"], json!({"ok": true}));
        assert_eq!(m["data"]["k"], "changed");
    }

    #[test]
    fn deletes_honour_finalizers_and_collect_dependents() {
        let owner = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "o", "namespace": "a", "uid": "u-o", "finalizers": ["f"]}});
        let mut child = cm("a", "c", json!({}));
        child["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-o"}]);
        let c = FakeCluster::new(vec![owner, child]).expect("fake");
        run(
            &c,
            Request::Delete {
                target: target("configmaps", Some("a"), "o"),
                propagation: Propagation::Background,
            },
        )
        .expect("delete");
        let marked = run(
            &c,
            Request::Get {
                target: target("configmaps", Some("a"), "o"),
                live: false,
            },
        )
        .expect("get");
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert_eq!(list(&c, None, None, None), vec!["a/c", "a/o"]);
        run(
            &c,
            Request::Patch {
                target: target("configmaps", Some("a"), "o"),
                patch_type: PatchType::Merge,
                patch: json!({"metadata": {"finalizers": null}}),
                status: false,
            },
        )
        .expect("remove finalizer");
        assert!(list(&c, None, None, None).is_empty());
    }

    #[test]
    fn files_load_as_lists_multi_docs_or_list_kinds() {
        let yaml_list = "- {apiVersion: v1, kind: ConfigMap, metadata: {name: a, namespace: n}}\n";
        let multi = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: n}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";
        let json_list = r#"[{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"}}]"#;
        let list_kind = r#"{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"}}]}"#;
        assert_eq!(
            FakeCluster::from_text(yaml_list)
                .expect("yaml list")
                .objects()
                .len(),
            1
        );
        let m = FakeCluster::from_text(multi).expect("multi");
        assert_eq!(m.objects().len(), 2);
        let w = run(
            &m,
            Request::Get {
                target: target("widgets", None, "w"),
                live: false,
            },
        )
        .expect("widget");
        assert_eq!(w["metadata"]["name"], "w");
        assert_eq!(
            FakeCluster::from_text(json_list)
                .expect("json")
                .objects()
                .len(),
            1
        );
        assert_eq!(
            FakeCluster::from_text(list_kind)
                .expect("List")
                .objects()
                .len(),
            1
        );
        let e = FakeCluster::from_text("- {kind: ConfigMap}")
            .err()
            .expect("invalid");
        assert!(e.contains("object 1"), "{e}");
        assert!(FakeCluster::from_text("- 3").is_err());
    }
}
