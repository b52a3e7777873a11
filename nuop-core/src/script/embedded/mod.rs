//! The embedded executor: the Nushell engine in-process.
//!
//! Each script is parsed once into its own engine (a clone of a shared base engine that
//! holds Nushell's commands); its top level runs once; the call sites `main config`,
//! `main reconcile` and `main finalize` are parsed once. A call then evaluates one
//! pre-parsed block on a fresh stack: no parsing per event, so the engine does not grow.
//!
//! Does I/O: each call's stdout and stderr go to two unlinked temporary files (external
//! commands write to them directly, `print` through [`print::Print`]). `exit N` ends the
//! call with code N, never the operator. On timeout the call's interrupt flag stops
//! Nushell code, and external commands the call started are killed (found by the
//! `NUOP_CALL_ID` in their environment).

mod convert;
mod print;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use nu_engine::eval_block;
use nu_protocol::debugger::WithoutDebug;
use nu_protocol::engine::{EngineState, Stack, StateWorkingSet};
use nu_protocol::{PipelineData, ShellError, Signals, Span, Value, format_cli_error};

pub use convert::to_json;
pub use print::{CALL_ID_ENV, Print};

use super::capture::DEFAULT_CAPTURE_LIMIT;
use super::{CallRequest, CallResult, Captured, ExecError, LoadError, Script};
use crate::protocol::Phase;

/// How long a timed-out call may take to notice its interrupt before it is abandoned.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// The engine every script starts from: Nushell's language and shell commands, our
/// `print`, and the process environment. Built once per process (~1 ms).
static BASE_ENGINE: LazyLock<EngineState> = LazyLock::new(build_base_engine);

fn build_base_engine() -> EngineState {
    // Nushell's `merge_env` (run when a script is loaded) would otherwise move the whole
    // process into that script's directory: the operator's working directory must not
    // depend on which script loaded last, nor vanish with a replaced git checkout.
    // Scripts get their own directory as `$env.PWD` regardless.
    nu_protocol::engine::UPDATE_CWD.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut engine = nu_cmd_lang::create_default_context();
    engine = nu_command::add_shell_command_context(engine);
    let delta = {
        let mut working_set = StateWorkingSet::new(&engine);
        working_set.add_decl(Box::new(Print));
        working_set.render()
    };
    // Adding one declaration to a fresh engine cannot conflict with anything.
    if let Err(e) = engine.merge_delta(delta) {
        tracing::error!("failed to register print in the embedded engine: {e}");
    }
    for (key, value) in std::env::vars() {
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
    /// Parses `script`, runs its top level once and pre-parses its call sites.
    ///
    /// # Errors
    /// [`LoadError::Syntax`] with file, line and Nushell's message when the script does not
    /// parse; [`LoadError::Eval`] when its top level fails.
    pub fn load(script: &Script) -> Result<Self, LoadError> {
        let source = std::fs::read(&script.entry).map_err(|source| LoadError::Read {
            path: script.entry.clone(),
            source,
        })?;
        let mut engine = BASE_ENGINE.clone();
        engine.file = Some(script.entry.clone());
        let dir = Value::string(script.dir.to_string_lossy(), Span::unknown());
        engine.add_env_var("PWD".into(), dir.clone());
        engine.add_env_var("FILE_PWD".into(), dir);
        engine.add_env_var(
            "CURRENT_FILE".into(),
            Value::string(script.entry.to_string_lossy(), Span::unknown()),
        );

        let file_name = script.entry.to_string_lossy().into_owned();
        let top_level = parse_into(&mut engine, &file_name, &source)?;

        // Top-level statements (`use`, `const`, `$env.X = ...`) run once, as `nu mod.nu`
        // would run them before `main`.
        let mut stack = Stack::new();
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

    /// Runs one call on a blocking thread, bounded by the request's timeout.
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
        let sinks = CallSinks::new().map_err(|e| ExecError::Engine {
            script: self.script.name.clone(),
            reason: format!("cannot create capture files: {e}"),
        })?;
        let slot = self.checkout();
        let interrupt = slot.interrupt.clone();
        let call_id = next_call_id();
        let (phase, timeout) = (request.phase, request.timeout);

        let this = Arc::clone(self);
        let task_sinks = sinks.clone();
        let task_call_id = call_id.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let outcome = evaluate(&slot.engine, &block, &request, &task_call_id, &task_sinks);
            (slot, outcome)
        });

        let joined = match tokio::time::timeout(timeout, &mut task).await {
            Ok(joined) => joined,
            Err(_) => {
                interrupt.store(true, Ordering::SeqCst);
                kill_call_processes(&call_id);
                // Give the evaluation a moment to notice; its slot is dropped either way,
                // because its engine may still be running.
                let _ = tokio::time::timeout(INTERRUPT_GRACE, &mut task).await;
                return Err(ExecError::Timeout {
                    script: this.script.name.clone(),
                    phase,
                    after: timeout,
                    stderr: sinks.read_stderr(),
                });
            }
        };
        let (slot, outcome) = joined.map_err(|e| ExecError::Engine {
            script: this.script.name.clone(),
            reason: format!("evaluation thread failed: {e}"),
        })?;
        let (code, returned) = match outcome {
            Evaluated::Finished { code, returned } => (code, returned),
            Evaluated::Interrupted => {
                return Err(ExecError::Timeout {
                    script: this.script.name.clone(),
                    phase,
                    after: timeout,
                    stderr: sinks.read_stderr(),
                });
            }
        };
        this.checkin(slot);
        let (mut stdout, stderr) = sinks.read_both();
        let returned = match returned {
            Returned::Nothing => None,
            Returned::Text(text) => {
                // A returned string is what `nu mod.nu` would print: part of stdout.
                if !stdout.truncated {
                    stdout.text.push_str(&text);
                    stdout.text.push('\n');
                    stdout.total_bytes += text.len() as u64 + 1;
                }
                None
            }
            Returned::Structured(json) => Some(json),
        };
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
    Finished { code: i32, returned: Returned },
    Interrupted,
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
    call_id: &str,
    sinks: &CallSinks,
) -> Evaluated {
    let _registration = print::register(call_id, sinks.for_print());
    let (out, err) = match (sinks.stdout.try_clone(), sinks.stderr.try_clone()) {
        (Ok(out), Ok(err)) => (out, err),
        (Err(e), _) | (_, Err(e)) => {
            sinks.write_stderr(&format!("nuop: cannot duplicate capture files: {e}\n"));
            return Evaluated::Finished {
                code: 1,
                returned: Returned::Nothing,
            };
        }
    };
    let mut stack = Stack::new().stdout_file(out).stderr_file(err);
    let span = Span::unknown();
    stack.add_env_var(
        "NUOP_CONTROLLER".into(),
        Value::string(&request.controller, span),
    );
    stack.add_env_var(
        "NUOP_PHASE".into(),
        Value::string(request.phase.as_str(), span),
    );
    stack.add_env_var(CALL_ID_ENV.into(), Value::string(call_id, span));
    let input = match &request.input {
        Some(text) => PipelineData::value(Value::string(text.as_str(), span), None),
        None => PipelineData::empty(),
    };

    let result = match eval_block::<WithoutDebug>(engine, &mut stack, block, input) {
        Ok(data) => data.body.into_value(span),
        Err(error) => Err(error),
    };
    match result {
        Ok(value) => Evaluated::Finished {
            code: 0,
            returned: match value {
                Value::Nothing { .. } => Returned::Nothing,
                Value::String { val, .. } => Returned::Text(val),
                Value::Record { .. } | Value::List { .. } => {
                    Returned::Structured(to_json(&value, &stack.get_config(engine)))
                }
                other => Returned::Text(other.to_expanded_string("\n", &stack.get_config(engine))),
            },
        },
        Err(ShellError::Exit { code, .. }) => Evaluated::Finished {
            code,
            returned: Returned::Nothing,
        },
        Err(ShellError::Interrupted { .. }) if engine.signals().interrupted() => {
            Evaluated::Interrupted
        }
        Err(error) => {
            if engine.signals().interrupted() {
                return Evaluated::Interrupted;
            }
            let code = error.exit_code().unwrap_or(1);
            // An external's non-zero exit already said why on its own stderr.
            if !matches!(error, ShellError::NonZeroExitCode { .. }) {
                sinks.write_stderr(&format!("{}\n", render_error(engine, &error)));
            }
            Evaluated::Finished {
                code,
                returned: Returned::Nothing,
            }
        }
    }
}

/// Ids unique per process and across processes (the pid is part of them), so killing
/// a timed-out call's externals never hits another call's.
fn next_call_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kills every process whose environment carries this call's id: the externals the
/// call started and their children. The interrupt flag alone does not stop an
/// external that is already running.
fn kill_call_processes(call_id: &str) {
    let needle = format!("{CALL_ID_ENV}={call_id}\0");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// One call's two capture files.
#[derive(Clone)]
struct CallSinks {
    stdout: Arc<File>,
    stderr: Arc<File>,
}

impl CallSinks {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            stdout: Arc::new(capture_file("nuop-stdout")?),
            stderr: Arc::new(capture_file("nuop-stderr")?),
        })
    }

    fn for_print(&self) -> print::Sinks {
        print::Sinks {
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        }
    }

    fn write_stderr(&self, text: &str) {
        use std::io::Write;
        let _ = (&*self.stderr).write_all(text.as_bytes());
    }

    fn read_stderr(&self) -> Captured {
        read_capped(&self.stderr)
    }

    fn read_both(&self) -> (Captured, Captured) {
        (read_capped(&self.stdout), read_capped(&self.stderr))
    }
}

/// An anonymous file for one call's output. A real file rather than a buffer, because
/// external commands the script runs write to it directly. A memfd when the kernel has
/// them: it needs no writable filesystem (the images run with a read-only root) and
/// costs less than a temporary file on disk (creating two per call was ~5 % of a busy
/// controller's CPU); otherwise an unlinked temporary file. Either way what the script
/// writes is held until the call ends and only the first `DEFAULT_CAPTURE_LIMIT` bytes
/// are read back.
fn capture_file(name: &str) -> std::io::Result<File> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    match memfd_create(name, MFdFlags::MFD_CLOEXEC) {
        Ok(fd) => Ok(File::from(fd)),
        Err(_) => tempfile::tempfile(),
    }
}

fn read_capped(file: &File) -> Captured {
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut kept = Vec::with_capacity(total.min(DEFAULT_CAPTURE_LIMIT as u64) as usize);
    let mut reader = file;
    if reader.seek(SeekFrom::Start(0)).is_ok() {
        let _ = reader
            .take(DEFAULT_CAPTURE_LIMIT as u64)
            .read_to_end(&mut kept);
    }
    Captured::from_prefix(&kept, total)
}
