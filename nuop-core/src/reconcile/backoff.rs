//! Per-object exponential backoff for failed reconciles.
//!
//! Pure state: a map from object (its UID, in the pipeline) to consecutive failures. The
//! controller records each outcome; a failure's retry delay doubles from [`BASE_DELAY`]
//! (or the base given to [`Backoff::new`]) up to [`MAX_DELAY`], and a success forgets the
//! object; [`Backoff::retain`] prunes objects that are gone. The delay is never a fixed
//! long one (the original nuop waited 300 s after every error):
//! `delays_double_up_to_the_cap`. No I/O; it may mirror its size into a gauge (a number
//! in memory, rendered by `/metrics`).

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
    delay_from(BASE_DELAY, failures)
}

/// The delay after `failures` consecutive failures (1-based) when the first is `base`.
pub fn delay_from(base: Duration, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exponent).min(MAX_DELAY)
}

/// Consecutive failures per object.
#[derive(Debug)]
pub struct Backoff<K: Eq + Hash> {
    failures: Mutex<HashMap<K, u32>>,
    base: Duration,
    size: Option<prometheus::IntGauge>,
}

impl<K: Eq + Hash> Default for Backoff<K> {
    fn default() -> Self {
        Self::new(BASE_DELAY, None)
    }
}

impl<K: Eq + Hash> Backoff<K> {
    /// A backoff whose first delay is `base`; `size`, when given, always holds the
    /// number of objects with failures recorded (`the_size_gauge_follows_the_map`).
    pub fn new(base: Duration, size: Option<prometheus::IntGauge>) -> Self {
        Self {
            failures: Mutex::default(),
            base,
            size,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn report(&self, map: &HashMap<K, u32>) {
        if let Some(size) = &self.size {
            size.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn failed(&self, key: K) -> Duration {
        let mut map = self.lock();
        let count = map.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        let delay = delay_from(self.base, *count);
        self.report(&map);
        delay
    }

    /// Keeps only the keys `keep` accepts (the objects that still exist).
    pub fn retain(&self, mut keep: impl FnMut(&K) -> bool) {
        let mut map = self.lock();
        map.retain(|k, _| keep(k));
        self.report(&map);
    }

    /// The consecutive failures recorded for `key` (0 when none).
    pub fn failures(&self, key: &K) -> u32 {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// How many objects have failures recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no object has failures recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `key` after a success.
    pub fn succeeded(&self, key: &K) {
        let mut map = self.lock();
        map.remove(key);
        self.report(&map);
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

    #[test]
    fn the_size_gauge_follows_the_map() {
        let gauge = prometheus::IntGauge::new("unit_backoff_size", "test").expect("gauge");
        let b = Backoff::new(Duration::from_millis(10), Some(gauge.clone()));
        assert_eq!(b.failed("a"), Duration::from_millis(10));
        assert_eq!(b.failed("a"), Duration::from_millis(20));
        b.failed("b");
        assert_eq!(gauge.get(), 2);
        b.succeeded(&"a");
        assert_eq!(gauge.get(), 1);
        b.retain(|_| false);
        assert_eq!(gauge.get(), 0);
        assert_eq!(delay_from(Duration::from_millis(10), 30), MAX_DELAY);
    }
}
