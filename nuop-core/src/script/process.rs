//! The process executor: each call runs `nu` as a child process in its own process group
//! (or the entry point itself, when it is an executable file with a shebang).
//!
//! `nu` is started in the script's directory as
//! `nu --stdin -c '<display hook>; source "mod.nu"; $in | main <phase>'` rather
//! than `nu mod.nu <phase>`: the latter silently does nothing (exit 0) when a script
//! defines `main <phase>` but no bare `main`, which would turn a missing `def main` into
//! a controller that quietly never acts. The path in the command is the entry point's
//! file name relative to that directory (quoted as a Nushell string), so no character
//! of the directory — names come from git — can end the string and be parsed as code
//! (test `conformance::a_script_path_with_quotes_and_hashes_runs`). A record or list
//! the phase *returns* is printed as JSON, as the embedded executor takes it, so a
//! `config` that answers a bare record means the same with both executors.
//!
//! The child gets the operator's environment minus the operator's own settings
//! ([`super::embedded::passed_to_scripts`]). Nushell's deprecation warnings, which
//! `nu` prints to stderr on every call, are logged once per loaded script and taken
//! out of the call's stderr.
//!
//! Does I/O. stdin gets the object as JSON; stdout and stderr are drained concurrently
//! (a script writing megabytes to stderr never blocks on a full pipe), each capped; on
//! timeout or cancellation the whole process group is killed, so helpers the script
//! started (`kubectl`, `sleep`) go too.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::capture::{CaptureBuffer, Captured, DEFAULT_CAPTURE_LIMIT};
use super::{CallRequest, CallResult, ExecError, LoadError, Script};

/// How long a killed call waits for its output pipes to close: only a process that left
/// the group (a daemon holding the pipe) makes it wait that long.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

/// Environment variable naming the `nu` binary; otherwise `nu` is looked up on `PATH`.
pub const NU_BINARY_ENV: &str = "NUOP_NU";

/// A script run as a child process per call.
#[derive(Debug, Clone)]
pub struct ProcessScript {
    script: Script,
    program: PathBuf,
    /// Started through `nu` (true) or as an executable entry point (false).
    via_nu: bool,
    /// Nushell warnings already logged for this loaded script (a reload starts afresh).
    warned: Arc<Mutex<HashSet<String>>>,
}

impl ProcessScript {
    /// Checks the entry point exists and decides how to start it: directly when it is an
    /// executable file with a shebang, otherwise through `nu`.
    ///
    /// # Errors
    /// [`LoadError::Read`] when the entry point cannot be read.
    pub fn load(script: &Script) -> Result<Self, LoadError> {
        Self::load_with(script, nu_binary())
    }

    /// Like [`ProcessScript::load`], with an explicit `nu` binary.
    ///
    /// # Errors
    /// [`LoadError::Read`] when the entry point cannot be read.
    pub fn load_with(script: &Script, nu: PathBuf) -> Result<Self, LoadError> {
        let read_err = |source| LoadError::Read {
            path: script.entry.clone(),
            source,
        };
        let meta = std::fs::metadata(&script.entry).map_err(read_err)?;
        let head = std::fs::read(&script.entry).map_err(read_err)?;
        let executable = meta.permissions().mode() & 0o111 != 0 && head.starts_with(b"#!");
        let (program, via_nu) = if executable {
            (script.entry.clone(), false)
        } else {
            (nu, true)
        };
        Ok(Self {
            script: script.clone(),
            program,
            via_nu,
            warned: Arc::default(),
        })
    }

    /// The script this runs.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// Runs one call as a child process.
    ///
    /// # Errors
    /// [`ExecError::Spawn`] when the process cannot start, [`ExecError::Timeout`] when it
    /// outlives the request's timeout (its process group is then killed).
    pub async fn call(&self, request: CallRequest) -> Result<CallResult, ExecError> {
        let spawn_err = |source| ExecError::Spawn {
            script: self.script.name.clone(),
            program: self.program.display().to_string(),
            source,
        };
        let mut command = Command::new(&self.program);
        let dir = self
            .script
            .entry
            .parent()
            .unwrap_or(&self.script.dir)
            .to_path_buf();
        if self.via_nu {
            let file = self
                .script
                .entry
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            command
                .args(["--no-config-file", "--stdin", "-c"])
                .arg(nu_command_line(&file, request.phase.as_str()));
        } else {
            command.arg(request.phase.as_str());
        }
        for name in withheld_variables() {
            command.env_remove(name);
        }
        let mut child = command
            .current_dir(&dir)
            .env("NUOP_ENTRY", &self.script.entry)
            .env("NUOP_CONTROLLER", &request.controller)
            .env("NUOP_PHASE", request.phase.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        // Dropping the guard (timeout, or the caller giving up) kills the whole group.
        let group = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));

        let stdin = child.stdin.take();
        let input = request.input.unwrap_or_default();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A script that exits without reading its input closes the pipe: not an error.
                let _ = stdin.write_all(input.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        // Drained by tasks of their own, so a timeout can still collect what was read.
        let mut stdout = tokio::spawn(drain(child.stdout.take()));
        let mut stderr = tokio::spawn(drain(child.stderr.take()));
        let run = async {
            let (_, status) = tokio::join!(feed, child.wait());
            status
        };
        match tokio::time::timeout(request.timeout, run).await {
            Ok(status) => {
                let status = status.map_err(spawn_err)?;
                drop(group);
                let stdout = joined(&mut stdout).await;
                let stderr = self.without_warnings(joined(&mut stderr).await);
                Ok(CallResult {
                    code: exit_code(status),
                    stdout,
                    stderr,
                    returned: None,
                })
            }
            Err(_) => {
                drop(group);
                stdout.abort();
                let stderr = self.without_warnings(joined(&mut stderr).await);
                Err(ExecError::Timeout {
                    script: self.script.name.clone(),
                    phase: request.phase,
                    after: request.timeout,
                    stderr,
                })
            }
        }
    }

    /// Takes Nushell's warnings out of a call's stderr, logging each one the first time
    /// this loaded script prints it.
    fn without_warnings(&self, stderr: Captured) -> Captured {
        let (warnings, rest) = split_warnings(&stderr.text);
        if warnings.is_empty() {
            return stderr;
        }
        let mut warned = self
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for warning in warnings {
            if warned.insert(warning.clone()) {
                tracing::warn!(script = %self.script.name, "nu warned (logged once per script revision):\n{warning}");
            }
        }
        let removed = stderr.text.len() - rest.len();
        Captured {
            text: rest,
            total_bytes: stderr.total_bytes.saturating_sub(removed as u64),
            truncated: stderr.truncated,
        }
    }
}

/// The operator's environment variables that scripts do not get, found once: the
/// operator never changes its own environment after start.
fn withheld_variables() -> &'static [std::ffi::OsString] {
    static WITHHELD: std::sync::LazyLock<Vec<std::ffi::OsString>> =
        std::sync::LazyLock::new(|| {
            std::env::vars_os()
                .map(|(name, _)| name)
                .filter(|name| {
                    name.to_str()
                        .is_some_and(|n| !super::embedded::passed_to_scripts(n))
                })
                .collect()
        });
    &WITHHELD
}

/// The `-c` command line for a phase: the entry point is sourced by its file name
/// (the child runs in its directory), as a Nushell double-quoted string.
fn nu_command_line(file: &str, phase: &str) -> String {
    let mut quoted = String::with_capacity(file.len() + 2);
    quoted.push('"');
    for c in file.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    // The display hook prints a returned record or list as JSON; externals' output
    // streams past it untouched.
    format!(
        "$env.config.hooks.display_output = {{|| if ($in | describe | str replace -r '<.*' '') in [record list table] {{ to json --raw }} else {{ $in }} }}; source {quoted}; $in | main {phase}"
    )
}

/// Splits Nushell's `Warning: nu::…` blocks (the line, then every blank or indented
/// line after it) from the rest of a stderr text.
pub fn split_warnings(stderr: &str) -> (Vec<String>, String) {
    let mut warnings = Vec::new();
    let mut rest = String::with_capacity(stderr.len());
    let mut current: Option<String> = None;
    for line in stderr.split_inclusive('\n') {
        let continues = line.trim().is_empty() || line.starts_with([' ', '\t']);
        match current.as_mut() {
            Some(block) if continues => {
                block.push_str(line);
                continue;
            }
            Some(_) => warnings.extend(current.take().map(|b| b.trim_end().to_string())),
            None => {}
        }
        if line.starts_with("Warning: nu::") {
            current = Some(line.to_string());
        } else {
            rest.push_str(line);
        }
    }
    warnings.extend(current.map(|b| b.trim_end().to_string()));
    (warnings, rest)
}

/// The capture a drain task produced; empty if the task was lost or its pipe is held
/// open past [`DRAIN_GRACE`] by a process that left the group.
async fn joined(task: &mut tokio::task::JoinHandle<CaptureBuffer>) -> Captured {
    match tokio::time::timeout(DRAIN_GRACE, &mut *task).await {
        Ok(Ok(buffer)) => buffer.finish(),
        _ => {
            task.abort();
            Captured::default()
        }
    }
}

/// Kills a child's process group when dropped.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // ESRCH when the group already exited: nothing to do.
            let _ = killpg(pid, Signal::SIGKILL);
        }
    }
}

/// An exit status as the protocol sees it: killed by a signal counts as 128 + signal,
/// as shells report it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

async fn drain(pipe: Option<impl AsyncRead + Unpin>) -> CaptureBuffer {
    let mut buffer = CaptureBuffer::new(DEFAULT_CAPTURE_LIMIT);
    if let Some(mut pipe) = pipe {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buffer.push(&chunk[..n]),
            }
        }
    }
    buffer
}

/// The `nu` to run: `$NUOP_NU`, else `nu` from `PATH`.
pub fn nu_binary() -> PathBuf {
    std::env::var_os(NU_BINARY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("nu").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_split_from_the_scripts_own_lines() {
        let stderr = "first\nWarning: nu::parser::deprecated\n\n  ! Flag deprecated.\n   ,-[source:1:13]\n  help: renamed\n\nmine\n";
        let (warnings, rest) = split_warnings(stderr);
        assert_eq!(rest, "first\nmine\n");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("Warning: nu::parser::deprecated"));
        assert!(warnings[0].ends_with("help: renamed"));
        assert_eq!(split_warnings("plain\n"), (vec![], "plain\n".to_string()));
    }

    #[test]
    fn the_entry_point_is_quoted_as_a_nushell_string() {
        let line = nu_command_line("we'#ird\"na\\me.nu", "reconcile");
        assert!(line.ends_with("source \"we'#ird\\\"na\\\\me.nu\"; $in | main reconcile"));
    }
}
