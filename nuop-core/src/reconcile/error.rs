//! Why a reconcile failed, and what the controller does about it.
//!
//! Pure classification: each error has a bounded [`ReconcileError::category`] (metric
//! label and Event reason) and a [`Retry`]: whether retrying can help, and how.

use super::write::AnswerError;
use crate::protocol::{IdentityError, OutputError};
use crate::script::ExecError;

/// What retrying a failed reconcile can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The object is gone (404): nothing to retry, no Warning, no backoff kept.
    Gone,
    /// The object changed since it was read (409): re-read it and reconcile at once.
    Conflict,
    /// The same input gives the same failure (bad output, 400, 403, 422): wait until
    /// the object or the script changes.
    Permanent,
    /// Anything else (script error, timeout, 5xx, network): retry with per-object
    /// exponential backoff, without a cap on attempts.
    Transient,
}

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The script exited with an error code.
    #[error("script exited with code {code}: {stderr}{}", stdout_note(.stdout))]
    ScriptFailed {
        /// The exit code.
        code: i32,
        /// The tail of what it printed to stderr.
        stderr: String,
        /// The tail of what it printed to stdout (empty when nothing, or an object).
        stdout: String,
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
    /// The script's object cannot be written (a non-string label, dropping nuop's
    /// finalizer).
    #[error("invalid script output: {0}")]
    Answer(#[from] AnswerError),
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

fn stdout_note(stdout: &str) -> String {
    if stdout.is_empty() {
        String::new()
    } else {
        format!("\nstdout: {stdout}")
    }
}

/// Every value [`ReconcileError::category`] gives: the `category` label of
/// `nuop_reconcile_errors_total` and the reason of Warning Events, defined only here
/// (`categories_are_listed_once_and_documented`).
pub const CATEGORIES: [&str; 7] = [
    "ScriptFailed",
    "ScriptTimeout",
    "ScriptError",
    "InvalidOutput",
    "IdentityChange",
    "ApiError",
    "Conflict",
];

impl ReconcileError {
    /// A bounded label for metrics and the Event reason, one of [`CATEGORIES`].
    pub fn category(&self) -> &'static str {
        match self {
            Self::ScriptFailed { .. } => "ScriptFailed",
            Self::Exec(ExecError::Timeout { .. }) => "ScriptTimeout",
            Self::Exec(_) => "ScriptError",
            Self::InvalidOutput(_) | Self::Answer(_) => "InvalidOutput",
            Self::Identity(_) => "IdentityChange",
            Self::Api { .. } => "ApiError",
            Self::Conflicts(_) => "Conflict",
        }
    }

    /// Whether retrying can help (see [`Retry`]). Permanent problems come back
    /// identically until the object (or the script) changes, so retrying on a timer
    /// only adds load.
    pub fn retry(&self) -> Retry {
        match self {
            Self::InvalidOutput(_)
            | Self::Answer(_)
            | Self::Identity(_)
            | Self::Exec(ExecError::MissingPhase { .. }) => Retry::Permanent,
            Self::Api { source, .. } => retry_for_status(status_code(source)),
            Self::ScriptFailed { .. } | Self::Exec(_) | Self::Conflicts(_) => Retry::Transient,
        }
    }

    /// Whether the failure waits for a change of the object or script.
    pub fn is_permanent(&self) -> bool {
        self.retry() == Retry::Permanent
    }
}

/// What an API answer's HTTP status means for a retry; `None` is a failure without an
/// answer (connection, timeout, encoding).
pub fn retry_for_status(code: Option<u16>) -> Retry {
    match code {
        Some(404) => Retry::Gone,
        Some(409) => Retry::Conflict,
        Some(400 | 403 | 422) => Retry::Permanent,
        _ => Retry::Transient,
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
            stderr: "boom".into(),
            stdout: "last words".into(),
        };
        assert_eq!(
            failed.to_string(),
            "script exited with code 1: boom\nstdout: last words"
        );
        assert!(!failed.is_permanent());
        assert_eq!(failed.category(), "ScriptFailed");
        assert!(ReconcileError::InvalidOutput(OutputError::Incomplete("kind")).is_permanent());
        let answer = ReconcileError::Answer(AnswerError::BadFinalizers);
        assert!(answer.is_permanent());
        assert_eq!(answer.category(), "InvalidOutput");
        assert_eq!(ReconcileError::Conflicts(5).retry(), Retry::Transient);
    }

    #[test]
    fn categories_are_listed_once_and_documented() {
        let examples = [
            ReconcileError::ScriptFailed {
                code: 1,
                stderr: String::new(),
                stdout: String::new(),
            },
            ReconcileError::Exec(ExecError::Timeout {
                script: "s".into(),
                phase: crate::protocol::Phase::Reconcile,
                after: std::time::Duration::from_secs(1),
                stderr: Default::default(),
            }),
            ReconcileError::Exec(ExecError::Engine {
                script: "s".into(),
                reason: "r".into(),
            }),
            ReconcileError::InvalidOutput(OutputError::Incomplete("kind")),
            ReconcileError::Identity(IdentityError {
                field: "metadata.name",
                from: "a".into(),
                to: "b".into(),
            }),
            api(500),
            ReconcileError::Conflicts(5),
        ];
        let given: Vec<&str> = examples.iter().map(ReconcileError::category).collect();
        assert_eq!(given, CATEGORIES);
        let readme = include_str!("../../../README.md");
        for category in CATEGORIES {
            assert!(
                readme.contains(&format!("`{category}`")),
                "README lacks {category}"
            );
        }
    }

    fn api(code: u16) -> ReconcileError {
        ReconcileError::Api {
            action: "patch object",
            source: kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..kube::core::Status::failure("x", "y")
            })),
        }
    }

    #[test]
    fn api_errors_are_classified_by_whether_retrying_can_help() {
        assert_eq!(api(404).retry(), Retry::Gone);
        assert_eq!(api(409).retry(), Retry::Conflict);
        for code in [400, 403, 422] {
            assert_eq!(api(code).retry(), Retry::Permanent, "{code}");
        }
        for code in [429, 500, 503] {
            assert_eq!(api(code).retry(), Retry::Transient, "{code}");
        }
        assert_eq!(retry_for_status(None), Retry::Transient);
    }
}
