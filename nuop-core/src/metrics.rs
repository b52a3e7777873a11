//! Prometheus metrics shared by every binary, all under the `nuop_` prefix.
//!
//! No I/O: a process-wide registry and typed handles. Labels are bounded (controller,
//! outcome, category, phase, executor) — never an object name, so cardinality stays the
//! number of controllers times a handful.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// How a finished reconcile is counted in `nuop_reconciles_total{outcome}`: the one
/// vocabulary of that label, for every binary (README "Metrics"). Defined only here
/// (`outcome_labels_are_the_documented_vocabulary`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileOutcome {
    /// The script answered exit 0.
    NoChange,
    /// The script answered exit 2 and its answer, if any, was written.
    Changed,
    /// `finalize` succeeded and the finalizer was removed (or there was none to remove).
    Finalized,
    /// The reconcile failed; its category is counted in `nuop_reconcile_errors_total`.
    Error,
}

impl ReconcileOutcome {
    /// Every outcome, in documentation order.
    pub const ALL: [Self; 4] = [Self::NoChange, Self::Changed, Self::Finalized, Self::Error];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoChange => "no_change",
            Self::Changed => "changed",
            Self::Finalized => "finalized",
            Self::Error => "error",
        }
    }
}

impl From<crate::protocol::Outcome> for ReconcileOutcome {
    fn from(outcome: crate::protocol::Outcome) -> Self {
        match outcome {
            crate::protocol::Outcome::NoChange => Self::NoChange,
            crate::protocol::Outcome::Changed => Self::Changed,
            crate::protocol::Outcome::Failed(_) => Self::Error,
        }
    }
}

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by controller and outcome (no_change, changed, finalized, error).
    pub reconciles: IntCounterVec,
    /// Reconcile duration in seconds, by controller.
    pub reconcile_duration: HistogramVec,
    /// Script call duration in seconds, by controller, phase and executor.
    pub script_duration: HistogramVec,
    /// Reconcile errors by controller and category.
    pub errors: IntCounterVec,
    /// Objects in each controller's cache.
    pub objects: IntGaugeVec,
    /// Reconciles running now, by controller.
    pub in_flight: IntGaugeVec,
    /// Objects (and releases) waiting to retry after a failure, by controller: the size
    /// of the controller's backoff map.
    pub backoff: IntGaugeVec,
    /// Controllers whose watch has completed its first list.
    pub controllers_synced: IntGauge,
    /// 1 while this process holds the leader lease (or runs without leader election).
    pub leader: IntGauge,
    /// Events by controller and result (sent, failed, dropped when the queue is full).
    pub events: IntCounterVec,
    /// Script source syncs by source and result (managed mode).
    pub source_syncs: IntCounterVec,
    /// 1 for the revision each source runs (managed mode): one series per source, the
    /// previous revision's removed when a new one is taken.
    pub source_revision: IntGaugeVec,
    /// Objects in the shared informer caches (owns, watches, reads), by kind.
    pub informer_objects: IntGaugeVec,
    /// Shared watches running now (one per kind, namespace and selectors).
    pub informer_watches: IntGauge,
    /// Subscriptions held on the shared watches (one per controller and declared kind
    /// and namespace).
    pub informer_subscriptions: IntGauge,
    /// Times a controller fell behind a shared watch's changes and reconciled every
    /// object instead, by controller and kind.
    pub informer_lagged: IntCounterVec,
    // --- console (issue 16) ---
    /// Controllers registered (running or starting): `nuop_controllers_synced` below it
    /// means some have not listed yet (alert NuopControllersNotSynced).
    pub controllers: IntGauge,
    // --- k8s commands (issue 13, H2) ---
    /// `k8s get`/`k8s list` reads that went to the API server (an undeclared kind, a
    /// read no cache covers, or `--live`), by controller and kind.
    pub k8s_uncached_reads: IntCounterVec,
    // --- audit trail (issue 19) ---
    /// Audit records written, by verb and result (`ok`, `error`); see [`crate::audit`].
    pub audit_records: IntCounterVec,
    /// Audit records that could not be written (the sink failed).
    pub audit_write_errors: IntCounter,
    // --- webhooks (issue 14) ---
    /// Webhook requests by webhook (controller), kind (validate, mutate, convert) and
    /// result (allowed, denied, mutated, error).
    pub webhook_requests: IntCounterVec,
    /// Time from a webhook request's arrival to its answer, by webhook and kind.
    pub webhook_duration: HistogramVec,
}

/// Holds a gauge one higher while alive: incremented on creation, decremented on drop,
/// so a reconcile that is aborted (shutdown, lease loss, a managed restart) still gives
/// its count back (`a_dropped_guard_gives_its_count_back`).
#[must_use = "the gauge goes back down when the guard is dropped"]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn inc(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0,
        ];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(c.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.clone()),
                labels,
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(h.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            h
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("register {name}: {e}"));
            g
        };
        Self {
            reconciles: counter(
                "nuop_reconciles_total",
                "Reconciles by controller and outcome.",
                &["controller", "outcome"],
            ),
            reconcile_duration: histogram(
                "nuop_reconcile_duration_seconds",
                "Time one reconcile took, API calls included.",
                &["controller"],
            ),
            script_duration: histogram(
                "nuop_script_call_duration_seconds",
                "Time one script call took.",
                &["controller", "phase", "executor"],
            ),
            errors: counter(
                "nuop_reconcile_errors_total",
                "Failed reconciles by controller and error category.",
                &["controller", "category"],
            ),
            objects: gauge_vec(
                "nuop_cached_objects",
                "Objects in each controller's watch cache.",
                &["controller"],
            ),
            in_flight: gauge_vec(
                "nuop_reconciles_in_flight",
                "Reconciles running now.",
                &["controller"],
            ),
            backoff: gauge_vec(
                "nuop_backoff_objects",
                "Objects waiting to retry after a failed reconcile or release.",
                &["controller"],
            ),
            controllers_synced: gauge(
                "nuop_controllers_synced",
                "Controllers whose watch has completed its first list.",
            ),
            leader: gauge(
                "nuop_leader",
                "1 while this process is the leader (always 1 without --leader-elect).",
            ),
            events: counter(
                "nuop_events_total",
                "Kubernetes Events by controller and result (sent, failed, dropped).",
                &["controller", "result"],
            ),
            source_syncs: counter(
                "nuop_source_syncs_total",
                "Script source fetches by source and result (managed mode).",
                &["source", "result"],
            ),
            source_revision: gauge_vec(
                "nuop_source_revision_info",
                "1 for the git revision each source runs (managed mode).",
                &["source", "revision"],
            ),
            informer_objects: gauge_vec(
                "nuop_informer_cached_objects",
                "Objects in the shared informer caches (owns, watches, reads), by kind.",
                &["kind"],
            ),
            informer_watches: gauge(
                "nuop_informer_watches",
                "Shared watches running now (one per kind, namespace and selectors).",
            ),
            informer_subscriptions: gauge(
                "nuop_informer_subscriptions",
                "Subscriptions held on the shared watches.",
            ),
            informer_lagged: counter(
                "nuop_informer_lagged_total",
                "Times a controller fell behind a shared watch and reconciled everything instead.",
                &["controller", "kind"],
            ),
            // --- console (issue 16) ---
            controllers: gauge(
                "nuop_controllers",
                "Controllers registered (running or starting); compare nuop_controllers_synced.",
            ),
            // --- k8s commands (issue 13, H2) ---
            k8s_uncached_reads: counter(
                "nuop_k8s_uncached_reads_total",
                "k8s get/list reads served by the API server rather than a cache, by controller and kind.",
                &["controller", "kind"],
            ),
            // --- audit trail (issue 19) ---
            audit_records: counter(
                "nuop_audit_records_total",
                "Audit records written, by verb and result.",
                &["verb", "result"],
            ),
            audit_write_errors: {
                let c = IntCounter::new(
                    "nuop_audit_write_errors_total",
                    "Audit records that could not be written.",
                )
                .unwrap_or_else(|e| panic!("metric nuop_audit_write_errors_total: {e}"));
                registry
                    .register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("register nuop_audit_write_errors_total: {e}"));
                c
            },
            // --- webhooks (issue 14) ---
            webhook_requests: counter(
                "nuop_webhook_requests_total",
                "Webhook requests by webhook (controller), kind (validate, mutate, convert) and result (allowed, denied, mutated, error).",
                &["webhook", "kind", "result"],
            ),
            webhook_duration: histogram(
                "nuop_webhook_request_duration_seconds",
                "Time from a webhook request's arrival to its answer.",
                &["webhook", "kind"],
            ),
            registry,
        }
    }

    /// Counts one finished reconcile of `controller` as `outcome`.
    pub fn count_reconcile(&self, controller: &str, outcome: ReconcileOutcome) {
        self.reconciles
            .with_label_values(&[controller, outcome.label()])
            .inc();
    }

    /// Removes the series of a stopped controller from its gauges (cached objects,
    /// reconciles in flight), so a removed mapping does not report its last value for
    /// ever (`a_stopped_controller_leaves_no_gauge_series`). Counters keep their totals.
    pub fn forget_controller(&self, controller: &str) {
        let _ = self.objects.remove_label_values(&[controller]);
        let _ = self.in_flight.remove_label_values(&[controller]);
        let _ = self.backoff.remove_label_values(&[controller]);
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            return format!("# failed to encode metrics: {e}\n");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_their_names_and_labels() {
        METRICS
            .reconciles
            .with_label_values(&["unit-test", "changed"])
            .inc();
        METRICS
            .script_duration
            .with_label_values(&["unit-test", "reconcile", "embedded"])
            .observe(0.001);
        let text = METRICS.render();
        assert!(
            text.contains("nuop_reconciles_total{controller=\"unit-test\",outcome=\"changed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nuop_script_call_duration_seconds_bucket"),
            "{text}"
        );
        assert!(text.contains("# TYPE nuop_leader gauge"), "{text}");
    }

    #[test]
    fn outcome_labels_are_the_documented_vocabulary() {
        let labels: Vec<&str> = ReconcileOutcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels, ["no_change", "changed", "finalized", "error"]);
        use crate::protocol::Outcome;
        assert_eq!(
            ReconcileOutcome::from(Outcome::from_exit_code(0)),
            ReconcileOutcome::NoChange
        );
        assert_eq!(
            ReconcileOutcome::from(Outcome::from_exit_code(2)),
            ReconcileOutcome::Changed
        );
        assert_eq!(
            ReconcileOutcome::from(Outcome::from_exit_code(3)),
            ReconcileOutcome::Error
        );
        let readme = include_str!("../../README.md");
        for label in labels {
            assert!(
                readme.contains(&format!("`{label}`")),
                "README lacks {label}"
            );
        }
    }

    #[test]
    fn a_dropped_guard_gives_its_count_back() {
        let gauge = METRICS.in_flight.with_label_values(&["unit-guard"]);
        let guard = GaugeGuard::inc(gauge.clone());
        assert_eq!(gauge.get(), 1);
        // An aborted future drops its locals like this.
        let aborted = async move {
            let _held = guard;
            std::future::pending::<()>().await;
        };
        drop(aborted);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_stopped_controller_leaves_no_gauge_series() {
        METRICS.objects.with_label_values(&["unit-stopped"]).set(7);
        METRICS
            .in_flight
            .with_label_values(&["unit-stopped"])
            .set(1);
        METRICS.backoff.with_label_values(&["unit-stopped"]).set(1);
        METRICS.forget_controller("unit-stopped");
        let text = METRICS.render();
        assert!(!text.contains("controller=\"unit-stopped\""), "{text}");
    }
}
