//! The manager's errors, one enum for the reconcile of a `NuOperator`, each with a
//! bounded [`category`](Error::category) for metric labels. No I/O.
//!
//! Categories share `nuop_reconcile_errors_total` with the core's controllers, so an API
//! failure takes the core's label ([`ReconcileError::category`] of an API error) rather
//! than a second spelling; the two failures the core has no word for keep their own
//! CamelCase labels in the same style.

use nuop_core::reconcile::error::ReconcileError;

/// What went wrong reconciling a `NuOperator`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed.
    #[error("failed to {operation}: {source}")]
    Kube {
        /// What was being done, e.g. "apply deployment tenant-a/nuop-replicator".
        operation: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The managed configuration could not be rendered.
    #[error("failed to render the managed configuration: {0}")]
    Render(String),
    /// The object lacks a field the API server always sets (name, namespace, uid).
    #[error("the NuOperator lacks metadata.{0}")]
    MissingMetadata(&'static str),
    /// Registering or removing the NuOperator's webhooks failed (certificate Secret or
    /// webhook configurations; the message names which).
    #[error("webhooks: {0}")]
    Webhooks(String),
}

impl Error {
    /// A short, bounded label for metrics and Event reasons, in the core's vocabulary.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { .. } => api_category(),
            Self::Render(_) => "RenderError",
            Self::MissingMetadata(_) => "MissingMetadata",
            Self::Webhooks(_) => "WebhookError",
        }
    }

    /// Wraps a client error with the operation it interrupted.
    pub fn kube(operation: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let operation = operation.into();
        move |source| Self::Kube { operation, source }
    }
}

/// The core's category of a failed API call, read from the core's own classification so
/// that the label has one definition.
fn api_category() -> &'static str {
    ReconcileError::Api {
        action: "",
        source: kube::Error::Api(Box::default()),
    }
    .category()
}

/// The manager's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_failure_is_labelled_as_the_core_labels_it() {
        let error = Error::kube("apply deployment a/b")(kube::Error::Api(Box::default()));
        assert_eq!(error.category(), "ApiError");
        assert_eq!(Error::Render(String::new()).category(), "RenderError");
    }
}
