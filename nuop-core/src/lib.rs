//! nuop-core: the reconcile engine and script protocol shared by every nuop binary.
//!
//! - [`protocol`]: the script contract as pure functions (config, exit codes, output).
//! - [`script`]: discovering scripts and running them with the embedded Nushell engine
//!   or as `nu` child processes.
//! - [`reconcile`]: the per-object pipeline (finalizer, script, write-back, events).
//! - [`controller`]: one kube-runtime controller per script.
//! - [`standard`]: standard mode, one controller per script under a root.
//! - [`health`], [`metrics`]: probes and Prometheus metrics.
//! - [`leader`]: leader election with a coordination.k8s.io Lease.
//! - [`runtime`]: the operated process: probes, metrics, leader election and graceful
//!   shutdown around a binary's controllers.
//! - [`telemetry`]: logs, OTLP traces and the termination signal.
//! - [`devtools`]: `check` and `exec` for script authors.
//! - [`testing`]: connecting tests to the real local control plane.

pub mod controller;
pub mod devtools;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod protocol;
pub mod reconcile;
pub mod runtime;
pub mod script;
pub mod standard;
pub mod telemetry;
pub mod testing;
