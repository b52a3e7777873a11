//! The `NuOperator` status and the condition types it uses. Pure data.
//!
//! Each field has one writer, each under its own server-side apply field manager:
//! - the manager (`nuop-manager`): `conditions` (all three), `observedGeneration`,
//!   `readyReplicas`. It derives the conditions from the Deployment's rollout *and* from
//!   what the managed pods report in `sources` and `mappings`;
//! - the managed pods (`nuop-managed`): `sources` and `mappings`; and, under their own
//!   field manager (`nuop-managed-webhooks`), `webhooks` and `conversions`: what their
//!   scripts declare, which only the manager registers (it has the cluster rights).

use k8s_openapi::api::admissionregistration::v1::RuleWithOperations;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type, written by the manager: the Deployment is available, every source
/// has a revision in use and every mapping's controller runs (with no replicas asked
/// for: `True`, reason `ScaledToZero`).
pub const CONDITION_READY: &str = "Ready";

/// Condition type, written by the manager: the Deployment is rolling out a new spec, the
/// managed pods have not yet reported every source and mapping, or a mapping's
/// controller is restarting for a new revision of its scripts.
pub const CONDITION_PROGRESSING: &str = "Progressing";

/// Condition type, written by the manager: something needs attention; the reason and
/// the message say what, naming the field: an invalid spec, a child that is not ours, a
/// source whose last fetch or load failed (`status.sources[].lastError`), a mapping that
/// does not run (`status.mappings[].message`), a Deployment that cannot become available.
pub const CONDITION_DEGRADED: &str = "Degraded";

/// Condition type, written by the manager when the scripts declare webhooks: `True`
/// (reason `Registered`) once they are registered, confined to the NuOperator's
/// namespace; `False` with reason `Refused` when the manager was not started with
/// `--allow-webhooks`, or `ConversionRefused` for CRD conversions (a CRD is
/// cluster-wide, so a managed operator never converts one).
pub const CONDITION_WEBHOOKS: &str = "Webhooks";

/// What the manager and the managed pods last observed of a `NuOperator`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NuOperatorStatus {
    /// Ready, Progressing and Degraded, one entry per type (written by the manager).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Pods of the managed Deployment that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// One entry per source, in spec order (written by the managed pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceStatus>,

    /// One entry per mapping, in spec order (written by the managed pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub mappings: Vec<MappingStatus>,

    /// The admission webhooks the scripts declare (written by the managed pods). The
    /// manager registers them only when allowed, and always confined to this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<DeclaredWebhook>,

    /// The CRD conversions the scripts declare (written by the managed pods); refused
    /// for a managed operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conversions: Vec<DeclaredConversion>,
}

/// One admission webhook a script declares, in the JSON shape of nuop-core's
/// `webhook::configuration::Hook`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredWebhook {
    /// The controller (mapping) serving it.
    pub controller: String,

    /// `Validate` or `Mutate`.
    pub kind: String,

    /// What the API server would send.
    #[serde(default)]
    pub rules: Vec<RuleWithOperations>,

    /// The namespaces the script asks for (the manager narrows it to this namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Which objects are sent, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,

    /// `Fail` or `Ignore`.
    pub failure_policy: String,

    /// Seconds the API server waits for an answer.
    pub timeout_seconds: i32,

    /// The path on the managed pods' webhook server.
    pub path: String,
}

/// One CRD conversion a script declares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredConversion {
    /// The CRD's name.
    pub crd: String,

    /// The path on the managed pods' webhook server.
    pub path: String,
}

/// What the managed pods last fetched from a source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The source's `location`, as in the spec.
    pub location: String,

    /// The commit in use; the last good one when a later fetch failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,

    /// When the source was last fetched successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,

    /// Why the last fetch failed; absent once a fetch succeeds. Never holds credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,

    /// For a source with `verify`: the SHA-256 fingerprint (`SHA256:…`) of the key that
    /// signed the revision in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

/// Whether a mapping's controller runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MappingStatus {
    /// The mapping's `name`, as in the spec.
    pub name: String,

    /// Whether its controller is running.
    #[serde(default)]
    pub running: bool,

    /// Why it does not run (no such script, a `config` that fails), or a short note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Whether its controller is being restarted for a new revision of its script (the
    /// old one is finishing its in-flight reconciles).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restarting: bool,
}

impl NuOperatorStatus {
    /// The condition of type `type_`, if any.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the Ready condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.condition(CONDITION_READY)
            .is_some_and(|c| c.status == "True")
    }

    /// Sets a condition, replacing the one of the same type.
    ///
    /// Keeps the old `lastTransitionTime` when the status did not change, as the API
    /// conventions ask, so that re-asserting a condition on every reconcile does not look
    /// like a transition. Returns whether anything changed.
    pub fn set_condition(&mut self, condition: Condition) -> bool {
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(existing) => {
                let mut condition = condition;
                if existing.status == condition.status {
                    condition
                        .last_transition_time
                        .clone_from(&existing.last_transition_time);
                }
                if *existing == condition {
                    return false;
                }
                *existing = condition;
                true
            }
            None => {
                self.conditions.push(condition);
                true
            }
        }
    }
}
