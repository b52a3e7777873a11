//! When to fetch a source next. Pure: no I/O.
//!
//! A healthy source is fetched every sync interval. After failures the delay starts
//! short (a blip should not cost a whole interval) and doubles per consecutive
//! failure, capped at the larger of the interval and [`MAX_FAILURE_DELAY`], so an
//! unreachable server is not hammered and a recovered one is noticed in bounded time.

use std::time::Duration;

/// The first retry after a failure.
pub const FIRST_FAILURE_DELAY: Duration = Duration::from_secs(2);

/// The longest wait between retries of a failing source (unless the interval is longer).
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(300);

/// The delay before the next fetch, after `failures` consecutive failures (0 when the
/// last fetch succeeded).
pub fn next_delay(failures: u32, interval: Duration) -> Duration {
    if failures == 0 {
        return interval;
    }
    let cap = interval.max(MAX_FAILURE_DELAY);
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    FIRST_FAILURE_DELAY.saturating_mul(factor).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_waits_one_interval() {
        assert_eq!(
            next_delay(0, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn failures_double_from_two_seconds_up_to_the_cap() {
        let interval = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=10)
            .map(|f| next_delay(f, interval).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(next_delay(u32::MAX, interval), MAX_FAILURE_DELAY);
    }

    #[test]
    fn a_long_interval_is_the_cap() {
        let interval = Duration::from_secs(3600);
        assert_eq!(next_delay(30, interval), interval);
    }
}
