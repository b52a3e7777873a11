//! One embedded call's output: what `print` and the external commands it starts write
//! to stdout and stderr, kept up to the cap and counted beyond it.
//!
//! Does I/O (pipes and their reader threads), only for calls that start an external
//! command. `print` appends to an in-memory buffer that stops growing at the cap, so a
//! pure Nushell call costs no file descriptor at all. The first external command a call
//! starts gets a pipe per stream, drained by a reader thread into the same buffer; from
//! then on `print` writes into that pipe too, so the order of lines is the order they
//! were written. Whatever a call writes, it holds at most [`DEFAULT_CAPTURE_LIMIT`]
//! bytes per stream (test `conformance::a_flood_of_output_is_bounded_in_memory`).
//!
//! The executor gives every stack a *placeholder* file as stdout and stderr; the
//! `run-external` wrapper ([`super::commands`]) swaps it for the call's pipe. The
//! placeholder is a sealed, empty memfd: anything that reached it by another path would
//! get `EPERM` instead of growing it.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::super::capture::{CaptureBuffer, Captured};

/// How long the end of a call waits for its pipes to drain once the call's own ends are
/// closed. Only a process that escaped the call (a daemon holding the pipe) makes it
/// wait that long; its later output is discarded.
const DRAIN_GRACE: Duration = Duration::from_millis(200);

/// Which stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// One stream of one call.
struct StreamState {
    /// Kept bytes (up to the cap) and the count of everything written.
    buffer: Arc<Mutex<CaptureBuffer>>,
    /// The write end of the stream's pipe, once an external command needed one.
    pipe: Mutex<Option<Pipe>>,
    /// Set when the call ended: a reader still running discards from then on.
    closed: Arc<AtomicBool>,
}

struct Pipe {
    writer: Arc<File>,
    drained: mpsc::Receiver<()>,
}

/// The output of one call, shared by the evaluation thread, `print` and the readers.
pub(crate) struct CallOutput {
    stdout: StreamState,
    stderr: StreamState,
}

impl CallOutput {
    /// Empty output capped at `limit` bytes per stream.
    pub(crate) fn new(limit: usize) -> Self {
        let stream = || StreamState {
            buffer: Arc::new(Mutex::new(CaptureBuffer::new(limit))),
            pipe: Mutex::new(None),
            closed: Arc::new(AtomicBool::new(false)),
        };
        Self {
            stdout: stream(),
            stderr: stream(),
        }
    }

    fn state(&self, stream: Stream) -> &StreamState {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    /// Appends what `print` (or the executor) writes to `stream`.
    pub(crate) fn write(&self, stream: Stream, bytes: &[u8]) {
        let state = self.state(stream);
        let writer = lock(&state.pipe).as_ref().map(|p| p.writer.clone());
        match writer {
            // Through the pipe, so it lands after what externals wrote before it.
            Some(writer) => {
                if (&*writer).write_all(bytes).is_err() {
                    lock(&state.buffer).push(bytes);
                }
            }
            None => lock(&state.buffer).push(bytes),
        }
    }

    /// The file an external command should write `stream` to: the call's pipe, created
    /// (with its reader thread) the first time.
    ///
    /// # Errors
    /// When the pipe or the thread cannot be created.
    pub(crate) fn pipe_for(&self, stream: Stream) -> std::io::Result<Arc<File>> {
        let state = self.state(stream);
        let mut pipe = lock(&state.pipe);
        if let Some(pipe) = pipe.as_ref() {
            return Ok(pipe.writer.clone());
        }
        let (mut reader, writer) = std::io::pipe()?;
        let writer = Arc::new(File::from(std::os::fd::OwnedFd::from(writer)));
        let (done, drained) = mpsc::channel();
        let buffer = state.buffer.clone();
        let closed = state.closed.clone();
        std::thread::Builder::new()
            .name("nuop-output".into())
            .spawn(move || {
                use std::io::Read;
                let mut chunk = vec![0u8; 64 * 1024];
                loop {
                    match reader.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) if !closed.load(Ordering::Acquire) => lock(&buffer).push(&chunk[..n]),
                        Ok(_) => {}
                    }
                }
                let _ = done.send(());
            })?;
        *pipe = Some(Pipe {
            writer: writer.clone(),
            drained,
        });
        Ok(writer)
    }

    /// Ends the call's output: closes the call's pipe ends, waits (briefly) for what
    /// externals left in them, and returns both streams.
    pub(crate) fn finish(&self) -> (Captured, Captured) {
        (
            self.finish_stream(Stream::Stdout),
            self.finish_stream(Stream::Stderr),
        )
    }

    /// What `stream` holds so far, without ending it (for a timed-out call's stderr).
    pub(crate) fn snapshot(&self, stream: Stream) -> Captured {
        lock(&self.state(stream).buffer).snapshot()
    }

    fn finish_stream(&self, stream: Stream) -> Captured {
        let state = self.state(stream);
        if let Some(pipe) = lock(&state.pipe).take() {
            drop(pipe.writer);
            let _ = pipe.drained.recv_timeout(DRAIN_GRACE);
        }
        state.closed.store(true, Ordering::Release);
        lock(&state.buffer).snapshot()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Pushing bytes cannot leave a buffer inconsistent, so a poisoned lock is usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The placeholder every call's stack gets as stdout and stderr (see the module doc).
static PLACEHOLDER: LazyLock<Option<(File, (u64, u64))>> = LazyLock::new(|| {
    let file = placeholder_file().ok()?;
    let id = file_id(&file)?;
    Some((file, id))
});

fn placeholder_file() -> std::io::Result<File> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    match memfd_create(
        "nuop-placeholder",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    ) {
        Ok(fd) => {
            let file = File::from(fd);
            fcntl(
                &file,
                FcntlArg::F_ADD_SEALS(
                    SealFlag::F_SEAL_GROW
                        | SealFlag::F_SEAL_SHRINK
                        | SealFlag::F_SEAL_WRITE
                        | SealFlag::F_SEAL_SEAL,
                ),
            )?;
            Ok(file)
        }
        Err(_) => tempfile::tempfile(),
    }
}

fn file_id(file: &File) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// A new handle on the placeholder, for one stack.
///
/// # Errors
/// When no placeholder could be made or duplicated.
pub(crate) fn placeholder() -> std::io::Result<File> {
    match PLACEHOLDER.as_ref() {
        Some((file, _)) => file.try_clone(),
        None => Err(std::io::Error::other(
            "cannot create the output placeholder",
        )),
    }
}

/// Whether `file` is the placeholder: the stream was not redirected by the script.
pub(crate) fn is_placeholder(file: &File) -> bool {
    PLACEHOLDER
        .as_ref()
        .is_some_and(|(_, id)| file_id(file).as_ref() == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print_and_external_output_keep_their_order_and_the_cap() {
        let output = CallOutput::new(8);
        output.write(Stream::Stdout, b"ab");
        let pipe = output.pipe_for(Stream::Stdout).expect("pipe");
        (&*pipe).write_all(b"cd").expect("write");
        drop(pipe);
        output.write(Stream::Stdout, b"efghij");
        let (stdout, stderr) = output.finish();
        assert_eq!(stdout.text, "abcdefgh");
        assert_eq!(stdout.total_bytes, 10);
        assert!(stdout.truncated);
        assert_eq!(stderr.total_bytes, 0);
    }

    #[test]
    fn the_placeholder_is_recognised_and_refuses_writes() {
        let file = placeholder().expect("placeholder");
        assert!(is_placeholder(&file));
        assert!((&file).write_all(b"x").is_err());
        let other = tempfile::tempfile().expect("tempfile");
        assert!(!is_placeholder(&other));
    }
}
