//! `nuop.dev/v1alpha1`: the [`NuOperator`] kind, its spec and status, and builders.
//!
//! Pure data, no I/O. Field names follow the original nuop's CRD; what it lacked
//! (replicas, a sync interval, resources, a git `ref`, a status) is added without
//! renaming anything.

mod builders;
mod spec;
mod status;

pub use spec::*;
pub use status::*;

#[cfg(test)]
mod tests;
