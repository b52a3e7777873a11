//! The console's memory of recent reconciles: why each object was reconciled
//! ([`Trigger`], kept per object in [`Pending`] until its reconcile starts), what one
//! reconcile did ([`Record`], with the script's log lines gathered by a [`Capture`]),
//! and the bounded ring of the last records of one controller ([`Journal`]).
//!
//! Pure: no I/O, no clock, no locks; the console (`super`) owns the locking and the
//! broadcast. Every size is bounded: a journal keeps at most its capacity
//! (`a_journal_keeps_only_the_last_records`), a capture at most [`MAX_LINES`] lines of
//! at most [`MAX_LINE_BYTES`] bytes (`a_capture_is_bounded`), and [`Pending`] one
//! trigger per object, pruned to the objects that still exist
//! (`pending_triggers_are_taken_once_and_pruned`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

/// Log lines kept per reconcile (the same number the pod log gets).
pub const MAX_LINES: usize = 50;

/// Bytes kept of one log line; a longer one is cut at a character boundary and marked.
pub const MAX_LINE_BYTES: usize = 400;

/// Why an object was reconciled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Trigger {
    /// An event of the object itself on the controller's watch (created, changed, the
    /// first list, or the echo of the controller's own write).
    OwnEvent,
    /// A child (`owns`) changed or went away.
    Child {
        /// The child's kind.
        kind: String,
        /// `namespace/name` (or `name` when cluster-scoped).
        object: String,
    },
    /// A related object (`watches`) changed or went away.
    Related {
        /// The related object's kind.
        kind: String,
        /// `namespace/name` (or `name`); empty when every primary was woken at once
        /// (map `all`, or the controller fell behind the shared watch).
        object: String,
    },
    /// The requeue after the previous reconcile (`requeue_after_change`/`_noop`).
    Requeue,
    /// A retry after a failure, with backoff.
    Retry {
        /// Consecutive failures so far.
        failures: u32,
    },
}

impl Trigger {
    /// A short phrase for pages: `own event`, `child ConfigMap ns/x`, `retry (3 failures)`.
    pub fn describe(&self) -> String {
        match self {
            Self::OwnEvent => "own event".into(),
            Self::Child { kind, object } => format!("child {kind} {object}"),
            Self::Related { kind, object } if object.is_empty() => {
                format!("related {kind} (all primaries)")
            }
            Self::Related { kind, object } => format!("related {kind} {object}"),
            Self::Requeue => "requeue".into(),
            Self::Retry { failures: 1 } => "retry (1 failure)".into(),
            Self::Retry { failures } => format!("retry ({failures} failures)"),
        }
    }
}

/// What one reconcile did, as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Process-wide sequence number, increasing: the live tail's event id.
    pub id: u64,
    /// The controller that reconciled.
    pub controller: String,
    /// The object's kind.
    pub kind: String,
    /// The object's namespace; empty for cluster-scoped objects.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// Why it was reconciled.
    pub trigger: Trigger,
    /// `no_change`, `changed`, `finalized`, `error` (as in `nuop_reconciles_total`), or
    /// `skipped` when nothing ran (the object was gone or being deleted without our
    /// finalizer).
    pub outcome: String,
    /// The error's category (`nuop_reconcile_errors_total`), for `error`.
    pub category: Option<String>,
    /// The error, for `error`.
    pub error: Option<String>,
    /// When the reconcile started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// What the script logged (stderr, and stdout when it was not an object), bounded.
    pub lines: Vec<String>,
}

impl Record {
    /// `namespace/name`, or `name` for a cluster-scoped object.
    pub fn object(&self) -> String {
        object_key(&self.namespace, &self.name)
    }
}

/// `namespace/name`, or `name` when `namespace` is empty: how objects are keyed.
pub fn object_key(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The script's log lines and the outcome of one reconcile, gathered while it runs.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Capture {
    /// The kept lines.
    pub lines: Vec<String>,
    /// Lines dropped past [`MAX_LINES`].
    pub dropped: usize,
    /// The outcome label, once counted.
    pub outcome: Option<&'static str>,
}

impl Capture {
    /// Adds the non-blank lines of `text`, each cut to [`MAX_LINE_BYTES`], keeping at
    /// most [`MAX_LINES`].
    pub fn add(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if self.lines.len() >= MAX_LINES {
                self.dropped += 1;
                continue;
            }
            self.lines.push(cut(line));
        }
    }

    /// The kept lines, with a last line saying how many were dropped.
    pub fn into_lines(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines.push(format!("... {} more lines", self.dropped));
        }
        self.lines
    }
}

fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line.to_string();
    }
    let mut end = MAX_LINE_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [cut]", &line[..end])
}

/// The last records of one controller, oldest first, at most `capacity`.
#[derive(Debug, Clone)]
pub struct Journal {
    capacity: usize,
    records: VecDeque<Arc<Record>>,
}

impl Journal {
    /// An empty journal keeping at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            records: VecDeque::with_capacity(capacity.min(1024)),
        }
    }

    /// Adds `record`, forgetting the oldest when full.
    pub fn push(&mut self, record: Arc<Record>) {
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every record, newest first.
    pub fn newest_first(&self) -> Vec<Arc<Record>> {
        self.records.iter().rev().cloned().collect()
    }

    /// The records of one object (`namespace` empty for cluster-scoped), newest first.
    pub fn of_object(&self, namespace: &str, name: &str) -> Vec<Arc<Record>> {
        self.records
            .iter()
            .rev()
            .filter(|r| r.namespace == namespace && r.name == name)
            .cloned()
            .collect()
    }

    /// The records with an id above `after`, oldest first.
    pub fn after(&self, after: u64) -> Vec<Arc<Record>> {
        self.records
            .iter()
            .filter(|r| r.id > after)
            .cloned()
            .collect()
    }
}

/// Merges the records after `after` of several journals, in id order: what a live tail
/// that reconnects with `Last-Event-ID: after` is sent first.
pub fn replay(journals: &[Vec<Arc<Record>>], after: u64) -> Vec<Arc<Record>> {
    let mut out: Vec<Arc<Record>> = journals
        .iter()
        .flatten()
        .filter(|r| r.id > after)
        .cloned()
        .collect();
    out.sort_by_key(|r| r.id);
    out
}

/// The trigger waiting for each object's next reconcile, keyed by [`object_key`].
///
/// Events mark objects ([`Pending::mark`], the latest mark wins); a reconcile takes its
/// object's mark when it starts ([`Pending::take`]). An object without a mark was woken
/// by the scheduler: a retry when its last reconcile failed, else its requeue. A mark
/// made while the object's reconcile runs stays for the reconcile kube-runtime runs
/// next because of it.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    marks: HashMap<String, Trigger>,
}

impl Pending {
    /// Notes that `key` is to be reconciled because of `trigger`.
    pub fn mark(&mut self, key: String, trigger: Trigger) {
        self.marks.insert(key, trigger);
    }

    /// Why `key` is being reconciled now, given its consecutive failures so far.
    pub fn take(&mut self, key: &str, failures: u32) -> Trigger {
        match self.marks.remove(key) {
            Some(trigger) => trigger,
            None if failures > 0 => Trigger::Retry { failures },
            None => Trigger::Requeue,
        }
    }

    /// The mark waiting for `key`, if any.
    pub fn peek(&self, key: &str) -> Option<&Trigger> {
        self.marks.get(key)
    }

    /// Forgets the marks of objects `exists` rejects (deleted before their reconcile).
    pub fn retain(&mut self, mut exists: impl FnMut(&str) -> bool) {
        self.marks.retain(|key, _| exists(key));
    }

    /// How many objects are marked.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, namespace: &str, name: &str) -> Arc<Record> {
        Arc::new(Record {
            id,
            controller: "c".into(),
            kind: "ConfigMap".into(),
            namespace: namespace.into(),
            name: name.into(),
            trigger: Trigger::OwnEvent,
            outcome: "no_change".into(),
            category: None,
            error: None,
            started_ms: 0,
            duration_ms: 1.0,
            lines: Vec::new(),
        })
    }

    #[test]
    fn a_journal_keeps_only_the_last_records() {
        let mut journal = Journal::new(3);
        for id in 1..=5 {
            journal.push(record(id, "ns", &format!("o{id}")));
        }
        assert_eq!(journal.len(), 3);
        let ids: Vec<u64> = journal.newest_first().iter().map(|r| r.id).collect();
        assert_eq!(ids, [5, 4, 3]);
        let ids: Vec<u64> = journal.after(3).iter().map(|r| r.id).collect();
        assert_eq!(ids, [4, 5]);
        // A capacity of 0 still keeps the last record.
        let mut tiny = Journal::new(0);
        tiny.push(record(1, "", "a"));
        tiny.push(record(2, "", "b"));
        assert_eq!(tiny.newest_first()[0].id, 2);
        assert_eq!(tiny.len(), 1);
    }

    #[test]
    fn records_of_one_object_are_found_newest_first() {
        let mut journal = Journal::new(10);
        journal.push(record(1, "a", "x"));
        journal.push(record(2, "b", "x"));
        journal.push(record(3, "a", "x"));
        journal.push(record(4, "", "x"));
        let ids: Vec<u64> = journal.of_object("a", "x").iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 1]);
        assert_eq!(journal.of_object("", "x")[0].object(), "x");
        assert_eq!(journal.of_object("b", "x")[0].object(), "b/x");
    }

    #[test]
    fn replay_merges_journals_after_an_id_in_order() {
        let one = vec![record(1, "a", "x"), record(4, "a", "x")];
        let two = vec![
            record(2, "a", "y"),
            record(3, "a", "y"),
            record(5, "a", "y"),
        ];
        let ids: Vec<u64> = replay(&[one.clone(), two.clone()], 2)
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, [3, 4, 5]);
        assert!(replay(&[one, two], 5).is_empty());
    }

    #[test]
    fn a_capture_is_bounded() {
        let mut capture = Capture::default();
        capture.add("first\n\n   \nsecond");
        assert_eq!(capture.lines, ["first", "second"]);
        let many: String = (0..MAX_LINES + 5).map(|i| format!("line {i}\n")).collect();
        capture.add(&many);
        let lines = capture.into_lines();
        assert_eq!(lines.len(), MAX_LINES + 1);
        assert_eq!(lines.last().map(String::as_str), Some("... 7 more lines"));

        let mut long = Capture::default();
        // Multi-byte characters across the cut: it lands on a character boundary.
        long.add(&"é".repeat(MAX_LINE_BYTES));
        assert!(long.lines[0].ends_with(" [cut]"), "{}", long.lines[0]);
        assert!(long.lines[0].len() <= MAX_LINE_BYTES + " [cut]".len());
    }

    #[test]
    fn pending_triggers_are_taken_once_and_pruned() {
        let mut pending = Pending::default();
        // Nothing marked: the scheduler woke it.
        assert_eq!(pending.take("ns/a", 0), Trigger::Requeue);
        assert_eq!(pending.take("ns/a", 2), Trigger::Retry { failures: 2 });
        // The latest mark wins and is taken once.
        pending.mark("ns/a".into(), Trigger::OwnEvent);
        let child = Trigger::Child {
            kind: "ConfigMap".into(),
            object: "ns/a-child".into(),
        };
        pending.mark("ns/a".into(), child.clone());
        assert_eq!(pending.peek("ns/a"), Some(&child));
        assert_eq!(pending.take("ns/a", 3), child);
        assert_eq!(pending.take("ns/a", 0), Trigger::Requeue);
        // Marks of objects that are gone are pruned.
        pending.mark("ns/gone".into(), Trigger::OwnEvent);
        pending.mark("ns/kept".into(), Trigger::OwnEvent);
        pending.retain(|key| key == "ns/kept");
        assert_eq!(pending.len(), 1);
        assert!(pending.peek("ns/kept").is_some());
    }

    #[test]
    fn triggers_describe_themselves() {
        assert_eq!(Trigger::OwnEvent.describe(), "own event");
        assert_eq!(
            Trigger::Retry { failures: 1 }.describe(),
            "retry (1 failure)"
        );
        assert_eq!(
            Trigger::Related {
                kind: "Namespace".into(),
                object: String::new()
            }
            .describe(),
            "related Namespace (all primaries)"
        );
        let json = serde_json::to_value(Trigger::Child {
            kind: "ConfigMap".into(),
            object: "ns/x".into(),
        })
        .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"type": "child", "kind": "ConfigMap", "object": "ns/x"})
        );
    }
}
