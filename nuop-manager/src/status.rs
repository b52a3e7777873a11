//! The status the manager writes: conditions Ready, Progressing and Degraded with
//! reasons, `observedGeneration` and `readyReplicas`, derived from what a reconcile
//! observed *and* from what the managed pods report in `status.sources` and
//! `status.mappings`. Pure; the time of a transition is passed in.
//!
//! The manager is the one writer of the three conditions (server-side apply as
//! [`crate::FIELD_MANAGER`]); the managed pods write `sources` and `mappings` under
//! their own field manager, and the manager only reads them:
//! - a source whose last fetch or load failed, or a mapping that does not run while
//!   every source has a revision, is Degraded (`SourceFailed`, `MappingNotRunning`),
//!   naming `spec.sources[i]` or `spec.mappings[i]`;
//! - a source or mapping not reported yet, or a mapping restarting for a new revision,
//!   is Progressing (`Syncing`, `Restarting`);
//! - Ready needs the Deployment available, every source with a revision in use and
//!   every mapping running.
//!
//! Tests: `a_failing_source_is_degraded_and_names_it`,
//! `a_mapping_that_does_not_run_is_degraded_and_not_ready`,
//! `a_restarting_mapping_is_progressing`.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use nuop_crd::location::redact;
use nuop_crd::{
    CONDITION_DEGRADED, CONDITION_PROGRESSING, CONDITION_READY, NuOperator, NuOperatorStatus,
};

use crate::validate::Problem;

/// Reason while the managed Deployment rolls out.
pub const REASON_ROLLING_OUT: &str = "RollingOut";
/// Reason once every replica is updated and available (and the pods report every
/// source and mapping running).
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
/// Reason when the managed pods report a source whose last fetch or load failed.
pub const REASON_SOURCE_FAILED: &str = "SourceFailed";
/// Reason when the managed pods report a mapping whose controller does not run.
pub const REASON_MAPPING_NOT_RUNNING: &str = "MappingNotRunning";
/// Reason while the managed pods have not reported every source and mapping yet.
pub const REASON_SYNCING: &str = "Syncing";
/// Reason while a mapping's controller restarts for a new revision of its script.
pub const REASON_RESTARTING: &str = "Restarting";

/// What a reconcile found out.
#[derive(Clone, Copy, Debug)]
pub enum Observation<'a> {
    /// Validation failed (or a child is in the way); nothing was applied.
    Invalid(&'a [Problem]),
    /// The children were applied; this is the Deployment as the API server returned it.
    Applied(&'a Deployment),
}

/// What the managed pods' part of the status says, folded for the conditions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodsReport {
    /// Problems that need attention (reason, message), in spec order.
    pub degraded: Vec<(&'static str, String)>,
    /// Work under way (reason, message): sources or mappings not reported yet, restarts.
    pub progressing: Vec<(&'static str, String)>,
    /// Why not every source has a revision and every mapping runs.
    pub not_ready: Vec<String>,
}

/// Folds `status.sources` and `status.mappings` against `operator`'s spec. Entries the
/// pods wrote for an older spec (another location at that index, a mapping no longer
/// in the spec) are ignored.
pub fn pods_report(operator: &NuOperator) -> PodsReport {
    let status = operator.status.clone().unwrap_or_default();
    let mut report = PodsReport::default();
    let mut all_revisions = true;
    for (index, source) in operator.spec.sources.iter().enumerate() {
        let location = redact(&source.location);
        let field = format!("spec.sources[{index}] ({location})");
        let Some(reported) = status.sources.get(index).filter(|s| s.location == location) else {
            all_revisions = false;
            report
                .progressing
                .push((REASON_SYNCING, format!("{field}: not reported yet")));
            report.not_ready.push(format!("{field} not reported yet"));
            continue;
        };
        if let Some(error) = &reported.last_error {
            report
                .degraded
                .push((REASON_SOURCE_FAILED, format!("{field}: {error}")));
        }
        if reported.revision.is_none() {
            all_revisions = false;
            report
                .not_ready
                .push(format!("{field} has no revision in use"));
            if reported.last_error.is_none() {
                report
                    .progressing
                    .push((REASON_SYNCING, format!("{field}: not fetched yet")));
            }
        }
    }
    for (index, mapping) in operator.spec.mappings.iter().enumerate() {
        let field = format!("spec.mappings[{index}] ({})", mapping.name);
        let Some(reported) = status.mappings.iter().find(|m| m.name == mapping.name) else {
            report
                .progressing
                .push((REASON_SYNCING, format!("{field}: not reported yet")));
            report.not_ready.push(format!("{field} not reported yet"));
            continue;
        };
        if reported.restarting {
            report.progressing.push((
                REASON_RESTARTING,
                format!("{field}: restarting for a new revision"),
            ));
        }
        if !reported.running {
            let why = reported.message.as_deref().unwrap_or("not running");
            report.not_ready.push(format!("{field}: {why}"));
            // Before every source has a revision, a missing script is expected.
            if all_revisions {
                report
                    .degraded
                    .push((REASON_MAPPING_NOT_RUNNING, format!("{field}: {why}")));
            }
        }
    }
    report
}

fn messages(entries: &[(&'static str, String)]) -> String {
    entries
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ")
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
            // No pods, nothing to report: the rollout alone decides.
            let pods = if rollout.wanted == 0 {
                PodsReport::default()
            } else {
                pods_report(operator)
            };
            let progress = format!(
                "{} of {} replicas updated, {} available",
                rollout.updated, rollout.wanted, rollout.available
            );
            let (ready, ready_reason, ready_message) = match (rollout.complete, rollout.wanted) {
                (true, 0) => (true, REASON_SCALED_TO_ZERO, progress.clone()),
                (true, _) if pods.not_ready.is_empty() => {
                    (true, REASON_AVAILABLE, progress.clone())
                }
                (true, _) => (
                    false,
                    pods.degraded
                        .first()
                        .or(pods.progressing.first())
                        .map_or(REASON_SYNCING, |(r, _)| *r),
                    pods.not_ready.join("; "),
                ),
                (false, _) => (false, REASON_NOT_AVAILABLE, progress.clone()),
            };
            let (degraded, degraded_reason, degraded_message) = match &rollout.failure {
                Some((reason, message)) => (true, *reason, message.clone()),
                None => match pods.degraded.first() {
                    Some((reason, _)) => (true, *reason, messages(&pods.degraded)),
                    None => (false, REASON_AS_EXPECTED, String::new()),
                },
            };
            let (progressing, progressing_reason, progressing_message) =
                match (&rollout.failure, rollout.complete) {
                    (Some((reason, _)), false) => (false, *reason, progress),
                    (None, false) => (true, REASON_ROLLING_OUT, progress),
                    (_, true) => match pods.progressing.first() {
                        Some((reason, _)) => (true, *reason, messages(&pods.progressing)),
                        None => (false, REASON_AVAILABLE, progress),
                    },
                };
            (
                rollout.ready,
                [
                    condition(CONDITION_READY, ready, ready_reason, ready_message),
                    condition(
                        CONDITION_PROGRESSING,
                        progressing,
                        progressing_reason,
                        progressing_message,
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
    use nuop_crd::{Mapping, MappingStatus, Source, SourceStatus};

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

    /// `operator()` with a source, as the managed pods report it.
    fn reported(source: SourceStatus, mapping: MappingStatus) -> NuOperator {
        operator()
            .with_source(Source::new("https://example.com/x.git"))
            .with_status(NuOperatorStatus {
                sources: vec![source],
                mappings: vec![mapping],
                ..NuOperatorStatus::default()
            })
    }

    fn source(revision: Option<&str>, error: Option<&str>) -> SourceStatus {
        SourceStatus {
            location: "https://example.com/x.git".to_string(),
            revision: revision.map(str::to_string),
            last_error: error.map(str::to_string),
            ..SourceStatus::default()
        }
    }

    fn mapping(running: bool, message: Option<&str>) -> MappingStatus {
        MappingStatus {
            name: "a".to_string(),
            running,
            message: message.map(str::to_string),
            restarting: false,
        }
    }

    fn available() -> Deployment {
        deployment(
            2,
            DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(2),
                updated_replicas: Some(2),
                ready_replicas: Some(2),
                available_replicas: Some(2),
                ..DeploymentStatus::default()
            },
        )
    }

    #[test]
    fn a_failing_source_is_degraded_and_names_it() {
        // The last good revision keeps running: still Ready, but Degraded.
        let op = reported(
            source(Some("abc"), Some("fetch timed out after 30s")),
            mapping(true, None),
        );
        let status = desired_status(&op, Observation::Applied(&available()), &at(1));
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "True", "Available"),
                ("Progressing", "False", "Available"),
                ("Degraded", "True", "SourceFailed"),
            ])
        );
        assert_eq!(
            status.condition("Degraded").map(|c| c.message.as_str()),
            Some("spec.sources[0] (https://example.com/x.git): fetch timed out after 30s")
        );
        // Never fetched and failing: not Ready either.
        let op = reported(
            source(None, Some("refused")),
            mapping(false, Some("no source has a good revision yet")),
        );
        let status = desired_status(&op, Observation::Applied(&available()), &at(1));
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "False", "SourceFailed"),
                ("Progressing", "False", "Available"),
                ("Degraded", "True", "SourceFailed"),
            ])
        );
    }

    #[test]
    fn a_mapping_that_does_not_run_is_degraded_and_not_ready() {
        let op = reported(
            source(Some("abc"), None),
            mapping(
                false,
                Some("no script named `a` in the sources (available: b)"),
            ),
        );
        let status = desired_status(&op, Observation::Applied(&available()), &at(1));
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "False", "MappingNotRunning"),
                ("Progressing", "False", "Available"),
                ("Degraded", "True", "MappingNotRunning"),
            ])
        );
        assert_eq!(
            status.condition("Degraded").map(|c| c.message.as_str()),
            Some("spec.mappings[0] (a): no script named `a` in the sources (available: b)")
        );
    }

    #[test]
    fn a_restarting_mapping_is_progressing() {
        let mut restarting = mapping(true, None);
        restarting.restarting = true;
        let op = reported(source(Some("abc"), None), restarting);
        let status = desired_status(&op, Observation::Applied(&available()), &at(1));
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "True", "Available"),
                ("Progressing", "True", "Restarting"),
                ("Degraded", "False", "AsExpected"),
            ])
        );
    }

    #[test]
    fn nothing_reported_yet_is_progressing_not_degraded() {
        let op = operator().with_source(Source::new("https://example.com/x.git"));
        let status = desired_status(&op, Observation::Applied(&available()), &at(1));
        assert_eq!(
            summary(&status),
            triples(&[
                ("Ready", "False", "Syncing"),
                ("Progressing", "True", "Syncing"),
                ("Degraded", "False", "AsExpected"),
            ])
        );
        // Entries for another location at that index are an older spec's.
        let mut stale = reported(source(Some("abc"), None), mapping(true, None));
        stale.spec.sources[0].location = "https://example.com/new.git".to_string();
        let status = desired_status(&stale, Observation::Applied(&available()), &at(1));
        assert!(!status.is_ready());
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
        let operator = || reported(source(Some("abc"), None), mapping(true, None));
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
            Problem::NameConflict {
                kind: "ConfigMap",
                name: "nuop-x".to_string(),
            },
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
                "more than one mapping is named `a`; a ConfigMap named `nuop-x` already exists and is not controlled by this NuOperator; delete or rename it, the manager does not take it over"
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
