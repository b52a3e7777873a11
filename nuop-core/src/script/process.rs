//! The process executor: each call runs `nu` as a child process in its own process group
//! (or the entry point itself, when it is an executable file with a shebang).
//!
//! `nu` is started as `nu --stdin -c 'source mod.nu; $in | main <phase>'` rather than
//! `nu mod.nu <phase>`: the latter silently does nothing (exit 0) when a script defines
//! `main <phase>` but no bare `main`, which would turn a missing `def main` into a
//! controller that quietly never acts.
//!
//! Does I/O. stdin gets the object as JSON; stdout and stderr are drained concurrently
//! (a script writing megabytes to stderr never blocks on a full pipe), each capped; on
//! timeout or cancellation the whole process group is killed, so helpers the script
//! started (`kubectl`, `sleep`) go too.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::capture::{CaptureBuffer, DEFAULT_CAPTURE_LIMIT};
use super::{CallRequest, CallResult, ExecError, LoadError, Script};

/// Environment variable naming the `nu` binary; otherwise `nu` is looked up on `PATH`.
pub const NU_BINARY_ENV: &str = "NUOP_NU";

/// A script run as a child process per call.
#[derive(Debug, Clone)]
pub struct ProcessScript {
    script: Script,
    program: PathBuf,
    /// Started through `nu` (true) or as an executable entry point (false).
    via_nu: bool,
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
        if self.via_nu {
            command
                .args(["--no-config-file", "--stdin", "-c"])
                .arg(format!(
                    "source r#'{}'#; $in | main {}",
                    self.script.entry.display(),
                    request.phase
                ));
        } else {
            command.arg(request.phase.as_str());
        }
        let mut child = command
            .current_dir(&self.script.dir)
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
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        let run = async {
            let (_, out, err, status) = tokio::join!(feed, stdout, stderr, child.wait());
            (out, err, status)
        };
        match tokio::time::timeout(request.timeout, run).await {
            Ok((stdout, stderr, status)) => {
                let status = status.map_err(spawn_err)?;
                drop(group);
                Ok(CallResult {
                    code: exit_code(status),
                    stdout: stdout.finish(),
                    stderr: stderr.finish(),
                    returned: None,
                })
            }
            Err(_) => {
                drop(group);
                Err(ExecError::Timeout {
                    script: self.script.name.clone(),
                    phase: request.phase,
                    after: request.timeout,
                    stderr: Default::default(),
                })
            }
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
