//! The reconcile pipeline for one script's objects, as small steps:
//! finalizer phase → run the script → write back → record the outcome.
//!
//! Does I/O (API calls, Events, script calls); every decision is delegated to the pure
//! [`plan`], [`backoff`] and [`error`] modules.

pub mod backoff;
pub mod error;
pub mod events;
pub mod plan;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::Value;
use tracing::{Instrument, info, warn};

use crate::metrics::METRICS;
use crate::protocol::{
    Outcome, Phase, ScriptConfig, ScriptOutput, check_identity, classify_output,
};
use crate::script::{CallRequest, CallResult, ScriptRunner};

pub use backoff::Backoff;
pub use error::ReconcileError;
use error::{is_conflict, is_not_found};
use events::EventQueue;
use plan::{
    Step, WritePlan, add_finalizer_patch, has_finalizer, matches_labels, next_step, plan_write,
    remove_finalizer_patch,
};

/// How many times a reconcile re-reads and retries after a conflicting write before it
/// gives up and backs off.
const MAX_CONFLICT_RETRIES: u32 = 5;

/// Lines of a script's stderr logged per call; the rest is summarised.
const MAX_LOGGED_LINES: usize = 50;

/// Everything a script's reconciles share.
pub struct Context {
    /// The controller's validated config.
    pub config: ScriptConfig,
    /// The script, ready for calls.
    pub runner: ScriptRunner,
    /// API client.
    pub client: Client,
    /// The watched kind as discovery resolved it.
    pub resource: ApiResource,
    /// Whether the kind is namespaced.
    pub namespaced: bool,
    /// Whether the kind has a status subresource.
    pub has_status: bool,
    /// Queues Events on reconciled objects for sending in the background.
    pub events: EventQueue,
    /// Per-object failure counts.
    pub backoff: Backoff<String>,
    /// Field manager for writes.
    pub field_manager: String,
    /// Whether successful writes emit Normal Events (warnings always do).
    pub write_events: bool,
}

impl Context {
    /// Builds the shared state of one controller; must run on a tokio runtime (it starts
    /// the controller's Event sender).
    pub fn new(
        config: ScriptConfig,
        runner: ScriptRunner,
        client: Client,
        resource: ApiResource,
        namespaced: bool,
        has_status: bool,
    ) -> Self {
        let reporter = Reporter {
            controller: format!("nuop-{}", config.name),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            field_manager: format!("nuop-{}", config.name),
            events: EventQueue::spawn(&config.name, Recorder::new(client.clone(), reporter)),
            backoff: Backoff::default(),
            write_events: true,
            config,
            runner,
            client,
            resource,
            namespaced,
            has_status,
        }
    }

    fn api_for(&self, object: &Value) -> Api<DynamicObject> {
        match object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
        {
            Some(ns) if self.namespaced => {
                Api::namespaced_with(self.client.clone(), ns, &self.resource)
            }
            _ => Api::all_with(self.client.clone(), &self.resource),
        }
    }
}

/// The key an object's backoff is tracked under.
fn object_key(object: &Value) -> String {
    format!(
        "{}/{}",
        text(object, "/metadata/namespace"),
        text(object, "/metadata/name")
    )
}

fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object as the script sees it: JSON with apiVersion and kind filled in (list
/// responses leave them out).
pub fn object_value(object: &DynamicObject, resource: &ApiResource) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            Value::String(resource.api_version.clone()),
        );
        map.insert("kind".into(), Value::String(resource.kind.clone()));
    }
    value
}

/// Reconciles one object; the entry point kube-runtime's controller calls.
///
/// # Errors
/// [`ReconcileError`] after publishing a Warning Event about it.
pub async fn reconcile(
    object: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let value = object_value(&object, &ctx.resource);
    let span = object_span(&ctx, &value);
    async move {
        let key = object_key(&value);
        let controller = ctx.config.name.as_str();
        let in_flight = METRICS.in_flight.with_label_values(&[controller]);
        in_flight.inc();
        let timer = METRICS
            .reconcile_duration
            .with_label_values(&[controller])
            .start_timer();
        let result = reconcile_with_retries(value.clone(), &ctx).await;
        timer.observe_duration();
        in_flight.dec();
        match &result {
            Ok(_) => ctx.backoff.succeeded(&key),
            Err(error) => {
                count(controller, "error");
                METRICS
                    .errors
                    .with_label_values(&[controller, error.category()])
                    .inc();
                warn!(category = error.category(), "reconcile failed: {error}");
                publish(
                    &ctx,
                    &value,
                    EventType::Warning,
                    error.category(),
                    "Reconcile",
                    &error.to_string(),
                );
            }
        }
        result
    }
    .instrument(span)
    .await
}

/// The span every log line and trace about one object's reconcile runs in.
fn object_span(ctx: &Context, object: &Value) -> tracing::Span {
    // The object's name is `object`, not `name`: JSON logs write each span's own name
    // under "name", and a second "name" key would hide one of the two.
    tracing::info_span!(
        "reconcile",
        controller = %ctx.config.name,
        kind = %ctx.resource.kind,
        namespace = %text(object, "/metadata/namespace"),
        object = %text(object, "/metadata/name"),
    )
}

/// How often [`release`] tries to finalize an object that left the selectors.
const RELEASE_ATTEMPTS: u32 = 8;

/// Lets go of an object that stopped matching the controller's selectors (the watch
/// reported it deleted) while still carrying our finalizer: runs `finalize` and removes
/// the finalizer, as if the object had been deleted, so it is never left holding a
/// finalizer nobody will remove. Nothing happens when the object is gone, no longer
/// carries our finalizer, or matches the label selectors again (the watch has it back).
/// Failures are retried with the per-object backoff, then reported with an Event.
pub async fn release(object: Arc<DynamicObject>, ctx: Arc<Context>) {
    let Some(finalizer) = ctx.config.finalizer.clone() else {
        return;
    };
    let value = object_value(&object, &ctx.resource);
    let span = object_span(&ctx, &value);
    async move {
        let key = object_key(&value);
        for attempt in 1..=RELEASE_ATTEMPTS {
            let current = match ctx.api_for(&value).get_opt(text(&value, "/metadata/name")).await {
                Ok(Some(fresh)) => object_value(&fresh, &ctx.resource),
                Ok(None) => return,
                Err(e) => {
                    warn!("re-reading an object that left the selectors failed: {e}");
                    tokio::time::sleep(ctx.backoff.failed(key.clone())).await;
                    continue;
                }
            };
            if !has_finalizer(&current, &finalizer)
                || matches_labels(&current, &ctx.config.label_selectors)
                    && ctx.config.field_selectors.is_empty()
            {
                return;
            }
            info!("the object no longer matches the selectors; finalizing it");
            match run_finalize(&current, &ctx).await {
                Ok(_) => {
                    ctx.backoff.succeeded(&key);
                    return;
                }
                Err(error) => {
                    warn!(attempt, category = error.category(), "finalizing a released object failed: {error}");
                    if attempt == RELEASE_ATTEMPTS || error.is_permanent() {
                        publish(&ctx, &current, EventType::Warning, error.category(), "Release", &format!(
                            "the object left the selectors but finalize failed, so finalizer {finalizer} stays: {error}"
                        ));
                        return;
                    }
                    tokio::time::sleep(ctx.backoff.failed(key.clone())).await;
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// What kube-runtime does after a failed reconcile: permanent problems wait for the
/// object to change; everything else retries with per-object exponential backoff.
pub fn error_policy(
    object: Arc<DynamicObject>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    if error.is_permanent() {
        return Action::await_change();
    }
    let key = object_key(&object_value(&object, &ctx.resource));
    Action::requeue(ctx.backoff.failed(key))
}

async fn reconcile_with_retries(
    mut current: Value,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        match reconcile_once(&current, ctx).await {
            Err(ReconcileError::Api { source, .. }) if is_conflict(&source) => {
                // Someone changed the object between our read and our write: read it
                // again and reconcile at once, not after a requeue interval.
                info!("conflicting write; re-reading and reconciling again");
                let api = ctx.api_for(&current);
                match api.get(text(&current, "/metadata/name")).await {
                    Ok(fresh) => current = object_value(&fresh, &ctx.resource),
                    Err(e) if is_not_found(&e) => return Ok(Action::await_change()),
                    Err(source) => {
                        return Err(ReconcileError::Api {
                            action: "re-read object",
                            source,
                        });
                    }
                }
            }
            other => return other,
        }
    }
    Err(ReconcileError::Conflicts(MAX_CONFLICT_RETRIES))
}

async fn reconcile_once(object: &Value, ctx: &Context) -> Result<Action, ReconcileError> {
    let finalizer = ctx.config.finalizer.as_deref();
    match next_step(object, finalizer) {
        Step::Ignore => Ok(Action::await_change()),
        Step::AddFinalizer => {
            let Some(finalizer) = finalizer else {
                return Ok(Action::await_change());
            };
            let updated = patch_finalizers(
                ctx,
                object,
                add_finalizer_patch(object, finalizer),
                "add finalizer",
            )
            .await?;
            publish(
                ctx,
                object,
                EventType::Normal,
                "FinalizerAdded",
                "AddFinalizer",
                &format!("added finalizer {finalizer}"),
            );
            // Reconcile the object as it now is, without waiting for the watch to echo it.
            run_reconcile(&updated, ctx).await
        }
        Step::Reconcile => run_reconcile(object, ctx).await,
        Step::Finalize => run_finalize(object, ctx).await,
    }
}

async fn run_reconcile(object: &Value, ctx: &Context) -> Result<Action, ReconcileError> {
    let result = call_script(ctx, Phase::Reconcile, object).await?;
    match Outcome::from_exit_code(result.code) {
        Outcome::NoChange => {
            count(&ctx.config.name, "no_change");
            Ok(Action::requeue(ctx.config.requeue_after_noop))
        }
        Outcome::Failed(code) => Err(ReconcileError::ScriptFailed {
            code,
            stderr: tail(&result.stderr.text),
        }),
        Outcome::Changed => {
            match classify_output(&result.stdout.text, result.returned.as_ref())? {
                ScriptOutput::Object(desired) => {
                    check_identity(object, &desired)?;
                    let plan = plan_write(object, &desired, ctx.has_status);
                    write(ctx, object, plan).await?;
                }
                ScriptOutput::Logs(text) => log_lines("stdout", &text),
                ScriptOutput::Empty => {}
            }
            count(&ctx.config.name, "changed");
            Ok(Action::requeue(ctx.config.requeue_after_change))
        }
    }
}

async fn run_finalize(object: &Value, ctx: &Context) -> Result<Action, ReconcileError> {
    let result = call_script(ctx, Phase::Finalize, object).await?;
    if let Outcome::Failed(code) = Outcome::from_exit_code(result.code) {
        return Err(ReconcileError::ScriptFailed {
            code,
            stderr: tail(&result.stderr.text),
        });
    }
    if let ScriptOutput::Logs(text) =
        classify_output(&result.stdout.text, result.returned.as_ref())?
    {
        log_lines("stdout", &text);
    }
    let Some(finalizer) = ctx.config.finalizer.as_deref() else {
        return Ok(Action::await_change());
    };
    if let Some(patch) = remove_finalizer_patch(object, finalizer) {
        match patch_finalizers(ctx, object, patch, "remove finalizer").await {
            Ok(_) => {}
            // Gone already: someone else removed the last finalizer.
            Err(ReconcileError::Api { source, .. }) if is_not_found(&source) => {}
            Err(e) => return Err(e),
        }
        publish(
            ctx,
            object,
            EventType::Normal,
            "Finalized",
            "Finalize",
            &format!("finalize succeeded; removed finalizer {finalizer}"),
        );
    }
    count(&ctx.config.name, "finalized");
    Ok(Action::await_change())
}

/// Counts a finished reconcile by its outcome (no_change, changed, finalized, error).
fn count(controller: &str, outcome: &str) {
    METRICS
        .reconciles
        .with_label_values(&[controller, outcome])
        .inc();
}

async fn call_script(
    ctx: &Context,
    phase: Phase,
    object: &Value,
) -> Result<CallResult, ReconcileError> {
    let executor = ctx.runner.kind().as_str();
    let timer = METRICS
        .script_duration
        .with_label_values(&[ctx.config.name.as_str(), phase.as_str(), executor])
        .start_timer();
    let result = ctx
        .runner
        .call(CallRequest {
            phase,
            input: Some(object.to_string()),
            controller: ctx.config.name.clone(),
            timeout: ctx.config.timeout,
        })
        // One span per script call, inside the reconcile's span (exported as a trace).
        .instrument(tracing::info_span!(
            "script",
            phase = phase.as_str(),
            executor
        ))
        .await;
    timer.observe_duration();
    let result = result?;
    log_lines("stderr", &result.stderr.with_note());
    Ok(result)
}

/// Applies a finalizer JSON Patch; a failed `test` (someone changed the list) counts as
/// a conflict so the object is re-read.
async fn patch_finalizers(
    ctx: &Context,
    object: &Value,
    patch: Value,
    action: &'static str,
) -> Result<Value, ReconcileError> {
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| ReconcileError::Api {
            action,
            source: kube::Error::SerdeError(e),
        })?;
    let api = ctx.api_for(object);
    let params = PatchParams::default();
    match api
        .patch(
            text(object, "/metadata/name"),
            &params,
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(updated) => Ok(object_value(&updated, &ctx.resource)),
        Err(kube::Error::Api(status)) if status.code == 422 => Err(ReconcileError::Api {
            action,
            source: kube::Error::Api(Box::new(kube::core::Status {
                code: 409,
                ..*status
            })),
        }),
        Err(source) => Err(ReconcileError::Api { action, source }),
    }
}

async fn write(ctx: &Context, object: &Value, plan: WritePlan) -> Result<(), ReconcileError> {
    if plan.is_empty() {
        return Ok(());
    }
    let api = ctx.api_for(object);
    let name = text(object, "/metadata/name");
    let params = PostParams {
        dry_run: false,
        field_manager: Some(ctx.field_manager.clone()),
    };
    let mut resource_version = None;
    if let Some(main) = plan.main {
        let desired: DynamicObject =
            serde_json::from_value(main).map_err(|e| ReconcileError::Api {
                action: "encode object",
                source: kube::Error::SerdeError(e),
            })?;
        let updated = api
            .replace(name, &params, &desired)
            .await
            .map_err(|source| ReconcileError::Api {
                action: "update object",
                source,
            })?;
        resource_version = updated.metadata.resource_version;
        publish(
            ctx,
            object,
            EventType::Normal,
            "Updated",
            "Update",
            "script changes written",
        );
    }
    if let Some(mut status) = plan.status {
        if let Some(rv) = resource_version {
            status["metadata"]["resourceVersion"] = Value::String(rv);
        }
        let body: DynamicObject =
            serde_json::from_value(status).map_err(|e| ReconcileError::Api {
                action: "encode status",
                source: kube::Error::SerdeError(e),
            })?;
        api.replace_status(name, &params, &body)
            .await
            .map_err(|source| ReconcileError::Api {
                action: "update status",
                source,
            })?;
        publish(
            ctx,
            object,
            EventType::Normal,
            "StatusUpdated",
            "UpdateStatus",
            "script status written",
        );
    }
    Ok(())
}

/// Queues an Event on the object; it is sent in the background (see [`events`]) and a
/// failure is logged, never fatal.
fn publish(
    ctx: &Context,
    object: &Value,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    if type_ == EventType::Normal && !ctx.write_events {
        return;
    }
    let mut note = note.to_string();
    if note.len() > 1000 {
        let cut = (0..=1000)
            .rev()
            .find(|i| note.is_char_boundary(*i))
            .unwrap_or(0);
        note.truncate(cut);
    }
    let reference = ObjectReference {
        api_version: Some(ctx.resource.api_version.clone()),
        kind: Some(ctx.resource.kind.clone()),
        name: Some(text(object, "/metadata/name").to_string()),
        namespace: object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        uid: object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    };
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    // Queued, not awaited: an Event is a second API request per write, and waiting for
    // it would hold the reconcile's concurrency slot for a full round trip (it halved
    // throughput in `make bench-e2e`).
    ctx.events.send(event, reference);
}

fn log_lines(stream: &str, text: &str) {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    for line in lines.iter().take(MAX_LOGGED_LINES) {
        info!(target: "nuop::script", stream, "{line}");
    }
    if lines.len() > MAX_LOGGED_LINES {
        info!(target: "nuop::script", stream, "... {} more lines", lines.len() - MAX_LOGGED_LINES);
    }
}

/// The end of a script's stderr, for error messages and Events.
fn tail(stderr: &str) -> String {
    let trimmed = stderr.trim();
    let start = trimmed.len().saturating_sub(800);
    let start = (start..trimmed.len())
        .find(|i| trimmed.is_char_boundary(*i))
        .unwrap_or(0);
    trimmed[start..].to_string()
}

/// How long to wait between discovery attempts for a kind that does not exist yet.
pub(crate) fn discovery_retry_delay(attempt: u32) -> Duration {
    backoff::delay_after(attempt).min(Duration::from_secs(30))
}
