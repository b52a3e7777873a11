//! The status the manager writes: conditions Ready, Progressing and Degraded with
//! reasons, `observedGeneration` and `readyReplicas`, derived from what a reconcile
//! observed. Pure; the time of a transition is passed in.
//!
//! The manager owns only these fields (server-side apply as [`crate::FIELD_MANAGER`]);
//! the managed pods report per-source revisions and per-mapping state under their own
//! field manager.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use nuop_crd::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, NuOperator, NuOperatorStatus,
};

use crate::validate::Problem;

/// Reason while the managed Deployment rolls out.
pub const REASON_ROLLING_OUT: &str = "RollingOut";
/// Reason once every replica is updated and available.
pub const REASON_AVAILABLE: &str = "Available";
/// Reason when the spec asks for no replicas.
pub const REASON_SCALED_TO_ZERO: &str = "ScaledToZero";
/// Reason of Ready=False while replicas are missing.
pub const REASON_NOT_AVAILABLE: &str = "DeploymentNotAvailable";
/// Reason of Degraded=False.
pub const REASON_AS_EXPECTED: &str = "AsExpected";
/// Reason when the Deployment exceeded its progress deadline.
pub const REASON_ROLLOUT_STALLED: &str = "RolloutStalled";
/// Reason when the Deployment cannot create its pods (quota, admission).
pub const REASON_REPLICA_FAILURE: &str = "ReplicaFailure";

/// What a reconcile found out.
#[derive(Clone, Copy, Debug)]
pub enum Observation<'a> {
    /// Validation failed; nothing was applied.
    Invalid(&'a [Problem]),
    /// The children were applied; this is the Deployment as the API server returned it.
    Applied(&'a Deployment),
}

/// The status the manager owns for `operator` after `observation`, carrying over the
/// transition times of conditions whose status did not change.
pub fn desired_status(
    operator: &NuOperator,
    observation: Observation<'_>,
    now: &Time,
) -> NuOperatorStatus {
    let generation = operator.metadata.generation;
    let previous = operator.status.clone().unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    };
    let (ready_replicas, conditions) = match observation {
        Observation::Invalid(problems) => {
            let reason = problems.first().map_or("InvalidSpec", Problem::reason);
            let message = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            (
                previous.ready_replicas,
                [
                    condition(CONDITION_READY, false, reason, message.clone()),
                    condition(CONDITION_PROGRESSING, false, reason, message.clone()),
                    condition(CONDITION_DEGRADED, true, reason, message),
                ],
            )
        }
        Observation::Applied(deployment) => {
            let rollout = Rollout::of(deployment, operator.spec.replicas);
            let (ready, ready_reason) = match (rollout.complete, rollout.wanted) {
                (true, 0) => (true, REASON_SCALED_TO_ZERO),
                (true, _) => (true, REASON_AVAILABLE),
                (false, _) => (false, REASON_NOT_AVAILABLE),
            };
            let progress = format!(
                "{} of {} replicas updated, {} available",
                rollout.updated, rollout.wanted, rollout.available
            );
            let (degraded, degraded_reason, degraded_message) = match &rollout.failure {
                Some((reason, message)) => (true, *reason, message.clone()),
                None => (false, REASON_AS_EXPECTED, String::new()),
            };
            (
                rollout.ready,
                [
                    condition(CONDITION_READY, ready, ready_reason, progress.clone()),
                    condition(
                        CONDITION_PROGRESSING,
                        !rollout.complete && rollout.failure.is_none(),
                        match &rollout.failure {
                            _ if rollout.complete => REASON_AVAILABLE,
                            Some((reason, _)) => reason,
                            None => REASON_ROLLING_OUT,
                        },
                        progress,
                    ),
                    condition(
                        CONDITION_DEGRADED,
                        degraded,
                        degraded_reason,
                        degraded_message,
                    ),
                ],
            )
        }
    };
    let mut status = NuOperatorStatus {
        conditions: previous.conditions,
        observed_generation: generation,
        ready_replicas,
        ..NuOperatorStatus::default()
    };
    // Keep only the conditions this manager owns, then set each.
    status.conditions.retain(|c| {
        [CONDITION_READY, CONDITION_PROGRESSING, CONDITION_DEGRADED].contains(&c.type_.as_str())
    });
    for condition in conditions {
        status.set_condition(condition);
    }
    status
}

/// A Deployment's rollout, as far as the status cares.
#[derive(Debug, PartialEq, Eq)]
struct Rollout {
    wanted: i32,
    updated: i32,
    ready: i32,
    available: i32,
    complete: bool,
    failure: Option<(&'static str, String)>,
}

impl Rollout {
    fn of(deployment: &Deployment, wanted: i32) -> Self {
        let generation = deployment.metadata.generation.unwrap_or_default();
        let status = deployment.status.clone().unwrap_or_default();
        let observed = status.observed_generation.unwrap_or_default() >= generation;
        let updated = status.updated_replicas.unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or_default();
        let available = status.available_replicas.unwrap_or_default();
        let total = status.replicas.unwrap_or_default();
        let complete = observed && updated >= wanted && available >= wanted && total == updated;
        let failure = status.conditions.iter().flatten().find_map(|c| {
            if c.type_ == "Progressing"
                && c.status == "False"
                && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            {
                Some((
                    REASON_ROLLOUT_STALLED,
                    c.message.clone().unwrap_or_default(),
                ))
            } else if c.type_ == "ReplicaFailure" && c.status == "True" {
                Some((
                    REASON_REPLICA_FAILURE,
                    c.message.clone().unwrap_or_default(),
                ))
            } else {
                None
            }
        });
        Self {
            wanted,
            updated,
            ready,
            available,
            complete,
            failure: if complete { None } else { failure },
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use nuop_crd::Mapping;

    use super::*;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("a valid timestamp"))
    }

    fn operator() -> NuOperator {
        NuOperator::test()
            .in_namespace("tenant-a")
            .with_generation(4)
            .with_replicas(2)
            .with_mapping(Mapping::new("a", "v1", "ConfigMap"))
    }

    fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(status),
        }
    }

    fn summary(status: &NuOperatorStatus) -> Vec<(String, String, String)> {
        status
            .conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn triples(list: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        list.iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    }

    #[test]
    fn a_fresh_deployment_is_progressing() {
        let status = desired_status(
            &operator(),
            Observation::Applied(&deployment(1, DeploymentStatus::default())),
            &at(10),
        );
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.ready_replicas, 0);
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "False", "DeploymentNotAvailable"),
                ("Progressing", "True", "RollingOut"),
                ("Degraded", "False", "AsExpected"),
            ])
        );
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
        assert_eq!(
            status.condition("Ready").map(|c| c.message.as_str()),
            Some("0 of 2 replicas updated, 0 available")
        );
    }

    #[test]
    fn a_complete_rollout_is_ready() {
        let done = DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            available_replicas: Some(2),
            ..DeploymentStatus::default()
        };
        let status = desired_status(
            &operator(),
            Observation::Applied(&deployment(2, done.clone())),
            &at(10),
        );
        assert!(status.is_ready());
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "True", "Available"),
                ("Progressing", "False", "Available"),
                ("Degraded", "False", "AsExpected"),
            ])
        );
        // The Deployment controller has not seen the new generation yet: still rolling.
        let stale = desired_status(
            &operator(),
            Observation::Applied(&deployment(3, done)),
            &at(10),
        );
        assert!(!stale.is_ready());
    }

    #[test]
    fn old_pods_still_running_mean_not_done() {
        let rolling = DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(3),
            updated_replicas: Some(2),
            ready_replicas: Some(3),
            available_replicas: Some(3),
            ..DeploymentStatus::default()
        };
        let status = desired_status(
            &operator(),
            Observation::Applied(&deployment(2, rolling)),
            &at(1),
        );
        assert_eq!(
            status.condition("Progressing").map(|c| c.status.as_str()),
            Some("True")
        );
    }

    #[test]
    fn scaled_to_zero_is_ready() {
        let status = desired_status(
            &operator().with_replicas(0),
            Observation::Applied(&deployment(
                1,
                DeploymentStatus {
                    observed_generation: Some(1),
                    ..DeploymentStatus::default()
                },
            )),
            &at(1),
        );
        assert_eq!(
            status.condition("Ready").map(|c| c.reason.as_str()),
            Some("ScaledToZero")
        );
    }

    #[test]
    fn a_stalled_rollout_is_degraded() {
        let stalled = DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(2),
            updated_replicas: Some(2),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".to_string(),
                status: "False".to_string(),
                reason: Some("ProgressDeadlineExceeded".to_string()),
                message: Some("ReplicaSet \"x\" has timed out progressing.".to_string()),
                ..DeploymentCondition::default()
            }]),
            ..DeploymentStatus::default()
        };
        let status = desired_status(
            &operator(),
            Observation::Applied(&deployment(1, stalled)),
            &at(1),
        );
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "False", "DeploymentNotAvailable"),
                ("Progressing", "False", "RolloutStalled"),
                ("Degraded", "True", "RolloutStalled"),
            ])
        );
    }

    #[test]
    fn an_invalid_spec_is_degraded_with_every_problem() {
        let problems = [
            Problem::DuplicateMappingName("a".to_string()),
            Problem::SecretNotFound("git".to_string()),
        ];
        let status = desired_status(&operator(), Observation::Invalid(&problems), &at(1));
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "False", "DuplicateMappingName"),
                ("Progressing", "False", "DuplicateMappingName"),
                ("Degraded", "True", "DuplicateMappingName"),
            ])
        );
        assert_eq!(
            status.condition("Degraded").map(|c| c.message.as_str()),
            Some(
                "more than one mapping is named `a`; the Secret `git` named in the credentials does not exist"
            )
        );
    }

    #[test]
    fn transition_times_hold_while_the_status_holds() {
        let first = desired_status(
            &operator(),
            Observation::Applied(&deployment(1, DeploymentStatus::default())),
            &at(10),
        );
        let again = desired_status(
            &operator().with_status(first.clone()),
            Observation::Applied(&deployment(1, DeploymentStatus::default())),
            &at(20),
        );
        assert_eq!(again, first);
        let problems = [Problem::NameTooLong(70)];
        let invalid = desired_status(
            &operator().with_status(first),
            Observation::Invalid(&problems),
            &at(30),
        );
        // Ready stayed False (time kept); Degraded went True (new time).
        let time = |s: &NuOperatorStatus, t: &str| {
            s.condition(t).map(|c| c.last_transition_time.0.as_second())
        };
        assert_eq!(time(&invalid, "Ready"), Some(10));
        assert_eq!(time(&invalid, "Degraded"), Some(30));
    }

    #[test]
    fn fields_of_the_managed_pods_are_not_claimed() {
        let mut previous = NuOperatorStatus::default();
        previous.sources.push(nuop_crd::SourceStatus {
            location: "https://example.com/x.git".to_string(),
            ..nuop_crd::SourceStatus::default()
        });
        let status = desired_status(
            &operator().with_status(previous),
            Observation::Applied(&deployment(1, DeploymentStatus::default())),
            &at(1),
        );
        assert!(status.sources.is_empty());
        assert!(status.mappings.is_empty());
    }
}
