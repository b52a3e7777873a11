//! A minimal init for when a binary runs as PID 1 (the container's entry point).
//!
//! PID 1 inherits every orphaned process of its PID namespace, and the kernel leaves
//! each one a zombie until PID 1 waits for it. A script's external that daemonizes
//! (`sh -c 'cmd &'`) orphans a process; nuop's own waits are for the children it
//! spawned, so those zombies would pile up until the pid limit. Reaping every child
//! from inside the operator would steal the exit statuses tokio and Nushell wait for,
//! so — as tini does — PID 1 starts the operator again as its only child, forwards
//! termination signals to it, reaps whatever is orphaned to it, and exits with the
//! child's status (test `nuop-standard/tests/init.rs`).
//!
//! Does I/O: spawns the child, blocks and waits for signals. Set `NUOP_NO_INIT=1` to
//! run the operator as PID 1 itself (when the container runtime provides an init).

use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// Set in the child's environment so that it does not become an init itself.
const CHILD_ENV: &str = "NUOP_INIT_CHILD";
/// Set by the user to skip the init.
const DISABLE_ENV: &str = "NUOP_NO_INIT";

/// Signals PID 1 passes on to the operator.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Whether this process should act as the init: it is PID 1, not already the init's
/// child, and not told otherwise.
pub fn should_init(pid: u32, child_marker: bool, disabled: bool) -> bool {
    pid == 1 && !child_marker && !disabled
}

/// When this process is PID 1, runs the binary again as a child under a reaping init
/// and returns the exit code to end with; otherwise returns `None` at once. Call it
/// first in `main`, before any thread exists.
pub fn run_if_pid1() -> Option<i32> {
    let flag = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty() && v != "0");
    if !should_init(std::process::id(), flag(CHILD_ENV), flag(DISABLE_ENV)) {
        return None;
    }
    Some(match supervise() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nuop init: {e}");
            1
        }
    })
}

fn supervise() -> Result<i32, String> {
    let mut signals = SigSet::empty();
    for signal in FORWARDED {
        signals.add(signal);
    }
    signals.add(Signal::SIGCHLD);
    // Blocked before the child exists, so no signal is lost in between; the child
    // starts with an empty mask (std resets it when spawning).
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, "1")
        .spawn()
        .map_err(|e| format!("cannot start the operator: {e}"))?;
    let child = Pid::from_raw(child.id() as i32);
    loop {
        let signal = signals
            .wait()
            .map_err(|e| format!("waiting for signals failed: {e}"))?;
        if signal != Signal::SIGCHLD {
            let _ = kill(child, signal);
            continue;
        }
        // One SIGCHLD may stand for several exits: reap until none is left.
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return Ok(code),
                Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                    return Ok(128 + signal as i32);
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pid_1_becomes_the_init() {
        assert!(should_init(1, false, false));
        assert!(!should_init(1, true, false), "the init's own child");
        assert!(!should_init(1, false, true), "disabled");
        assert!(!should_init(42, false, false));
    }
}
