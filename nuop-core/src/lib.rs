//! nuop-core: the reconcile engine and script protocol shared by every nuop binary.
//!
//! - [`protocol`]: the script contract as pure functions (config, exit codes, output).
//! - [`script`]: discovering scripts and running them with the embedded Nushell engine
//!   or as `nu` child processes.
//! - [`devtools`]: `check` and `exec` for script authors.
//! - [`testing`]: connecting tests to the real local control plane.

pub mod devtools;
pub mod protocol;
pub mod script;
pub mod testing;
