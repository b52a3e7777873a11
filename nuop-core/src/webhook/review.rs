//! One webhook request: an AdmissionReview answered by `main validate` / `main mutate`,
//! or a ConversionReview answered by `main convert`.
//!
//! Does I/O: runs the script (through the same executors, timeouts and output caps as
//! reconciles), logs, counts metrics. What the answer means is decided by the pure
//! functions of [`crate::protocol::admission`] and [`decide`] here: a script that
//! fails, times out or answers nonsense gets the hook's failurePolicy — Fail denies
//! with the reason, Ignore admits with a warning — never an HTTP error
//! (test `webhooks::a_hanging_script_is_answered_within_its_timeout`).

use std::sync::Arc;
use std::time::Instant;

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::conversion::{ConversionRequest, ConversionResponse, ConversionReview};
use kube::core::response::Status;
use serde_json::Value;
use tracing::{info, warn};

use super::Served;
use crate::cluster::read_only::ReadOnly;
use crate::metrics::METRICS;
use crate::protocol::Phase;
use crate::protocol::admission::{
    admission_input, conversion_input, converted_objects, mutation_patch, validation_verdict,
};
use crate::protocol::hooks::{ConversionHook, FailurePolicy};
use crate::script::{CallRequest, CallResult, ExecError};

/// A request body that is not a review at all (answered HTTP 400: no script ran).
#[derive(Debug, thiserror::Error)]
#[error("not a {expected}: {reason}")]
pub struct BadReview {
    /// What was expected (AdmissionReview, ConversionReview).
    pub expected: &'static str,
    /// Why it was not one.
    pub reason: String,
}

/// How a request was answered, as `nuop_webhook_requests_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Admitted unchanged (or converted).
    Allowed,
    /// Denied by the script.
    Denied,
    /// Admitted with a patch.
    Mutated,
    /// The script could not answer; the failurePolicy decided.
    Error,
}

impl Answer {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Mutated => "mutated",
            Self::Error => "error",
        }
    }
}

/// The object a request is about, for logs: `namespace/name`, or the name alone.
fn object_ref(request: &Value) -> String {
    let name = request.get("name").and_then(Value::as_str).unwrap_or("");
    match request.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

async fn run(
    served: &Served,
    phase: Phase,
    input: &Value,
    primary: Value,
    timeout: std::time::Duration,
) -> Result<CallResult, ExecError> {
    let k8s = served.cluster.clone().map(|cluster| {
        let read_only: Arc<dyn crate::cluster::Cluster> =
            Arc::new(ReadOnly::new(cluster, phase.as_str()));
        crate::k8s::Session::new(crate::k8s::SessionParts {
            controller: served.config.name.clone(),
            primary,
            owns: Vec::new(),
            cluster: read_only,
            runtime: tokio::runtime::Handle::current(),
            deadline: std::time::Instant::now() + timeout,
        })
    });
    let executor = served.runner.kind().as_str();
    let timer = METRICS
        .script_duration
        .with_label_values(&[served.config.name.as_str(), phase.as_str(), executor])
        .start_timer();
    let result = served
        .runner
        .call(CallRequest {
            phase,
            input: Some(input.to_string()),
            controller: served.config.name.clone(),
            timeout,
            k8s,
        })
        .await;
    timer.observe_duration();
    result
}

/// What nuop answers for one admission call, decided from the script's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// Why it is denied (shown to the client).
    pub message: Option<String>,
    /// Warnings for the client.
    pub warnings: Vec<String>,
    /// The JSON patch of a mutation.
    pub patch: Option<json_patch::Patch>,
    /// How it is counted.
    pub answer: Answer,
    /// Why the script could not answer (then the failurePolicy decided).
    pub error: Option<String>,
}

/// Decides the answer to a validate or mutate call (`phase`) of `controller` on
/// `input` (the admission request as the script got it) from what the call did:
/// pure, shared by the server and `nuop-standard test`.
pub fn decide(
    phase: Phase,
    policy: FailurePolicy,
    controller: &str,
    input: &Value,
    called: &Result<CallResult, ExecError>,
) -> Decision {
    let decided = match called {
        Err(e) => Err(e.to_string()),
        Ok(result) if phase == Phase::Validate => validation_verdict(result)
            .map(|verdict| Decision {
                answer: if verdict.allowed {
                    Answer::Allowed
                } else {
                    Answer::Denied
                },
                message: match (verdict.allowed, verdict.message) {
                    (false, None) => Some(format!("denied by nuop webhook {controller}")),
                    (_, message) => message,
                },
                allowed: verdict.allowed,
                warnings: verdict.warnings,
                patch: None,
                error: None,
            })
            .map_err(|e| e.to_string()),
        Ok(result) => mutation_patch(&input["object"], result)
            .map(|patch| Decision {
                allowed: true,
                message: None,
                warnings: Vec::new(),
                answer: if patch.is_some() {
                    Answer::Mutated
                } else {
                    Answer::Allowed
                },
                patch,
                error: None,
            })
            .map_err(|e| e.to_string()),
    };
    decided.unwrap_or_else(|reason| match policy {
        FailurePolicy::Fail => Decision {
            allowed: false,
            message: Some(format!("nuop webhook {controller}: {reason}")),
            warnings: Vec::new(),
            patch: None,
            answer: Answer::Error,
            error: Some(reason),
        },
        FailurePolicy::Ignore => Decision {
            allowed: true,
            message: None,
            warnings: vec![format!(
                "nuop webhook {controller} failed and was ignored (failurePolicy Ignore): {reason}"
            )],
            patch: None,
            answer: Answer::Error,
            error: Some(reason),
        },
    })
}

/// Runs `main validate` / `main mutate` (`phase`) of `served` on `input` (the admission
/// request as the script gets it), with the hook's timeout.
pub async fn call_admission(
    served: &Served,
    phase: Phase,
    hook: &crate::protocol::hooks::AdmissionHook,
    input: &Value,
) -> Result<CallResult, ExecError> {
    let primary = match &input["object"] {
        Value::Null => input["oldObject"].clone(),
        object => object.clone(),
    };
    let timeout = hook.script_timeout(served.config.timeout);
    run(served, phase, input, primary, timeout).await
}

/// Answers an AdmissionReview body with `main validate` or `main mutate` (`phase`).
///
/// # Errors
/// [`BadReview`] when the body is not an AdmissionReview with a request.
pub async fn admit(served: &Served, phase: Phase, body: &[u8]) -> Result<Vec<u8>, BadReview> {
    let started = Instant::now();
    let bad = |reason: String| BadReview {
        expected: "AdmissionReview",
        reason,
    };
    let review: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let request_value = review
        .get("request")
        .cloned()
        .ok_or_else(|| bad("it has no request".into()))?;
    let typed: AdmissionReview<DynamicObject> =
        serde_json::from_value(review).map_err(|e| bad(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> =
        typed.try_into().map_err(|e| bad(format!("{e}")))?;
    let controller = served.config.name.as_str();
    let mut response = AdmissionResponse::from(&request);
    let hook = match phase {
        Phase::Validate => served.config.webhooks.validate.as_ref(),
        _ => served.config.webhooks.mutate.as_ref(),
    };
    let answer = match hook.filter(|_| served.serves(phase)) {
        None => {
            response = response.deny(format!(
                "nuop webhook {controller} has no {phase} webhook (a stale configuration?)"
            ));
            Answer::Error
        }
        Some(hook) => {
            let input = admission_input(&request_value);
            let called = call_admission(served, phase, hook, &input).await;
            if let Ok(result) = &called {
                log_stderr(controller, phase, &request.uid, result);
            }
            let decision = decide(phase, hook.failure_policy, controller, &input, &called);
            if let Some(reason) = &decision.error {
                warn!(
                    webhook = controller, kind = phase.as_str(), uid = %request.uid,
                    object = %object_ref(&request_value), policy = hook.failure_policy.as_str(),
                    "webhook script could not answer: {reason}"
                );
            }
            if !decision.allowed {
                response = response.deny(decision.message.clone().unwrap_or_default());
            }
            if !decision.warnings.is_empty() {
                response.warnings = Some(decision.warnings.clone());
            }
            if let Some(patch) = decision.patch {
                response = response
                    .with_patch(patch)
                    .map_err(|e| bad(format!("cannot serialize the patch: {e}")))?;
            }
            decision.answer
        }
    };
    finish(controller, phase, started, answer);
    info!(
        webhook = controller,
        kind = phase.as_str(),
        uid = %request.uid,
        operation = ?request.operation,
        object = %object_ref(&request_value),
        dry_run = request.dry_run,
        result = answer.label(),
        "webhook answered"
    );
    serde_json::to_vec(&response.into_review()).map_err(|e| bad(e.to_string()))
}

/// Runs `main convert` of `served` on `objects` and checks its answer.
///
/// # Errors
/// Why the conversion failed: the script's error, or an answer that is not the same
/// objects in `desired`.
pub async fn call_conversion(
    served: &Served,
    desired: &str,
    objects: &[Value],
) -> Result<Vec<Value>, String> {
    let input = conversion_input(desired, objects);
    let primary = objects.first().cloned().unwrap_or(Value::Null);
    let timeout = ConversionHook::script_timeout(served.config.timeout);
    match run(served, Phase::Convert, &input, primary, timeout).await {
        Err(e) => Err(e.to_string()),
        Ok(result) => {
            log_stderr(&served.config.name, Phase::Convert, "", &result);
            converted_objects(objects, desired, &result).map_err(|e| e.to_string())
        }
    }
}

/// Answers a ConversionReview body with `main convert`.
///
/// # Errors
/// [`BadReview`] when the body is not a ConversionReview with a request.
pub async fn convert(served: &Served, body: &[u8]) -> Result<Vec<u8>, BadReview> {
    let started = Instant::now();
    let bad = |reason: String| BadReview {
        expected: "ConversionReview",
        reason,
    };
    let review: ConversionReview = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let request = ConversionRequest::from_review(review).map_err(|e| bad(format!("{e}")))?;
    let controller = served.config.name.as_str();
    let (uid, desired, objects) = (
        request.uid.clone(),
        request.desired_api_version.clone(),
        request.objects.clone(),
    );
    let response = ConversionResponse::for_request(request);
    let (response, answer) = if !served.serves(Phase::Convert) {
        (
            response.failure(Status::failure(
                &format!("nuop webhook {controller} has no convert webhook"),
                "ConversionFailed",
            )),
            Answer::Error,
        )
    } else {
        let converted = call_conversion(served, &desired, &objects).await;
        match converted {
            Ok(converted) => (response.success(converted), Answer::Allowed),
            Err(reason) => {
                warn!(webhook = controller, kind = "convert", uid = %uid, "conversion failed: {reason}");
                (
                    response.failure(Status::failure(
                        &format!("nuop webhook {controller}: {reason}"),
                        "ConversionFailed",
                    )),
                    Answer::Error,
                )
            }
        }
    };
    finish(controller, Phase::Convert, started, answer);
    info!(
        webhook = controller,
        kind = "convert",
        uid = %uid,
        desired = %desired,
        objects = objects.len(),
        result = answer.label(),
        "webhook answered"
    );
    serde_json::to_vec(&response.into_review()).map_err(|e| bad(e.to_string()))
}

fn finish(controller: &str, phase: Phase, started: Instant, answer: Answer) {
    METRICS
        .webhook_requests
        .with_label_values(&[controller, phase.as_str(), answer.label()])
        .inc();
    METRICS
        .webhook_duration
        .with_label_values(&[controller, phase.as_str()])
        .observe(started.elapsed().as_secs_f64());
}

/// The script's stderr, as log lines (validate's denial message comes from it too).
fn log_stderr(controller: &str, phase: Phase, uid: &str, result: &CallResult) {
    for line in result
        .stderr
        .with_note()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(50)
    {
        info!(target: "nuop::script", webhook = controller, kind = phase.as_str(), uid, stream = "stderr", "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Result<CallResult, ExecError> {
        Err(ExecError::Engine {
            script: "c".into(),
            reason: "boom".into(),
        })
    }

    #[test]
    fn failure_policy_decides_a_failed_call() {
        let input = serde_json::json!({"object": {}});
        let denied = decide(Phase::Validate, FailurePolicy::Fail, "c", &input, &failed());
        assert!(!denied.allowed);
        assert_eq!(
            denied.message.as_deref(),
            Some("nuop webhook c: embedded engine failed for script c: boom")
        );
        assert_eq!(denied.answer, Answer::Error);
        let admitted = decide(Phase::Mutate, FailurePolicy::Ignore, "c", &input, &failed());
        assert!(admitted.allowed);
        assert!(
            admitted.warnings[0].contains("failurePolicy Ignore"),
            "{admitted:?}"
        );
        assert_eq!(admitted.answer, Answer::Error);
    }

    #[test]
    fn a_denial_without_a_message_names_the_webhook() {
        let denied = Ok(CallResult {
            code: 0,
            stdout: Default::default(),
            stderr: Default::default(),
            returned: Some(serde_json::json!({"allowed": false})),
        });
        let decision = decide(
            Phase::Validate,
            FailurePolicy::Fail,
            "c",
            &Value::Null,
            &denied,
        );
        assert_eq!(
            (
                decision.allowed,
                decision.message.as_deref(),
                decision.answer
            ),
            (false, Some("denied by nuop webhook c"), Answer::Denied)
        );
    }

    #[test]
    fn answers_have_their_documented_labels() {
        let labels: Vec<_> = [
            Answer::Allowed,
            Answer::Denied,
            Answer::Mutated,
            Answer::Error,
        ]
        .iter()
        .map(|a| a.label())
        .collect();
        assert_eq!(labels, ["allowed", "denied", "mutated", "error"]);
    }
}
