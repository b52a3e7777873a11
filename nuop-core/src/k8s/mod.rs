//! The `k8s` commands scripts call: their signatures, their wire form, and their errors.
//!
//! Pure: no I/O. One table ([`SPECS`]) defines every command once. The embedded engine
//! registers a Nushell command per entry (its `Signature` is built from the entry, so a
//! wrong flag is a parse error `check` reports), and the process executor's generated
//! `k8s.nu` module defines the same commands from the same entries. Both executors turn
//! a call into the same [`Invocation`] (positionals by name, flags by long name, the
//! pipeline input as JSON), and one Rust function interprets it, so the two executors
//! cannot drift apart in what a command means.
//!
//! Submodules: [`command`] (an invocation checked and typed), [`selector`] (label and
//! field selectors), [`owner`] (owner references and nuop's labels), all pure, and
//! [`session`] (one call's commands against a [`crate::cluster::Cluster`]).

pub mod command;
pub mod owner;
pub mod selector;
pub mod session;

pub use command::K8sCommand;
pub use session::{Session, SessionParts};

pub mod module;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagValue {
    /// A switch: present or not.
    Switch,
    /// A string value.
    String,
    /// A string or a record (label selectors).
    Any,
}

/// One positional argument (always a string).
#[derive(Debug, Clone, Copy)]
pub struct Positional {
    /// Its name, the key in [`Invocation::args`].
    pub name: &'static str,
    /// Help text.
    pub description: &'static str,
}

/// One named flag.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// Long name (`--namespace`), the key in [`Invocation::args`].
    pub long: &'static str,
    /// Short name (`-n`), if any.
    pub short: Option<char>,
    /// What it takes.
    pub value: FlagValue,
    /// Help text.
    pub description: &'static str,
}

/// What a command reads from its pipeline input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing.
    Nothing,
    /// One object (record) or a list of objects.
    Objects,
    /// One object (record).
    Object,
    /// A patch document: a record (merge) or a list (JSON patch).
    Patch,
}

/// What a command returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A record, or null when absent.
    RecordOrNull,
    /// A record.
    Record,
    /// A list of records.
    List,
    /// What came in: a record for a record, a list for a list.
    SameAsInput,
    /// Nothing.
    Nothing,
}

/// One `k8s` command.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The verb after `k8s ` (`get`, `list`, ...).
    pub verb: &'static str,
    /// One line of help.
    pub description: &'static str,
    /// Positional arguments, in order, all required.
    pub positionals: &'static [Positional],
    /// Named flags.
    pub flags: &'static [Flag],
    /// What it reads from the pipeline.
    pub input: Input,
    /// What it returns.
    pub output: Output,
}

impl Spec {
    /// The full command name as scripts write it (`k8s get`).
    pub fn name(&self) -> String {
        format!("k8s {}", self.verb)
    }
}

const KIND: Positional = Positional {
    name: "kind",
    description: "Kind, plural or kind.group (ConfigMap, configmaps, deployments.apps).",
};
const NAME: Positional = Positional {
    name: "name",
    description: "The object's name.",
};
const NAMESPACE: Flag = Flag {
    long: "namespace",
    short: Some('n'),
    value: FlagValue::String,
    description: "Namespace (default: the primary object's).",
};
const API_VERSION: Flag = Flag {
    long: "api-version",
    short: None,
    value: FlagValue::String,
    description: "apiVersion, when the kind alone is ambiguous.",
};
const LIVE: Flag = Flag {
    long: "live",
    short: None,
    value: FlagValue::Switch,
    description: "Read from the API server, not the cache.",
};
const STATUS: Flag = Flag {
    long: "status",
    short: None,
    value: FlagValue::Switch,
    description: "Write the status subresource.",
};
const DRY_RUN: Flag = Flag {
    long: "dry-run",
    short: None,
    value: FlagValue::Switch,
    description: "Ask the API server to validate without persisting.",
};

/// Every `k8s` command, the one definition both executors use.
pub const SPECS: &[Spec] = &[
    Spec {
        verb: "get",
        description: "One object; null when absent. Declared kinds come from the cache.",
        positionals: &[KIND, NAME],
        flags: &[NAMESPACE, API_VERSION, LIVE],
        input: Input::Nothing,
        output: Output::RecordOrNull,
    },
    Spec {
        verb: "list",
        description: "Objects of a kind. Declared kinds come from the cache.",
        positionals: &[KIND],
        flags: &[
            NAMESPACE,
            Flag {
                long: "all-namespaces",
                short: Some('A'),
                value: FlagValue::Switch,
                description: "Every namespace (default: the primary object's).",
            },
            Flag {
                long: "selector",
                short: Some('l'),
                value: FlagValue::Any,
                description: "Label selector: `a=b,c!=d,e,!f,g in (x,y)` or a record {a: b}.",
            },
            Flag {
                long: "field-selector",
                short: None,
                value: FlagValue::String,
                description: "Field selector (cached reads: metadata.name, metadata.namespace).",
            },
            API_VERSION,
            LIVE,
        ],
        input: Input::Nothing,
        output: Output::List,
    },
    Spec {
        verb: "apply",
        description: "Server-side apply (forced, the controller's field manager) of one object or a list; owned kinds get the primary as owner.",
        positionals: &[],
        flags: &[STATUS, DRY_RUN],
        input: Input::Objects,
        output: Output::SameAsInput,
    },
    Spec {
        verb: "patch",
        description: "Patch one object with the document on stdin (record: merge, list: JSON patch).",
        positionals: &[KIND, NAME],
        flags: &[
            NAMESPACE,
            Flag {
                long: "type",
                short: None,
                value: FlagValue::String,
                description: "merge (default for a record) or json (default for a list).",
            },
            STATUS,
            API_VERSION,
        ],
        input: Input::Patch,
        output: Output::Record,
    },
    Spec {
        verb: "create",
        description: "Create one object; an existing one is an error (code nuop::k8s::already_exists).",
        positionals: &[],
        flags: &[DRY_RUN],
        input: Input::Object,
        output: Output::Record,
    },
    Spec {
        verb: "delete",
        description: "Delete one object; an absent one is not an error.",
        positionals: &[KIND, NAME],
        flags: &[
            NAMESPACE,
            Flag {
                long: "propagation",
                short: None,
                value: FlagValue::String,
                description: "background (default), foreground or orphan.",
            },
            API_VERSION,
        ],
        input: Input::Nothing,
        output: Output::Nothing,
    },
    Spec {
        verb: "own",
        description: "Adds the primary as controller ownerReference and nuop's labels to one object or a list (no API call).",
        positionals: &[],
        flags: &[],
        input: Input::Objects,
        output: Output::SameAsInput,
    },
    Spec {
        verb: "owner-ref",
        description: "The primary object's ownerReference record (no API call).",
        positionals: &[],
        flags: &[],
        input: Input::Nothing,
        output: Output::Record,
    },
    Spec {
        verb: "children",
        description: "Objects of an owned kind whose ownerReferences name the primary.",
        positionals: &[KIND],
        flags: &[API_VERSION],
        input: Input::Nothing,
        output: Output::List,
    },
];

/// The spec of a verb, if there is one.
pub fn spec(verb: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.verb == verb)
}

/// One command call as both executors hand it over: positionals by name, flags by long
/// name (switches as booleans; absent flags are left out), the pipeline input as JSON
/// (null for none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The verb (`get`, `list`, ...).
    pub verb: String,
    /// Arguments by name.
    #[serde(default)]
    pub args: Map<String, Value>,
    /// The pipeline input.
    #[serde(default)]
    pub input: Value,
}

/// Why a `k8s` command failed, as a script can branch on it: in `try {..} catch {|e| ..}`,
/// `$e.details.code` is the code string ([`ErrorCode::as_str`]) and `$e.msg` the
/// [`K8sError`]'s text (test `k8s_embedded::every_case_passes_on_the_fake_cluster`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The object does not exist (only where absence is an error: patch).
    NotFound,
    /// create: the object exists.
    AlreadyExists,
    /// A write conflicted with a newer version.
    Conflict,
    /// The ServiceAccount may not do this.
    Forbidden,
    /// The server rejected the object (validation, admission).
    Invalid,
    /// The arguments or input were wrong (before any request).
    Usage,
    /// The kind is not served, or is ambiguous without `--api-version`.
    UnknownKind,
    /// The API server could not be reached or answered 5xx.
    Unavailable,
    /// The call's deadline passed or it was cancelled.
    Interrupted,
    /// Called outside a reconcile/finalize/map call (top level, `config`).
    OutsideCall,
    /// Anything else the server answered.
    Other,
}

impl ErrorCode {
    /// The code string scripts see, `nuop::k8s::<code>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "nuop::k8s::not_found",
            Self::AlreadyExists => "nuop::k8s::already_exists",
            Self::Conflict => "nuop::k8s::conflict",
            Self::Forbidden => "nuop::k8s::forbidden",
            Self::Invalid => "nuop::k8s::invalid",
            Self::Usage => "nuop::k8s::usage",
            Self::UnknownKind => "nuop::k8s::unknown_kind",
            Self::Unavailable => "nuop::k8s::unavailable",
            Self::Interrupted => "nuop::k8s::interrupted",
            Self::OutsideCall => "nuop::k8s::outside_call",
            Self::Other => "nuop::k8s::error",
        }
    }
}

/// A failed `k8s` command: the verb, what it was about, and the server's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("k8s {verb} {target}: {reason}")]
pub struct K8sError {
    /// The verb that failed.
    pub verb: String,
    /// What it was about: `configmap team-a/app`, `configmaps in team-a`, ...
    pub target: String,
    /// Why: the server's message, or what was wrong with the arguments.
    pub reason: String,
    /// The class of failure.
    pub code: ErrorCode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_and_flags_are_unique() {
        let mut verbs: Vec<_> = SPECS.iter().map(|s| s.verb).collect();
        verbs.sort_unstable();
        verbs.dedup();
        assert_eq!(verbs.len(), SPECS.len());
        for s in SPECS {
            let mut longs: Vec<_> = s.flags.iter().map(|f| f.long).collect();
            longs.extend(s.positionals.iter().map(|p| p.name));
            let n = longs.len();
            longs.sort_unstable();
            longs.dedup();
            assert_eq!(longs.len(), n, "{}", s.verb);
        }
        assert_eq!(spec("get").map(Spec::name).as_deref(), Some("k8s get"));
        assert!(spec("exec").is_none());
    }

    #[test]
    fn errors_name_verb_target_and_reason() {
        let e = K8sError {
            verb: "patch".into(),
            target: "configmap team-a/app".into(),
            reason: "configmaps \"app\" not found".into(),
            code: ErrorCode::NotFound,
        };
        assert_eq!(
            e.to_string(),
            "k8s patch configmap team-a/app: configmaps \"app\" not found"
        );
        assert_eq!(e.code.as_str(), "nuop::k8s::not_found");
    }
}
