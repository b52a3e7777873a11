//! The audit trail: one structured record for every change nuop makes on a script's
//! behalf, written as one JSON line to its own sink (`--audit-log`).
//!
//! A record is produced for the write-back of the object, the status write, the
//! finalizer added and removed, and every `k8s apply`, `patch`, `create` and `delete` a
//! script issues against the live cluster (dry runs included, marked `dry_run`). It
//! holds the time, the controller, the script revision (the commit in managed mode, a
//! `sha256:` digest of the script in standard mode, [`script_digest`]), the object
//! (apiVersion, kind, namespace, name, UID), the verb, the field manager, the result
//! (`ok`, or `error` with the message) and what changed as JSON pointers ([`changed`]).
//! A `k8s` command the session refuses before building a request (a usage error) sends
//! nothing and has no record; one the cluster refuses (an unknown kind) has one.
//! A failed write is recorded with its error, and a write whose request was abandoned
//! before the API server answered (the call's deadline, shutdown) is recorded as an
//! error saying so, since it may or may not have happened ([`Pending`]'s drop).
//!
//! # What a record never holds
//!
//! Values. `changed` lists the paths a request sets or removes, never what it sets them
//! to (`merge_patches_list_their_leaves_without_values`, and on the real cluster
//! `tests/audit.rs` `secret_values_never_reach_the_audit_log`). For a Secret even the
//! paths stop at `/data` and `/stringData` (key names are left out too), and an error is reduced to its class (`422 Invalid`,
//! `nuop::k8s::invalid`): the API server's message may quote what it refused. The full
//! error is in the controller's log as before. Tested by `secrets_show_no_keys` below
//! and, against the API server with the secret-cloner example, by
//! `tests/audit.rs::secret_values_never_reach_the_audit_log`.
//!
//! [`changed`] and [`AuditTarget::parse`] are pure; [`script_digest`] reads the script's
//! files; [`AuditLog`] does I/O (it appends lines to stdout or a file, synchronously, so
//! a record is written before the reconcile goes on and survives a crash right after).
//! Records are counted in `nuop_audit_records_total{verb,result}` and a line that could
//! not be written in `nuop_audit_write_errors_total`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;
use sha2::Digest as _;

use crate::metrics::METRICS;

/// The `target` every record carries, as tracing's JSON lines name theirs, so a log
/// pipeline that reads both streams can tell audit records apart.
pub const TARGET: &str = "nuop::audit";

/// At most this many pointers are listed per record; the rest are counted in
/// `changed_omitted`.
pub const MAX_POINTERS: usize = 64;

/// Where records go, as `--audit-log` names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditTarget {
    /// No records (the default).
    #[default]
    Off,
    /// JSON lines on stdout (logs go to stderr).
    Stdout,
    /// JSON lines appended to a file (created if absent).
    File(PathBuf),
}

impl AuditTarget {
    /// `off` (or empty) → off; `-`, `stdout` or `on` → stdout; anything else is a file
    /// path (write `./on` for a file named `on`).
    pub fn parse(text: &str) -> Self {
        match text.trim() {
            "" | "off" => Self::Off,
            "-" | "stdout" | "on" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// What nuop did: the `verb` of a record and of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// The script's answer written back to its object (a guarded merge patch).
    WriteBack,
    /// The answer's `.status` written to the status subresource.
    WriteStatus,
    /// nuop's finalizer added to the object.
    AddFinalizer,
    /// nuop's finalizer removed after a successful `finalize`.
    RemoveFinalizer,
    /// `k8s apply`.
    Apply,
    /// `k8s patch`.
    Patch,
    /// `k8s create`.
    Create,
    /// `k8s delete`.
    Delete,
}

impl Verb {
    /// Every verb, in documentation order.
    pub const ALL: [Self; 8] = [
        Self::WriteBack,
        Self::WriteStatus,
        Self::AddFinalizer,
        Self::RemoveFinalizer,
        Self::Apply,
        Self::Patch,
        Self::Create,
        Self::Delete,
    ];

    /// The label value (as in the record).
    pub fn label(self) -> &'static str {
        match self {
            Self::WriteBack => "write_back",
            Self::WriteStatus => "write_status",
            Self::AddFinalizer => "add_finalizer",
            Self::RemoveFinalizer => "remove_finalizer",
            Self::Apply => "apply",
            Self::Patch => "patch",
            Self::Create => "create",
            Self::Delete => "delete",
        }
    }
}

/// The object a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// `v1`, `apps/v1`.
    pub api_version: String,
    /// `ConfigMap`.
    pub kind: String,
    /// None for cluster-scoped objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The name (or `generateName` prefix of a create).
    pub name: String,
    /// The UID, when known (from the object, or the server's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl ObjectRef {
    /// The reference of an object as JSON (apiVersion, kind, metadata).
    pub fn of(object: &Value) -> Self {
        let text = |p: &str| {
            object
                .pointer(p)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Self {
            api_version: text("/apiVersion").unwrap_or_default(),
            kind: text("/kind").unwrap_or_default(),
            namespace: text("/metadata/namespace").filter(|n| !n.is_empty()),
            name: text("/metadata/name")
                .or_else(|| text("/metadata/generateName"))
                .unwrap_or_default(),
            uid: text("/metadata/uid").filter(|u| !u.is_empty()),
        }
    }

    fn is_secret(&self) -> bool {
        self.kind == "Secret" && self.api_version == "v1"
    }
}

/// The request document a change is summarised from.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// A JSON merge patch: every leaf it sets or removes (`null`).
    Merge(&'a Value),
    /// A JSON patch: the `path` (and a `move`'s `from`) of every operation but `test`.
    Json(&'a Value),
    /// A whole object (apply, create): every leaf it states but its identity
    /// (apiVersion, kind, metadata.name, metadata.namespace).
    Object(&'a Value),
    /// The whole object (delete): the root pointer `""`.
    Whole,
}

/// The changed paths of `change` as JSON pointers (RFC 6901), sorted and deduplicated,
/// without values (`merge_patches_list_their_leaves_without_values`): lists count as one leaf (a merge patch replaces them whole), empty
/// records as none, and `/metadata/resourceVersion` is left out (a precondition, not a
/// change). For a Secret (`secret`), pointers below `/data` and `/stringData` stop
/// there, so that not even key names are listed (`secrets_show_no_keys`). At most
/// [`MAX_POINTERS`] are returned, with the number left out.
pub fn changed(change: Change<'_>, secret: bool) -> (Vec<String>, usize) {
    let mut pointers = Vec::new();
    match change {
        Change::Merge(patch) => leaves(patch, String::new(), &mut pointers),
        Change::Object(object) => {
            leaves(object, String::new(), &mut pointers);
            pointers.retain(|p| {
                !matches!(
                    p.as_str(),
                    "/apiVersion" | "/kind" | "/metadata/name" | "/metadata/namespace"
                )
            });
        }
        Change::Json(ops) => {
            for op in ops.as_array().into_iter().flatten() {
                if op.get("op").and_then(Value::as_str) == Some("test") {
                    continue;
                }
                for key in ["path", "from"] {
                    if let Some(path) = op.get(key).and_then(Value::as_str) {
                        pointers.push(path.to_string());
                    }
                }
            }
        }
        Change::Whole => pointers.push(String::new()),
    }
    pointers.retain(|p| p != "/metadata/resourceVersion");
    if secret {
        for pointer in &mut pointers {
            for data in ["/data", "/stringData"] {
                if pointer.starts_with(&format!("{data}/")) {
                    *pointer = data.to_string();
                }
            }
        }
    }
    pointers.sort();
    pointers.dedup();
    let omitted = pointers.len().saturating_sub(MAX_POINTERS);
    pointers.truncate(MAX_POINTERS);
    (pointers, omitted)
}

/// Pushes the pointer of every leaf under `value` (at `at`).
fn leaves(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                leaves(child, format!("{at}/{}", escape(key)), out);
            }
        }
        _ => out.push(at),
    }
}

/// A key as a JSON pointer token: `~` → `~0`, `/` → `~1` (labels such as
/// `app.kubernetes.io/name`).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A `sha256:` digest of a script: every file under its directory (by relative path and
/// content; a symlink by its text and, when it points to a file, that file's content)
/// and the regular files directly beside it (helper modules it may `use` from `..`).
/// Another script's directory does not count (`digest_covers_the_script_and_its_helpers`).
///
/// # Errors
/// When a file cannot be read.
pub fn script_digest(dir: &Path) -> std::io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    let mut feed = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    digest_dir(dir, dir, &mut feed)?;
    if let Some(parent) = dir.parent() {
        let mut beside: Vec<PathBuf> = std::fs::read_dir(parent)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        beside.sort();
        for path in beside.iter().filter(|p| p.is_file()) {
            feed(b"beside");
            feed(path.file_name().unwrap_or_default().as_encoded_bytes());
            feed(&std::fs::read(path)?);
        }
    }
    let digest = hasher.finalize();
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

fn digest_dir(base: &Path, dir: &Path, feed: &mut impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        let relative = path.strip_prefix(base).unwrap_or(&path);
        feed(relative.as_os_str().as_encoded_bytes());
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_symlink() {
            feed(b"link");
            feed(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
            // A link to a directory is hashed by its text only (it may point upwards).
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                feed(&std::fs::read(&path)?);
            }
        } else if meta.is_dir() {
            feed(b"dir");
            digest_dir(base, &path, feed)?;
        } else {
            feed(b"file");
            feed(&std::fs::read(&path)?);
        }
    }
    Ok(())
}

/// One audit record, as written (one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// RFC 3339, UTC, when the write finished (or was abandoned).
    pub time: String,
    /// [`TARGET`], the log target every record is written under.
    pub target: &'static str,
    /// The controller (script or mapping name).
    pub controller: String,
    /// The commit (managed mode) or `sha256:` digest (standard mode) of the script.
    pub revision: String,
    /// The object written.
    pub object: ObjectRef,
    /// What was done.
    pub verb: Verb,
    /// `status` when a `k8s apply`/`patch` wrote the status subresource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<&'static str>,
    /// A `--dry-run` apply or create: validated, not persisted.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The field manager the request carried.
    pub field_manager: String,
    /// `ok` or `error`.
    pub result: &'static str,
    /// What went wrong (for a Secret, only the error's class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// JSON pointers of the changed paths ([`changed`]).
    pub changed: Vec<String>,
    /// Pointers left out past [`MAX_POINTERS`].
    #[serde(skip_serializing_if = "is_zero")]
    pub changed_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

enum Sink {
    Stdout,
    File(Mutex<std::fs::File>),
}

struct Shared {
    sink: Sink,
    /// Whether a failed write was warned about (once: a full disk would warn per write).
    warned: AtomicBool,
}

impl Shared {
    fn write(&self, record: &Record) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(e) => return self.failed(&e.to_string()),
        };
        line.push(b'\n');
        // One write_all per line under a lock: lines from concurrent reconciles never
        // interleave.
        let written = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(file) => file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .write_all(&line),
        };
        match written {
            Ok(()) => METRICS
                .audit_records
                .with_label_values(&[record.verb.label(), record.result])
                .inc(),
            Err(e) => self.failed(&e.to_string()),
        }
    }

    fn failed(&self, error: &str) {
        METRICS.audit_write_errors.inc();
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cannot write an audit record ({error}); counting further failures in nuop_audit_write_errors_total"
            );
        }
    }
}

/// The process's audit sink (cloneable; off by default), handed to every controller in
/// [`crate::controller::ControllerOptions`].
#[derive(Clone, Default)]
pub struct AuditLog {
    shared: Option<Arc<Shared>>,
    revision: Option<String>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("on", &self.shared.is_some())
            .field("revision", &self.revision)
            .finish()
    }
}

impl AuditLog {
    /// Opens `target` (a file is created if absent and appended to).
    ///
    /// # Errors
    /// When the file cannot be opened; the message names it.
    pub fn open(target: &AuditTarget) -> Result<Self, String> {
        let sink = match target {
            AuditTarget::Off => return Ok(Self::default()),
            AuditTarget::Stdout => Sink::Stdout,
            AuditTarget::File(path) => Sink::File(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("--audit-log: cannot open {}: {e}", path.display()))?,
            )),
        };
        Ok(Self {
            shared: Some(Arc::new(Shared {
                sink,
                warned: AtomicBool::new(false),
            })),
            revision: None,
        })
    }

    /// Whether records are written.
    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// The same sink, with `revision` (a commit) naming the script of the controllers
    /// it is handed to, instead of their script's digest (managed mode).
    #[must_use]
    pub fn with_revision(&self, revision: impl Into<String>) -> Self {
        Self {
            shared: self.shared.clone(),
            revision: Some(revision.into()),
        }
    }

    /// The auditor of one controller whose script lives in `script_dir`: its revision is
    /// the one set by [`AuditLog::with_revision`], else the script's [`script_digest`]
    /// (computed only when records are written).
    pub fn for_controller(&self, controller: &str, script_dir: &Path) -> Auditor {
        let Some(shared) = &self.shared else {
            return Auditor::default();
        };
        let revision = self
            .revision
            .clone()
            .unwrap_or_else(|| match script_digest(script_dir) {
                Ok(digest) => digest,
                Err(e) => {
                    tracing::warn!(
                        controller,
                        "cannot digest {} for audit records: {e}",
                        script_dir.display()
                    );
                    "unknown".to_string()
                }
            });
        Auditor {
            shared: Some(shared.clone()),
            controller: controller.to_string(),
            revision,
        }
    }
}

/// One controller's view of the audit log: the controller and script revision every
/// record it writes carries. [`Auditor::default`] writes nothing.
#[derive(Clone, Default)]
pub struct Auditor {
    shared: Option<Arc<Shared>>,
    controller: String,
    revision: String,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("on", &self.shared.is_some())
            .field("controller", &self.controller)
            .field("revision", &self.revision)
            .finish()
    }
}

/// What a write is, before it is sent.
#[derive(Debug, Clone)]
pub struct Intent<'a> {
    /// What is done.
    pub verb: Verb,
    /// To which object.
    pub object: ObjectRef,
    /// The request document.
    pub change: Change<'a>,
    /// Under which field manager.
    pub field_manager: &'a str,
    /// `status` for the status subresource of a `k8s` write.
    pub subresource: Option<&'static str>,
    /// Validate only.
    pub dry_run: bool,
}

impl Auditor {
    /// Whether records are written.
    pub fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// Starts the record of one write; finish it with [`Pending::ok`] or
    /// [`Pending::failed`] once the API server answered.
    pub fn begin(&self, intent: Intent<'_>) -> Pending {
        let Some(shared) = &self.shared else {
            return Pending(None);
        };
        let secret = intent.object.is_secret();
        let (changed, changed_omitted) = changed(intent.change, secret);
        Pending(Some((
            shared.clone(),
            Record {
                time: String::new(),
                target: TARGET,
                controller: self.controller.clone(),
                revision: self.revision.clone(),
                object: intent.object,
                verb: intent.verb,
                subresource: intent.subresource,
                dry_run: intent.dry_run,
                field_manager: intent.field_manager.to_string(),
                result: "ok",
                error: None,
                changed,
                changed_omitted,
            },
        )))
    }
}

/// A record waiting for the API server's answer. Dropped unfinished (the request was
/// abandoned: the call's deadline, shutdown), it is written as an error saying the
/// write may or may not have happened.
#[must_use = "a pending record is written when finished (or as abandoned when dropped)"]
pub struct Pending(Option<(Arc<Shared>, Record)>);

impl Pending {
    /// The write succeeded; `uid` is the object's UID from the answer, when it has one.
    pub fn ok(mut self, uid: Option<&str>) {
        if let Some((shared, mut record)) = self.0.take() {
            if let Some(uid) = uid.filter(|u| !u.is_empty()) {
                record.object.uid = Some(uid.to_string());
            }
            finish(&shared, record);
        }
    }

    /// The write succeeded and the API server answered `answer` (the object written):
    /// its UID and name (a `generateName` create's) complete the reference.
    pub fn ok_object(mut self, answer: &Value) {
        if let Some((_, record)) = &mut self.0 {
            let found = ObjectRef::of(answer);
            if !found.name.is_empty() {
                record.object.name = found.name;
            }
        }
        self.ok(answer.pointer("/metadata/uid").and_then(Value::as_str));
    }

    /// The write succeeded but changed nothing (a delete of an absent object).
    pub fn ok_unchanged(mut self) {
        if let Some((shared, mut record)) = self.0.take() {
            record.changed.clear();
            record.changed_omitted = 0;
            finish(&shared, record);
        }
    }

    /// The write failed with `message`; `class` (a status code and reason, or an error
    /// code) is all that is recorded for a Secret.
    pub fn failed(mut self, message: &str, class: &str) {
        if let Some((shared, mut record)) = self.0.take() {
            record.result = "error";
            record.error = Some(if record.object.is_secret() {
                class.to_string()
            } else {
                message.to_string()
            });
            finish(&shared, record);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some((shared, mut record)) = self.0.take() {
            record.result = "error";
            record.error = Some(
                "abandoned before the API server answered (deadline or shutdown); the write may have happened"
                    .into(),
            );
            finish(&shared, record);
        }
    }
}

fn finish(shared: &Shared, mut record: Record) {
    record.time = k8s_openapi::jiff::Timestamp::now().to_string();
    shared.write(&record);
}

/// The class of a kube error, all an audit record of a Secret says about it:
/// `<code> <reason>` for an answer of the API server, `request failed` otherwise.
pub fn kube_error_class(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} {}", status.code, status.reason),
        _ => "request failed".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patches_list_their_leaves_without_values() {
        let patch = json!({"metadata": {"labels": {"app.kubernetes.io/name": "x", "gone": null},
                                        "resourceVersion": "7", "annotations": {}},
                           "data": {"k": "v", "a~b": "w"}, "spec": {"ports": [1, 2]}});
        assert_eq!(
            changed(Change::Merge(&patch), false),
            (
                vec![
                    "/data/a~0b".to_string(),
                    "/data/k".into(),
                    "/metadata/labels/app.kubernetes.io~1name".into(),
                    "/metadata/labels/gone".into(),
                    "/spec/ports".into(),
                ],
                0
            )
        );
    }

    #[test]
    fn json_patches_list_their_paths_but_not_tests() {
        let ops = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["nuop.dev/f"]},
            {"op": "move", "from": "/data/a", "path": "/data/b"},
        ]);
        assert_eq!(
            changed(Change::Json(&ops), false).0,
            ["/data/a", "/data/b", "/metadata/finalizers"]
        );
    }

    #[test]
    fn objects_list_what_they_state_but_their_identity_and_deletes_the_root() {
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "labels": {"x": "1"}}, "data": {"k": "v"}});
        assert_eq!(
            changed(Change::Object(&object), false).0,
            ["/data/k", "/metadata/labels/x"]
        );
        assert_eq!(changed(Change::Whole, false).0, [""]);
    }

    #[test]
    fn secrets_show_no_keys() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "n", "labels": {"x": "1"}},
            "data": {"password": "c2VjcmV0"}, "stringData": {"token": "plain"}, "type": "Opaque"});
        let (pointers, _) = changed(Change::Object(&secret), true);
        assert_eq!(
            pointers,
            ["/data", "/metadata/labels/x", "/stringData", "/type"]
        );
        let ops = json!([{"op": "remove", "path": "/data/password"}]);
        assert_eq!(changed(Change::Json(&ops), true).0, ["/data"]);
        // Nothing of the Secret's data, not even a key, in the whole record.
        let log = AuditLog::open(&AuditTarget::Off).expect("off");
        assert!(!log.is_on());
        let record = Record {
            time: String::new(),
            target: TARGET,
            controller: "c".into(),
            revision: "r".into(),
            object: ObjectRef::of(&secret),
            verb: Verb::Create,
            subresource: None,
            dry_run: false,
            field_manager: "nuop-c".into(),
            result: "ok",
            error: None,
            changed: pointers,
            changed_omitted: 0,
        };
        let line = serde_json::to_string(&record).expect("json");
        for value in ["password", "c2VjcmV0", "secret", "token", "plain"] {
            assert!(!line.contains(value), "{value} in {line}");
        }
    }

    #[test]
    fn pointers_are_capped() {
        let data: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("k{i:03}"), json!("v"))).collect();
        let patch = json!({ "data": data });
        let (pointers, omitted) = changed(Change::Merge(&patch), false);
        assert_eq!(
            (pointers.len(), omitted),
            (MAX_POINTERS, 100 - MAX_POINTERS)
        );
    }

    #[test]
    fn targets_parse() {
        assert_eq!(AuditTarget::parse("off"), AuditTarget::Off);
        assert_eq!(AuditTarget::parse(""), AuditTarget::Off);
        assert_eq!(AuditTarget::parse("-"), AuditTarget::Stdout);
        assert_eq!(AuditTarget::parse("stdout"), AuditTarget::Stdout);
        assert_eq!(AuditTarget::parse("on"), AuditTarget::Stdout);
        assert_eq!(
            AuditTarget::parse("/var/log/nuop/audit.jsonl"),
            AuditTarget::File("/var/log/nuop/audit.jsonl".into())
        );
    }

    #[test]
    fn digest_covers_the_script_and_its_helpers() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |path: &str, text: &str| {
            let path = root.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("a/mod.nu", "def main [] {}");
        write("b/mod.nu", "def main [] {}");
        let a = root.path().join("a");
        let first = script_digest(&a).expect("digest");
        assert!(
            first.starts_with("sha256:") && first.len() == 7 + 64,
            "{first}"
        );
        assert_eq!(script_digest(&a).expect("digest"), first, "stable");
        write("b/mod.nu", "def main [] { 1 }");
        assert_eq!(script_digest(&a).expect("digest"), first, "another script");
        write("lib.nu", "export def x [] { 1 }");
        let second = script_digest(&a).expect("digest");
        assert_ne!(second, first, "a helper beside it");
        write("a/util/x.nu", "1");
        assert_ne!(script_digest(&a).expect("digest"), second, "its own files");
    }

    #[test]
    fn records_go_to_the_file_one_line_each_and_abandoned_writes_are_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditTarget::File(path.clone())).expect("open");
        let auditor = log.with_revision("abc123").for_controller("c", dir.path());
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "uid": "u1"}});
        let patch = json!({"data": {"k": "v"}});
        let intent = |verb| Intent {
            verb,
            object: ObjectRef::of(&object),
            change: Change::Merge(&patch),
            field_manager: "nuop-c",
            subresource: None,
            dry_run: false,
        };
        auditor.begin(intent(Verb::WriteBack)).ok(None);
        auditor
            .begin(intent(Verb::Patch))
            .failed("configmaps \"a\" is forbidden", "403 Forbidden");
        drop(auditor.begin(intent(Verb::WriteStatus)));
        let text = std::fs::read_to_string(&path).expect("read");
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(records.len(), 3, "{text}");
        assert_eq!(records[0]["verb"], "write_back");
        assert_eq!(records[0]["result"], "ok");
        assert_eq!(records[0]["revision"], "abc123");
        assert_eq!(records[0]["target"], TARGET);
        assert_eq!(
            records[0]["object"],
            json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": "n", "name": "a", "uid": "u1"})
        );
        assert_eq!(records[0]["changed"], json!(["/data/k"]));
        assert_eq!(records[1]["error"], "configmaps \"a\" is forbidden");
        assert_eq!(records[2]["result"], "error");
        assert!(
            records[2]["error"]
                .as_str()
                .is_some_and(|e| e.contains("abandoned")),
            "{text}"
        );
        assert!(Verb::ALL.iter().all(|v| {
            serde_json::to_value(v).ok() == Some(Value::String(v.label().to_string()))
        }));
    }
}
