//! The kinds a controller declares besides its primary: `owns`, `watches` and `reads`
//! in a script's `config` answer.
//!
//! Pure: no I/O. Each entry names a kind (apiVersion + kind), optionally narrowed by
//! namespaces and equality selectors, with a trigger filter (`on`) and, for `watches`, a
//! mapper from a related object to the primaries it concerns. The controller (see
//! [`crate::controller`]) turns them into shared informers ([`crate::informers`]); the
//! `k8s` commands read declared kinds from those caches.

use std::collections::BTreeMap;

/// One kind declared under `owns`, `watches` or `reads`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedKind {
    /// API group ("" for the core group).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind, as in an object's `kind`.
    pub kind: String,
    /// Namespaces to watch; empty means the primary's namespaces (`owns`) or all
    /// namespaces (`watches`, `reads`).
    pub namespaces: Vec<String>,
    /// Equality label selectors passed to the watch.
    pub label_selectors: BTreeMap<String, String>,
    /// Equality field selectors passed to the watch.
    pub field_selectors: BTreeMap<String, String>,
    /// Which changes of a related object trigger a reconcile (deletes always do).
    pub on: Trigger,
    /// How a related object maps to the primaries to reconcile.
    pub map: Mapper,
}

impl RelatedKind {
    /// `group/version` as written in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// Which changes of a related object wake its primaries. Deletions always do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// `on: spec`: `metadata.generation` changes; for kinds without a generation
    /// (ConfigMap, Secret, ...), any change outside `metadata` and `status`. The default
    /// for `owns`: a child's status churn does not wake its owner.
    Spec,
    /// `on: labels`: the labels change.
    Labels,
    /// `on: annotations`: the annotations change.
    Annotations,
    /// `on: any`: any change (a new resourceVersion). The default for `watches`.
    Any,
}

/// How a related object maps to primaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapper {
    /// `owns`: every ownerReference whose apiVersion and kind are the primary's.
    Owner,
    /// `map: {label: K}`: the label's value names the primary, `<namespace>.<name>`
    /// (split at the first dot: namespaces cannot contain one) or `<name>` in the
    /// related object's own namespace.
    Label(String),
    /// `map: {annotation: K}`: the annotation's value names the primary,
    /// `<namespace>/<name>` or `<name>` in the related object's own namespace.
    Annotation(String),
    /// `map: all`: any change reconciles every primary.
    All,
    /// `map: script`: the script's `main map` phase returns `[{namespace, name}]`.
    Script,
    /// `reads`: cached for `k8s get`/`k8s list`, never a trigger.
    None,
}
