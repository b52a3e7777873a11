//! Capped capture of a script's stdout or stderr.
//!
//! Pure: the executors feed bytes in; a script that floods an output keeps running (its
//! pipe keeps being drained) while only the first [`DEFAULT_CAPTURE_LIMIT`] bytes are
//! kept, with a note saying how much was dropped.

/// Bytes kept per stream per call: above the API server's request limit (3 MiB), so
/// every object etcd can hold fits in a script's stdout. What a call holds in memory
/// for its output is bounded by this, per stream.
pub const DEFAULT_CAPTURE_LIMIT: usize = 4 * 1024 * 1024;

/// One stream's captured text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The kept text (lossy UTF-8), without the truncation note.
    pub text: String,
    /// Total bytes the script wrote, kept or not.
    pub total_bytes: u64,
    /// Whether bytes were dropped.
    pub truncated: bool,
}

impl Captured {
    /// Builds a capture from the kept prefix and the total number of bytes written.
    pub fn from_prefix(prefix: &[u8], total_bytes: u64) -> Self {
        Self {
            text: String::from_utf8_lossy(prefix).into_owned(),
            total_bytes,
            truncated: total_bytes > prefix.len() as u64,
        }
    }

    /// The text followed, when bytes were dropped, by a note saying so.
    pub fn with_note(&self) -> String {
        if self.truncated {
            format!(
                "{}\n[nuop: output truncated: kept {} of {} bytes]",
                self.text.trim_end(),
                self.text.len(),
                self.total_bytes
            )
        } else {
            self.text.clone()
        }
    }
}

/// Accumulates a stream up to a limit, counting everything.
#[derive(Debug)]
pub(crate) struct CaptureBuffer {
    kept: Vec<u8>,
    total: u64,
    limit: usize,
}

impl CaptureBuffer {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            kept: Vec::new(),
            total: 0,
            limit,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let room = self.limit.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..room.min(bytes.len())]);
    }

    pub(crate) fn finish(self) -> Captured {
        Captured::from_prefix(&self.kept, self.total)
    }

    /// What is kept so far, without consuming the buffer.
    pub(crate) fn snapshot(&self) -> Captured {
        Captured::from_prefix(&self.kept, self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_prefix_and_counts_everything() {
        let mut b = CaptureBuffer::new(4);
        b.push(b"ab");
        b.push(b"cdef");
        b.push(b"gh");
        let c = b.finish();
        assert_eq!(c.text, "abcd");
        assert_eq!(c.total_bytes, 8);
        assert!(c.truncated);
        assert_eq!(
            c.with_note(),
            "abcd\n[nuop: output truncated: kept 4 of 8 bytes]"
        );
    }

    #[test]
    fn short_output_is_untouched() {
        let mut b = CaptureBuffer::new(10);
        b.push(b"hello\n");
        let c = b.finish();
        assert!(!c.truncated);
        assert_eq!(c.with_note(), "hello\n");
    }
}
