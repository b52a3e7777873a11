//! Managed mode in-process against the real control plane: scripts from a git
//! repository served by `git daemon` reconcile ConfigMaps in the test's namespace; new
//! commits are hot-reloaded, broken ones (a parse error, a top level that hangs) rejected, an unreachable source keeps the last
//! good revision running. Signed sources (issue 19 item 1): real SSH-signed commits and
//! tags made with ssh-keygen and git in the test; unsigned, unknown-key and tampered
//! commits are rejected, and keys rotate through a ConfigMap without a gap.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Daemon, Repo};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use nuop_core::controller::{ControllerOptions, shutdown_signal};
use nuop_core::health::Readiness;
use nuop_core::metrics::METRICS;
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, eventually};
use nuop_crd::{ManagedConfig, Mapping, NuOperator, OperatorRef, Source};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(60);

/// The load timeout managed mode runs with in these tests.
const LOAD_TIMEOUT: Duration = Duration::from_secs(3);

/// Stamps each object with `STAMP`.
const STAMPER: &str = r#"
def "main config" [] {
  { name: "stamper", version: "v1", kind: "ConfigMap", namespaces: ["NAMESPACE"] } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  if ($obj.metadata.annotations? | default {} | get -o "nuop.dev/stamp") == "STAMP" { exit 0 }
  print ($obj | upsert metadata.annotations."nuop.dev/stamp" "STAMP" | to json)
  exit 2
}
"#;

/// Marks each object kept and logs every call to CALLS.
const KEEPER: &str = r#"
def "main config" [] {
  { name: "keeper", version: "v1", kind: "ConfigMap", namespaces: ["NAMESPACE"] } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  $"($obj.metadata.name)\n" | save --append "CALLS"
  if ($obj.metadata.annotations? | default {} | get -o "nuop.dev/kept") == "yes" { exit 0 }
  print ($obj | upsert metadata.annotations."nuop.dev/kept" "yes" | to json)
  exit 2
}
"#;

fn stamper(namespace: &str, stamp: &str) -> String {
    STAMPER
        .replace("NAMESPACE", namespace)
        .replace("STAMP", stamp)
}

/// `nuop_managed::run` in the background; stopped when dropped.
struct Managed {
    readiness: Arc<Readiness>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), String>>,
    _cache: tempfile::TempDir,
    /// The audit log every run writes (`<tmp>/audit.jsonl`).
    audit: std::path::PathBuf,
    _audit_dir: tempfile::TempDir,
}

/// Managed mode's settings for `env`'s namespace, reporting to the NuOperator
/// `operator` (none when empty), syncing every second into `cache`.
fn settings(
    env: &TestEnv,
    operator: &str,
    sources: Vec<Source>,
    mappings: Vec<Mapping>,
    cache: &Path,
    webhooks: nuop_core::runtime::WebhookOptions,
) -> nuop_managed::Settings {
    nuop_managed::Settings {
        config: ManagedConfig {
            nu_operator: OperatorRef {
                namespace: env.namespace.clone(),
                name: operator.into(),
            },
            sources,
            mappings,
            sync_interval: 1,
        },
        sync_interval: Duration::from_secs(1),
        cache_dir: cache.to_path_buf(),
        secrets_dir: None,
        fetch_timeout: Duration::from_secs(30),
        executor: ExecutorKind::Embedded,
        // Short, so that the test of a hanging top level does not wait long; far
        // above what parsing these scripts takes.
        load_timeout: LOAD_TIMEOUT,
        webhooks,
    }
}

impl Managed {
    async fn start(env: &TestEnv, sources: Vec<Source>, mappings: Vec<Mapping>) -> Self {
        // No NuOperator: no status to write.
        Self::start_for(env, "", sources, mappings).await
    }

    /// Like [`Managed::start`], reporting to the NuOperator `operator`.
    async fn start_for(
        env: &TestEnv,
        operator: &str,
        sources: Vec<Source>,
        mappings: Vec<Mapping>,
    ) -> Self {
        // Logs help when a test fails (cargo shows them); only the first call installs.
        let _ = nuop_core::telemetry::init_logs("plain");
        let cache = tempfile::tempdir().expect("tempdir");
        let settings = settings(
            env,
            operator,
            sources,
            mappings,
            cache.path(),
            nuop_core::runtime::WebhookOptions::default(),
        );
        let readiness = Readiness::new();
        let audit_dir = tempfile::tempdir().expect("tempdir");
        let audit = audit_dir.path().join("audit.jsonl");
        let options = ControllerOptions {
            readiness: readiness.clone(),
            audit: nuop_core::audit::AuditLog::open(&nuop_core::audit::AuditTarget::File(
                audit.clone(),
            ))
            .expect("open the audit log"),
            ..ControllerOptions::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = shutdown_signal(async move {
            let _ = stopped.await;
        });
        let handle = tokio::spawn(nuop_managed::run(
            env.client.clone(),
            settings,
            options,
            shutdown,
        ));
        Self {
            readiness,
            stop: Some(stop),
            handle,
            _cache: cache,
            audit,
            _audit_dir: audit_dir,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(LIMIT, &mut self.handle)
            .await
            .expect("stops in time")
            .expect("task");
        assert_eq!(result, Ok(()));
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn create(api: &Api<ConfigMap>, name: &str, app: &str) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("app".to_string(), app.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

async fn annotation_becomes(api: &Api<ConfigMap>, name: &str, key: &str, value: &str) {
    eventually(
        &format!("{name} annotated {key}={value}"),
        LIMIT,
        || async {
            let cm = api.get_opt(name).await.ok().flatten()?;
            (cm.annotations().get(key).map(String::as_str) == Some(value)).then_some(())
        },
    )
    .await;
}

fn syncs(url: &str, result: &str) -> u64 {
    METRICS.source_syncs.with_label_values(&[url, result]).get()
}

/// The revisions `nuop_source_revision_info` reports for `url`.
fn revisions(url: &str) -> Vec<String> {
    let source = format!("source=\"{url}\"");
    nuop_core::metrics::METRICS
        .render()
        .lines()
        .filter(|l| l.starts_with("nuop_source_revision_info{") && l.contains(&source))
        .filter_map(|l| {
            l.split("revision=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect()
}

fn calls(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_new_commit_reloads_only_its_controller_and_a_broken_one_is_rejected() {
    let env = TestEnv::new("managed-hot-reload").await;
    let api: Api<ConfigMap> = env.api();
    let repo = Repo::new();
    let calls_file = repo.tmp.path().join("keeper-calls.log");
    repo.write("scripts/stamper/mod.nu", &stamper(&env.namespace, "v1"));
    repo.write(
        "scripts/keeper/mod.nu",
        &KEEPER
            .replace("NAMESPACE", &env.namespace)
            .replace("CALLS", &calls_file.display().to_string()),
    );
    repo.write("README.md", "not a script\n");
    repo.commit("v1");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let managed = Managed::start(
        &env,
        vec![Source::new(format!("{url}?ref=main&dir=scripts"))],
        vec![
            Mapping::new("stamper", "v1", "ConfigMap").with_label_selector("app", "stamp"),
            // No timed requeues: every keeper call comes from a watch event or a start.
            Mapping::new("keeper", "v1", "ConfigMap")
                .with_label_selector("app", "keep")
                .with_requeue_after_change(3600)
                .with_requeue_after_noop(3600),
        ],
    )
    .await;

    create(&api, "stamped-a", "stamp").await;
    create(&api, "kept", "keep").await;
    annotation_becomes(&api, "stamped-a", "nuop.dev/stamp", "v1").await;
    annotation_becomes(&api, "kept", "nuop.dev/kept", "yes").await;
    // The mapping's selector narrows the script's watch.
    let kept = api.get("kept").await.expect("get kept");
    assert!(!kept.annotations().contains_key("nuop.dev/stamp"));
    eventually("ready", LIMIT, || async { managed.readiness.check().ok() }).await;
    // The keeper reconciled its object once (changed). The watch event of its own
    // write-back is not reconciled again (the write-back echo, `cluster::echo`), unless
    // it raced ahead of the write's response: wait until the count stands still.
    let keeper_calls = eventually("the keeper's calls to settle", LIMIT, || async {
        let before = calls(&calls_file);
        tokio::time::sleep(Duration::from_millis(300)).await;
        (before >= 1 && calls(&calls_file) == before).then_some(before)
    })
    .await;

    // Hot reload: only the stamper changes, and all its objects get the new stamp.
    // Readiness is sampled throughout: a restart of a synced mapping must not flap it.
    let (sampling, unready) = {
        let readiness = managed.readiness.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let sampler = tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                if let Err(reason) = readiness.check() {
                    seen.push(reason);
                }
                tokio::select! {
                    _ = &mut stopped => return seen,
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        });
        (stop, sampler)
    };
    repo.write("scripts/stamper/mod.nu", &stamper(&env.namespace, "v2"));
    let v2 = repo.commit("v2");
    annotation_becomes(&api, "stamped-a", "nuop.dev/stamp", "v2").await;
    let _ = sampling.send(());
    let flaps = unready.await.expect("sampler");
    assert_eq!(
        flaps,
        Vec::<String>::new(),
        "/readyz flapped during the reload"
    );
    create(&api, "stamped-b", "stamp").await;
    annotation_becomes(&api, "stamped-b", "nuop.dev/stamp", "v2").await;
    assert_eq!(
        calls(&calls_file),
        keeper_calls,
        "the keeper was restarted although its script did not change"
    );

    assert_eq!(
        revisions(&url),
        [v2.as_str()],
        "the running revision in the metric"
    );

    // A broken script rejects the whole revision; v2 keeps reconciling.
    let rejected_before = syncs(&url, "rejected");
    repo.write("scripts/stamper/mod.nu", "def \"main config\" [ {\n");
    repo.commit("broken");
    eventually("the broken revision rejected", LIMIT, || async {
        (syncs(&url, "rejected") > rejected_before).then_some(())
    })
    .await;
    create(&api, "stamped-c", "stamp").await;
    annotation_becomes(&api, "stamped-c", "nuop.dev/stamp", "v2").await;
    assert_eq!(managed.readiness.check(), Ok(()));

    // A top level that never finishes is stopped at the load timeout and rejects its
    // revision like a parse error (issue 18 point 5); v2 keeps reconciling.
    let rejected_before = syncs(&url, "rejected");
    repo.write(
        "scripts/stamper/mod.nu",
        &format!(
            "loop {{ sleep 10ms }}\n{}",
            stamper(&env.namespace, "hangs")
        ),
    );
    repo.commit("hangs");
    eventually("the hanging revision rejected", LIMIT, || async {
        (syncs(&url, "rejected") > rejected_before).then_some(())
    })
    .await;
    create(&api, "stamped-d", "stamp").await;
    annotation_becomes(&api, "stamped-d", "nuop.dev/stamp", "v2").await;
    assert_eq!(
        revisions(&url),
        [v2.as_str()],
        "the running revision in the metric"
    );
    assert_eq!(managed.readiness.check(), Ok(()));

    // Fixing it is picked up again, for every object.
    repo.write("scripts/stamper/mod.nu", &stamper(&env.namespace, "v3"));
    repo.commit("v3");
    annotation_becomes(&api, "stamped-c", "nuop.dev/stamp", "v3").await;
    annotation_becomes(&api, "stamped-d", "nuop.dev/stamp", "v3").await;
    managed.stop().await;
}

#[tokio::test]
async fn an_original_nuop_source_with_an_absolute_path_runs() {
    // The original nuop's form: `path` is where the source was placed, `dir` in the
    // location selects the subdirectory.
    let env = TestEnv::new("managed-original-source").await;
    let api: Api<ConfigMap> = env.api();
    let repo = Repo::new();
    repo.write("scripts/stamper/mod.nu", &stamper(&env.namespace, "orig"));
    let commit = repo.commit("first");
    let daemon = Daemon::serve(repo.tmp.path());
    let managed = Managed::start(
        &env,
        vec![
            Source::new(format!("{}?ref=main&dir=scripts", daemon.url("repo")))
                .at_path("/scripts/example"),
        ],
        vec![Mapping::new("stamper", "v1", "ConfigMap")],
    )
    .await;
    create(&api, "original", "x").await;
    annotation_becomes(&api, "original", "nuop.dev/stamp", "orig").await;
    // The write-back's audit record names the commit the controller runs.
    let record = eventually("the write-back's audit record", LIMIT, || async {
        std::fs::read_to_string(&managed.audit)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["verb"] == "write_back" && r["object"]["name"] == "original")
    })
    .await;
    assert_eq!(record["revision"], commit.as_str(), "{record}");
    assert_eq!(record["controller"], "stamper");
    assert_eq!(record["result"], "ok");
    managed.stop().await;
}

#[tokio::test]
async fn an_unreachable_source_keeps_the_last_good_revision_running() {
    let env = TestEnv::new("managed-unreachable").await;
    let api: Api<ConfigMap> = env.api();
    let repo = Repo::new();
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "up"));
    repo.commit("first");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let managed = Managed::start(
        &env,
        vec![Source::new(&url)],
        vec![Mapping::new("stamper", "v1", "ConfigMap")],
    )
    .await;
    create(&api, "before", "x").await;
    annotation_becomes(&api, "before", "nuop.dev/stamp", "up").await;

    let failures_before = syncs(&url, "failure");
    drop(daemon);
    eventually("a failed fetch counted", LIMIT, || async {
        (syncs(&url, "failure") > failures_before).then_some(())
    })
    .await;
    create(&api, "after", "x").await;
    annotation_becomes(&api, "after", "nuop.dev/stamp", "up").await;
    // Fetched once: still ready.
    assert_eq!(managed.readiness.check(), Ok(()));
    managed.stop().await;
}

#[tokio::test]
async fn a_source_never_fetched_keeps_the_process_unready_with_the_reason() {
    let env = TestEnv::new("managed-never-fetched").await;
    let url = format!("git://127.0.0.1:{}/nothing", common::free_port());
    let managed = Managed::start(
        &env,
        vec![Source::new(&url)],
        vec![Mapping::new("stamper", "v1", "ConfigMap")],
    )
    .await;
    let reason = eventually("a failed first fetch", LIMIT, || async {
        managed
            .readiness
            .check()
            .err()
            .filter(|r| r.contains("has no good revision"))
    })
    .await;
    assert!(reason.contains(&url), "{reason}");
    assert!(syncs(&url, "failure") >= 1);
    managed.stop().await;
}

#[tokio::test]
async fn sources_and_mappings_are_reported_in_the_nuoperator_status() {
    let env = TestEnv::new("managed-status").await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("CRD installed");
    let repo = Repo::new();
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "s"));
    let commit = repo.commit("first");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let mappings = vec![
        Mapping::new("stamper", "v1", "ConfigMap"),
        Mapping::new("missing", "v1", "ConfigMap"),
    ];
    let mut operator = NuOperator::test()
        .named("ops")
        .in_namespace(&env.namespace)
        .with_source(Source::new(&url));
    for m in &mappings {
        operator = operator.with_mapping(m.clone());
    }
    let operators: Api<NuOperator> = env.api();
    eventually("the NuOperator created", LIMIT, || async {
        operators
            .create(&PostParams::default(), &operator)
            .await
            .ok()
    })
    .await;
    let managed = Managed::start_for(&env, "ops", vec![Source::new(&url)], mappings).await;

    let status = eventually("sources and mappings in the status", LIMIT, || async {
        let status = operators.get("ops").await.ok()?.status?;
        (status.sources.first()?.revision.as_deref() == Some(commit.as_str())
            && status
                .mappings
                .iter()
                .any(|m| m.name == "stamper" && m.running))
        .then_some(status)
    })
    .await;
    assert_eq!(status.sources[0].location, url);
    assert!(status.sources[0].last_sync_time.is_some());
    assert_eq!(status.sources[0].last_error, None);
    let missing = status
        .mappings
        .iter()
        .find(|m| m.name == "missing")
        .expect("missing mapping reported");
    assert!(!missing.running);
    assert!(
        missing
            .message
            .as_deref()
            .is_some_and(|m| m.contains("no script named `missing`")),
        "{missing:?}"
    );

    // A broken commit is rejected: the status and the metric say so, the revision stays.
    repo.write("stamper/mod.nu", "def \"main config\" [ {\n");
    let broken = repo.commit("broken");
    let source = eventually("the rejection in the status", LIMIT, || async {
        let status = operators.get("ops").await.ok()?.status?;
        let source = status.sources.into_iter().next()?;
        source
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(&broken) && e.contains("rejected"))
            .then_some(source)
    })
    .await;
    assert_eq!(source.revision.as_deref(), Some(commit.as_str()));
    assert!(syncs(&url, "rejected") >= 1);

    // The source goes away: the revision stays, the fetch error is reported.
    drop(daemon);
    let source = eventually("the fetch error in the status", LIMIT, || async {
        let status = operators.get("ops").await.ok()?.status?;
        let source = status.sources.into_iter().next()?;
        source
            .last_error
            .as_deref()
            .is_some_and(|e| !e.contains("rejected"))
            .then_some(source)
    })
    .await;
    assert_eq!(source.revision.as_deref(), Some(commit.as_str()));
    managed.stop().await;
}

// ---- Signed sources (issue 19 item 1) ----

/// An SSH signing key made with ssh-keygen in a temp dir.
struct SigningKey {
    /// The private key file (what `user.signingkey` names).
    private: std::path::PathBuf,
    /// The public key line (`ssh-ed25519 AAAA… name@nuop.dev`).
    public: String,
    /// Its SHA-256 fingerprint as ssh-keygen prints it.
    fingerprint: String,
}

fn ssh_keygen(args: &[&str]) -> String {
    let output = std::process::Command::new("ssh-keygen")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("these tests need ssh-keygen (openssh-client): {e}"));
    assert!(
        output.status.success(),
        "ssh-keygen {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl SigningKey {
    fn new(dir: &Path, name: &str) -> Self {
        let private = dir.join(name);
        let path = private.display().to_string();
        let comment = format!("{name}@nuop.dev");
        ssh_keygen(&["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &path]);
        let public = std::fs::read_to_string(format!("{path}.pub"))
            .expect("public key")
            .trim()
            .to_string();
        // `256 SHA256:… comment (ED25519)`
        let fingerprint = ssh_keygen(&["-l", "-f", &format!("{path}.pub")])
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_string();
        Self {
            private,
            public,
            fingerprint,
        }
    }

    /// The `git -c` options that sign with this key.
    fn config(&self) -> [String; 4] {
        [
            "-c".into(),
            "gpg.format=ssh".into(),
            "-c".into(),
            format!("user.signingkey={}", self.private.display()),
        ]
    }
}

/// Commits everything, signed with `key`, and returns the commit id.
fn signed_commit(repo: &Repo, key: &SigningKey, message: &str) -> String {
    repo.git(&["add", "-A"]);
    let mut args: Vec<String> = key.config().to_vec();
    args.extend(["commit", "-q", "-S", "--allow-empty", "-m", message].map(String::from));
    repo.git(&args.iter().map(String::as_str).collect::<Vec<_>>());
    repo.git(&["rev-parse", "HEAD"])
}

/// Points `main` at a commit carrying a valid signature by `key` over other content:
/// the work tree's files (the tree that is committed) with the signature of a commit of
/// the previous tree. Returns the commit id.
fn tampered_commit(repo: &Repo, key: &SigningKey) -> String {
    let head = repo.git(&["rev-parse", "HEAD"]);
    let signed_tree = repo.git(&["rev-parse", "HEAD^{tree}"]);
    // A signed commit of HEAD's tree that no ref points at.
    let mut args: Vec<String> = key.config().to_vec();
    args.extend(
        [
            "commit-tree",
            "-S",
            "-p",
            &head,
            "-m",
            "tampered",
            &signed_tree,
        ]
        .map(String::from),
    );
    let genuine = repo.git(&args.iter().map(String::as_str).collect::<Vec<_>>());
    repo.git(&["add", "-A"]);
    let other_tree = repo.git(&["write-tree"]);
    assert_ne!(other_tree, signed_tree);
    let body = repo.git(&["cat-file", "commit", &genuine]).replacen(
        &format!("tree {signed_tree}"),
        &format!("tree {other_tree}"),
        1,
    );
    let file = repo.tmp.path().join("tampered-commit");
    std::fs::write(&file, format!("{body}\n")).expect("write");
    let tampered = repo.git(&[
        "hash-object",
        "-w",
        "-t",
        "commit",
        &file.display().to_string(),
    ]);
    repo.git(&["update-ref", "refs/heads/main", &tampered]);
    repo.git(&["reset", "-q", "--hard", "main"]);
    tampered
}

/// The first source's status entry, once `check` holds.
async fn source_status_where(
    operators: &Api<NuOperator>,
    what: &str,
    check: impl Fn(&nuop_crd::SourceStatus) -> bool,
) -> nuop_crd::SourceStatus {
    eventually(what, LIMIT, || async {
        let status = operators.get("signed").await.ok()?.status?;
        let source = status.sources.into_iter().next()?;
        check(&source).then_some(source)
    })
    .await
}

#[tokio::test]
async fn only_commits_signed_by_an_allowed_key_run() {
    let env = TestEnv::new("managed-signed").await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("CRD installed");
    let api: Api<ConfigMap> = env.api();
    let repo = Repo::new();
    let alice = SigningKey::new(repo.tmp.path(), "alice");
    let mallory = SigningKey::new(repo.tmp.path(), "mallory");
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "v1"));
    let v1 = signed_commit(&repo, &alice, "v1");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let source = Source::new(&url).signed_by([format!("alice@nuop.dev {}", alice.public)]);
    let mapping = Mapping::new("stamper", "v1", "ConfigMap");
    let operators: Api<NuOperator> = env.api();
    let operator = NuOperator::test()
        .named("signed")
        .in_namespace(&env.namespace)
        .with_source(source.clone())
        .with_mapping(mapping.clone());
    eventually("the NuOperator created", LIMIT, || async {
        operators
            .create(&PostParams::default(), &operator)
            .await
            .ok()
    })
    .await;
    let managed = Managed::start_for(&env, "signed", vec![source], vec![mapping]).await;

    // Signed by the allowed key: it runs, and the status names the key.
    create(&api, "signed-a", "x").await;
    annotation_becomes(&api, "signed-a", "nuop.dev/stamp", "v1").await;
    let status = source_status_where(&operators, "v1 in the status", |s| {
        s.revision.as_deref() == Some(v1.as_str())
    })
    .await;
    assert_eq!(
        status.signed_by.as_deref(),
        Some(alice.fingerprint.as_str())
    );

    // Each bad commit is rejected with the commit and the reason in the status, the
    // rejected count and the log; v1 keeps running.
    // (what, how to make the commit, what the rejection says)
    type Case<'a> = (&'a str, Box<dyn Fn() -> String + 'a>, String);
    let cases: [Case<'_>; 3] = [
        (
            "unsigned",
            Box::new(|| repo.commit("unsigned")),
            "is unsigned".to_string(),
        ),
        (
            "unknown key",
            Box::new(|| signed_commit(&repo, &mallory, "mallory")),
            format!(
                "is signed by {}, which is not an allowed signer",
                mallory.fingerprint
            ),
        ),
        (
            "tampered",
            Box::new(|| tampered_commit(&repo, &alice)),
            format!(
                "carries a signature by {} that does not verify",
                alice.fingerprint
            ),
        ),
    ];
    for (index, (case, make, expected)) in cases.iter().enumerate() {
        let rejected_before = syncs(&url, "rejected");
        repo.write("stamper/mod.nu", &stamper(&env.namespace, case));
        let commit = make();
        let status = source_status_where(&operators, &format!("the {case} commit rejected"), |s| {
            s.last_error.as_deref().is_some_and(|e| {
                e.contains(&format!("commit {commit}")) && e.contains(expected.as_str())
            })
        })
        .await;
        assert_eq!(status.revision.as_deref(), Some(v1.as_str()), "{case}");
        assert_eq!(
            status.signed_by.as_deref(),
            Some(alice.fingerprint.as_str())
        );
        assert!(syncs(&url, "rejected") > rejected_before, "{case}: counted");
        let name = format!("after-{index}");
        create(&api, &name, "x").await;
        annotation_becomes(&api, &name, "nuop.dev/stamp", "v1").await;
        assert_eq!(
            revisions(&url),
            [v1.as_str()],
            "{case}: the running revision"
        );
    }
    assert_eq!(managed.readiness.check(), Ok(()));

    // A signed commit after them runs.
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "v2"));
    let v2 = signed_commit(&repo, &alice, "v2");
    annotation_becomes(&api, "signed-a", "nuop.dev/stamp", "v2").await;
    let status = source_status_where(&operators, "v2 in the status", |s| {
        s.revision.as_deref() == Some(v2.as_str()) && s.last_error.is_none()
    })
    .await;
    assert_eq!(
        status.signed_by.as_deref(),
        Some(alice.fingerprint.as_str())
    );
    managed.stop().await;
}

#[tokio::test]
async fn a_signed_annotated_tag_vouches_for_its_commit() {
    // With a tag ref, a signed annotated tag is checked instead of the commit; an
    // unsigned annotated tag leaves it to the commit (README, managed mode).
    let env = TestEnv::new("managed-signed-tag").await;
    let api: Api<ConfigMap> = env.api();
    let repo = Repo::new();
    let alice = SigningKey::new(repo.tmp.path(), "alice");
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "tagged"));
    let unsigned = repo.commit("an unsigned commit");
    let mut args: Vec<String> = alice.config().to_vec();
    args.extend(["tag", "-s", "release", "-m", "signed release"].map(String::from));
    repo.git(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let managed = Managed::start(
        &env,
        vec![
            Source::new(&url)
                .at_ref("release")
                .signed_by([alice.public.clone()]),
        ],
        vec![Mapping::new("stamper", "v1", "ConfigMap")],
    )
    .await;
    create(&api, "tagged", "x").await;
    annotation_becomes(&api, "tagged", "nuop.dev/stamp", "tagged").await;
    assert_eq!(revisions(&url), [unsigned.as_str()]);

    // The tag moves to an unsigned annotated tag of an unsigned commit: rejected.
    let rejected_before = syncs(&url, "rejected");
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "unsigned-tag"));
    repo.commit("unsigned again");
    repo.git(&["tag", "-f", "-a", "release", "-m", "unsigned release"]);
    eventually("the unsigned tag rejected", LIMIT, || async {
        (syncs(&url, "rejected") > rejected_before).then_some(())
    })
    .await;
    create(&api, "tagged-after", "x").await;
    annotation_becomes(&api, "tagged-after", "nuop.dev/stamp", "tagged").await;
    assert_eq!(revisions(&url), [unsigned.as_str()]);
    managed.stop().await;
}

#[tokio::test]
async fn keys_rotate_through_the_config_map_without_a_gap() {
    let env = TestEnv::new("managed-signed-rotation").await;
    let api: Api<ConfigMap> = env.api();
    let set_signers = |keys: Vec<String>| {
        let api = api.clone();
        async move {
            let patch = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": { "name": "signers" },
                "data": { "allowed_signers": format!("# team keys\n{}\n", keys.join("\n")) },
            });
            api.patch(
                "signers",
                &kube::api::PatchParams::apply("nuop-tests").force(),
                &kube::api::Patch::Apply(&patch),
            )
            .await
            .expect("signers ConfigMap applied");
        }
    };
    let repo = Repo::new();
    let old = SigningKey::new(repo.tmp.path(), "old");
    let new = SigningKey::new(repo.tmp.path(), "new");
    set_signers(vec![old.public.clone()]).await;
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "r1"));
    let r1 = signed_commit(&repo, &old, "r1");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let managed = Managed::start(
        &env,
        vec![Source::new(&url).signed_by_config_map("signers", "allowed_signers")],
        vec![Mapping::new("stamper", "v1", "ConfigMap")],
    )
    .await;
    create(&api, "rotated", "stamp").await;
    annotation_becomes(&api, "rotated", "nuop.dev/stamp", "r1").await;
    eventually("ready", LIMIT, || async { managed.readiness.check().ok() }).await;
    assert_eq!(revisions(&url), [r1.as_str()]);

    // From here on a revision must run at every moment: sample readiness and the
    // running revision throughout the rotation.
    let (stop_sampling, sampler) = {
        let readiness = managed.readiness.clone();
        let url = url.clone();
        let (stop, mut stopped) = oneshot::channel::<()>();
        let sampler = tokio::spawn(async move {
            let mut gaps = Vec::new();
            loop {
                if let Err(reason) = readiness.check() {
                    gaps.push(format!("unready: {reason}"));
                }
                if revisions(&url).len() != 1 {
                    gaps.push(format!("running revisions: {:?}", revisions(&url)));
                }
                tokio::select! {
                    _ = &mut stopped => return gaps,
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
        });
        (stop, sampler)
    };

    // A commit by the new key before the key is allowed: rejected, r1 keeps running.
    let rejected_before = syncs(&url, "rejected");
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "r2"));
    let r2 = signed_commit(&repo, &new, "r2");
    eventually("r2 rejected while its key is unknown", LIMIT, || async {
        (syncs(&url, "rejected") > rejected_before).then_some(())
    })
    .await;
    assert_eq!(revisions(&url), [r1.as_str()]);

    // Add the new key: the same commit is accepted without the ref moving.
    set_signers(vec![old.public.clone(), new.public.clone()]).await;
    annotation_becomes(&api, "rotated", "nuop.dev/stamp", "r2").await;
    assert_eq!(revisions(&url), [r2.as_str()]);

    // Remove the old key: r2 keeps running, the new key's commits run, the old key's
    // are rejected.
    set_signers(vec![new.public.clone()]).await;
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "r3"));
    let r3 = signed_commit(&repo, &new, "r3");
    annotation_becomes(&api, "rotated", "nuop.dev/stamp", "r3").await;
    let rejected_before = syncs(&url, "rejected");
    repo.write("stamper/mod.nu", &stamper(&env.namespace, "r4"));
    signed_commit(&repo, &old, "r4 by the removed key");
    eventually("the removed key's commit rejected", LIMIT, || async {
        (syncs(&url, "rejected") > rejected_before).then_some(())
    })
    .await;
    create(&api, "rotated-after", "stamp").await;
    annotation_becomes(&api, "rotated-after", "nuop.dev/stamp", "r3").await;
    assert_eq!(revisions(&url), [r3.as_str()]);

    let _ = stop_sampling.send(());
    let gaps = sampler.await.expect("sampler");
    assert_eq!(gaps, Vec::<String>::new(), "a gap during the key rotation");
    managed.stop().await;
}

// ---- Webhooks (issue 14 item 4): published by the leader, served by every replica ----

/// A webhook-only admission policy: ConfigMaps need an `owner` label.
const POLICY: &str = r#"
def "main config" [] {
  {
    name: "policy", version: "v1", kind: "ConfigMap"
    webhooks: { validate: { operations: [CREATE], failurePolicy: Fail, timeoutSeconds: 5 } }
  } | to yaml
}
def "main validate" [] {
  let request = $in | from json
  if ($request.object.metadata.labels? | default {} | get -o owner | default "") == "" {
    return { allowed: false, message: $"managed policy: ($request.object.metadata.name) needs an owner label" }
  }
  { allowed: true }
}
"#;

fn test_tls_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nuop-core/tests/webhook-tls")
}

#[tokio::test]
async fn a_standby_replica_serves_the_webhooks_the_leader_publishes() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use nuop_core::webhook::configuration::{self, Endpoint, Hook};

    let env = TestEnv::new("managed-webhooks").await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("CRD installed");
    let repo = Repo::new();
    repo.write("policy/mod.nu", POLICY);
    repo.commit("policy");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let mapping = Mapping::new("policy", "v1", "ConfigMap");
    let operators: Api<NuOperator> = env.api();
    let operator = NuOperator::test()
        .named("hooks")
        .in_namespace(&env.namespace)
        .with_source(Source::new(&url))
        .with_mapping(mapping.clone());
    eventually("the NuOperator created", LIMIT, || async {
        operators
            .create(&PostParams::default(), &operator)
            .await
            .ok()
    })
    .await;

    // The leader: runs the supervisor, which publishes what the scripts declare.
    let leader = Managed::start_for(
        &env,
        "hooks",
        vec![Source::new(&url)],
        vec![mapping.clone()],
    )
    .await;
    let published = eventually("the declared webhook in the status", LIMIT, || async {
        let status = operators.get("hooks").await.ok()?.status?;
        (!status.webhooks.is_empty()).then_some(status.webhooks)
    })
    .await;
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0].kind, "Validate");
    assert_eq!(published[0].path, "/validate/policy");
    // A webhook-only script runs no controller, and readiness does not wait for one.
    eventually("ready", LIMIT, || async { leader.readiness.check().ok() }).await;

    // A standby: only `serve` runs (no supervisor, no lease), with the certificate the
    // manager would mount.
    let cache = tempfile::tempdir().expect("tempdir");
    let settings = settings(
        &env,
        "hooks",
        vec![Source::new(&url)],
        vec![mapping],
        cache.path(),
        nuop_core::runtime::WebhookOptions {
            bind_address: Some("127.0.0.1:0".parse().expect("address")),
            cert_dir: Some(test_tls_dir()),
            url_base: None,
            service: None,
        },
    );
    let (stop_standby, standby_stopped) = oneshot::channel::<()>();
    let bound = nuop_managed::webhooks::serve(
        env.client.clone(),
        settings,
        shutdown_signal(async move {
            let _ = standby_stopped.await;
        }),
    )
    .await
    .expect("serves")
    .expect("an address");
    // The standby keeps its own checkouts beside the supervisor's.
    assert!(
        cache
            .path()
            .join(nuop_managed::webhooks::CACHE_SUBDIR)
            .is_dir()
    );

    // Registered as the manager would: the published hook, confined to the namespace,
    // pointed at the standby.
    let hook: Hook =
        serde_json::from_value(serde_json::to_value(&published[0]).expect("json")).expect("hook");
    let hook = configuration::confine(hook, &env.namespace);
    let identity = format!("test-{}", env.namespace);
    let ca = std::fs::read(test_tls_dir().join("tls.crt")).expect("the test certificate");
    let registration = configuration::validating_configuration(
        &identity,
        &[hook],
        &Endpoint::Url(format!("https://{bound}")),
        Some(&ca),
    )
    .expect("a validating configuration");
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    configurations
        .create(&PostParams::default(), &registration)
        .await
        .expect("the configuration created");

    let configmaps: Api<ConfigMap> = env.api();
    let denied = eventually("the standby's denial", LIMIT, || async {
        let object = ConfigMap {
            metadata: ObjectMeta {
                name: Some("no-owner".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        match configmaps.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(e)) if e.message.contains("managed policy") => Some(e),
            Ok(_) => {
                // Created before the configuration took effect: try again.
                let _ = configmaps.delete("no-owner", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    assert!(
        denied.message.contains("no-owner needs an owner label"),
        "{}",
        denied.message
    );
    let owned = ConfigMap {
        metadata: ObjectMeta {
            name: Some("owned".into()),
            labels: Some([("owner".to_string(), "team-a".to_string())].into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    configmaps
        .create(&PostParams::default(), &owned)
        .await
        .expect("a compliant ConfigMap is admitted by the standby");

    configurations
        .delete(
            &configuration::configuration_name(&identity),
            &Default::default(),
        )
        .await
        .expect("the configuration removed");
    let _ = stop_standby.send(());
    leader.stop().await;
}
