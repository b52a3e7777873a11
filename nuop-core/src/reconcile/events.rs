//! Best-effort Event delivery for one controller: a bounded queue drained by a
//! background task, so an Event never holds a reconcile's concurrency slot and never
//! competes on equal terms with the writes reconciles make.
//!
//! The shape follows client-go's event broadcaster: Events are queued (at most
//! [`QUEUE_CAPACITY`]), sent one at a time in the background, and dropped — counted in
//! `nuop_events_total{result="dropped"}` and logged — when the queue is full. Events are
//! a report, not state: losing some under a flood is better than slowing the
//! controller that produces them.
//!
//! [`publish`] turns an object and a reason into a queued Event (no I/O); the worker
//! does the I/O.

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use prometheus::IntCounter;
use serde_json::Value;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::warn;

use super::{Context, text};
use crate::metrics::METRICS;

/// Longest Event note, in bytes; longer notes are cut at a character boundary.
const MAX_NOTE: usize = 1000;

/// Queues an Event on `object` (sent in the background; a failure is logged and
/// does not fail the reconcile). Normal Events are skipped when the controller's `write_events` is off.
pub(crate) fn publish(
    ctx: &Context,
    object: &Value,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    if type_ == EventType::Normal && !ctx.write_events {
        return;
    }
    let mut note = note.to_string();
    if note.len() > MAX_NOTE {
        let cut = (0..=MAX_NOTE)
            .rev()
            .find(|i| note.is_char_boundary(*i))
            .unwrap_or(0);
        note.truncate(cut);
    }
    let reference = ObjectReference {
        api_version: Some(ctx.resource.api_version.clone()),
        kind: Some(ctx.resource.kind.clone()),
        name: Some(text(object, "/metadata/name").to_string()),
        namespace: object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        uid: object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        ..Default::default()
    };
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    // Queued, not awaited: an Event is a second API request per write, and waiting for
    // it would hold the reconcile's concurrency slot for a full round trip (it halved
    // throughput in `make bench-e2e`).
    ctx.events.send(event, reference);
}

/// Events one controller may have waiting to be sent; more are dropped.
pub const QUEUE_CAPACITY: usize = 1024;

/// Events one controller sends at once. One, as client-go's broadcaster does: during a
/// burst of writes the API server's time goes to the writes and the Events trail behind
/// them (two senders measured no faster in `make bench-e2e`, and competed more).
const SENDERS: usize = 1;

/// A drop is logged for the first one and then once per this many.
const LOG_EVERY_DROPS: u64 = 100;

/// One Event waiting to be sent.
struct Pending {
    event: Event,
    reference: ObjectReference,
}

/// What became of an Event handed to [`EventQueue::send`].
#[derive(Debug, PartialEq, Eq)]
pub enum Queued {
    /// It waits for a sender.
    Accepted,
    /// The queue was full (or the sender is gone); it was dropped and counted.
    Dropped,
}

/// The sending side of one controller's Event queue; cheap to share by reference.
pub struct EventQueue {
    controller: String,
    sender: mpsc::Sender<Pending>,
    /// `nuop_events_total{result="dropped"}` for this controller, looked up once.
    dropped: IntCounter,
}

/// The receiving side: run it (see [`EventWorker::run`]) to deliver the queued Events.
pub struct EventWorker {
    controller: String,
    receiver: mpsc::Receiver<Pending>,
}

impl EventQueue {
    /// A queue of `capacity` Events and the worker that drains it. Nothing is sent until
    /// the worker runs; [`EventQueue::spawn`] does both.
    pub fn new(controller: &str, capacity: usize) -> (Self, EventWorker) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let queue = Self {
            controller: controller.to_string(),
            sender,
            dropped: METRICS.events.with_label_values(&[controller, "dropped"]),
        };
        let worker = EventWorker {
            controller: controller.to_string(),
            receiver,
        };
        (queue, worker)
    }

    /// A queue of [`QUEUE_CAPACITY`] whose worker sends with `recorder` on the current
    /// tokio runtime until the queue is dropped.
    pub fn spawn(controller: &str, recorder: Recorder) -> Self {
        let (queue, worker) = Self::new(controller, QUEUE_CAPACITY);
        tokio::spawn(worker.run(recorder));
        queue
    }

    /// Queues an Event about the object `reference` names, without waiting.
    pub fn send(&self, event: Event, reference: ObjectReference) -> Queued {
        match self.sender.try_send(Pending { event, reference }) {
            Ok(()) => Queued::Accepted,
            Err(TrySendError::Full(pending) | TrySendError::Closed(pending)) => {
                self.dropped.inc();
                let dropped = self.dropped.get();
                if (dropped - 1).is_multiple_of(LOG_EVERY_DROPS) {
                    warn!(
                        controller = %self.controller,
                        reason = %pending.event.reason,
                        dropped_so_far = dropped,
                        "event queue full ({} waiting); dropping events",
                        self.sender.max_capacity()
                    );
                }
                Queued::Dropped
            }
        }
    }
}

impl EventWorker {
    /// Sends queued Events with `recorder` until every [`EventQueue`] handle is dropped
    /// and the queue is empty. A failed send is logged and counted, never retried: the
    /// Recorder already folds repeats into a series.
    pub async fn run(self, recorder: Recorder) {
        let controller = self.controller;
        let sent = METRICS
            .events
            .with_label_values(&[controller.as_str(), "sent"]);
        let failed = METRICS
            .events
            .with_label_values(&[controller.as_str(), "failed"]);
        let pending = futures::stream::unfold(self.receiver, |mut receiver| async move {
            receiver.recv().await.map(|p| (p, receiver))
        });
        pending
            .for_each_concurrent(SENDERS, |p| {
                let (recorder, controller) = (&recorder, controller.as_str());
                let (sent, failed) = (&sent, &failed);
                async move {
                    match recorder.publish(&p.event, &p.reference).await {
                        Ok(()) => sent.inc(),
                        Err(e) => {
                            warn!(controller, reason = %p.event.reason, "failed to publish event: {e}");
                            failed.inc();
                        }
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.to_string(),
            note: None,
            action: "Test".to_string(),
            secondary: None,
        }
    }

    fn dropped_count(controller: &str) -> u64 {
        METRICS
            .events
            .with_label_values(&[controller, "dropped"])
            .get()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, _worker) = EventQueue::new("events-unit-full", 2);
        let results: Vec<Queued> = (0..5)
            .map(|i| queue.send(event(&format!("R{i}")), ObjectReference::default()))
            .collect();
        assert_eq!(
            results,
            [
                Queued::Accepted,
                Queued::Accepted,
                Queued::Dropped,
                Queued::Dropped,
                Queued::Dropped
            ]
        );
        assert_eq!(dropped_count("events-unit-full"), 3);
    }

    #[tokio::test]
    async fn a_queue_whose_worker_is_gone_drops() {
        let (queue, worker) = EventQueue::new("events-unit-closed", 4);
        drop(worker);
        assert_eq!(
            queue.send(event("R"), ObjectReference::default()),
            Queued::Dropped
        );
        assert_eq!(dropped_count("events-unit-closed"), 1);
    }
}
