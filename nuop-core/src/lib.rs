//! nuop-core: the reconcile engine and script protocol shared by every nuop binary.
//!
//! - [`protocol`]: the script contract as pure functions (config, exit codes, output).
//! - [`script`]: discovering scripts and running them with the embedded Nushell engine
//!   or as `nu` child processes.
//! - [`reconcile`]: the per-object pipeline (finalizer, script, write-back, events).
//! - [`controller`]: one kube-runtime controller per script.
//! - [`informers`]: the per-process registry of shared watches and caches (owns,
//!   watches, reads).
//! - [`triggers`]: which related changes wake which primaries (pure).
//! - [`related`]: a controller's related kinds at run time (subscribe, wait, route).
//! - [`k8s`]: the `k8s` commands scripts call (signatures, wire form, errors).
//! - [`audit`]: the audit trail, one JSON record per write made on a script's behalf.
//! - [`cluster`]: what those commands run against (live, fake, recording).
//! - [`root`]: loading a scripts root (every `*/mod.nu` under it), for both modes.
//! - [`standard`]: standard mode, one controller per script under a root.
//! - [`health`], [`metrics`]: probes and Prometheus metrics.
//! - [`console`]: the read-only console (`--console-bind-address`): pages, live tail,
//!   `/debug/` JSON.
//! - [`leader`]: leader election with a coordination.k8s.io Lease.
//! - [`runtime`]: the operated process: probes, metrics, leader election and graceful
//!   shutdown around a binary's controllers.
//! - [`shutdown`]: the cloneable shutdown future every long-running part awaits.
//! - [`telemetry`]: logs, OTLP traces and the termination signal.
//! - [`init`]: reaping orphans when a binary runs as PID 1.
//! - [`devtools`]: `check` and `exec` for script authors.
//! - [`harness`]: `nuop-standard test`, script test cases run without a cluster.
//! - [`webhook`]: admission and conversion webhooks answered by scripts, over HTTPS
//!   (server, reviews, certificates, configurations).
//! - `testing` (cargo feature `testing`, test builds only): connecting tests to the real
//!   local control plane.

pub mod audit;
pub mod cluster;
pub mod console;
pub mod controller;
pub mod devtools;
pub mod harness;
pub mod health;
pub mod informers;
pub mod init;
pub mod k8s;
pub mod leader;
pub mod metrics;
pub mod protocol;
pub mod reconcile;
pub mod related;
pub mod root;
pub mod runtime;
pub mod script;
pub mod shutdown;
pub mod standard;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod triggers;
pub mod webhook;

/// Installs aws-lc-rs as rustls' process-wide provider (idempotent).
///
/// The build carries two rustls providers (aws-lc-rs for kube and gix, ring for
/// Nushell's `http` commands), so rustls cannot pick one from its crate features and
/// every TLS client built without an explicit provider (kube's) would panic. Each binary
/// calls this first, and so does every test that builds a kube client
/// (`testing::TestEnv` does it for its users).
pub fn install_crypto_provider() {
    // Err only means a provider is installed already: the first one stays.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
