//! Why a reconcile failed, and what the controller does about it.
//!
//! Pure classification: each error has a bounded [`ReconcileError::category`] (metric
//! label and Event reason) and is either transient (retry with backoff) or permanent
//! (wait for the object to change).

use crate::protocol::{IdentityError, OutputError};
use crate::script::ExecError;

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The script exited with an error code.
    #[error("script exited with code {code}: {stderr}")]
    ScriptFailed {
        /// The exit code.
        code: i32,
        /// The tail of what it printed to stderr.
        stderr: String,
    },
    /// The script could not be run to completion (timeout, missing phase, spawn).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The script printed a malformed object.
    #[error("invalid script output: {0}")]
    InvalidOutput(#[from] OutputError),
    /// The script's object would change the input's identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// An API call failed.
    #[error("failed to {action}: {source}")]
    Api {
        /// What was being done ("update object", "add finalizer").
        action: &'static str,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Conflicts kept recurring after re-reading.
    #[error("gave up after {0} conflicting writes in a row")]
    Conflicts(u32),
}

impl ReconcileError {
    /// A bounded label for metrics and the Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Self::ScriptFailed { .. } => "ScriptFailed",
            Self::Exec(ExecError::Timeout { .. }) => "ScriptTimeout",
            Self::Exec(_) => "ScriptError",
            Self::InvalidOutput(_) => "InvalidOutput",
            Self::Identity(_) => "IdentityChange",
            Self::Api { .. } => "ApiError",
            Self::Conflicts(_) => "Conflict",
        }
    }

    /// Permanent problems come back identically until the object (or the script)
    /// changes, so retrying on a timer only adds load.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::InvalidOutput(_) | Self::Identity(_) | Self::Exec(ExecError::MissingPhase { .. })
        )
    }
}

/// Whether a kube error is a 409 Conflict.
pub fn is_conflict(error: &kube::Error) -> bool {
    status_code(error) == Some(409)
}

/// Whether a kube error is a 404 Not Found.
pub fn is_not_found(error: &kube::Error) -> bool {
    status_code(error) == Some(404)
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::IdentityError;

    #[test]
    fn identity_and_output_errors_are_permanent_script_errors_are_not() {
        let identity = ReconcileError::Identity(IdentityError {
            field: "metadata.name",
            from: "a".into(),
            to: "b".into(),
        });
        assert!(identity.is_permanent());
        assert_eq!(identity.category(), "IdentityChange");
        let failed = ReconcileError::ScriptFailed {
            code: 1,
            stderr: String::new(),
        };
        assert!(!failed.is_permanent());
        assert_eq!(failed.category(), "ScriptFailed");
        assert!(ReconcileError::InvalidOutput(OutputError::Incomplete("kind")).is_permanent());
    }
}
