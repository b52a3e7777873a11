//! The `NuOperator` spec: where the scripts come from, which resources each controller
//! watches, and how the managed Deployment runs. Pure data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NuOperatorStatus;

/// Replicas of the managed Deployment when the spec does not say.
pub const DEFAULT_REPLICAS: i32 = 1;

/// Seconds between two fetches of the sources when the spec does not say.
pub const DEFAULT_SYNC_INTERVAL_SECONDS: u64 = 60;

/// The shortest sync interval the CRD accepts, in seconds: a git server is not a
/// message queue.
pub const MIN_SYNC_INTERVAL_SECONDS: u64 = 10;

/// The longest sync interval the CRD accepts, in seconds (one day).
pub const MAX_SYNC_INTERVAL_SECONDS: u64 = 86_400;

/// The longest requeue a mapping may ask for, in seconds (one week). Bounded so that
/// adding it to a clock can never overflow.
pub const MAX_REQUEUE_SECONDS: u64 = 604_800;

/// A set of Nushell controllers run by a `nuop-managed` Deployment in this namespace.
///
/// The manager keeps a ConfigMap with the sources and mappings and a Deployment running
/// `nuop-managed` under `serviceAccountName` in step with this spec. The managed pods
/// fetch every source, and start one controller per mapping.
// Two printer columns share `type_ = "string"`, which clippy takes for a repeated
// attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "nuop.dev",
    version = "v1alpha1",
    kind = "NuOperator",
    plural = "nuoperators",
    namespaced,
    shortname = "nuop",
    category = "nuop",
    status = "NuOperatorStatus",
    derive = "PartialEq",
    doc = "NuOperator runs Kubernetes controllers written as Nushell scripts: the scripts are fetched from git sources and each mapping starts one controller.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Status of the Ready condition",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Revision",
        type_ = "string",
        description = "Revision of the first source in use",
        json_path = ".status.sources[0].revision"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NuOperatorSpec {
    /// Image of the managed Deployment; defaults to the manager's `nuop-managed` image.
    /// An image built on it may bake scripts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// ServiceAccount the managed pods run as, in this namespace. Its RBAC decides what
    /// the scripts may touch; the manager never creates cluster-wide RBAC for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,

    /// Git repositories holding the scripts (`<path>/<script>/mod.nu`).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub sources: Vec<Source>,

    /// Which scripts to run and what each watches: one controller per mapping. Names
    /// must be unique; the manager checks that (and reports duplicates as Degraded)
    /// rather than the schema, because the original nuop's CRD accepted them and a
    /// `listType: map` would turn such a CR into a hard API error on upgrade.
    #[schemars(length(min = 1, max = 64))]
    pub mappings: Vec<Mapping>,

    /// Environment variables of the managed container (and so of the scripts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Replicas of the managed Deployment; one leader reconciles, the others stand by.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Seconds between two fetches of each source.
    #[serde(default = "default_sync_interval")]
    #[schemars(range(min = 10, max = 86_400))]
    #[schemars(extend("format" = "int64"))]
    pub sync_interval: u64,

    /// Compute resources of the managed container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

fn default_sync_interval() -> u64 {
    DEFAULT_SYNC_INTERVAL_SECONDS
}

impl Default for NuOperatorSpec {
    /// The spec an empty object deserializes to, apart from `mappings` (required, so empty
    /// here): the serde and CRD defaults.
    fn default() -> Self {
        Self {
            image: None,
            service_account_name: None,
            sources: Vec::new(),
            mappings: Vec::new(),
            env: Vec::new(),
            replicas: DEFAULT_REPLICAS,
            sync_interval: DEFAULT_SYNC_INTERVAL_SECONDS,
            resources: None,
        }
    }
}

/// A git repository holding scripts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Where to fetch from: an `https://`, `http://`, `git://` or `file://` git URL, or an absolute
    /// path in the managed container. Never put credentials in it; use `credentials`.
    #[schemars(length(min = 1, max = 2048))]
    pub location: String,

    /// Subdirectory of the repository holding the script directories (relative, like
    /// `?dir=` in the location); the root when absent. An absolute path is where the
    /// original nuop placed the source: accepted and ignored, nuop places checkouts
    /// itself and `?dir=` in the location selects the subdirectory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,

    /// Branch, tag or commit to check out; the remote's default branch when absent.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub git_ref: Option<String>,

    /// Secrets holding the credentials for `location`: a token, or a username and a
    /// password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,

    /// Signatures the commit must carry before it runs. Without it, any commit the ref
    /// names runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// What a source's commits must be signed with. A commit that is unsigned, signed by
/// another key, or whose signature does not verify is rejected like a broken revision:
/// the last good revision keeps running.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verify {
    /// SSH signatures (git's `gpg.format=ssh`, namespace `git`) by one of the allowed
    /// signers.
    pub ssh: SshVerify,
}

/// The public keys whose SSH signatures are accepted: inline, from a ConfigMap, or
/// both (the union). Public keys only; they are not secret, so there is no Secret reference.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.allowedSigners) && size(self.allowedSigners) > 0) || has(self.allowedSignersConfigMap)",
        "message": "ssh needs allowedSigners, allowedSignersConfigMap or both"
    }
]))]
pub struct SshVerify {
    /// Allowed signers, one per entry, in the form of git's `gpg.ssh.allowedSignersFile`
    /// (`[principals] [namespaces="git"] ssh-ed25519 AAAA… [comment]`) or a plain
    /// public key line (`ssh-ed25519 AAAA… comment`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 16384)))]
    pub allowed_signers: Vec<String>,

    /// A key of a ConfigMap in the NuOperator's namespace holding an allowed-signers
    /// file (one signer per line, `#` comments). Read at every sync that brings a new
    /// commit, so keys rotate without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_signers_config_map: Option<ConfigMapKeyRef>,
}

/// A key of a ConfigMap in the NuOperator's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// The key within the ConfigMap's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Credentials for a source, each a reference to a key of a Secret in the
/// NuOperator's namespace; never a literal value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.token) || has(self.username)",
        "message": "credentials need a token, or a username and a password"
    },
    {
        "rule": "has(self.username) == has(self.password)",
        "message": "username and password go together"
    },
    {
        "rule": "!(has(self.token) && has(self.username))",
        "message": "use either a token or a username and password, not both"
    }
]))]
pub struct Credentials {
    /// The username for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<SecretKeyRef>,

    /// The password for basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SecretKeyRef>,

    /// A token (sent as the password of basic authentication, as git hosts expect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretKeyRef>,
}

/// A key of a Secret in the NuOperator's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// One controller: a script, selected by name, and the resources it watches.
///
/// The fields override what the script's `config` says; the requeue fields keep the
/// original nuop's snake_case names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mapping {
    /// The script's name (its directory and the name its `config` returns), also the
    /// controller's name: a DNS label (lowercase letters, digits and `-`, at most 63
    /// characters), because it becomes a field manager, an Event reporter and a metric
    /// label.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// API group of the watched kind; `""` for the core group.
    #[serde(default)]
    #[schemars(length(max = 253))]
    pub group: String,

    /// API version of the watched kind, such as `v1`.
    #[schemars(length(min = 1, max = 63))]
    pub version: String,

    /// The watched kind, such as `ConfigMap`.
    #[schemars(length(min = 1, max = 63))]
    pub kind: String,

    /// Only objects with all these labels are reconciled.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_selectors: BTreeMap<String, String>,

    /// Only objects matching all these field selectors are reconciled.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub field_selectors: BTreeMap<String, String>,

    /// Seconds until an object is reconciled again after a reconcile changed nothing (at
    /// least 1: 0 would reconcile in a hot loop).
    #[serde(
        default,
        rename = "requeue_after_noop",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 604_800))]
    #[schemars(extend("format" = "int64"))]
    pub requeue_after_noop: Option<u64>,

    /// Seconds until an object is reconciled again after a reconcile changed it (at
    /// least 1: 0 would reconcile in a hot loop).
    #[serde(
        default,
        rename = "requeue_after_change",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 604_800))]
    #[schemars(extend("format" = "int64"))]
    pub requeue_after_change: Option<u64>,
}
