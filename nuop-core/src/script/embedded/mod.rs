//! The embedded executor: the Nushell engine in-process.
//!
//! Each script is parsed once into its own engine (a clone of a shared base engine that
//! holds Nushell's commands); its top level runs once; the call sites `main config`,
//! `main reconcile` and `main finalize` are parsed once. A call then evaluates one
//! pre-parsed block on a fresh stack: no parsing per event, so the engine does not grow.
//!
//! What a script can and cannot do here (each property names its test in
//! `nuop-core/tests/conformance.rs`):
//! - `exit N` ends the call with code N, never the operator
//!   (`conformance::embedded_calls_run_concurrently_and_exit_does_not_end_the_process`);
//!   `exec`, `ulimit`, `umask`
//!   and `job spawn` are refused with a message saying what to do instead
//!   (`commands_that_would_act_on_the_operator_are_refused`), see [`commands`].
//! - Output is held in memory up to the cap per stream and counted beyond it, whether
//!   `print` or an external command writes it (`a_flood_of_output_is_bounded_in_memory`),
//!   see [`output`].
//! - A call that times out *or is cancelled* (its future dropped: shutdown timeout, lost
//!   lease, a managed reload) is interrupted, and every external command it started is
//!   killed with its children (`a_cancelled_call_stops_its_loop_and_its_externals`).
//! - Loading (parsing and the top level) runs under the same interrupt, bounded by a
//!   load timeout (`a_top_level_that_hangs_is_a_load_error`).
//! - `k8s` commands run against the call's [`crate::k8s::Session`] (`CallRequest::k8s`),
//!   which a timeout or cancellation cancels too; outside a call they are refused
//!   (`k8s_embedded::commands_outside_a_call_are_refused`), see [`k8s`].
//! - Scripts see the pod's environment minus what is the operator's own business:
//!   `OTEL_*` (collector endpoints and auth headers) and `NUOP_*` other than the
//!   variables nuop sets per call (`the_operator_environment_is_not_passed_on`).
//!
//! Does I/O: external commands, their pipes, and the `/proc` scan that kills them.

mod commands;
mod convert;
pub mod k8s;
pub mod lint;
mod output;
mod print;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use nu_engine::eval_block;
use nu_protocol::debugger::WithoutDebug;
use nu_protocol::engine::{EngineState, Stack, StateWorkingSet};
use nu_protocol::{PipelineData, ShellError, Signals, Span, Value, format_cli_error};

pub use commands::{Refused, TiedExternal};
pub use convert::to_json;
pub use print::{CALL_ID_ENV, Print};

use super::capture::DEFAULT_CAPTURE_LIMIT;
use super::{CallRequest, CallResult, ExecError, LoadError, Script};
use crate::protocol::Phase;
use output::{CallOutput, Stream};
use print::CurrentCall;

/// How long a timed-out call may take to notice its interrupt before it is abandoned.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// How long loading a script (parsing and its top level) may take unless told otherwise.
pub const DEFAULT_LOAD_TIMEOUT: Duration = crate::protocol::DEFAULT_TIMEOUT;

/// The engine every script starts from: Nushell's language and shell commands, our
/// `print`, the refused commands, and the scrubbed process environment. Built once per
/// process (~1 ms).
static BASE_ENGINE: LazyLock<EngineState> = LazyLock::new(|| {
    let engine = build_base_engine();
    // The code that declared several hundred commands has run for the last time in this
    // process: its pages need not stay resident (`runtime::pages`). Here, not in
    // `build_base_engine`, which the linter calls once per script it checks.
    crate::runtime::pages::release();
    engine
});

/// Whether a variable of the operator's environment is passed on to scripts: not the
/// OpenTelemetry settings (endpoints, auth headers) nor nuop's own `NUOP_*` settings.
/// nuop sets `NUOP_CONTROLLER`, `NUOP_PHASE` and `NUOP_CALL_ID` per call itself.
pub fn passed_to_scripts(name: &str) -> bool {
    !(name.starts_with("OTEL_") || name.starts_with("NUOP_"))
}

pub(crate) fn build_base_engine() -> EngineState {
    // Nushell's `merge_env` (run when a script is loaded) would otherwise move the whole
    // process into that script's directory: the operator's working directory must not
    // depend on which script loaded last, nor vanish with a replaced git checkout.
    // Scripts get their own directory as `$env.PWD` regardless.
    nu_protocol::engine::UPDATE_CWD.store(false, std::sync::atomic::Ordering::Relaxed);
    // The network commands take rustls' provider from Nushell's own slot, not the
    // process default: the same aws-lc-rs provider the kube client uses. Setting it
    // twice (a second base engine in tests) keeps the first.
    // The closure's error type is Nushell's (large) ShellError, fixed by its API.
    #[allow(clippy::result_large_err)]
    let provider = || Ok(rustls::crypto::aws_lc_rs::default_provider());
    nu_command::tls::CRYPTO_PROVIDER.set(provider);
    let mut engine = nu_cmd_lang::create_default_context();
    engine = nu_command::add_shell_command_context(engine);
    let delta = {
        let mut working_set = StateWorkingSet::new(&engine);
        working_set.add_decl(Box::new(Print));
        working_set.add_decl(Box::new(TiedExternal));
        working_set.add_decl(Box::new(k8s::K8sHelp));
        for command in k8s::commands() {
            working_set.add_decl(Box::new(command));
        }
        for command in commands::refused() {
            working_set.add_decl(Box::new(command));
        }
        // `use nuop-k8s.nu *` (the line that makes the editor stubs of `nuop-standard
        // stubs` known to an editor) imports nothing here: the commands are built in. A
        // virtual path wins over a file of that name, so stubs beside the script never
        // shadow them (test `test_harness::k8s_commands_are_served_by_the_fake_cluster_on_both_executors`).
        let module = working_set.add_file(
            crate::k8s::module::FILE_NAME,
            b"# nuop's k8s commands are built into the embedded engine.\n",
        );
        let _ = working_set.add_virtual_path(
            crate::k8s::module::FILE_NAME.to_string(),
            nu_protocol::engine::VirtualPath::File(module),
        );
        working_set.render()
    };
    // Adding declarations to a fresh engine cannot conflict with anything.
    if let Err(e) = engine.merge_delta(delta) {
        tracing::error!("failed to register nuop's commands in the embedded engine: {e}");
    }
    for (key, value) in std::env::vars().filter(|(k, _)| passed_to_scripts(k)) {
        engine.add_env_var(key, Value::string(value, Span::unknown()));
    }
    // Error text goes to logs and Events, where colour codes are noise.
    let mut config = (**engine.get_config()).clone();
    config.use_ansi_coloring = nu_protocol::UseAnsiColoring::False;
    engine.set_config(config);
    engine.generate_nu_constant();
    engine
}

/// A script parsed into its own engine, ready for concurrent calls.
pub struct EmbeddedScript {
    script: Script,
    /// The engine with the script's definitions merged in; slots are cloned from it.
    engine: EngineState,
    /// Pre-parsed call sites; `None` when the script lacks that subcommand.
    calls: HashMap<Phase, Option<Arc<nu_protocol::ast::Block>>>,
    /// Idle engine clones, each with its own interrupt flag, reused across calls.
    pool: Mutex<Vec<Slot>>,
}

/// One engine clone whose interrupt flag belongs to the call using it.
struct Slot {
    engine: EngineState,
    interrupt: Arc<AtomicBool>,
}

impl EmbeddedScript {
    /// Parses `script`, runs its top level once and pre-parses its call sites, within
    /// [`DEFAULT_LOAD_TIMEOUT`].
    ///
    /// # Errors
    /// See [`EmbeddedScript::load_within`].
    pub fn load(script: &Script) -> Result<Self, LoadError> {
        Self::load_within(script, DEFAULT_LOAD_TIMEOUT)
    }

    /// Parses `script`, runs its top level once and pre-parses its call sites. Parsing
    /// and the top level run under an interrupt flag that a watchdog sets after
    /// `timeout` (killing the external commands the top level started, too).
    ///
    /// # Errors
    /// [`LoadError::Syntax`] with file, line and Nushell's message when the script does not
    /// parse; [`LoadError::Eval`] when its top level fails; [`LoadError::Timeout`] when
    /// loading outlives `timeout`.
    pub fn load_within(script: &Script, timeout: Duration) -> Result<Self, LoadError> {
        let source = std::fs::read(&script.entry).map_err(|source| LoadError::Read {
            path: script.entry.clone(),
            source,
        })?;
        let mut engine = BASE_ENGINE.clone();
        let interrupt = Arc::new(AtomicBool::new(false));
        // Set before parsing: `const` expressions are evaluated by the parser.
        engine.set_signals(Signals::new(interrupt.clone()));
        engine.file = Some(script.entry.clone());
        let dir = Value::string(script.dir.to_string_lossy(), Span::unknown());
        engine.add_env_var("PWD".into(), dir.clone());
        engine.add_env_var("FILE_PWD".into(), dir);
        engine.add_env_var(
            "CURRENT_FILE".into(),
            Value::string(script.entry.to_string_lossy(), Span::unknown()),
        );

        let id = next_call_id();
        let output = Arc::new(CallOutput::new(DEFAULT_CAPTURE_LIMIT));
        let watchdog = Watchdog::start(timeout, interrupt.clone(), id.clone());
        let scope = print::enter(CurrentCall {
            id: id.clone(),
            output: output.clone(),
        });
        let loaded = Self::parse_and_run(script, engine, &source, &id);
        drop(scope);
        let fired = watchdog.stop();
        let (stdout, stderr) = output.finish();
        for (stream, captured) in [("stdout", stdout), ("stderr", stderr)] {
            for line in captured
                .with_note()
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                tracing::info!(target: "nuop::script", script = %script.name, stream, "{line}");
            }
        }
        if fired {
            return Err(LoadError::Timeout {
                path: script.entry.clone(),
                after: timeout,
            });
        }
        let mut loaded = loaded?;
        // Calls get a fresh interrupt flag per slot; the load's flag is done.
        loaded.engine.set_signals(Signals::empty());
        Ok(loaded)
    }

    fn parse_and_run(
        script: &Script,
        mut engine: EngineState,
        source: &[u8],
        id: &str,
    ) -> Result<Self, LoadError> {
        let file_name = script.entry.to_string_lossy().into_owned();
        let top_level = parse_into(&mut engine, &file_name, source)?;

        // Top-level statements (`use`, `const`, `$env.X = ...`) run once, as `nu mod.nu`
        // would run them before `main`.
        let mut stack = new_stack(id).map_err(|e| LoadError::Eval {
            path: script.entry.clone(),
            message: format!("cannot set up the script's output: {e}"),
        })?;
        let run = match eval_block::<WithoutDebug>(
            &engine,
            &mut stack,
            &top_level,
            PipelineData::empty(),
        ) {
            Ok(data) => data.body.drain(),
            Err(error) => Err(error),
        };
        if let Err(error) = run {
            return Err(LoadError::Eval {
                path: script.entry.clone(),
                message: render_error(&engine, &error),
            });
        }
        if let Err(error) = engine.merge_env(&mut stack) {
            return Err(LoadError::Eval {
                path: script.entry.clone(),
                message: render_error(&engine, &error),
            });
        }
        // The per-call variables of the load must not become the script's defaults.
        engine.add_env_var(CALL_ID_ENV.into(), Value::string("", Span::unknown()));

        let mut calls = HashMap::new();
        for phase in Phase::ALL {
            let name = format!("main {phase}");
            let block = if engine.find_decl(name.as_bytes(), &[]).is_some() {
                Some(parse_into(&mut engine, "<nuop call>", name.as_bytes())?)
            } else {
                None
            };
            calls.insert(phase, block);
        }

        Ok(Self {
            script: script.clone(),
            engine,
            calls,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The script this runs.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Whether the script defines `main <phase>`.
    pub fn has_phase(&self, phase: Phase) -> bool {
        self.calls.get(&phase).is_some_and(Option::is_some)
    }

    /// Runs one call on a blocking thread, bounded by the request's timeout. Dropping
    /// the returned future (cancellation) interrupts the evaluation and kills the
    /// external commands it started, exactly as a timeout does.
    ///
    /// # Errors
    /// [`ExecError::MissingPhase`] when the script lacks the subcommand,
    /// [`ExecError::Timeout`] when the call outlives its timeout.
    pub async fn call(self: &Arc<Self>, request: CallRequest) -> Result<CallResult, ExecError> {
        let block = self
            .calls
            .get(&request.phase)
            .cloned()
            .flatten()
            .ok_or_else(|| ExecError::MissingPhase {
                script: self.script.name.clone(),
                phase: request.phase,
            })?;
        let output = Arc::new(CallOutput::new(DEFAULT_CAPTURE_LIMIT));
        let slot = self.checkout();
        let call_id = next_call_id();
        let (phase, timeout) = (request.phase, request.timeout);
        // From here on, leaving this function early — timeout, or the future dropped —
        // stops the evaluation and its externals.
        let mut stop = StopOnDrop {
            interrupt: slot.interrupt.clone(),
            call_id: call_id.clone(),
            session: request.k8s.clone(),
            armed: true,
        };

        let this = Arc::clone(self);
        let task_output = output.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let _live = LiveEvaluation::enter();
            let outcome = evaluate(&slot.engine, &block, &request, &call_id, task_output);
            (slot, outcome)
        });

        let joined = match tokio::time::timeout(timeout, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                stop.now();
                // Give the evaluation a moment to notice; its slot is dropped either way,
                // because its engine may still be running.
                let _ = tokio::time::timeout(INTERRUPT_GRACE, &mut task).await;
                return Err(ExecError::Timeout {
                    script: this.script.name.clone(),
                    phase,
                    after: timeout,
                    stderr: output.snapshot(Stream::Stderr),
                });
            }
        };
        stop.armed = false;
        let (slot, outcome) = joined.map_err(|e| ExecError::Engine {
            script: this.script.name.clone(),
            reason: format!("evaluation thread failed: {e}"),
        })?;
        let (code, returned, stdout, stderr) = match outcome {
            Evaluated::Finished {
                code,
                returned,
                stdout,
                stderr,
            } => (code, returned, stdout, stderr),
            Evaluated::Interrupted { stderr } => {
                return Err(ExecError::Timeout {
                    script: this.script.name.clone(),
                    phase,
                    after: timeout,
                    stderr,
                });
            }
        };
        this.checkin(slot);
        Ok(CallResult {
            code,
            stdout,
            stderr,
            returned,
        })
    }

    fn checkout(&self) -> Slot {
        let idle = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        idle.unwrap_or_else(|| {
            let mut engine = self.engine.clone();
            let interrupt = Arc::new(AtomicBool::new(false));
            engine.set_signals(Signals::new(interrupt.clone()));
            Slot { engine, interrupt }
        })
    }

    fn checkin(&self, slot: Slot) {
        slot.interrupt.store(false, Ordering::SeqCst);
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(slot);
    }
}

/// Stops a call that did not finish: sets its interrupt flag and kills its externals.
/// Armed for the whole call, so dropping the call's future does the same as a timeout.
struct StopOnDrop {
    interrupt: Arc<AtomicBool>,
    call_id: Arc<str>,
    /// The call's `k8s` commands: cancelled with it, so one waiting on the API returns.
    session: Option<Arc<crate::k8s::Session>>,
    armed: bool,
}

impl StopOnDrop {
    fn now(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        // The flag first: a k8s command woken by the cancel sees the call interrupted.
        self.interrupt.store(true, Ordering::SeqCst);
        if let Some(session) = &self.session {
            session.cancel();
        }
        let call_id = self.call_id.clone();
        // The /proc scan reads files: not on an async worker. A plain thread rather than
        // the runtime's blocking pool, which refuses new work while the runtime shuts
        // down — exactly when cancelled calls are dropped.
        let spawned = std::thread::Builder::new().name("nuop-kill".into()).spawn({
            let call_id = call_id.clone();
            move || kill_call_processes(&call_id)
        });
        if spawned.is_err() {
            kill_call_processes(&call_id);
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.now();
    }
}

/// Interrupts a load that outlives its timeout, from a thread of its own (the load
/// runs on the caller's thread, which may be any thread).
struct Watchdog {
    cancel: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl Watchdog {
    fn start(timeout: Duration, interrupt: Arc<AtomicBool>, id: Arc<str>) -> Self {
        let (cancel, cancelled) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nuop-load-watchdog".into())
            .spawn(move || match cancelled.recv_timeout(timeout) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    interrupt.store(true, Ordering::SeqCst);
                    kill_call_processes(&id);
                    true
                }
                _ => false,
            })
            .ok();
        Self { cancel, thread }
    }

    /// Stops the watchdog; whether it had fired.
    fn stop(mut self) -> bool {
        let _ = self.cancel.send(());
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    }
}

/// Counts evaluations still running on their threads, for tests that must show an
/// interrupted call really ended rather than being abandoned.
static LIVE_EVALUATIONS: AtomicUsize = AtomicUsize::new(0);

/// How many embedded evaluations are running right now (finished or not, counted until
/// their thread returns).
pub fn live_evaluations() -> usize {
    LIVE_EVALUATIONS.load(Ordering::SeqCst)
}

struct LiveEvaluation;

impl LiveEvaluation {
    fn enter() -> Self {
        LIVE_EVALUATIONS.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for LiveEvaluation {
    fn drop(&mut self) {
        LIVE_EVALUATIONS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fresh stack whose stdout and stderr are the output placeholder, carrying `id`.
fn new_stack(id: &str) -> std::io::Result<Stack> {
    let mut stack = Stack::new()
        .stdout_file(output::placeholder()?)
        .stderr_file(output::placeholder()?);
    stack.add_env_var(CALL_ID_ENV.into(), Value::string(id, Span::unknown()));
    Ok(stack)
}

/// Parses `source` into `engine`, failing with file, line and Nushell's message.
fn parse_into(
    engine: &mut EngineState,
    file_name: &str,
    source: &[u8],
) -> Result<Arc<nu_protocol::ast::Block>, LoadError> {
    let mut working_set = StateWorkingSet::new(engine);
    let block = nu_parser::parse(&mut working_set, Some(file_name), source, false);
    let first_error: Option<(Span, &dyn miette::Diagnostic)> = working_set
        .parse_errors
        .first()
        .map(|e| (e.span(), e as &dyn miette::Diagnostic))
        .or_else(|| {
            working_set
                .compile_errors
                .first()
                .map(|e| (label_span(e), e as &dyn miette::Diagnostic))
        });
    if let Some((span, error)) = first_error {
        let (path, line) = locate(&working_set, span, file_name);
        return Err(LoadError::Syntax {
            path: path.into(),
            line,
            message: format_cli_error(None, &working_set, error, None),
        });
    }
    // Deprecations and the like: said once per load (a reload is a new load), where
    // `nu` would repeat them on every call.
    for warning in &working_set.parse_warnings {
        let (path, line) = locate(&working_set, warning.span(), file_name);
        tracing::warn!(target: "nuop::script", "{path}:{line}: nushell warning: {warning}");
    }
    let delta = working_set.render();
    engine.merge_delta(delta).map_err(|e| LoadError::Eval {
        path: Path::new(file_name).to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(block)
}

/// The span of a diagnostic's first label (compile errors carry no `span()`).
fn label_span(error: &dyn miette::Diagnostic) -> Span {
    error
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|l| Span::new(l.offset(), l.offset() + l.len()))
        .unwrap_or_else(Span::unknown)
}

/// Finds the file and 1-based line a span points into.
fn locate(working_set: &StateWorkingSet, span: Span, fallback: &str) -> (String, usize) {
    working_set
        .files()
        .find(|f| f.covered_span.start <= span.start && span.start <= f.covered_span.end)
        .map(|f| {
            let offset = (span.start - f.covered_span.start).min(f.content.len());
            let line = f.content[..offset].iter().filter(|b| **b == b'\n').count() + 1;
            (f.name.to_string(), line)
        })
        .unwrap_or_else(|| (fallback.to_string(), 1))
}

fn render_error(engine: &EngineState, error: &ShellError) -> String {
    let working_set = StateWorkingSet::new(engine);
    format_cli_error(None, &working_set, error, None)
}

enum Evaluated {
    Finished {
        code: i32,
        returned: Option<serde_json::Value>,
        stdout: super::Captured,
        stderr: super::Captured,
    },
    Interrupted {
        stderr: super::Captured,
    },
}

enum Returned {
    Nothing,
    Text(String),
    Structured(serde_json::Value),
}

/// Evaluates one pre-parsed call on a fresh stack. Runs on a blocking thread.
fn evaluate(
    engine: &EngineState,
    block: &nu_protocol::ast::Block,
    request: &CallRequest,
    call_id: &Arc<str>,
    output: Arc<CallOutput>,
) -> Evaluated {
    let scope = print::enter(CurrentCall {
        id: call_id.clone(),
        output: output.clone(),
    });
    let k8s_scope = request
        .k8s
        .clone()
        .map(|session| k8s::enter(call_id.clone(), session));
    let result = run_block(engine, block, request, call_id, &output);
    drop(k8s_scope);
    drop(scope);
    let (mut stdout, stderr) = output.finish();
    match result {
        None => Evaluated::Interrupted { stderr },
        Some((code, Returned::Nothing)) => Evaluated::Finished {
            code,
            returned: None,
            stdout,
            stderr,
        },
        Some((code, Returned::Text(text))) => {
            // A returned string is what `nu mod.nu` would print: part of stdout.
            if !stdout.truncated {
                stdout.text.push_str(&text);
                stdout.text.push('\n');
                stdout.total_bytes += text.len() as u64 + 1;
            }
            Evaluated::Finished {
                code,
                returned: None,
                stdout,
                stderr,
            }
        }
        Some((code, Returned::Structured(json))) => Evaluated::Finished {
            code,
            returned: Some(json),
            stdout,
            stderr,
        },
    }
}

/// Runs the block; `None` when it was interrupted.
fn run_block(
    engine: &EngineState,
    block: &nu_protocol::ast::Block,
    request: &CallRequest,
    call_id: &str,
    output: &CallOutput,
) -> Option<(i32, Returned)> {
    let mut stack = match new_stack(call_id) {
        Ok(stack) => stack,
        Err(e) => {
            output.write(
                Stream::Stderr,
                format!("nuop: cannot set up the call's output: {e}\n").as_bytes(),
            );
            return Some((1, Returned::Nothing));
        }
    };
    let span = Span::unknown();
    stack.add_env_var(
        "NUOP_CONTROLLER".into(),
        Value::string(&request.controller, span),
    );
    stack.add_env_var(
        "NUOP_PHASE".into(),
        Value::string(request.phase.as_str(), span),
    );
    let input = match &request.input {
        Some(text) => PipelineData::value(Value::string(text.as_str(), span), None),
        None => PipelineData::empty(),
    };

    let result = match eval_block::<WithoutDebug>(engine, &mut stack, block, input) {
        Ok(data) => data.body.into_value(span),
        Err(error) => Err(error),
    };
    match result {
        Ok(value) => Some((
            0,
            match value {
                Value::Nothing { .. } => Returned::Nothing,
                Value::String { val, .. } => Returned::Text(val),
                Value::Record { .. } | Value::List { .. } => {
                    Returned::Structured(to_json(&value, &stack.get_config(engine)))
                }
                other => Returned::Text(other.to_expanded_string("\n", &stack.get_config(engine))),
            },
        )),
        Err(ShellError::Exit { code, .. }) => Some((code, Returned::Nothing)),
        Err(_) if engine.signals().interrupted() => None,
        Err(error) => {
            let code = error.exit_code().unwrap_or(1);
            // An external's non-zero exit already said why on its own stderr.
            if !matches!(error, ShellError::NonZeroExitCode { .. }) {
                output.write(
                    Stream::Stderr,
                    format!("{}\n", render_error(engine, &error)).as_bytes(),
                );
            }
            Some((code, Returned::Nothing))
        }
    }
}

/// Ids unique per process and across processes (the pid is part of them), so killing
/// a timed-out call's externals does not hit another call's (test
/// `safety::a_rewritten_call_id_reaches_no_other_call`); 64 bits of each are keyed
/// by a per-process secret, so a script cannot guess another call's id.
fn next_call_id() -> Arc<str> {
    use std::hash::BuildHasher;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static SECRET: LazyLock<std::collections::hash_map::RandomState> =
        LazyLock::new(std::collections::hash_map::RandomState::new);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{:016x}", std::process::id(), SECRET.hash_one(n)).into()
}

/// Kills every process whose environment carries this call's id — the externals the
/// call started — and every descendant of those (children that cleaned their
/// environment further down, `sh -c 'env -i cmd; ...'`). An external that execs itself
/// with a cleared environment (`^env -i cmd`) is not found. The interrupt flag alone
/// does not stop an external that
/// is already running. Reads `/proc`: call it off the async workers.
fn kill_call_processes(call_id: &str) {
    let needle = format!("{CALL_ID_ENV}={call_id}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut parents: Vec<(i32, i32)> = Vec::new();
    let mut tagged: Vec<i32> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parent_pid)
        {
            parents.push((pid, ppid));
        }
        if std::fs::read(entry.path().join("environ")).is_ok_and(|environ| {
            environ
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        }) {
            tagged.push(pid);
        }
    }
    for pid in with_descendants(&tagged, &parents) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The parent pid in a `/proc/<pid>/stat` line (the field after the parenthesised
/// command name, which may itself contain spaces and parentheses).
fn parent_pid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `roots` and every process below them, given (pid, parent) pairs.
fn with_descendants(roots: &[i32], parents: &[(i32, i32)]) -> Vec<i32> {
    let mut found: Vec<i32> = roots.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        for &(pid, ppid) in parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_survives_odd_command_names() {
        assert_eq!(parent_pid("42 (a b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parent_pid("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_pid("garbage"), None);
    }

    #[test]
    fn descendants_are_found_transitively() {
        let parents = [(10, 1), (11, 10), (12, 11), (20, 1), (13, 10)];
        let mut found = with_descendants(&[10], &parents);
        found.sort_unstable();
        assert_eq!(found, vec![10, 11, 12, 13]);
        assert_eq!(with_descendants(&[], &parents), Vec::<i32>::new());
    }

    #[test]
    fn call_ids_are_unique_and_not_sequential_guesses() {
        let a = next_call_id();
        let b = next_call_id();
        assert_ne!(a, b);
        let pid = std::process::id();
        assert!(a.starts_with(&format!("{pid}-")));
        // The random part differs even between consecutive ids.
        assert_ne!(a.rsplit('-').next(), b.rsplit('-').next());
    }

    #[test]
    fn operator_settings_are_not_passed_to_scripts() {
        assert!(!passed_to_scripts("OTEL_EXPORTER_OTLP_HEADERS"));
        assert!(!passed_to_scripts("NUOP_NU"));
        assert!(passed_to_scripts("PATH"));
        assert!(passed_to_scripts("HTTPS_PROXY"));
    }
}
