//! The `NuOperator` custom resource (`nuop.dev/v1alpha1`) and its CRD.
//!
//! Pure data, apart from [`install`]. A `NuOperator` asks the manager (`nuop-manager`) to run a
//! `nuop-managed` Deployment in its namespace that fetches Nushell scripts from git
//! [`Source`]s and starts one controller per [`Mapping`]. The spec keeps the field names
//! of the original nuop (`image`, `serviceAccountName`, `sources`, `mappings` with
//! snake_case `requeue_after_noop` / `requeue_after_change`, `env`) so existing CRs keep
//! working, and adds `replicas`, `syncInterval`, `resources` and a per-source `ref`.
//!
//! The CRD YAML under `config/crd/bases/` is generated from these types by the `crdgen`
//! binary (`make manifests`); a test fails when the two drift apart. Validation lives in
//! the schema (required fields, minimums, lengths, CEL rules) so that the API server
//! rejects a bad CR with a 422 before any controller sees it.
//!
//! Versions live in their own modules ([`v1alpha1`]); the current one is re-exported at
//! the crate root. [`managed`] is the file the manager hands to each `nuop-managed`
//! Deployment. [`install`] (the one module that does I/O) applies the CRD to a cluster
//! and waits until it is served. [`location`] parses a source's location (shared by the
//! manager's validation and the managed pods' fetches), [`signers`] parses the allowed
//! signers of a signed source (shared the same way), and [`fnv`] is the stable digest
//! both use; all three are pure.

pub mod fnv;
pub mod install;
pub mod location;
pub mod managed;
pub mod signers;
pub mod v1alpha1;

pub use managed::{MANAGED_CONFIG_KEY, ManagedConfig, OperatorRef};
pub use v1alpha1::*;

/// The CRD's name, `<plural>.<group>`.
pub const CRD_NAME: &str = "nuoperators.nuop.dev";

/// The CRD of [`NuOperator`] rendered as YAML, exactly what `crdgen` prints and what
/// `config/crd/bases/nuop.dev_nuoperators.yaml` holds.
///
/// # Errors
/// When the CRD cannot be serialized (it always can; the error is passed on rather than
/// unwrapped).
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt as _;
    serde_saphyr::to_string(&NuOperator::crd())
}
