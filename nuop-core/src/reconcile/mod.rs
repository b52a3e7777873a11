//! The reconcile pipeline for one script's objects, as small steps:
//! finalizer phase → run the script → write back → record the outcome.
//!
//! Does I/O (script calls, and through its modules API calls and Events). Each noun has
//! its own module: [`finalizer`] (the phase and the finalizer patches), [`write`] (an
//! answer → merge patches → requests), [`release`] (objects that left the selectors),
//! [`events`] (the Event queue), [`error`] (what a failure means for a retry) and
//! [`backoff`] (per-object delays). Every decision is a pure function in one of them.

pub mod backoff;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod release;
pub mod write;

use std::sync::Arc;

use kube::api::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::{Instrument, info, warn};

use crate::controller::ControllerOptions;
use crate::metrics::{GaugeGuard, METRICS, ReconcileOutcome};
use crate::protocol::{
    Outcome, Phase, ScriptConfig, ScriptOutput, check_identity, classify_changed, classify_output,
};
use crate::script::{CallRequest, CallResult, ScriptRunner};

pub use backoff::Backoff;
use error::is_not_found;
pub use error::{ReconcileError, Retry};
use events::{EventQueue, publish};
use finalizer::{Step, add_finalizer_patch, next_step, patch_finalizers, remove_finalizer_patch};
use write::{check_answer, plan_write, write};

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
    /// Per-object failure counts, keyed by the object's UID (a re-created object starts
    /// afresh).
    pub backoff: Backoff<String>,
    /// Field manager for writes.
    pub field_manager: String,
    /// Whether successful writes emit Normal Events (warnings always do).
    pub write_events: bool,
    /// `--concurrency` permits, shared by every namespace's watch and by releases, so
    /// the controller runs at most that many script calls at once however many
    /// namespaces it lists.
    pub permits: Arc<Semaphore>,
    /// What the script's `k8s` commands run against; none until the controller sets one
    /// (`with_cluster`).
    pub cluster: Option<Arc<dyn crate::cluster::Cluster>>,
    /// Records the write-back, status and finalizer writes ([`crate::audit`]); off until
    /// the controller sets one (`with_audit`).
    pub audit: crate::audit::Auditor,
    /// The versions this controller's write-backs left its primaries at, so that their
    /// own watch events are not reconciled again (the rule: `cluster::echo`).
    pub write_echoes: Arc<crate::cluster::echo::Echoes>,
    /// Where this controller's reconciles are recorded for the console; none when the
    /// console is off.
    pub console: Option<Arc<crate::console::Entry>>,
}

tokio::task_local! {
    /// The log lines and outcome of the reconcile running in this task, gathered for
    /// the console (set only while the console is on).
    static CAPTURE: std::cell::RefCell<crate::console::journal::Capture>;
}

/// Adds a script's log lines to the console's capture of the running reconcile, if any.
fn capture_lines(text: &str) {
    let _ = CAPTURE.try_with(|c| c.borrow_mut().add(text));
}

/// Counts a finished reconcile in `nuop_reconciles_total` and notes the outcome for
/// the console's record of it.
fn count(controller: &str, outcome: ReconcileOutcome) {
    METRICS.count_reconcile(controller, outcome);
    let _ = CAPTURE.try_with(|c| c.borrow_mut().outcome = Some(outcome.label()));
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
        options: &ControllerOptions,
    ) -> Self {
        let reporter = Reporter {
            controller: format!("nuop-{}", config.name),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            field_manager: format!("nuop-{}", config.name),
            events: EventQueue::spawn(&config.name, Recorder::new(client.clone(), reporter)),
            backoff: Backoff::new(
                backoff::BASE_DELAY,
                Some(METRICS.backoff.with_label_values(&[config.name.as_str()])),
            ),
            write_events: options.write_events,
            permits: Arc::new(Semaphore::new(usize::from(options.concurrency.max(1)))),
            config,
            runner,
            client,
            resource,
            namespaced,
            has_status,
            cluster: None,
            audit: crate::audit::Auditor::default(),
            write_echoes: crate::cluster::echo::Echoes::new(),
            console: None,
        }
    }

    /// The same context recording its reconciles into `entry` (the console).
    #[must_use]
    pub fn with_console(self, entry: Option<Arc<crate::console::Entry>>) -> Self {
        Self {
            console: entry,
            ..self
        }
    }

    /// The same context with its writes recorded by `audit`.
    #[must_use]
    pub fn with_audit(self, audit: crate::audit::Auditor) -> Self {
        Self { audit, ..self }
    }

    /// The same context with `k8s` commands served by `cluster`.
    #[must_use]
    pub fn with_cluster(self, cluster: Arc<dyn crate::cluster::Cluster>) -> Self {
        Self {
            cluster: Some(cluster),
            ..self
        }
    }

    /// The same context with retry delays starting at `base` instead of
    /// [`backoff::BASE_DELAY`] (tests of many retries use a short one).
    #[must_use]
    pub fn with_backoff_base(self, base: std::time::Duration) -> Self {
        let size = METRICS
            .backoff
            .with_label_values(&[self.config.name.as_str()]);
        Self {
            backoff: Backoff::new(base, Some(size)),
            ..self
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

/// The key an object's backoff is tracked under: its UID, or namespace/name for the
/// rare object without one.
pub(crate) fn object_key(object: &Value) -> String {
    match text(object, "/metadata/uid") {
        "" => format!(
            "{}/{}",
            text(object, "/metadata/namespace"),
            text(object, "/metadata/name")
        ),
        uid => uid.to_string(),
    }
}

pub(crate) fn text<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The object as the script sees it: JSON with apiVersion and kind filled in (list
/// responses leave them out) and without `managedFields` (the watch drops them too, so
/// an object re-read after a conflict looks the same as one from the watch).
pub fn object_value(object: &DynamicObject, resource: &ApiResource) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            Value::String(resource.api_version.clone()),
        );
        map.insert("kind".into(), Value::String(resource.kind.clone()));
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
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
        let namespace = text(&value, "/metadata/namespace");
        let name = text(&value, "/metadata/name");
        // Why it runs, taken before it waits for a permit: an event arriving meanwhile
        // is the reason for the next reconcile, not this one.
        let trigger = ctx
            .console
            .as_ref()
            .map(|entry| entry.begin(namespace, name, ctx.backoff.failures(&key)));
        // The semaphore is never closed; a closed one would only mean no limit.
        let _permit = ctx.permits.acquire().await.ok();
        // Decremented when dropped, also when the reconcile is aborted (shutdown).
        let _in_flight = GaugeGuard::inc(METRICS.in_flight.with_label_values(&[controller]));
        let timer = METRICS
            .reconcile_duration
            .with_label_values(&[controller])
            .start_timer();
        let started = (std::time::SystemTime::now(), std::time::Instant::now());
        let run = async {
            match reconcile_with_retries(value.clone(), &ctx).await {
                // Deleted while we worked on it: nothing left to do or to warn about.
                Err(error) if error.retry() == Retry::Gone => {
                    info!("the object is gone ({error})");
                    Ok(Action::await_change())
                }
                other => other,
            }
        };
        let (result, capture) = if ctx.console.is_some() {
            CAPTURE
                .scope(std::cell::RefCell::default(), async {
                    let result = run.await;
                    (result, CAPTURE.with(std::cell::RefCell::take))
                })
                .await
        } else {
            (run.await, crate::console::journal::Capture::default())
        };
        timer.observe_duration();
        if let (Some(entry), Some(trigger)) = (&ctx.console, trigger) {
            entry.finish(crate::console::Finished {
                namespace,
                name,
                trigger,
                started: started.0,
                duration: started.1.elapsed(),
                capture,
                error: result.as_ref().err().map(|e| (e.category(), e.to_string())),
            });
        }
        match &result {
            Ok(_) => ctx.backoff.succeeded(&key),
            Err(error) => {
                METRICS.count_reconcile(controller, ReconcileOutcome::Error);
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
pub(crate) fn object_span(ctx: &Context, object: &Value) -> tracing::Span {
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

/// What kube-runtime does after a failed reconcile: permanent problems wait for the
/// object (or script) to change and keep no backoff; everything else retries with
/// per-object exponential backoff, keyed by UID.
pub fn error_policy(
    object: Arc<DynamicObject>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = object.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            object.metadata.namespace.as_deref().unwrap_or_default(),
            object.metadata.name.as_deref().unwrap_or_default()
        )
    });
    match error.retry() {
        Retry::Permanent | Retry::Gone => {
            ctx.backoff.succeeded(&key);
            Action::await_change()
        }
        Retry::Conflict | Retry::Transient => Action::requeue(ctx.backoff.failed(key)),
    }
}

async fn reconcile_with_retries(
    mut current: Value,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    for _ in 0..MAX_CONFLICT_RETRIES {
        match reconcile_once(&current, ctx).await {
            Err(error) if error.retry() == Retry::Conflict => {
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
                crate::audit::Verb::AddFinalizer,
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
    let outcome = Outcome::from_exit_code(result.code);
    match outcome {
        Outcome::NoChange => {
            log_stdout(&result);
            count(&ctx.config.name, outcome.into());
            Ok(Action::requeue(ctx.config.requeue_after_noop))
        }
        Outcome::Failed(code) => Err(script_failed(code, &result)),
        Outcome::Changed => {
            match classify_changed(&result.stdout, result.returned.as_ref())? {
                ScriptOutput::Object(desired) => {
                    check_identity(object, &desired)?;
                    check_answer(object, &desired, ctx.config.finalizer.as_deref())?;
                    let plan = plan_write(object, &desired, ctx.has_status);
                    write(ctx, object, plan).await?;
                }
                ScriptOutput::Logs(text) => log_lines("stdout", &text),
                ScriptOutput::Empty => {}
            }
            count(&ctx.config.name, outcome.into());
            Ok(Action::requeue(ctx.config.requeue_after_change))
        }
    }
}

pub(crate) async fn run_finalize(object: &Value, ctx: &Context) -> Result<Action, ReconcileError> {
    let result = call_script(ctx, Phase::Finalize, object).await?;
    if let Outcome::Failed(code) = Outcome::from_exit_code(result.code) {
        return Err(script_failed(code, &result));
    }
    log_stdout(&result);
    let Some(finalizer) = ctx.config.finalizer.as_deref() else {
        return Ok(Action::await_change());
    };
    if let Some(patch) = remove_finalizer_patch(object, finalizer) {
        match patch_finalizers(ctx, object, patch, crate::audit::Verb::RemoveFinalizer).await {
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
    count(&ctx.config.name, ReconcileOutcome::Finalized);
    Ok(Action::await_change())
}

async fn call_script(
    ctx: &Context,
    phase: Phase,
    object: &Value,
) -> Result<CallResult, ReconcileError> {
    let executor = ctx.runner.kind().as_str();
    let k8s = session_for(ctx, object);
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
            k8s,
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

/// The `k8s` session of one reconcile/finalize call of `object`, when the controller
/// has a cluster: the object as primary, the config's `owns`, and the call's timeout
/// as its deadline.
fn session_for(ctx: &Context, object: &Value) -> Option<Arc<crate::k8s::Session>> {
    let cluster = ctx.cluster.clone()?;
    Some(crate::k8s::Session::new(crate::k8s::SessionParts {
        controller: ctx.config.name.clone(),
        primary: object.clone(),
        owns: ctx.config.owns.clone(),
        cluster,
        runtime: tokio::runtime::Handle::current(),
        deadline: std::time::Instant::now() + ctx.config.timeout,
    }))
}

/// Logs what a call printed to stdout when it is not a desired object to write (exit
/// 0, an error exit, `finalize`): log lines as lines; an object only by its kind and
/// name, since it may be a Secret. Returns whether stdout held an object.
fn log_stdout(result: &CallResult) -> bool {
    match classify_output(&result.stdout.text, result.returned.as_ref()) {
        Ok(ScriptOutput::Logs(_)) | Err(_) => log_lines("stdout", &result.stdout.with_note()),
        Ok(ScriptOutput::Object(object)) => {
            // Only the kind and name reach the console too: the object may be a Secret.
            capture_lines(&format!(
                "[nuop: printed an object ({} {}) with exit code {}: not written]",
                object["kind"].as_str().unwrap_or("?"),
                object["metadata"]["name"].as_str().unwrap_or("?"),
                result.code
            ));
            info!(
                target: "nuop::script",
                stream = "stdout",
                "printed an object ({} {}) with exit code {}: not written (only exit 2 writes)",
                object["kind"].as_str().unwrap_or("?"),
                object["metadata"]["name"].as_str().unwrap_or("?"),
                result.code
            );
            return true;
        }
        Ok(ScriptOutput::Empty) => {}
    }
    false
}

/// The error of a call that exited with an error code: its stderr's tail, and its
/// stdout's unless that is an object (which may hold Secret data), for the Event.
fn script_failed(code: i32, result: &CallResult) -> ReconcileError {
    let stdout = if log_stdout(result) {
        String::new()
    } else {
        tail(&result.stdout.text)
    };
    ReconcileError::ScriptFailed {
        code,
        stderr: tail(&result.stderr.text),
        stdout,
    }
}

fn log_lines(stream: &str, text: &str) {
    capture_lines(text);
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
