//! The manager's errors, one enum for the reconcile of a `NuOperator`, each with a
//! bounded [`category`](Error::category) for metric labels. No I/O.

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
}

impl Error {
    /// A short, bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "api",
            Self::Render(_) => "render",
            Self::MissingMetadata(_) => "metadata",
        }
    }

    /// Wraps a client error with the operation it interrupted.
    pub fn kube(operation: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let operation = operation.into();
        move |source| Self::Kube { operation, source }
    }
}

/// The manager's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
