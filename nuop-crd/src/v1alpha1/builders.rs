//! Constructors and chained modifiers for `NuOperator` and its parts, for tests,
//! examples and code that builds CRs. Pure data.
//!
//! ```
//! use nuop_crd::{Mapping, NuOperator, SecretKeyRef, Source};
//!
//! let op = NuOperator::test()
//!     .named("replicator")
//!     .in_namespace("tenant-a")
//!     .with_source(
//!         Source::new("https://git.example.com/platform/scripts.git")
//!             .at_path("controllers")
//!             .at_ref("main")
//!             .with_token(SecretKeyRef::new("scripts-git", "token")),
//!     )
//!     .with_mapping(Mapping::new("config-replicator", "v1", "ConfigMap"));
//! assert_eq!(op.spec.mappings.len(), 1);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::EnvVar;
use kube::api::ObjectMeta;

use super::{
    ConfigMapKeyRef, Credentials, Mapping, NuOperator, NuOperatorSpec, NuOperatorStatus,
    SecretKeyRef, Source, SshVerify, Verify,
};

impl NuOperator {
    /// A fixture named `test` with the default spec: no namespace, no sources and **no
    /// mappings** (the API server wants at least one; add it with
    /// [`with_mapping`](Self::with_mapping)).
    pub fn test() -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some("test".to_string()),
                ..ObjectMeta::default()
            },
            spec: NuOperatorSpec::default(),
            status: None,
        }
    }

    /// Sets `metadata.name`.
    #[must_use]
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.metadata.name = Some(name.into());
        self
    }

    /// Sets `metadata.namespace`.
    #[must_use]
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.metadata.namespace = Some(namespace.into());
        self
    }

    /// Sets `metadata.uid` (owner references need one).
    #[must_use]
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.metadata.uid = Some(uid.into());
        self
    }

    /// Sets `metadata.generation`.
    #[must_use]
    pub fn with_generation(mut self, generation: i64) -> Self {
        self.metadata.generation = Some(generation);
        self
    }

    /// Appends a source.
    #[must_use]
    pub fn with_source(mut self, source: Source) -> Self {
        self.spec.sources.push(source);
        self
    }

    /// Appends a mapping.
    #[must_use]
    pub fn with_mapping(mut self, mapping: Mapping) -> Self {
        self.spec.mappings.push(mapping);
        self
    }

    /// Sets the image of the managed Deployment.
    #[must_use]
    pub fn with_image(mut self, image: impl Into<String>) -> Self {
        self.spec.image = Some(image.into());
        self
    }

    /// Sets the ServiceAccount of the managed pods.
    #[must_use]
    pub fn with_service_account(mut self, name: impl Into<String>) -> Self {
        self.spec.service_account_name = Some(name.into());
        self
    }

    /// Sets the replicas of the managed Deployment.
    #[must_use]
    pub fn with_replicas(mut self, replicas: i32) -> Self {
        self.spec.replicas = replicas;
        self
    }

    /// Sets the sync interval, in seconds.
    #[must_use]
    pub fn with_sync_interval(mut self, seconds: u64) -> Self {
        self.spec.sync_interval = seconds;
        self
    }

    /// Appends a literal environment variable.
    #[must_use]
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.env.push(EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        });
        self
    }

    /// Sets the status.
    #[must_use]
    pub fn with_status(mut self, status: NuOperatorStatus) -> Self {
        self.status = Some(status);
        self
    }
}

impl Source {
    /// A source fetching the default branch of `location`, at its root, without
    /// credentials.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            ..Self::default()
        }
    }

    /// Sets the subdirectory holding the script directories.
    #[must_use]
    pub fn at_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the branch, tag or commit.
    #[must_use]
    pub fn at_ref(mut self, git_ref: impl Into<String>) -> Self {
        self.git_ref = Some(git_ref.into());
        self
    }

    /// Authenticates with a token.
    #[must_use]
    pub fn with_token(mut self, token: SecretKeyRef) -> Self {
        self.credentials = Some(Credentials {
            token: Some(token),
            ..Credentials::default()
        });
        self
    }

    /// Authenticates with a username and a password.
    #[must_use]
    pub fn with_basic_auth(mut self, username: SecretKeyRef, password: SecretKeyRef) -> Self {
        self.credentials = Some(Credentials {
            username: Some(username),
            password: Some(password),
            token: None,
        });
        self
    }
}

impl Source {
    /// Requires SSH signatures by one of `allowed_signers` (allowed-signers lines).
    #[must_use]
    pub fn signed_by<S: Into<String>>(
        mut self,
        allowed_signers: impl IntoIterator<Item = S>,
    ) -> Self {
        self.ssh_verify().allowed_signers = allowed_signers.into_iter().map(Into::into).collect();
        self
    }

    /// Requires SSH signatures by one of the allowed signers in key `key` of the
    /// ConfigMap `name`.
    #[must_use]
    pub fn signed_by_config_map(mut self, name: impl Into<String>, key: impl Into<String>) -> Self {
        self.ssh_verify().allowed_signers_config_map = Some(ConfigMapKeyRef {
            name: name.into(),
            key: key.into(),
        });
        self
    }

    fn ssh_verify(&mut self) -> &mut SshVerify {
        &mut self.verify.get_or_insert_with(Verify::default).ssh
    }
}

impl SecretKeyRef {
    /// The key `key` of the Secret `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: key.into(),
        }
    }
}

impl Mapping {
    /// A mapping running script `name` on `kind` objects of the core group at
    /// `version`, with no selectors and the script's own requeue times.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        kind: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            group: String::new(),
            version: version.into(),
            kind: kind.into(),
            label_selectors: BTreeMap::new(),
            field_selectors: BTreeMap::new(),
            requeue_after_noop: None,
            requeue_after_change: None,
        }
    }

    /// Sets the API group.
    #[must_use]
    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Adds a label selector.
    #[must_use]
    pub fn with_label_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.label_selectors.insert(key.into(), value.into());
        self
    }

    /// Adds a field selector.
    #[must_use]
    pub fn with_field_selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.field_selectors.insert(key.into(), value.into());
        self
    }

    /// Sets the requeue after a reconcile that changed nothing, in seconds.
    #[must_use]
    pub fn with_requeue_after_noop(mut self, seconds: u64) -> Self {
        self.requeue_after_noop = Some(seconds);
        self
    }

    /// Sets the requeue after a reconcile that changed something, in seconds.
    #[must_use]
    pub fn with_requeue_after_change(mut self, seconds: u64) -> Self {
        self.requeue_after_change = Some(seconds);
        self
    }
}
