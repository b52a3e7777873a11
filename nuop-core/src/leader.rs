//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go does it.
//!
//! The decisions (who may take the lease, when a holder's claim has expired, what the
//! lease says after a claim or a release) are pure functions tested without a cluster;
//! [`Elector`] does the I/O: one GET and at most one resourceVersion-guarded write per
//! attempt, every retry period.
//!
//! Expiry is measured on the candidate's own monotonic clock from the moment it saw the
//! lease record change (as client-go does), so clock skew between nodes does not matter.
//! A holder that cannot renew within the renew deadline — shorter than the lease
//! duration — gives up leadership before any other candidate may take the lease.
//!
//! Why not kube-lease-manager: its standby sleeps until the old holder's expiry even
//! after the holder released the lease (so a release on SIGTERM does not hand over any
//! sooner), and a holder whose renewals fail keeps reporting itself leader past the
//! lease's expiry. Both matter for "only the leader reconciles".

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

/// controller-runtime's default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// controller-runtime's default renew deadline.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// controller-runtime's default retry period.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Which lease to contend for and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// The Lease's name (`--leader-election-id`).
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This candidate's identity, unique among candidates.
    pub identity: String,
    /// How long a claim is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps trying to renew before it gives up leadership.
    pub renew_deadline: Duration,
    /// How often candidates try to take the lease and the holder renews it.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Settings with controller-runtime's default timings.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks that the timings keep at most one leader: retry period < renew deadline <
    /// lease duration, and the lease duration is whole seconds (the Lease stores seconds).
    ///
    /// # Errors
    /// A message naming the setting that breaks the rule.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("the leader election id must not be empty".into());
        }
        if self.retry_period.is_zero() {
            return Err("the leader election retry period must be positive".into());
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the leader election retry period ({:?}) must be shorter than the renew deadline ({:?})",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return Err(format!(
                "the leader election renew deadline ({:?}) must be shorter than the lease duration ({:?})",
                self.renew_deadline, self.lease_duration
            ));
        }
        if self.lease_duration.subsec_nanos() != 0 || self.lease_duration.as_secs() > 3600 {
            return Err(format!(
                "the leader election lease duration ({:?}) must be whole seconds, at most one hour",
                self.lease_duration
            ));
        }
        Ok(())
    }
}

/// What a candidate may do about the lease as it last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder's claim expired: claim it.
    Take,
    /// We hold it: renew.
    Renew,
    /// Someone else holds a live claim.
    Wait,
}

/// The holder named in a lease spec; an empty identity means nobody.
pub fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Decides what `me` may do, given whether the current claim has expired.
pub fn decide(spec: &LeaseSpec, me: &str, expired: bool) -> Decision {
    match holder(spec) {
        None => Decision::Take,
        Some(h) if h == me => Decision::Renew,
        Some(_) if expired => Decision::Take,
        Some(_) => Decision::Wait,
    }
}

/// Whether a claim seen unchanged since `observed_at` has expired at `now`: its lease
/// duration has passed on our own clock.
pub fn expired(spec: &LeaseSpec, observed_at: Instant, now: Instant) -> bool {
    let seconds = u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0);
    now >= observed_at + Duration::from_secs(seconds)
}

/// The spec of a lease `me` creates at `now`: the first claim, no transitions yet.
pub fn first_claim(me: &str, now: Timestamp, duration: Duration) -> LeaseSpec {
    LeaseSpec {
        lease_transitions: Some(0),
        ..claimed(&LeaseSpec::default(), me, now, duration)
    }
}

/// The spec after `me` claims or renews the lease at `now`. `leaseTransitions` goes up
/// on every claim by a candidate that is not the holder, a released (holderless) lease
/// included, as in client-go (`claiming_counts_transitions_and_renewing_keeps_the_acquire_time`).
pub fn claimed(current: &LeaseSpec, me: &str, now: Timestamp, duration: Duration) -> LeaseSpec {
    let renewing = holder(current) == Some(me);
    let transitions = current.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if renewing {
            current.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..current.clone()
    }
}

/// The spec after the holder releases the lease at `now`: no holder and a one-second
/// duration, so any candidate may take it at its next attempt.
pub fn released(current: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..current.clone()
    }
}

/// A default identity: the pod (or host) name plus a random suffix, so two processes on
/// one host never share it.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|v| !v.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "nuop".to_string());
    format!("{host}_{}", random_hex())
}

fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// Why the holder stopped being the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Another candidate holds the lease now.
    TakenBy(String),
    /// No renewal succeeded within the renew deadline.
    NotRenewed(Duration),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TakenBy(other) => write!(f, "the lease is held by {other}"),
            Self::NotRenewed(deadline) => {
                write!(f, "the lease could not be renewed within {deadline:?}")
            }
        }
    }
}

/// The result of one attempt to claim or renew.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attempt {
    /// We hold the lease now.
    Held,
    /// Someone else holds a live claim.
    HeldBy(String),
    /// Someone wrote the lease between our read and our write.
    Conflict,
}

/// Whether a holder whose last successful renewal *started* at `last_renewal` must give
/// up leadership at `now`: the renew deadline has passed since then.
pub fn renewal_overdue(last_renewal: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now >= last_renewal + renew_deadline
}

/// A candidate for one lease. Does I/O.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The spec as last seen and when it last changed, on our clock.
    observed: Option<(LeaseSpec, Instant)>,
    /// When the request that acquired the lease started: [`Elector::hold`]'s renew
    /// deadline counts from there, so a slow acquire answer eats into it rather than
    /// extending leadership (`the_renew_deadline_counts_from_the_acquiring_request`).
    acquired_at: Option<Instant>,
}

impl Elector {
    /// A candidate for the lease `settings` names.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            acquired_at: None,
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// Tries every retry period until this candidate holds the lease (`true`) or
    /// `shutdown` resolves (`false`).
    pub async fn acquire(&mut self, shutdown: Shutdown) -> bool {
        let mut last_holder = None;
        loop {
            let started = Instant::now();
            let attempt = tokio::select! {
                attempt = self.attempt() => attempt,
                () = shutdown.clone() => return false,
            };
            match attempt {
                Ok(Attempt::Held) => {
                    self.acquired_at = Some(started);
                    info!(lease = %self.settings.name, identity = %self.settings.identity, "acquired the leader lease");
                    return true;
                }
                Ok(Attempt::HeldBy(other)) => {
                    if last_holder.as_ref() != Some(&other) {
                        info!(lease = %self.settings.name, holder = %other, "waiting for the leader lease");
                        last_holder = Some(other);
                    }
                }
                Ok(Attempt::Conflict) => debug!("conflict while claiming the lease; retrying"),
                Err(e) => {
                    warn!(lease = %self.settings.name, "failed to claim the leader lease: {e}")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.retry_period) => {}
                () = shutdown.clone() => return false,
            }
        }
    }

    /// Renews the lease every retry period while held; returns once leadership is lost:
    /// taken by another candidate, or no renewal succeeded within the renew deadline
    /// counted from the start of the last successful request (the acquiring one at
    /// first). The caller must stop acting as leader at once: another candidate may take
    /// the lease `lease_duration - renew_deadline` after this returns
    /// (`an_unreachable_api_server_ends_leadership_at_the_renew_deadline`).
    pub async fn hold(&mut self) -> Lost {
        let mut last_renewal = self.acquired_at.take().unwrap_or_else(Instant::now);
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let started = Instant::now();
            let deadline = last_renewal + self.settings.renew_deadline;
            let remaining = deadline.saturating_duration_since(started);
            match tokio::time::timeout(remaining, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => last_renewal = started,
                Ok(Ok(Attempt::HeldBy(other))) => return Lost::TakenBy(other),
                Ok(Ok(Attempt::Conflict)) => debug!("conflict while renewing the lease"),
                Ok(Err(e)) => {
                    warn!(lease = %self.settings.name, "failed to renew the leader lease: {e}")
                }
                Err(_) => warn!(lease = %self.settings.name, "renewing the leader lease timed out"),
            }
            if renewal_overdue(last_renewal, Instant::now(), self.settings.renew_deadline) {
                return Lost::NotRenewed(self.settings.renew_deadline);
            }
        }
    }

    /// Gives the lease up if this candidate holds it, so a standby takes over at its
    /// next attempt instead of after the lease duration. Returns whether it released.
    ///
    /// # Errors
    /// When the lease cannot be read or written.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if holder(&spec) != Some(self.settings.identity.as_str()) {
            return Ok(false);
        }
        lease.spec = Some(released(&spec, Timestamp::now()));
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        self.observed = None;
        info!(lease = %self.settings.name, "released the leader lease");
        Ok(true)
    }

    /// One read and at most one guarded write.
    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let me = self.settings.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(first_claim(
                    &me,
                    Timestamp::now(),
                    self.settings.lease_duration,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observed_at = self.observe(spec.clone());
        match decide(&spec, &me, expired(&spec, observed_at, Instant::now())) {
            Decision::Wait => Ok(Attempt::HeldBy(
                holder(&spec).unwrap_or_default().to_string(),
            )),
            Decision::Take | Decision::Renew => {
                lease.spec = Some(claimed(
                    &spec,
                    &me,
                    Timestamp::now(),
                    self.settings.lease_duration,
                ));
                match self
                    .api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(written) => {
                        self.observe(written.spec.unwrap_or_default());
                        Ok(Attempt::Held)
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Conflict),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Records the spec as seen now; returns when it last changed.
    fn observe(&mut self, spec: LeaseSpec) -> Instant {
        match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                let now = Instant::now();
                self.observed = Some((spec, now));
                now
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(who: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(who.into()),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn free_or_expired_leases_are_taken_live_ones_waited_for() {
        assert_eq!(decide(&LeaseSpec::default(), "me", false), Decision::Take);
        let empty = LeaseSpec {
            holder_identity: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(decide(&empty, "me", false), Decision::Take);
        assert_eq!(decide(&held_by("me", 15), "me", false), Decision::Renew);
        assert_eq!(decide(&held_by("other", 15), "me", false), Decision::Wait);
        assert_eq!(decide(&held_by("other", 15), "me", true), Decision::Take);
    }

    #[test]
    fn expiry_counts_from_when_we_saw_the_claim() {
        let seen = Instant::now();
        let spec = held_by("other", 15);
        assert!(!expired(&spec, seen, seen));
        assert!(!expired(&spec, seen, seen + Duration::from_secs(14)));
        assert!(expired(&spec, seen, seen + Duration::from_secs(15)));
        // A lease without a duration is expired at once.
        assert!(expired(&LeaseSpec::default(), seen, seen));
    }

    #[test]
    fn claiming_counts_transitions_and_renewing_keeps_the_acquire_time() {
        let now = Timestamp::from_second(1_000).expect("timestamp");
        let taken = claimed(&held_by("other", 15), "me", now, Duration::from_secs(5));
        assert_eq!(taken.holder_identity.as_deref(), Some("me"));
        assert_eq!(taken.lease_duration_seconds, Some(5));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));

        let later = Timestamp::from_second(1_002).expect("timestamp");
        let renewed = claimed(&taken, "me", later, Duration::from_secs(5));
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));

        let first = first_claim("me", now, Duration::from_secs(15));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.holder_identity.as_deref(), Some("me"));

        // Taking a released lease is a transition too (client-go counts every acquire
        // by a candidate that was not the holder).
        let after_release = claimed(
            &released(&held_by("other", 15), now),
            "me",
            later,
            Duration::from_secs(15),
        );
        assert_eq!(after_release.lease_transitions, Some(4));
    }

    #[test]
    fn a_holder_gives_up_once_the_renew_deadline_has_passed() {
        let start = Instant::now();
        let deadline = Duration::from_secs(10);
        assert!(!renewal_overdue(start, start, deadline));
        assert!(!renewal_overdue(
            start,
            start + Duration::from_millis(9_999),
            deadline
        ));
        assert!(renewal_overdue(start, start + deadline, deadline));
    }

    /// A TCP listener that accepts connections (the kernel does) but does not answer, and
    /// an elector whose API server it is.
    fn unreachable_elector(settings: LeaseSettings) -> (std::net::TcpListener, Elector) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let config = kube::Config::new(url.parse().expect("url"));
        crate::install_crypto_provider();
        let client = Client::try_from(config).expect("client");
        (listener, Elector::new(client, settings))
    }

    fn short_settings() -> LeaseSettings {
        LeaseSettings {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(500),
            ..LeaseSettings::new("unreachable", "default", "me")
        }
    }

    #[tokio::test]
    async fn an_unreachable_api_server_ends_leadership_at_the_renew_deadline() {
        let settings = short_settings();
        let (_listener, mut elector) = unreachable_elector(settings.clone());
        // Bounded only so a hang fails instead of blocking the suite.
        let lost = tokio::time::timeout(Duration::from_secs(60), elector.hold())
            .await
            .expect("hold returns once renewals cannot succeed");
        assert_eq!(lost, Lost::NotRenewed(settings.renew_deadline));
    }

    #[tokio::test]
    async fn the_renew_deadline_counts_from_the_acquiring_request() {
        let settings = LeaseSettings {
            retry_period: Duration::from_secs(1),
            ..LeaseSettings::new("unreachable", "default", "me")
        };
        let (_listener, mut elector) = unreachable_elector(settings.clone());
        // The acquiring request started a whole renew deadline ago (a slow answer):
        // nothing of the deadline is left, so the first failed renewal ends leadership.
        elector.acquired_at = Some(
            Instant::now()
                .checked_sub(settings.renew_deadline)
                .expect("the clock is past the renew deadline"),
        );
        // Counting from the first poll instead would end leadership a renew deadline
        // after it (10 s); counting from the acquire ends it after the first retry
        // period (1 s). The bound is half the renew deadline (5 s), far from both.
        let lost = tokio::time::timeout(settings.renew_deadline / 2, elector.hold())
            .await
            .expect("leadership ends at the acquire's start plus the renew deadline");
        assert_eq!(lost, Lost::NotRenewed(settings.renew_deadline));
    }

    #[test]
    fn a_released_lease_has_no_holder_and_is_taken_next() {
        let now = Timestamp::from_second(1_000).expect("timestamp");
        let spec = released(&held_by("me", 15), now);
        assert_eq!(holder(&spec), None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(decide(&spec, "other", false), Decision::Take);
    }

    #[test]
    fn timings_must_keep_a_single_leader() {
        let ok = LeaseSettings::new("nuop-standard", "ns", "me");
        assert_eq!(ok.validate(), Ok(()));
        let mut bad = ok.clone();
        bad.renew_deadline = bad.lease_duration;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.retry_period = bad.renew_deadline;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.lease_duration = Duration::from_millis(15_500);
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.name.clear();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        assert!(a.contains('_'));
    }
}
