//! Per-object exponential backoff for failed reconciles.
//!
//! Pure state: a map from object (its UID, in the pipeline) to consecutive failures. The
//! controller records each outcome; a failure's retry delay doubles from [`BASE_DELAY`]
//! up to [`MAX_DELAY`], and a success forgets the object; [`Backoff::retain`] prunes
//! objects that are gone. The delay is never a fixed long one (the original nuop waited
//! 300 s after every error): `delays_double_up_to_the_cap`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

/// Delay after the first failure.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);

/// The delay after `failures` consecutive failures (1-based).
pub fn delay_after(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    BASE_DELAY.saturating_mul(1u32 << exponent).min(MAX_DELAY)
}

/// Consecutive failures per object.
#[derive(Debug, Default)]
pub struct Backoff<K: Eq + Hash> {
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash> Backoff<K> {
    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: K) -> Duration {
        let mut map = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        delay_after(*count)
    }

    /// Keeps only the keys `keep` accepts (the objects that still exist).
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|k, _| keep(k));
    }

    /// How many objects have failures recorded.
    pub fn len(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no object has failures recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `key` after a success.
    pub fn succeeded(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(delay_after(1), Duration::from_millis(500));
        assert_eq!(delay_after(2), Duration::from_secs(1));
        assert_eq!(delay_after(3), Duration::from_secs(2));
        assert_eq!(delay_after(12), MAX_DELAY);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn success_resets_an_object_and_objects_are_independent() {
        let b = Backoff::default();
        assert_eq!(b.failed("a"), Duration::from_millis(500));
        assert_eq!(b.failed("a"), Duration::from_secs(1));
        assert_eq!(b.failed("b"), Duration::from_millis(500));
        b.succeeded(&"a");
        assert_eq!(b.failed("a"), Duration::from_millis(500));
        b.retain(|k| *k == "b");
        assert_eq!(b.len(), 1);
        assert_eq!(b.failed("b"), Duration::from_secs(1));
    }
}
