//! The script contract, as pure functions: what `config` may answer, what exit codes
//! mean, how stdout is read, and which fields a desired object must keep.
//!
//! No I/O here; the executors in [`crate::script`] produce the raw text and codes that
//! these functions interpret.

pub mod admission;
mod config;
pub mod hooks;
mod outcome;
mod related;

pub use config::{
    ConfigError, ConfigProblem, DEFAULT_REQUEUE_AFTER_CHANGE, DEFAULT_REQUEUE_AFTER_NOOP,
    DEFAULT_TIMEOUT, ScriptConfig, finalizer_warning, parse_config_text, parse_config_value,
    parse_document,
};
pub use outcome::{
    IdentityError, Outcome, OutputError, ScriptOutput, check_identity, classify_changed,
    classify_output,
};
pub use related::{ListKind, Mapper, RelatedKind, Trigger};

/// The subcommand of a script's `mod.nu` that a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// `main config`: the controller's metadata.
    Config,
    /// `main reconcile`: bring one object to its desired state.
    Reconcile,
    /// `main finalize`: clean up before an object carrying our finalizer goes.
    Finalize,
    /// `main map`: which primaries a changed related object concerns (`watches` with
    /// `map: script`). Input: the related object; output: `[{namespace, name}]` or one
    /// such record.
    Map,
    /// `main validate`: admit or deny an admission request. Input: the request
    /// (`{operation, object, oldObject, userInfo, dryRun, subResource}`); output:
    /// `{allowed, message?, warnings?}` (see [`admission`]).
    Validate,
    /// `main mutate`: the changed object of an admission request (same input as
    /// validate); nuop answers the JSON patch.
    Mutate,
    /// `main convert`: objects in another apiVersion of a CRD. Input:
    /// `{desiredAPIVersion, objects}`; output: the converted objects.
    Convert,
}

impl Phase {
    /// Every phase, in the order a controller uses them.
    pub const ALL: [Phase; 7] = [
        Phase::Config,
        Phase::Reconcile,
        Phase::Finalize,
        Phase::Map,
        Phase::Validate,
        Phase::Mutate,
        Phase::Convert,
    ];

    /// Whether the phase answers a webhook: its `k8s` commands may read but never
    /// write (webhooks declare `sideEffects: None`; test
    /// `cluster::read_only::tests::writes_are_refused_and_reads_pass`).
    pub fn is_webhook(self) -> bool {
        matches!(self, Self::Validate | Self::Mutate | Self::Convert)
    }

    /// The subcommand name, as scripts and `NUOP_PHASE` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Reconcile => "reconcile",
            Self::Finalize => "finalize",
            Self::Map => "map",
            Self::Validate => "validate",
            Self::Mutate => "mutate",
            Self::Convert => "convert",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown phase `{s}`: expected config, reconcile, finalize, map, validate, mutate or convert")
            })
    }
}
