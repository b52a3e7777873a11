//! A stable 64-bit digest (FNV-1a) shared by the manager and the managed pods: the
//! manager's config hash, the managed pods' cache directory names and script
//! fingerprints. Pure: no I/O.
//!
//! Stable across processes, builds and platforms, unlike `std`'s hasher, so a new
//! release computes the same values (a manager upgrade does not roll every managed
//! pod). Not a security measure: it only detects change.

/// 64-bit FNV-1a over length-prefixed fields, so that `("ab", "c")` and `("a", "bc")`
/// differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Feeds one field: its length (8 bytes, little-endian), then its bytes.
    pub fn feed(&mut self, bytes: &[u8]) -> &mut Self {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// The digest so far.
    pub fn value(&self) -> u64 {
        self.0
    }

    /// The digest as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_and_the_digest_is_stable() {
        let mut a = Fnv::default();
        a.feed(b"ab").feed(b"c");
        let mut b = Fnv::default();
        b.feed(b"a").feed(b"bc");
        assert_ne!(a, b);
        // Pinned: a change here changes every config hash and rolls every managed pod.
        assert_eq!(a.hex(), "7e60470bf599cad6");
        assert_eq!(Fnv::default().hex(), "cbf29ce484222325");
    }
}
