//! nuop-manager: turns each `NuOperator` custom resource into a running `nuop-managed`
//! Deployment in the CR's namespace.
//!
//! The reconcile of one `NuOperator` is a pipeline of small steps, each in its module:
//!
//! 1. [`validate`] (pure): what the schema cannot check — duplicate mapping names,
//!    source locations as the managed pods parse them. Secrets are never read.
//! 2. [`build`] (pure): the desired ConfigMap (`nuop.yaml` for `nuop-managed --config`)
//!    and Deployment, with owner references, recommended labels and a config hash.
//! 3. [`reconcile`] (I/O): a refusal to take over same-named objects it does not own,
//!    server-side apply of both, deletion of children no longer wanted, and the status.
//! 4. [`status`] (pure): the Ready / Progressing / Degraded conditions from the rollout
//!    and from what the managed pods report in `status.sources` and `status.mappings`.
//!
//! 5. [`webhooks`]: the admission webhooks the managed pods declare, refused unless
//!    the manager runs with `--allow-webhooks`, then confined to the NuOperator's
//!    namespace and registered by the manager (configurations, Service, certificate).
//!
//! [`run`] wires the pipeline into a kube-runtime controller that also watches the
//! ConfigMaps and Deployments it owns. The manager never creates RBAC: a managed
//! Deployment runs under the CR's `serviceAccountName`, whose permissions the tenant
//! grants.

pub mod build;
pub mod error;
pub mod reconcile;
pub mod run;
pub mod status;
pub mod validate;
pub mod webhooks;

pub use error::{Error, Result};
pub use run::{Options, run};

/// The field manager of every server-side apply the manager makes.
pub const FIELD_MANAGER: &str = "nuop-manager";
