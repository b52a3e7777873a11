//! One script call's `k8s` commands: the [`Session`] both executors hand their
//! [`Invocation`]s to.
//!
//! A session knows the call's primary object (the default namespace, the owner of
//! children), the kinds it owns (an `apply` of those gets the primary as controller
//! ownerReference and nuop's labels), the cluster, and the call's deadline. It applies
//! the defaults, turns each command into a [`Request`], records every request it issues
//! ([`Session::issued`]), and overlays what the call wrote on later reads of the same
//! call (read-your-writes, while the watch caches catch up).
//!
//! Does I/O only through its [`Cluster`]. Every command is bounded by the call's
//! deadline and by [`Session::cancel`] (test `session::tests::commands_after_the_deadline_or_a_cancel_are_interrupted`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::watch;

use super::command::{K8sCommand, Objects, Scope, check_object};
use super::owner::{CONTROLLER_LABEL, is_owned_by, own, owner_ref};
use super::selector::{FieldSelector, LabelSelector};
use super::{ErrorCode, Invocation, K8sError};
use crate::cluster::{
    Cluster, KindName, Request, ResolvedKind, Target, list_target, object_target, split_api_version,
};
use crate::protocol::RelatedKind;

/// What a session is built from.
pub struct SessionParts {
    /// The controller's name; the field manager is `nuop-<controller>`.
    pub controller: String,
    /// The object of this call (apiVersion, kind, metadata.{name,namespace,uid}).
    pub primary: Value,
    /// Kinds whose `apply` stamps the owner reference and labels.
    pub owns: Vec<RelatedKind>,
    /// Where the commands go.
    pub cluster: Arc<dyn Cluster>,
    /// The runtime commands run on (captured when the call starts, so that threads
    /// without a runtime context, such as `par-each`'s, can use it).
    pub runtime: tokio::runtime::Handle,
    /// When the call's time is up.
    pub deadline: Instant,
}

/// How many objects of one `k8s apply` list are in flight at once.
const APPLY_CONCURRENCY: usize = 8;

/// Identifies an object across the call's writes and reads: group, kind, namespace, name.
type Key = (String, String, Option<String>, String);

/// The `k8s` commands of one script call.
pub struct Session {
    controller: String,
    field_manager: String,
    primary: Value,
    owns: Vec<RelatedKind>,
    cluster: Arc<dyn Cluster>,
    runtime: tokio::runtime::Handle,
    deadline: Instant,
    cancel: watch::Sender<bool>,
    issued: Mutex<Vec<Request>>,
    /// What this call wrote (`None`: deleted), overlaid on its later reads.
    written: Mutex<HashMap<Key, Option<Value>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("controller", &self.controller)
            .field("primary", &key_of(&self.primary))
            .field("deadline", &self.deadline)
            .field("cancelled", &*self.cancel.borrow())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is one insert or clone: a panic cannot leave it half done.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The overlay key of an object the cluster returned.
fn key_of(object: &Value) -> Option<Key> {
    let (group, _) = split_api_version(text(object, "/apiVersion")?);
    Some((
        group.to_string(),
        text(object, "/kind")?.to_string(),
        text(object, "/metadata/namespace").map(str::to_string),
        text(object, "/metadata/name")?.to_string(),
    ))
}

fn usage(verb: &str, target: &str, reason: impl Into<String>) -> K8sError {
    K8sError {
        verb: verb.into(),
        target: target.into(),
        reason: reason.into(),
        code: ErrorCode::Usage,
    }
}

/// What an invocation is about, for errors raised before it is parsed or resolved.
fn rough_target(inv: &Invocation) -> String {
    let arg = |n: &str| inv.args.get(n).and_then(Value::as_str);
    match (arg("kind"), arg("name")) {
        (Some(kind), Some(name)) => object_target(kind, arg("namespace"), name),
        (Some(kind), None) => kind.to_lowercase(),
        _ => match &inv.input {
            Value::Object(_) => object_target(
                text(&inv.input, "/kind").unwrap_or("object"),
                text(&inv.input, "/metadata/namespace"),
                text(&inv.input, "/metadata/name").unwrap_or("?"),
            ),
            _ => "input".into(),
        },
    }
}

impl Session {
    /// A session for one call.
    pub fn new(parts: SessionParts) -> Arc<Self> {
        let (cancel, _) = watch::channel(false);
        Arc::new(Self {
            field_manager: format!("nuop-{}", parts.controller),
            controller: parts.controller,
            primary: parts.primary,
            owns: parts.owns,
            cluster: parts.cluster,
            runtime: parts.runtime,
            deadline: parts.deadline,
            cancel,
            issued: Mutex::new(Vec::new()),
            written: Mutex::new(HashMap::new()),
        })
    }

    /// From a non-runtime thread (embedded evaluation thread, rayon thread of par-each,
    /// spawn_blocking): runs the command on `runtime`, bounded by deadline + cancel.
    ///
    /// # Errors
    /// As [`Session::invoke`].
    ///
    /// # Panics
    /// Like `Handle::block_on`, when called from a runtime worker thread; the executors
    /// call it only from their evaluation threads.
    pub fn invoke_blocking(&self, inv: &Invocation) -> Result<Value, K8sError> {
        self.runtime.block_on(self.invoke(inv))
    }

    /// From async code (the socket server).
    ///
    /// # Errors
    /// A [`K8sError`]: [`ErrorCode::Usage`] for bad arguments, [`ErrorCode::Interrupted`]
    /// once the deadline passed or the call was cancelled, the cluster's error otherwise.
    pub async fn invoke(&self, inv: &Invocation) -> Result<Value, K8sError> {
        let interrupted = |why: &str| K8sError {
            verb: inv.verb.clone(),
            target: rough_target(inv),
            reason: why.into(),
            code: ErrorCode::Interrupted,
        };
        if *self.cancel.borrow() {
            return Err(interrupted("the call was cancelled"));
        }
        if Instant::now() >= self.deadline {
            return Err(interrupted("the call's timeout has passed"));
        }
        let mut cancelled = self.cancel.subscribe();
        tokio::select! {
            biased;
            _ = cancelled.wait_for(|c| *c) => Err(interrupted("the call was cancelled")),
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(self.deadline)) => {
                Err(interrupted("the call's timeout has passed"))
            }
            result = self.run(inv) => result,
        }
    }

    /// Stops in-flight and later commands (call timed out / was dropped).
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// The commands this call issued, in order (for `exec --cluster` and tests).
    pub fn issued(&self) -> Vec<Request> {
        lock(&self.issued).clone()
    }

    /// The controller this session acts for.
    pub fn controller(&self) -> &str {
        &self.controller
    }

    async fn run(&self, inv: &Invocation) -> Result<Value, K8sError> {
        let verb = inv.verb.as_str();
        match K8sCommand::parse(inv)? {
            K8sCommand::Get {
                kind,
                name,
                scope,
                live,
            } => {
                let resolved = self.resolve(verb, &kind).await?;
                let namespace = self.single_namespace(verb, &resolved, &scope, &name)?;
                let target_text = object_target(&resolved.kind, namespace.as_deref(), &name);
                let key: Key = (
                    resolved.group.clone(),
                    resolved.kind.clone(),
                    namespace.clone(),
                    name.clone(),
                );
                let request = Request::Get {
                    target: Target {
                        kind,
                        namespace,
                        name,
                    },
                    live,
                };
                let found = self.execute(verb, &target_text, &request).await?;
                if !live && let Some(written) = lock(&self.written).get(&key) {
                    return Ok(written.clone().unwrap_or(Value::Null));
                }
                Ok(found)
            }
            K8sCommand::List {
                kind,
                scope,
                labels,
                fields,
                live,
            } => {
                let resolved = self.resolve(verb, &kind).await?;
                let namespace = match (&scope, resolved.namespaced) {
                    (_, false) | (Scope::All, _) => None,
                    (Scope::Namespace(ns), true) => Some(ns.clone()),
                    (Scope::Default, true) => self.primary_namespace().map(str::to_string),
                };
                let target_text =
                    list_target(&resolved.plural, resolved.namespaced, namespace.as_deref());
                let request = Request::List {
                    kind,
                    namespace: namespace.clone(),
                    labels: labels.as_ref().map(ToString::to_string),
                    fields: fields.as_ref().map(ToString::to_string),
                    live,
                };
                let found = self.execute(verb, &target_text, &request).await?;
                let items = into_items(found);
                Ok(Value::Array(if live {
                    sorted(items)
                } else {
                    self.overlay_list(
                        &resolved,
                        namespace.as_deref(),
                        labels.as_ref(),
                        fields.as_ref(),
                        items,
                    )
                }))
            }
            K8sCommand::Apply {
                objects,
                status,
                dry_run,
            } => {
                let Objects { items, single } = objects;
                let mut requests = Vec::with_capacity(items.len());
                for object in items {
                    check_object(verb, &object, false)?;
                    let (object, target_text) = self.prepare_write(verb, object, true).await?;
                    let request = Request::Apply {
                        object,
                        status,
                        dry_run,
                    };
                    requests.push((request, target_text));
                }
                // A list is applied APPLY_CONCURRENCY objects at a time, recorded
                // in its order; the first failure in list order is the answer (objects
                // after it may have been applied).
                lock(&self.issued).extend(requests.iter().map(|(r, _)| r.clone()));
                let mut results: Vec<Result<Value, K8sError>> = Vec::with_capacity(requests.len());
                for chunk in requests.chunks(APPLY_CONCURRENCY) {
                    let writes: Vec<_> = chunk
                        .iter()
                        .map(|(request, target_text)| {
                            self.execute_unrecorded(verb, target_text, request)
                        })
                        .collect();
                    results.extend(futures::future::join_all(writes).await);
                }
                let mut applied = Vec::with_capacity(results.len());
                for result in results {
                    let result = result?;
                    if !dry_run {
                        self.remember(&result);
                    }
                    applied.push(result);
                }
                Ok(if single {
                    applied.into_iter().next().unwrap_or(Value::Null)
                } else {
                    Value::Array(applied)
                })
            }
            K8sCommand::Patch {
                kind,
                name,
                scope,
                patch_type,
                patch,
                status,
            } => {
                let resolved = self.resolve(verb, &kind).await?;
                let namespace = self.single_namespace(verb, &resolved, &scope, &name)?;
                let target_text = object_target(&resolved.kind, namespace.as_deref(), &name);
                let request = Request::Patch {
                    target: Target {
                        kind,
                        namespace,
                        name,
                    },
                    patch_type,
                    patch,
                    status,
                };
                let result = self.execute(verb, &target_text, &request).await?;
                self.remember(&result);
                Ok(result)
            }
            K8sCommand::Create { object, dry_run } => {
                check_object(verb, &object, true)?;
                let (object, target_text) = self.prepare_write(verb, object, true).await?;
                let request = Request::Create { object, dry_run };
                let result = self.execute(verb, &target_text, &request).await?;
                if !dry_run {
                    self.remember(&result);
                }
                Ok(result)
            }
            K8sCommand::Delete {
                kind,
                name,
                scope,
                propagation,
            } => {
                let resolved = self.resolve(verb, &kind).await?;
                let namespace = self.single_namespace(verb, &resolved, &scope, &name)?;
                let target_text = object_target(&resolved.kind, namespace.as_deref(), &name);
                let key: Key = (
                    resolved.group.clone(),
                    resolved.kind.clone(),
                    namespace.clone(),
                    name.clone(),
                );
                let request = Request::Delete {
                    target: Target {
                        kind,
                        namespace,
                        name,
                    },
                    propagation,
                };
                self.execute(verb, &target_text, &request).await?;
                lock(&self.written).insert(key, None);
                Ok(Value::Null)
            }
            K8sCommand::Own { objects } => {
                let Objects { items, single } = objects;
                let owned = items
                    .iter()
                    .map(|o| {
                        own(o, &self.primary, &self.controller)
                            .map_err(|e| usage(verb, &rough_target(inv), e))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if single {
                    owned.into_iter().next().unwrap_or(Value::Null)
                } else {
                    Value::Array(owned)
                })
            }
            K8sCommand::OwnerRef => owner_ref(&self.primary).map_err(|e| usage(verb, "primary", e)),
            K8sCommand::Children { kind } => {
                let resolved = self.resolve(verb, &kind).await?;
                let uid = text(&self.primary, "/metadata/uid")
                    .ok_or_else(|| usage(verb, "primary", "the primary object has no uid"))?
                    .to_string();
                let namespace = if resolved.namespaced {
                    self.primary_namespace().map(str::to_string)
                } else {
                    None
                };
                let labels = LabelSelector(vec![super::selector::Requirement::Exists(
                    CONTROLLER_LABEL.into(),
                )]);
                let target_text =
                    list_target(&resolved.plural, resolved.namespaced, namespace.as_deref());
                let request = Request::List {
                    kind,
                    namespace: namespace.clone(),
                    labels: Some(labels.to_string()),
                    fields: None,
                    live: false,
                };
                let found = into_items(self.execute(verb, &target_text, &request).await?);
                let items =
                    self.overlay_list(&resolved, namespace.as_deref(), Some(&labels), None, found);
                Ok(Value::Array(
                    items.into_iter().filter(|o| is_owned_by(o, &uid)).collect(),
                ))
            }
        }
    }

    fn primary_namespace(&self) -> Option<&str> {
        text(&self.primary, "/metadata/namespace")
    }

    async fn resolve(&self, verb: &str, kind: &KindName) -> Result<ResolvedKind, K8sError> {
        self.cluster.resolve(kind).await.map_err(|e| K8sError {
            verb: verb.into(),
            ..e
        })
    }

    /// The namespace a get/patch/delete addresses: none for cluster-scoped kinds, else
    /// `-n` or the primary's.
    fn single_namespace(
        &self,
        verb: &str,
        resolved: &ResolvedKind,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<String>, K8sError> {
        if !resolved.namespaced {
            return Ok(None);
        }
        match scope {
            Scope::Namespace(ns) => Ok(Some(ns.clone())),
            Scope::Default | Scope::All => match self.primary_namespace() {
                Some(ns) => Ok(Some(ns.to_string())),
                None => Err(usage(
                    verb,
                    &object_target(&resolved.kind, None, name),
                    "`--namespace` is required: the primary object is cluster-scoped",
                )),
            },
        }
    }

    /// An object to apply or create with the defaults filled in: the primary's
    /// namespace for a namespaced kind without one, and ownership for an owned kind.
    async fn prepare_write(
        &self,
        verb: &str,
        mut object: Value,
        own_owned: bool,
    ) -> Result<(Value, String), K8sError> {
        let api_version = text(&object, "/apiVersion").unwrap_or_default().to_string();
        let kind = text(&object, "/kind").unwrap_or_default().to_string();
        let name = text(&object, "/metadata/name")
            .or_else(|| text(&object, "/metadata/generateName"))
            .unwrap_or_default()
            .to_string();
        let resolved = self
            .resolve(
                verb,
                &KindName {
                    kind: kind.clone(),
                    api_version: Some(api_version.clone()),
                },
            )
            .await?;
        if resolved.namespaced && text(&object, "/metadata/namespace").is_none() {
            let Some(ns) = self.primary_namespace() else {
                return Err(usage(
                    verb,
                    &object_target(&kind, None, &name),
                    "the object needs metadata.namespace: the primary object is cluster-scoped",
                ));
            };
            if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("namespace".into(), Value::String(ns.to_string()));
            }
        }
        let target_text = object_target(
            &kind,
            text(&object, "/metadata/namespace").filter(|_| resolved.namespaced),
            &name,
        );
        let owned = self
            .owns
            .iter()
            .any(|o| o.kind == kind && o.api_version() == api_version);
        // Only where an owner reference is valid: a copy in another namespace than a
        // namespaced primary's stays unowned (an explicit `k8s own` refuses it).
        let ownable = match (
            self.primary_namespace(),
            text(&object, "/metadata/namespace"),
        ) {
            (Some(p), Some(c)) => p == c,
            _ => true,
        };
        if own_owned && owned && ownable {
            object = own(&object, &self.primary, &self.controller)
                .map_err(|e| usage(verb, &target_text, e))?;
        }
        Ok((object, target_text))
    }

    /// Records and runs one request; errors name this session's verb and target.
    async fn execute(
        &self,
        verb: &str,
        target: &str,
        request: &Request,
    ) -> Result<Value, K8sError> {
        lock(&self.issued).push(request.clone());
        self.execute_unrecorded(verb, target, request).await
    }

    /// [`Self::execute`] for a request already recorded in `issued`.
    async fn execute_unrecorded(
        &self,
        verb: &str,
        target: &str,
        request: &Request,
    ) -> Result<Value, K8sError> {
        self.cluster
            .execute(&self.field_manager, request)
            .await
            .map_err(|e| K8sError {
                verb: verb.into(),
                target: target.into(),
                ..e
            })
    }

    fn remember(&self, object: &Value) {
        if let Some(key) = key_of(object) {
            lock(&self.written).insert(key, Some(object.clone()));
        }
    }

    /// A list with this call's writes laid over it, sorted by namespace and name.
    fn overlay_list(
        &self,
        resolved: &ResolvedKind,
        namespace: Option<&str>,
        labels: Option<&LabelSelector>,
        fields: Option<&FieldSelector>,
        items: Vec<Value>,
    ) -> Vec<Value> {
        let written = lock(&self.written);
        let mine = |k: &Key| k.0 == resolved.group && k.1 == resolved.kind;
        if !written.keys().any(mine) {
            return sorted(items);
        }
        let mut by_key: Vec<(Option<Key>, Value)> = items
            .into_iter()
            .map(|o| (key_of(&o), o))
            .filter(|(k, _)| k.as_ref().is_none_or(|k| !written.contains_key(k)))
            .collect();
        for (key, object) in written.iter() {
            let Some(object) = object else { continue };
            let in_scope = namespace.is_none_or(|ns| key.2.as_deref() == Some(ns));
            if mine(key)
                && in_scope
                && labels.is_none_or(|l| l.matches_object(object))
                && fields.is_none_or(|f| f.matches(object))
            {
                by_key.push((Some(key.clone()), object.clone()));
            }
        }
        sorted(by_key.into_iter().map(|(_, o)| o).collect())
    }
}

fn into_items(found: Value) -> Vec<Value> {
    match found {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn sorted(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by(|a, b| {
        let k = |o: &Value| {
            (
                text(o, "/metadata/namespace")
                    .unwrap_or_default()
                    .to_string(),
                text(o, "/metadata/name").unwrap_or_default().to_string(),
            )
        };
        k(a).cmp(&k(b))
    });
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::FakeCluster;
    use crate::protocol::{Mapper, Trigger};
    use serde_json::json;
    use std::time::Duration;

    fn primary() -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "src", "namespace": "team-a", "uid": "uid-src"}})
    }

    fn configmap(ns: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": ns}, "data": {"k": "v"}})
    }

    fn owns_configmaps() -> Vec<RelatedKind> {
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

    fn session(objects: Vec<Value>, deadline: Instant) -> (Arc<Session>, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let cluster: Arc<dyn Cluster> = Arc::new(FakeCluster::new(objects).expect("fake"));
        let s = Session::new(SessionParts {
            controller: "copier".into(),
            primary: primary(),
            owns: owns_configmaps(),
            cluster,
            runtime: runtime.handle().clone(),
            deadline,
        });
        (s, runtime)
    }

    fn inv(verb: &str, args: Value, input: Value) -> Invocation {
        Invocation {
            verb: verb.into(),
            args: args.as_object().cloned().unwrap_or_default(),
            input,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn reads_default_to_the_primary_namespace_and_see_the_calls_writes() {
        let (s, _rt) = session(
            vec![configmap("team-a", "a"), configmap("team-b", "b")],
            later(),
        );
        let got = s
            .invoke_blocking(&inv(
                "get",
                json!({"kind": "configmaps", "name": "a"}),
                Value::Null,
            ))
            .expect("get");
        assert_eq!(got["metadata"]["name"], "a");
        let absent = s
            .invoke_blocking(&inv(
                "get",
                json!({"kind": "ConfigMap", "name": "b"}),
                Value::Null,
            ))
            .expect("get absent");
        assert_eq!(absent, Value::Null);
        let all = s
            .invoke_blocking(&inv(
                "list",
                json!({"kind": "configmap", "all-namespaces": true}),
                Value::Null,
            ))
            .expect("list -A");
        assert_eq!(all.as_array().map(Vec::len), Some(2));

        let applied = s
            .invoke_blocking(&inv("apply", json!({}), configmap("team-a", "c")))
            .expect("apply");
        // An owned kind: the primary is its controller, and nuop's labels are on it.
        assert_eq!(applied["metadata"]["ownerReferences"][0]["uid"], "uid-src");
        assert_eq!(
            applied["metadata"]["labels"]["nuop.dev/controller"],
            "copier"
        );
        s.invoke_blocking(&inv(
            "delete",
            json!({"kind": "configmaps", "name": "a"}),
            Value::Null,
        ))
        .expect("delete");
        let names: Vec<String> = s
            .invoke_blocking(&inv("list", json!({"kind": "configmaps"}), Value::Null))
            .expect("list")
            .as_array()
            .expect("array")
            .iter()
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(names, vec!["c"]);
        let children = s
            .invoke_blocking(&inv("children", json!({"kind": "configmaps"}), Value::Null))
            .expect("children");
        assert_eq!(children.as_array().map(Vec::len), Some(1));
        let verbs: Vec<&str> = s.issued().iter().map(Request::verb).collect();
        assert_eq!(
            verbs,
            vec!["get", "get", "list", "apply", "delete", "list", "list"]
        );
    }

    #[test]
    fn commands_after_the_deadline_or_a_cancel_are_interrupted() {
        let (s, _rt) = session(vec![], Instant::now());
        let e = s
            .invoke_blocking(&inv(
                "get",
                json!({"kind": "configmaps", "name": "a"}),
                Value::Null,
            ))
            .expect_err("late");
        assert_eq!(e.code, ErrorCode::Interrupted);
        assert!(s.issued().is_empty());
        let (s, _rt) = session(vec![], later());
        s.cancel();
        let e = s
            .invoke_blocking(&inv("list", json!({"kind": "configmaps"}), Value::Null))
            .expect_err("cancelled");
        assert_eq!(e.code, ErrorCode::Interrupted);
        assert_eq!(e.to_string(), "k8s list configmaps: the call was cancelled");
    }

    #[test]
    fn errors_name_the_verb_the_object_and_the_reason() {
        let (s, _rt) = session(vec![configmap("team-a", "a")], later());
        let e = s
            .invoke_blocking(&inv("create", json!({}), configmap("team-a", "a")))
            .expect_err("exists");
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        assert!(
            e.to_string().starts_with("k8s create configmap team-a/a: "),
            "{e}"
        );
        let e = s
            .invoke_blocking(&inv(
                "patch",
                json!({"kind": "cm-nope", "name": "a"}),
                json!({}),
            ))
            .expect_err("unknown kind");
        assert_eq!(e.code, ErrorCode::UnknownKind);
        assert_eq!(e.verb, "patch");
        let e = s
            .invoke_blocking(&inv("get", json!({"kind": "configmaps"}), Value::Null))
            .expect_err("usage");
        assert_eq!(e.code, ErrorCode::Usage);
        assert!(e.reason.contains("`name`"), "{e}");
    }

    #[test]
    fn own_and_owner_ref_need_no_cluster() {
        let (s, _rt) = session(vec![], later());
        let r = s
            .invoke_blocking(&inv("owner-ref", json!({}), Value::Null))
            .expect("ref");
        assert_eq!(r["controller"], true);
        let owned = s
            .invoke_blocking(&inv("own", json!({}), json!([configmap("team-a", "x")])))
            .expect("own");
        assert_eq!(
            owned[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "nuop"
        );
        assert!(s.issued().is_empty());
    }
}
