//! The shutdown signal every long-running part listens to: a cloneable future that
//! resolves once shutdown starts.
//!
//! No I/O of its own: [`shutdown_signal`] wraps whatever trigger the caller gives (the
//! termination signal, a test's channel, a lost lease) so that every controller, the
//! probe servers and the elector can each await a clone of it.

use std::future::Future;

use futures::future::{BoxFuture, FutureExt, Shared};

/// A future that resolves once shutdown starts; cloned into every controller.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Makes a [`Shutdown`] from any future.
pub fn shutdown_signal(trigger: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    trigger.boxed().shared()
}
