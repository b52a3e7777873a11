//! When to fetch a source next. Pure: no I/O.
//!
//! A healthy source is fetched every sync interval. After failures the delay is the
//! core's per-object backoff ([`nuop_core::reconcile::backoff::delay_after`]: short at
//! first, so a blip does not cost a whole interval, doubling per consecutive failure up
//! to its cap), so an unreachable server is not hammered and a recovered one is noticed
//! in bounded time. It is never longer than the interval: a failing source is not
//! looked at less often than a healthy one.

use std::time::Duration;

use nuop_core::reconcile::backoff::delay_after;

/// The delay before the next fetch, after `failures` consecutive failures (0 when the
/// last fetch succeeded).
pub fn next_delay(failures: u32, interval: Duration) -> Duration {
    if failures == 0 {
        return interval;
    }
    delay_after(failures).min(interval.max(nuop_core::reconcile::backoff::BASE_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuop_core::reconcile::backoff::MAX_DELAY;

    #[test]
    fn success_waits_one_interval() {
        assert_eq!(
            next_delay(0, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn failures_follow_the_core_backoff_up_to_its_cap() {
        let interval = Duration::from_secs(3600);
        let delays: Vec<Duration> = (1..=12).map(|f| next_delay(f, interval)).collect();
        let core: Vec<Duration> = (1..=12).map(delay_after).collect();
        assert_eq!(delays, core);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(next_delay(u32::MAX, interval), MAX_DELAY);
    }

    #[test]
    fn a_failing_source_is_retried_at_least_every_interval() {
        let interval = Duration::from_secs(10);
        assert_eq!(next_delay(30, interval), interval);
        assert!(next_delay(1, interval) < interval);
    }
}
