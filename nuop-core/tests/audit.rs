//! The audit trail against the real API server: a controller with an audit log file
//! writes one record for each kind of change (finalizer added, write-back, status,
//! `k8s create`/`apply`/`patch`/`delete`, a failed `k8s create`, finalizer removed),
//! and the secret-cloner example copying a Secret leaves neither the Secret's value
//! (plain or base64) nor its key names in the audit log.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, ResourceExt};
use nuop_core::audit::{AuditLog, AuditTarget};
use nuop_core::controller::ControllerOptions;
use nuop_core::metrics::METRICS;
use nuop_core::reconcile::backoff::BASE_DELAY;
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, create_crd, eventually, repo_root};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// A Greeting controller that makes one change of every kind on its first reconcile
/// (the ConfigMap `<name>-applied` existing means it has run: a second reconcile from a
/// stale cache changes nothing).
const PROBE: &str = r#"
def "main config" [] {
  {
    name: "audit-probe", group: "examples.nuop.dev", version: "v1alpha1", kind: "Greeting",
    finalizer: "nuop.dev/audit-probe", requeue_after_change: 300, requeue_after_noop: 300
  }
}

def "main reconcile" [] {
  let g = $in | from json
  let ns = $g.metadata.namespace
  let base = $g.metadata.name
  if (k8s get configmap $"($base)-applied" --live) != null { exit 0 }
  let created = {apiVersion: "v1", kind: "ConfigMap", metadata: {name: $"($base)-created", namespace: $ns}, data: {k: "v"}}
  $created | k8s create | ignore
  # Creating it again fails: the failed write is recorded too.
  try { $created | k8s create | ignore } catch { null }
  {apiVersion: "v1", kind: "ConfigMap", metadata: {name: $"($base)-applied", namespace: $ns}, data: {a: "b"}} | k8s apply | ignore
  {data: {p: "q"}} | k8s patch configmap $"($base)-applied" | ignore
  k8s delete configmap $"($base)-created"
  $g | upsert metadata.labels {audited: "yes"} | upsert status {message: "audited"} | to json -r | print
  exit 2
}

def "main finalize" [] { exit 0 }
"#;

/// An audit log appending to `<dir>/audit.jsonl`.
fn audit_options(dir: &Path) -> (ControllerOptions, std::path::PathBuf) {
    let path = dir.join("audit.jsonl");
    let audit = AuditLog::open(&AuditTarget::File(path.clone())).expect("open the audit log");
    (
        ControllerOptions {
            audit,
            ..ControllerOptions::default()
        },
        path,
    )
}

/// Every record in the audit file, each line parsed as JSON.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line}"))
        })
        .collect()
}

/// The records of `verb` (and `result`).
fn of<'a>(records: &'a [Value], verb: &str, result: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["verb"] == verb && r["result"] == result)
        .collect()
}

async fn ensure_greeting_crd(client: &kube::Client) {
    let path = repo_root().join("examples/greeting/crd.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()));
    create_crd(client, &crd).await;
}

#[tokio::test]
async fn every_kind_of_change_leaves_one_audit_record() {
    // Logs help when it fails; a second install (the other test) is refused, fine.
    let _ = nuop_core::telemetry::init_logs("plain");
    let env = TestEnv::new("audit-changes").await;
    ensure_greeting_crd(&env.client).await;
    let logs = tempfile::tempdir().expect("tempdir");
    let (options, path) = audit_options(logs.path());
    let controller = env
        .run_script_with_options(
            "audit-probe",
            PROBE,
            ExecutorKind::Embedded,
            BASE_DELAY,
            options,
        )
        .await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("examples.nuop.dev", "v1alpha1", "Greeting"),
        "greetings",
    );
    let greetings =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let greeting: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "examples.nuop.dev/v1alpha1", "kind": "Greeting",
        "metadata": {"name": "ada"}, "spec": {"name": "Ada"}
    }))
    .expect("greeting");
    // Right after the CRD is established the API may still answer 404 for a while.
    eventually("the Greeting to be accepted", LIMIT, || async {
        match greetings.create(&PostParams::default(), &greeting).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;
    let written = eventually("the status write-back", LIMIT, || async {
        let g = greetings.get("ada").await.ok()?;
        (g.data["status"]["message"] == "audited").then_some(g)
    })
    .await;
    let uid = written.uid().expect("a uid");
    assert_eq!(
        written.labels().get("audited").map(String::as_str),
        Some("yes")
    );
    greetings
        .delete("ada", &DeleteParams::default())
        .await
        .expect("delete the Greeting");
    eventually("the Greeting to be gone", LIMIT, || async {
        greetings.get_opt("ada").await.ok()?.is_none().then_some(())
    })
    .await;
    controller.stop().await;

    let all = records(&path);
    let summary: Vec<String> = all
        .iter()
        .map(|r| format!("{} {} {}", r["verb"], r["result"], r["object"]["name"]))
        .collect();
    let one = |verb: &str, result: &str| -> Value {
        let found = of(&all, verb, result);
        assert_eq!(
            found.len(),
            1,
            "exactly one {verb} {result} record expected: {summary:#?}"
        );
        found[0].clone()
    };
    let ns = env.namespace.as_str();
    for record in &all {
        assert_eq!(record["target"], "nuop::audit");
        assert_eq!(record["controller"], "audit-probe");
        assert_eq!(record["field_manager"], "nuop-audit-probe");
        let revision = record["revision"].as_str().unwrap_or_default();
        assert!(
            revision.starts_with("sha256:") && revision.len() == 71,
            "a standard-mode revision is the script's digest: {record}"
        );
        assert!(
            record["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
        assert_eq!(record["object"]["namespace"], ns, "{record}");
    }
    let greeting_ref = json!({"apiVersion": "examples.nuop.dev/v1alpha1", "kind": "Greeting",
        "namespace": ns, "name": "ada", "uid": uid});
    for (verb, changed) in [
        ("add_finalizer", json!(["/metadata/finalizers"])),
        ("write_back", json!(["/metadata/labels/audited"])),
        ("write_status", json!(["/status/message"])),
        ("remove_finalizer", json!(["/metadata/finalizers/0"])),
    ] {
        let record = one(verb, "ok");
        assert_eq!(record["object"], greeting_ref, "{record}");
        assert_eq!(record["changed"], changed, "{record}");
    }
    let created = one("create", "ok");
    assert_eq!(created["object"]["kind"], "ConfigMap");
    assert_eq!(created["object"]["name"], "ada-created");
    assert!(created["object"]["uid"].is_string(), "{created}");
    assert_eq!(created["changed"], json!(["/data/k"]));
    let failed = one("create", "error");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("already exists")),
        "{failed}"
    );
    let applied = one("apply", "ok");
    assert_eq!(applied["object"]["name"], "ada-applied");
    assert_eq!(applied["changed"], json!(["/data/a"]));
    let patched = one("patch", "ok");
    assert_eq!(
        patched["object"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": ns, "name": "ada-applied",
               "uid": applied["object"]["uid"]})
    );
    assert_eq!(patched["changed"], json!(["/data/p"]));
    let deleted = one("delete", "ok");
    assert_eq!(deleted["object"]["name"], "ada-created");
    assert_eq!(
        deleted["object"]["uid"], created["object"]["uid"],
        "{deleted}"
    );
    assert_eq!(deleted["changed"], json!([""]));
    assert_eq!(all.len(), 9, "no other records: {summary:#?}");

    let metrics = METRICS.render();
    for series in [
        "nuop_audit_records_total{result=\"error\",verb=\"create\"}",
        "nuop_audit_records_total{result=\"ok\",verb=\"write_status\"}",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let _ = Api::<ConfigMap>::namespaced(env.client.clone(), ns)
        .delete("ada-applied", &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn secret_values_never_reach_the_audit_log() {
    let env = TestEnv::new("audit-secret").await;
    let target = format!("{}-to", env.namespace);
    Api::<Namespace>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(target.clone()),
                    labels: Some([("nuop.dev/test".to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the target namespace");
    let logs = tempfile::tempdir().expect("tempdir");
    let (options, path) = audit_options(logs.path());
    let source = std::fs::read_to_string(repo_root().join("examples/secret-cloner/mod.nu"))
        .expect("the secret-cloner example");
    let controller = env
        .run_script_with_options(
            "secret-cloner",
            &source,
            ExecutorKind::Embedded,
            BASE_DELAY,
            options,
        )
        .await;
    let value = format!("audit-{}-v4lue", env.namespace);
    let key = "audit-only-key";
    let secrets = env.api::<Secret>();
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("token".into()),
                    labels: Some([("nuop.dev/clone".to_string(), "true".to_string())].into()),
                    annotations: Some(
                        [("nuop.dev/clone-include".to_string(), target.clone())].into(),
                    ),
                    ..Default::default()
                },
                data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
                ..Default::default()
            },
        )
        .await
        .expect("create the source Secret");
    let copies = Api::<Secret>::namespaced(env.client.clone(), &target);
    eventually("the copy in the target namespace", LIMIT, || async {
        copies.get_opt("token").await.ok()?.map(|_| ())
    })
    .await;
    secrets
        .delete("token", &DeleteParams::default())
        .await
        .expect("delete the source");
    eventually("the copy to be removed with the source", LIMIT, || async {
        copies.get_opt("token").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually("the source to be gone", LIMIT, || async {
        secrets.get_opt("token").await.ok()?.is_none().then_some(())
    })
    .await;
    controller.stop().await;

    let text = std::fs::read_to_string(&path).expect("the audit log");
    let all = records(&path);
    for verb in ["add_finalizer", "apply", "delete", "remove_finalizer"] {
        assert!(
            !of(&all, verb, "ok").is_empty(),
            "a {verb} record expected:\n{text}"
        );
    }
    let apply = of(&all, "apply", "ok")[0];
    assert_eq!(apply["object"]["kind"], "Secret");
    assert_eq!(apply["object"]["namespace"], target.as_str());
    assert!(
        apply["changed"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("/data"))),
        "{apply}"
    );
    let base64 = serde_json::to_value(ByteString(value.as_bytes().to_vec())).expect("base64");
    let base64 = base64.as_str().expect("a string");
    for secret in [value.as_str(), base64, key] {
        assert!(
            !text.contains(secret),
            "{secret:?} appears in the audit log:\n{text}"
        );
    }
    let _ = Api::<Namespace>::all(env.client.clone())
        .delete(&target, &DeleteParams::background())
        .await;
}
