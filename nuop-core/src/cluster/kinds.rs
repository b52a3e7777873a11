//! Kinds as scripts name them, resolved against the kinds a cluster serves: `Kind`,
//! lower-case kind, plural, `<any of those>.<group>`, optionally pinned by
//! `--api-version`.
//!
//! Pure: no I/O. The live cluster feeds [`resolve_among`] with discovery's answer, the
//! fake with [`builtin_kinds`] plus the kinds of its objects.

use super::KindName;
use crate::k8s::{ErrorCode, K8sError};

/// A kind as the cluster serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedKind {
    /// API group ("" for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind (`ConfigMap`).
    pub kind: String,
    /// Resource name (`configmaps`).
    pub plural: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
}

impl ResolvedKind {
    /// A kind from its parts.
    pub fn new(api_version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        let (group, version) = split_api_version(api_version);
        Self {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            namespaced,
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group`, or the plural for the core group (how kubectl names a resource).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `name` (Kind, lower-case kind, or plural; case-insensitive) names this kind.
    fn answers_to(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(&self.kind) || name.eq_ignore_ascii_case(&self.plural)
    }
}

/// `(group, version)` of an apiVersion (`apps/v1` → `("apps", "v1")`, `v1` → `("", "v1")`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.split_once('/').unwrap_or(("", api_version))
}

/// The kinds every Kubernetes API server serves that scripts commonly touch, for the
/// fake cluster (and [`super::Cluster::resolve`]'s default).
pub fn builtin_kinds() -> Vec<ResolvedKind> {
    [
        ("v1", "ConfigMap", "configmaps", true),
        ("v1", "Secret", "secrets", true),
        ("v1", "Namespace", "namespaces", false),
        ("v1", "Service", "services", true),
        ("v1", "ServiceAccount", "serviceaccounts", true),
        ("v1", "Pod", "pods", true),
        ("v1", "Event", "events", true),
        ("v1", "Endpoints", "endpoints", true),
        ("v1", "Node", "nodes", false),
        (
            "v1",
            "PersistentVolumeClaim",
            "persistentvolumeclaims",
            true,
        ),
        ("v1", "PersistentVolume", "persistentvolumes", false),
        ("apps/v1", "Deployment", "deployments", true),
        ("apps/v1", "StatefulSet", "statefulsets", true),
        ("apps/v1", "DaemonSet", "daemonsets", true),
        ("apps/v1", "ReplicaSet", "replicasets", true),
        ("batch/v1", "Job", "jobs", true),
        ("batch/v1", "CronJob", "cronjobs", true),
        ("networking.k8s.io/v1", "Ingress", "ingresses", true),
        (
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        ),
        ("rbac.authorization.k8s.io/v1", "Role", "roles", true),
        (
            "rbac.authorization.k8s.io/v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        ("coordination.k8s.io/v1", "Lease", "leases", true),
        (
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
    ]
    .into_iter()
    .map(|(av, kind, plural, namespaced)| ResolvedKind::new(av, kind, plural, namespaced))
    .collect()
}

/// Resolves `name` among `served` (each `(kind, preferred)`: whether its version is the
/// group's preferred one). Without `--api-version` only preferred versions answer; a
/// name that matches kinds of several groups is ambiguous unless one of them is the core
/// group, which wins (as in kubectl: `events` is the core Event).
///
/// # Errors
/// [`ErrorCode::UnknownKind`]: no kind answers to the name, or several groups do (the
/// message lists them and asks for `--api-version`). The error's verb is `resolve`;
/// callers put their own.
pub fn resolve_among(
    served: &[(ResolvedKind, bool)],
    name: &KindName,
) -> Result<ResolvedKind, K8sError> {
    let unknown = |reason: String| K8sError {
        verb: "resolve".into(),
        target: name.kind.clone(),
        reason,
        code: ErrorCode::UnknownKind,
    };
    let pinned = name.api_version.as_deref().map(split_api_version);
    let (base, group) = match name.kind.split_once('.') {
        Some((base, group)) => (base, Some(group)),
        None => (name.kind.as_str(), None),
    };
    let mut found: Vec<&ResolvedKind> = served
        .iter()
        .filter(|(k, preferred)| match pinned {
            Some((g, v)) => k.group == g && k.version == v,
            None => *preferred,
        })
        .map(|(k, _)| k)
        .filter(|k| k.answers_to(base) && group.is_none_or(|g| g == k.group))
        .collect();
    found.dedup_by(|a, b| a.group == b.group && a.kind == b.kind);
    let mut groups: Vec<&ResolvedKind> = Vec::new();
    for k in found {
        if !groups.iter().any(|g| g.group == k.group) {
            groups.push(k);
        }
    }
    match groups.as_slice() {
        [] => Err(unknown(match &name.api_version {
            Some(av) => format!("the API server serves no kind `{}` in {av}", name.kind),
            None => format!(
                "the API server serves no kind `{}` (write Kind, plural or kind.group)",
                name.kind
            ),
        })),
        [one] => Ok((*one).clone()),
        many => match many.iter().find(|k| k.group.is_empty()) {
            Some(core) => Ok((*core).clone()),
            None => Err(unknown(format!(
                "`{}` is ambiguous ({}): add --api-version",
                name.kind,
                many.iter()
                    .map(|k| format!("{} {}", k.api_version(), k.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
    }
}

/// How errors name one object: `configmap team-a/app`, `namespace team-a`.
pub fn object_target(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{} {ns}/{name}", kind.to_lowercase()),
        None => format!("{} {name}", kind.to_lowercase()),
    }
}

/// How errors name a list: `configmaps in team-a`, `configmaps in all namespaces`,
/// `namespaces` (cluster-scoped).
pub fn list_target(plural: &str, namespaced: bool, namespace: Option<&str>) -> String {
    match (namespaced, namespace) {
        (false, _) => plural.to_string(),
        (true, Some(ns)) => format!("{plural} in {ns}"),
        (true, None) => format!("{plural} in all namespaces"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(kind: &str, api_version: Option<&str>) -> KindName {
        KindName {
            kind: kind.into(),
            api_version: api_version.map(Into::into),
        }
    }

    fn served() -> Vec<(ResolvedKind, bool)> {
        let mut s: Vec<_> = builtin_kinds().into_iter().map(|k| (k, true)).collect();
        s.push((
            ResolvedKind::new("events.k8s.io/v1", "Event", "events", true),
            true,
        ));
        s.push((
            ResolvedKind::new("a.example/v1", "Widget", "widgets", true),
            true,
        ));
        s.push((
            ResolvedKind::new("a.example/v1beta1", "Widget", "widgets", true),
            false,
        ));
        s.push((
            ResolvedKind::new("b.example/v1", "Widget", "widgets", false),
            true,
        ));
        s
    }

    #[test]
    fn kinds_resolve_by_kind_plural_and_group() {
        for written in ["ConfigMap", "configmap", "configmaps", "ConfigMaps"] {
            let k = resolve_among(&served(), &name(written, None)).expect(written);
            assert_eq!(k.plural, "configmaps");
        }
        let d = resolve_among(&served(), &name("deployments.apps", None)).expect("deployments");
        assert_eq!(
            (d.api_version().as_str(), d.kind.as_str()),
            ("apps/v1", "Deployment")
        );
        assert!(
            !resolve_among(&served(), &name("namespace", None))
                .expect("ns")
                .namespaced
        );
        let w = resolve_among(&served(), &name("widget.b.example", None)).expect("widget");
        assert_eq!(w.group, "b.example");
    }

    #[test]
    fn ambiguity_asks_for_api_version_and_core_wins() {
        let e = resolve_among(&served(), &name("widgets", None)).expect_err("ambiguous");
        assert_eq!(e.code, ErrorCode::UnknownKind);
        assert!(e.reason.contains("--api-version"), "{e}");
        assert!(
            e.reason.contains("a.example/v1 Widget") && e.reason.contains("b.example/v1 Widget"),
            "{e}"
        );
        let pinned =
            resolve_among(&served(), &name("widgets", Some("a.example/v1beta1"))).expect("pinned");
        assert_eq!(pinned.version, "v1beta1");
        assert_eq!(
            resolve_among(&served(), &name("events", None))
                .expect("events")
                .group,
            ""
        );
    }

    #[test]
    fn unknown_kinds_are_named() {
        let e = resolve_among(&served(), &name("gizmos", None)).expect_err("unknown");
        assert_eq!(e.code, ErrorCode::UnknownKind);
        assert!(e.reason.contains("`gizmos`"), "{e}");
        let e = resolve_among(&served(), &name("configmaps", Some("apps/v1")))
            .expect_err("wrong version");
        assert!(e.reason.contains("apps/v1"), "{e}");
    }

    #[test]
    fn targets_read_like_kubectl() {
        assert_eq!(
            object_target("ConfigMap", Some("team-a"), "app"),
            "configmap team-a/app"
        );
        assert_eq!(
            object_target("Namespace", None, "team-a"),
            "namespace team-a"
        );
        assert_eq!(
            list_target("configmaps", true, Some("n")),
            "configmaps in n"
        );
        assert_eq!(
            list_target("configmaps", true, None),
            "configmaps in all namespaces"
        );
        assert_eq!(list_target("namespaces", false, None), "namespaces");
    }
}
