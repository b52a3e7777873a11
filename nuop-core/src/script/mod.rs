//! Scripts on disk and the two executors that run them.
//!
//! A controller is a directory holding `mod.nu` with `main config`, `main reconcile` and
//! `main finalize`. [`discover`] finds them; [`ScriptRunner`] runs one phase of one
//! script with either the embedded Nushell engine (default, in-process) or a `nu` child
//! process (full isolation, compatibility). Both answer a [`CallResult`] that
//! [`crate::protocol`] interprets.

mod capture;
mod discover;
pub mod embedded;
pub mod process;
pub mod socket;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use capture::{Captured, DEFAULT_CAPTURE_LIMIT};
pub use discover::{Discovery, Skipped, discover};

use crate::protocol::{Phase, ScriptConfig, parse_config_text, parse_config_value};

/// The file every controller directory must hold.
pub const ENTRY_POINT: &str = "mod.nu";

/// A controller script found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The directory's name, used until `config` names the controller.
    pub name: String,
    /// The controller's directory.
    pub dir: PathBuf,
    /// Its entry point (`<dir>/mod.nu`).
    pub entry: PathBuf,
}

impl Script {
    /// A script rooted at `dir` with the conventional entry point.
    /// Relative paths are made absolute: the engine's `$env.PWD` and `source` need them.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let entry = dir.join(ENTRY_POINT);
        Self { name, dir, entry }
    }
}

/// Which executor runs a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    /// The Nushell engine in-process: parsed once, microseconds per call.
    #[default]
    Embedded,
    /// `nu mod.nu <phase>` as a child process per call.
    Process,
}

impl std::str::FromStr for ExecutorKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "process" => Ok(Self::Process),
            other => Err(format!(
                "unknown executor `{other}`: expected embedded or process"
            )),
        }
    }
}

impl ExecutorKind {
    /// The name used in flags and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Process => "process",
        }
    }
}

impl std::fmt::Display for ExecutorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one call needs besides the script: the phase, its input, and its limits.
#[derive(Debug, Clone)]
pub struct CallRequest {
    /// Which subcommand to run.
    pub phase: Phase,
    /// The object as JSON text (none for `config`).
    pub input: Option<String>,
    /// Controller name, exported to the script as `NUOP_CONTROLLER`.
    pub controller: String,
    /// How long the call may run before it is stopped.
    pub timeout: Duration,
    /// What the call's `k8s` commands run against; none outside reconcile/finalize or
    /// without a cluster (the commands then fail with `nuop::k8s::outside_call`).
    pub k8s: Option<Arc<crate::k8s::Session>>,
}

/// What a finished call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// The exit code (0 no change, 2 changed, other error).
    pub code: i32,
    /// Everything written to stdout, capped.
    pub stdout: Captured,
    /// Everything written to stderr (the script's log), capped.
    pub stderr: Captured,
    /// A structured value the script returned (embedded executor only).
    pub returned: Option<serde_json::Value>,
}

/// A call that did not finish with an exit code of its own.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The call ran past its limit and was stopped.
    #[error("script {script} {phase} timed out after {after:?} and was stopped")]
    Timeout {
        /// The script's name.
        script: String,
        /// The phase that ran.
        phase: Phase,
        /// The limit that was reached.
        after: Duration,
        /// What the script had printed to stderr until then.
        stderr: Captured,
    },
    /// The script does not define the subcommand.
    #[error("script {script} has no `main {phase}` command")]
    MissingPhase {
        /// The script's name.
        script: String,
        /// The missing phase.
        phase: Phase,
    },
    /// The child process could not be started or waited for.
    #[error("failed to run {program} for script {script}: {source}")]
    Spawn {
        /// The script's name.
        script: String,
        /// What was being started.
        program: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded engine could not run the call at all (setup, not the script).
    #[error("embedded engine failed for script {script}: {reason}")]
    Engine {
        /// The script's name.
        script: String,
        /// What went wrong.
        reason: String,
    },
}

impl ExecError {
    /// The script's stderr captured before the call was stopped, if any.
    pub fn stderr(&self) -> Option<&Captured> {
        match self {
            Self::Timeout { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// A script that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The entry point is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Nushell rejected the script.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file with the error.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// Nushell's rendering of the error.
        message: String,
    },
    /// Parsing and the top level did not finish within the load timeout (a top level
    /// that sleeps, loops or waits on the network).
    #[error(
        "{path}: loading the script did not finish within {after:?} (its top level hangs?) and was stopped"
    )]
    Timeout {
        /// The file.
        path: PathBuf,
        /// The load timeout.
        after: Duration,
    },
    /// The script's top level failed when evaluated once at load.
    #[error("{path}: evaluating the script failed: {message}")]
    Eval {
        /// The file.
        path: PathBuf,
        /// Nushell's rendering of the error.
        message: String,
    },
}

/// A script prepared for calls by one executor.
#[derive(Clone)]
pub enum ScriptRunner {
    /// Parsed once into an in-process engine.
    Embedded(Arc<embedded::EmbeddedScript>),
    /// Run as a child process per call.
    Process(process::ProcessScript),
}

impl ScriptRunner {
    /// Prepares `script` for `kind`: the embedded executor parses it now, so syntax errors
    /// surface at load time with file and line.
    ///
    /// # Errors
    /// [`LoadError`] when the script cannot be read or parsed.
    pub fn load(kind: ExecutorKind, script: &Script) -> Result<Self, LoadError> {
        Self::load_with(kind, script, process::nu_binary())
    }

    /// Like [`ScriptRunner::load`], with an explicit `nu` binary for the process executor.
    ///
    /// # Errors
    /// [`LoadError`] when the script cannot be read or parsed.
    pub fn load_with(kind: ExecutorKind, script: &Script, nu: PathBuf) -> Result<Self, LoadError> {
        Self::load_within(kind, script, nu, embedded::DEFAULT_LOAD_TIMEOUT)
    }

    /// Like [`ScriptRunner::load_with`], with an explicit load timeout for the embedded
    /// executor (parsing and the top level; the process executor runs nothing at load).
    /// Blocks the calling thread: async callers run it on a blocking thread
    /// ([`ScriptRunner::load_off_runtime`]).
    ///
    /// # Errors
    /// [`LoadError`] when the script cannot be read or parsed, its top level fails, or
    /// loading outlives `timeout`.
    pub fn load_within(
        kind: ExecutorKind,
        script: &Script,
        nu: PathBuf,
        timeout: Duration,
    ) -> Result<Self, LoadError> {
        match kind {
            ExecutorKind::Embedded => Ok(Self::Embedded(Arc::new(
                embedded::EmbeddedScript::load_within(script, timeout)?,
            ))),
            ExecutorKind::Process => Ok(Self::Process(process::ProcessScript::load_with(
                script, nu,
            )?)),
        }
    }

    /// [`ScriptRunner::load_within`] on a blocking thread, so that parsing and a slow
    /// top level do not occupy an async worker.
    ///
    /// # Errors
    /// As [`ScriptRunner::load_within`]; [`LoadError::Eval`] if the loading thread died.
    pub async fn load_off_runtime(
        kind: ExecutorKind,
        script: &Script,
        nu: PathBuf,
        timeout: Duration,
    ) -> Result<Self, LoadError> {
        let owned = script.clone();
        tokio::task::spawn_blocking(move || Self::load_within(kind, &owned, nu, timeout))
            .await
            .unwrap_or_else(|e| {
                Err(LoadError::Eval {
                    path: script.entry.clone(),
                    message: format!("the loading thread failed: {e}"),
                })
            })
    }

    /// Whether the script defines `main <phase>`. The embedded executor knows from the
    /// parsed script; for the process executor the source text is searched for the
    /// definition (`def "main finalize"`, quoted either way, `def --env` etc. allowed).
    pub fn has_phase(&self, phase: Phase) -> bool {
        match self {
            Self::Embedded(s) => s.has_phase(phase),
            Self::Process(s) => std::fs::read_to_string(&s.script().entry)
                .is_ok_and(|source| defines_phase(&source, phase)),
        }
    }

    /// Which executor this runner uses.
    pub fn kind(&self) -> ExecutorKind {
        match self {
            Self::Embedded(_) => ExecutorKind::Embedded,
            Self::Process(_) => ExecutorKind::Process,
        }
    }

    /// The script this runner runs.
    pub fn script(&self) -> &Script {
        match self {
            Self::Embedded(s) => s.script(),
            Self::Process(s) => s.script(),
        }
    }

    /// Runs one phase.
    ///
    /// # Errors
    /// [`ExecError`] when the call did not end with an exit code of its own.
    pub async fn call(&self, request: CallRequest) -> Result<CallResult, ExecError> {
        match self {
            Self::Embedded(s) => s.call(request).await,
            Self::Process(s) => s.call(request).await,
        }
    }

    /// Runs `config` and validates its answer.
    ///
    /// # Errors
    /// [`ConfigCallError`] when the call fails or its answer is invalid.
    pub async fn config(&self, timeout: Duration) -> Result<ScriptConfig, ConfigCallError> {
        let name = self.script().name.clone();
        let result = self
            .call(CallRequest {
                phase: Phase::Config,
                input: None,
                controller: name.clone(),
                timeout,
                k8s: None,
            })
            .await?;
        if result.code != 0 {
            return Err(ConfigCallError::Exit {
                script: name,
                code: result.code,
                stderr: result.stderr.text,
            });
        }
        let config = match &result.returned {
            Some(value) if value.is_object() => parse_config_value(&name, value)?,
            _ => parse_config_text(&name, &result.stdout.text)?,
        };
        Ok(config)
    }
}

/// Whether Nushell source text defines `main <phase>` (`def "main reconcile"`,
/// `def 'main reconcile'`, with flags such as `--env` between `def` and the name).
pub fn defines_phase(source: &str, phase: Phase) -> bool {
    let name = format!("main {phase}");
    source.lines().any(|line| {
        let mut words = line.trim_start().strip_prefix("def ").map(str::trim_start);
        while let Some(rest) = words {
            if let Some(flagged) = rest.strip_prefix("--") {
                words = flagged.split_once(' ').map(|(_, r)| r.trim_start());
                continue;
            }
            return [
                format!("\"{name}\""),
                format!("'{name}'"),
                format!("`{name}`"),
            ]
            .iter()
            .any(|quoted| rest.starts_with(quoted.as_str()));
        }
        false
    })
}

/// Why a script's `config` could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum ConfigCallError {
    /// The call itself failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// `config` exited non-zero.
    #[error("script {script} config exited with code {code}: {stderr}")]
    Exit {
        /// The script's name.
        script: String,
        /// Its exit code.
        code: i32,
        /// What it printed to stderr.
        stderr: String,
    },
    /// The answer was not a valid config.
    #[error(transparent)]
    Invalid(#[from] crate::protocol::ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_definitions_are_found_however_quoted() {
        assert!(defines_phase(
            "def \"main finalize\" [] {}",
            Phase::Finalize
        ));
        assert!(defines_phase(
            "  def 'main finalize' [] {}",
            Phase::Finalize
        ));
        assert!(defines_phase(
            "def --env \"main finalize\" [] {}",
            Phase::Finalize
        ));
        assert!(!defines_phase(
            "def \"main finalizer\" [] {}",
            Phase::Finalize
        ));
        assert!(!defines_phase("# def \"main finalize\"", Phase::Finalize));
        assert!(!defines_phase(
            "def \"main reconcile\" [] {}",
            Phase::Finalize
        ));
        assert!(!defines_phase(
            "def \"main finalise\" [] {}",
            Phase::Finalize
        ));
    }
}
