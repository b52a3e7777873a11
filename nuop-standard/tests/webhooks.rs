//! Webhooks written as scripts (issue 14), through the real API server: `nuop-standard`
//! runs as a child process serving HTTPS on a loopback port, and the test registers
//! the webhook configuration (`clientConfig.url` https://127.0.0.1:PORT with the
//! caBundle) scoped by namespaceSelector to the test's own namespace, so a stray
//! configuration can never block other tests. Every configuration and CRD a test
//! creates is deleted when the test ends, passed or not ([`Deleted`]).
//!
//! The serving certificate is the self-signed fixture in `nuop-core/tests/webhook-tls`
//! (for localhost and 127.0.0.1), mounted as `--webhook-cert-dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use nuop_core::testing::{TestEnv, create_crd, eventually, http_get, kubeconfig_path};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

fn cert_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nuop-core/tests/webhook-tls")
}

fn ca_bundle() -> ByteString {
    ByteString(std::fs::read(cert_dir().join("tls.crt")).expect("the test certificate"))
}

fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

fn write_script(root: &Path, name: &str, source: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("script dir");
    std::fs::write(dir.join("mod.nu"), source).expect("write script");
}

/// `<tmp>/scripts` holding the one script `name`.
fn scripts_with(tmp: &Path, name: &str, source: &str) -> PathBuf {
    let scripts = tmp.join("scripts");
    write_script(&scripts, name, source);
    scripts
}

/// A running `nuop-standard` serving webhooks on `webhooks`.
struct Nuop {
    child: tokio::process::Child,
    webhooks: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Nuop {
    fn start(scripts: &Path, dir: &Path, executor: &str) -> Self {
        Self::start_with(scripts, dir, executor, &[])
    }

    /// Like [`Nuop::start`], with `extra` arguments.
    fn start_with(scripts: &Path, dir: &Path, executor: &str, extra: &[&str]) -> Self {
        let cert_dir = cert_dir();
        let mut args = vec!["--webhook-cert-dir", cert_dir.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        Self::spawn(scripts, dir, executor, &args, None)
    }

    /// With a self-signed certificate kept in a Secret of `namespace` (no cert dir):
    /// nuop then registers the webhook configurations itself.
    fn start_self_signed(scripts: &Path, dir: &Path, namespace: &str, extra: &[&str]) -> Self {
        Self::spawn(scripts, dir, "embedded", extra, Some(namespace))
    }

    fn spawn(
        scripts: &Path,
        dir: &Path,
        executor: &str,
        extra: &[&str],
        pod_namespace: Option<&str>,
    ) -> Self {
        let (webhooks, metrics, probes) = (free_address(), free_address(), free_address());
        let log = dir.join("nuop.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuop-standard"))
            .arg("--scripts")
            .arg(scripts)
            .args(["--executor", executor])
            .arg("--health-probe-bind-address")
            .arg(probes.to_string())
            .arg("--metrics-bind-address")
            .arg(metrics.to_string())
            .arg("--webhook-bind-address")
            .arg(webhooks.to_string())
            .arg("--webhook-url-base")
            .arg(format!("https://{webhooks}"))
            .args(extra)
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info")
            .env("POD_NAMESPACE", pod_namespace.unwrap_or_default())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nuop-standard: {e}"));
        Self {
            child,
            webhooks,
            metrics,
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.webhooks)
    }

    async fn wait_serving(&self) {
        eventually("the webhook port to accept", LIMIT, || async {
            tokio::net::TcpStream::connect(self.webhooks).await.ok()
        })
        .await;
    }

    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Deletes a cluster-scoped object with kubectl when dropped, even when the test fails.
struct Deleted {
    kind: &'static str,
    name: String,
}

impl Drop for Deleted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args([
                "delete",
                self.kind,
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Only the test's namespace.
fn only(namespace: &str) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(
            [(
                "kubernetes.io/metadata.name".to_string(),
                namespace.to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    })
}

fn configmap_rule(operations: &[&str]) -> Vec<RuleWithOperations> {
    vec![RuleWithOperations {
        api_groups: Some(vec![String::new()]),
        api_versions: Some(vec!["v1".into()]),
        resources: Some(vec!["configmaps".into()]),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        scope: Some("Namespaced".into()),
    }]
}

/// Registers validating webhooks (name, path, failurePolicy, timeout, objectSelector).
async fn register_validating(
    env: &TestEnv,
    nuop: &Nuop,
    hooks: &[(&str, &str, &str, i32, Option<LabelSelector>)],
) -> Deleted {
    let name = format!("nuop-test-{}", env.namespace);
    let webhooks = hooks
        .iter()
        .map(|(hook, path, policy, timeout, objects)| ValidatingWebhook {
            name: format!("{hook}.validate.nuop.dev"),
            client_config: WebhookClientConfig {
                url: Some(nuop.url(path)),
                ca_bundle: Some(ca_bundle()),
                service: None,
            },
            rules: Some(configmap_rule(&["CREATE", "UPDATE"])),
            namespace_selector: only(&env.namespace),
            object_selector: objects.clone(),
            failure_policy: Some(policy.to_string()),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            timeout_seconds: Some(*timeout),
            ..Default::default()
        })
        .collect();
    let configuration = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        webhooks: Some(webhooks),
    };
    let guard = Deleted {
        kind: "validatingwebhookconfiguration",
        name,
    };
    Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .create(&PostParams::default(), &configuration)
        .await
        .expect("create the ValidatingWebhookConfiguration");
    guard
}

/// Runs kubectl in the test's namespace with `stdin`; (success, stdout + stderr).
async fn kubectl(namespace: &str, args: &[&str], stdin: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(["-n", namespace])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl (hack/control-plane env puts it on PATH)");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .expect("kubectl stdin");
    }
    let out = child.wait_with_output().await.expect("kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn configmap_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
    .to_string()
}

const POLICY: &str = r#"
def "main config" [] {
  { name: "policy", version: "v1", kind: "ConfigMap",
    webhooks: { validate: { failurePolicy: Fail, timeoutSeconds: 3,
                            namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "NAMESPACE" } } } } }
}
def "main validate" [] {
  let request = $in | from json
  let labels = $request.object.metadata.labels? | default {}
  if ($labels.hang? == "yes") { sleep 60sec }
  if ($labels.probe? == "dry-run") {
    return { allowed: false, message: $"seen with dryRun=($request.dryRun) operation=($request.operation)" }
  }
  if ($labels.write? == "yes") {
    let result = try { { metadata: { name: "side-effect" }, apiVersion: "v1", kind: "ConfigMap" } | k8s apply; "written" } catch {|e| $e.msg }
    return { allowed: false, message: $"write attempt: ($result)" }
  }
  if ($labels.owner? == null) {
    print -e "ConfigMaps in this namespace need an owner label"
    exit 1
  }
  if ($labels.team? == null) { return { allowed: true, warnings: ["no team label: add one"] } }
}
"#;

async fn validating_policy_on(executor: &str) {
    let env = TestEnv::new(&format!("wh-validate-{executor}")).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = scripts_with(
        tmp.path(),
        "policy",
        &POLICY.replace("NAMESPACE", &env.namespace),
    );
    let nuop = Nuop::start(&scripts, tmp.path(), executor);
    nuop.wait_serving().await;
    let _configuration = register_validating(
        &env,
        &nuop,
        &[("policy", "/validate/policy", "Fail", 3, None)],
    )
    .await;
    let ns = env.namespace.as_str();

    // The API server picks the configuration up after a moment: probe with dry runs.
    let probe = configmap_yaml("probe", &[("probe", "dry-run")]);
    let seen = eventually("the webhook to be called", LIMIT, || async {
        let (ok, out) = kubectl(ns, &["create", "--dry-run=server", "-f", "-"], &probe).await;
        (!ok && out.contains("seen with")).then_some(out)
    })
    .await;
    assert!(
        seen.contains("admission webhook \"policy.validate.nuop.dev\" denied the request: seen with dryRun=true operation=CREATE"),
        "a dry run reaches the script flagged as one: {seen}\n{}",
        nuop.logs()
    );

    let (ok, out) = kubectl(ns, &["create", "-f", "-"], &configmap_yaml("no-owner", &[])).await;
    assert!(!ok, "a non-compliant ConfigMap is denied: {out}");
    assert!(
        out.contains("denied the request: ConfigMaps in this namespace need an owner label"),
        "{out}"
    );

    let (ok, out) = kubectl(
        ns,
        &["create", "-f", "-"],
        &configmap_yaml("owned", &[("owner", "me")]),
    )
    .await;
    assert!(ok, "a compliant ConfigMap is created: {out}");
    assert!(
        out.contains("Warning: no team label: add one"),
        "kubectl prints the script's warning: {out}"
    );
    env.api::<ConfigMap>()
        .get("owned")
        .await
        .expect("the compliant ConfigMap is stored");

    let (ok, out) = kubectl(
        ns,
        &["create", "-f", "-"],
        &configmap_yaml("writer", &[("write", "yes")]),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("write attempt: ") && out.contains("writes are refused in `main validate`"),
        "k8s writes are refused in webhook phases: {out}"
    );

    let (ok, out) = kubectl(
        ns,
        &["create", "-f", "-"],
        &configmap_yaml("hangs", &[("owner", "me"), ("hang", "yes")]),
    )
    .await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("nuop webhook policy: script policy validate timed out after"),
        "a hanging script is answered by nuop (Fail: denied) before the API server gives up: {out}"
    );

    let (_, metrics) = http_get(nuop.metrics, "/metrics").await.expect("metrics");
    for result in ["allowed", "denied", "error"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("nuop_webhook_requests_total")
                    && l.contains("webhook=\"policy\"")
                    && l.contains("kind=\"validate\"")
                    && l.contains(&format!("result=\"{result}\""))),
            "nuop_webhook_requests_total counts {result}:\n{metrics}"
        );
    }
    assert!(
        nuop.logs().contains("webhook answered"),
        "each answer is logged: {}",
        nuop.logs()
    );
}

#[tokio::test]
async fn a_validating_script_denies_admits_warns_and_sees_dry_runs_embedded() {
    validating_policy_on("embedded").await;
}

#[tokio::test]
async fn a_validating_script_denies_admits_warns_and_sees_dry_runs_process() {
    validating_policy_on("process").await;
}

const DEFAULTER: &str = r#"
def "main config" [] {
  { name: "defaulter", version: "v1", kind: "ConfigMap",
    webhooks: { mutate: { operations: [CREATE],
                          namespaceSelector: { matchLabels: { "kubernetes.io/metadata.name": "NAMESPACE" } } } } }
}
def "main mutate" [] {
  let object = ($in | from json).object
  let labels = $object.metadata.labels? | default {}
  if ($labels.rename? == "yes") { return ($object | upsert metadata.name "renamed") }
  $object | upsert metadata.labels ($labels | upsert defaulted "yes")
}
"#;

/// Every replica serves, leader or not: a process that waits for a Lease someone else
/// holds still answers admission requests.
#[tokio::test]
async fn a_standby_replica_serves_webhooks() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    let env = TestEnv::new("wh-standby").await;
    let leases: Api<Lease> = env.api();
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: ObjectMeta {
                    name: Some("held".into()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some("another-replica".into()),
                    lease_duration_seconds: Some(3600),
                    acquire_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                    renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("a Lease held by another replica");
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = scripts_with(
        tmp.path(),
        "policy",
        &POLICY.replace("NAMESPACE", &env.namespace),
    );
    let ns = env.namespace.clone();
    let mut nuop = Nuop::start_with(
        &scripts,
        tmp.path(),
        "embedded",
        &[
            "--leader-elect",
            "--leader-election-id",
            "held",
            "--leader-election-namespace",
            &ns,
        ],
    );
    nuop.wait_serving().await;
    let _configuration = register_validating(
        &env,
        &nuop,
        &[("policy", "/validate/policy", "Fail", 3, None)],
    )
    .await;
    let probe = configmap_yaml("probe", &[("probe", "dry-run")]);
    let seen = eventually("the standby's answer", LIMIT, || async {
        let (ok, out) = kubectl(&ns, &["create", "--dry-run=server", "-f", "-"], &probe).await;
        (!ok && out.contains("seen with")).then_some(out)
    })
    .await;
    assert!(
        seen.contains("seen with dryRun=true operation=CREATE"),
        "{seen}"
    );
    let owned = configmap_yaml("owned", &[("owner", "a"), ("team", "b")]);
    let (ok, out) = kubectl(&ns, &["create", "-f", "-"], &owned).await;
    assert!(
        ok,
        "a compliant ConfigMap is admitted by the standby: {out}"
    );
    // Still a standby: the Lease was never taken over.
    let lease = leases.get("held").await.expect("the Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("another-replica"),
        "{}",
        nuop.logs()
    );
    nuop.stop().await;
}

/// A webhook configuration nuop registered goes away with its script: a restart with
/// no webhook script removes it (else a `Fail` webhook would block its objects).
#[tokio::test]
async fn a_configuration_whose_scripts_are_gone_is_removed_at_start() {
    let env = TestEnv::new("wh-gone").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = scripts_with(
        tmp.path(),
        "policy",
        &POLICY.replace("NAMESPACE", &env.namespace),
    );
    // An identity of its own: other tests' processes register `nuop-nuop-standard`.
    let identity = format!("gone-{}", env.namespace);
    let name = nuop_core::webhook::configuration::configuration_name(&identity);
    let _guard = Deleted {
        kind: "validatingwebhookconfiguration",
        name: name.clone(),
    };
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let mut nuop = Nuop::start_self_signed(
        &scripts,
        tmp.path(),
        &env.namespace,
        &["--leader-election-id", &identity],
    );
    let registered = eventually("the configuration registered", LIMIT, || async {
        configurations.get_opt(&name).await.ok().flatten()
    })
    .await;
    let webhooks = registered.webhooks.unwrap_or_default();
    assert_eq!(webhooks.len(), 1, "{}", nuop.logs());
    assert_eq!(webhooks[0].name, "policy.validate.nuop.dev");
    nuop.stop().await;

    std::fs::remove_dir_all(scripts.join("policy")).expect("the script removed");
    let mut nuop = Nuop::start_self_signed(
        &scripts,
        tmp.path(),
        &env.namespace,
        &["--leader-election-id", &identity],
    );
    eventually("the configuration removed", LIMIT, || async {
        matches!(configurations.get_opt(&name).await, Ok(None)).then_some(())
    })
    .await;
    nuop.stop().await;
}

#[tokio::test]
async fn a_mutating_script_changes_the_stored_object_but_not_its_identity() {
    let env = TestEnv::new("wh-mutate").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = scripts_with(
        tmp.path(),
        "defaulter",
        &DEFAULTER.replace("NAMESPACE", &env.namespace),
    );
    let nuop = Nuop::start(&scripts, tmp.path(), "embedded");
    nuop.wait_serving().await;
    let name = format!("nuop-test-{}", env.namespace);
    let _configuration = Deleted {
        kind: "mutatingwebhookconfiguration",
        name: name.clone(),
    };
    Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .create(
            &PostParams::default(),
            &MutatingWebhookConfiguration {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..Default::default()
                },
                webhooks: Some(vec![MutatingWebhook {
                    name: "defaulter.mutate.nuop.dev".into(),
                    client_config: WebhookClientConfig {
                        url: Some(nuop.url("/mutate/defaulter")),
                        ca_bundle: Some(ca_bundle()),
                        service: None,
                    },
                    rules: Some(configmap_rule(&["CREATE"])),
                    namespace_selector: only(&env.namespace),
                    failure_policy: Some("Fail".into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    timeout_seconds: Some(5),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("create the MutatingWebhookConfiguration");

    let cms = env.api::<ConfigMap>();
    let defaulted = eventually("the mutating webhook to be called", LIMIT, || async {
        let probe = ConfigMap {
            metadata: ObjectMeta {
                generate_name: Some("probe-".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = cms.create(&PostParams::default(), &probe).await.ok()?;
        created
            .labels()
            .contains_key("defaulted")
            .then_some(created)
    })
    .await;
    let stored = cms.get(&defaulted.name_any()).await.expect("stored");
    assert_eq!(
        stored.labels().get("defaulted").map(String::as_str),
        Some("yes"),
        "the script's change is on the stored object"
    );

    let (ok, out) = kubectl(
        &env.namespace,
        &["create", "-f", "-"],
        &configmap_yaml("keep-my-name", &[("rename", "yes")]),
    )
    .await;
    assert!(!ok, "an identity change is refused: {out}");
    assert!(
        out.contains("nuop webhook defaulter: mutate script tried to change metadata.name"),
        "{out}\n{}",
        nuop.logs()
    );
    let (_, metrics) = http_get(nuop.metrics, "/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("nuop_webhook_requests_total")
                && l.contains("webhook=\"defaulter\"")
                && l.contains("result=\"mutated\"")),
        "{metrics}"
    );
}

const CONVERTER: &str = r#"
def "main config" [] {
  { name: "widgets", group: "GROUP", version: "v1", kind: "Widget", conversion: { crd: "widgets.GROUP" } }
}
# v1: spec.size is a number; v2: spec.size is {value}.
def "main convert" [] {
  let request = $in | from json
  let to = $request.desiredAPIVersion
  $request.objects | each {|o|
    if $o.apiVersion == $to {
      $o
    } else if ($to | str ends-with "/v2") {
      $o | upsert apiVersion $to | upsert spec.size { value: $o.spec.size }
    } else {
      $o | upsert apiVersion $to | upsert spec.size $o.spec.size.value
    }
  }
}
"#;

fn widget_crd(group: &str, url: &str) -> CustomResourceDefinition {
    let version = |name: &str, storage: bool| {
        json!({"name": name, "served": true, "storage": storage,
               "schema": {"openAPIV3Schema": {"type": "object",
                 "properties": {"spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}})
    };
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [version("v1", true), version("v2", false)],
            "conversion": {"strategy": "Webhook", "webhook": {
                "conversionReviewVersions": ["v1"],
                "clientConfig": {"url": url, "caBundle": String::from_utf8_lossy(&base64(&ca_bundle().0))}}}
        }
    }))
    .expect("CRD")
}

/// Standard base64 (the CRD is built from JSON, where caBundle is base64 text).
fn base64(bytes: &[u8]) -> Vec<u8> {
    let text = serde_json::to_string(&ByteString(bytes.to_vec())).expect("base64");
    text.trim_matches('"').as_bytes().to_vec()
}

#[tokio::test]
async fn a_conversion_script_converts_between_stored_and_served_versions() {
    let env = TestEnv::new("wh-convert").await;
    let group = format!("{}.convert.nuop.dev", env.namespace);
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = scripts_with(tmp.path(), "widgets", &CONVERTER.replace("GROUP", &group));
    let nuop = Nuop::start(&scripts, tmp.path(), "embedded");
    nuop.wait_serving().await;
    let _crd = Deleted {
        kind: "customresourcedefinition",
        name: format!("widgets.{group}"),
    };
    create_crd(
        &env.client,
        &widget_crd(&group, &nuop.url("/convert/widgets")),
    )
    .await;
    let resource = |version: &str| ApiResource {
        group: group.clone(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let v1 =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource("v1"));
    let v2 =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource("v2"));
    let mut widget = DynamicObject::new("w", &resource("v1"));
    widget.data = json!({"spec": {"size": 3}});
    eventually("the v1 Widget to be created", LIMIT, || async {
        v1.create(&PostParams::default(), &widget).await.ok()
    })
    .await;

    let as_v2 = eventually("the Widget to be read as v2", LIMIT, || async {
        v2.get("w").await.ok()
    })
    .await;
    assert_eq!(
        as_v2.data["spec"]["size"],
        json!({"value": 3}),
        "read as v2 through the script: {:?}\n{}",
        as_v2.data,
        nuop.logs()
    );
    let mut changed = as_v2.clone();
    changed.data["spec"]["size"] = json!({"value": 5});
    v2.replace("w", &PostParams::default(), &changed)
        .await
        .expect("write as v2 (converted to the stored v1)");
    let back = v1.get("w").await.expect("read as v1");
    assert_eq!(
        back.data["spec"]["size"],
        json!(5),
        "and back: {:?}",
        back.data
    );
}

const ALLOW_ALL: &str = r#"
def "main config" [] {
  { name: "NAME", version: "v1", kind: "ConfigMap", webhooks: { validate: { failurePolicy: POLICY } } }
}
def "main validate" [] {
  let labels = ($in | from json).object.metadata.labels? | default {}
  if ($labels.probe? == "yes") { return { allowed: false, message: "probed" } }
}
"#;

#[tokio::test]
async fn with_nuop_stopped_fail_rejects_and_ignore_admits() {
    let env = TestEnv::new("wh-policy").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    for (name, policy) in [("strict", "Fail"), ("lenient", "Ignore")] {
        write_script(
            &scripts,
            name,
            &ALLOW_ALL.replace("NAME", name).replace("POLICY", policy),
        );
    }
    let mut nuop = Nuop::start(&scripts, tmp.path(), "embedded");
    nuop.wait_serving().await;
    let select = |value: &str| {
        Some(LabelSelector {
            match_labels: Some([("policy".to_string(), value.to_string())].into()),
            ..Default::default()
        })
    };
    let _configuration = register_validating(
        &env,
        &nuop,
        &[
            ("strict", "/validate/strict", "Fail", 2, select("strict")),
            (
                "lenient",
                "/validate/lenient",
                "Ignore",
                2,
                select("lenient"),
            ),
        ],
    )
    .await;
    let ns = env.namespace.as_str();
    for policy in ["strict", "lenient"] {
        let probe = configmap_yaml("probe", &[("policy", policy), ("probe", "yes")]);
        eventually(
            &format!("the {policy} webhook to be called"),
            LIMIT,
            || async {
                let (ok, out) =
                    kubectl(ns, &["create", "--dry-run=server", "-f", "-"], &probe).await;
                (!ok && out.contains("probed")).then_some(())
            },
        )
        .await;
    }
    nuop.stop().await;

    let (ok, out) = kubectl(
        ns,
        &["create", "-f", "-"],
        &configmap_yaml("strict", &[("policy", "strict")]),
    )
    .await;
    assert!(!ok, "failurePolicy Fail rejects while nuop is down: {out}");
    assert!(
        out.contains("failed calling webhook \"strict.validate.nuop.dev\""),
        "{out}"
    );
    let (ok, out) = kubectl(
        ns,
        &["create", "-f", "-"],
        &configmap_yaml("lenient", &[("policy", "lenient")]),
    )
    .await;
    assert!(ok, "failurePolicy Ignore admits while nuop is down: {out}");
}

/// p50 and p99 of `samples` (sorted in place), in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

async fn timed_creates(cms: &Api<ConfigMap>, prefix: &str, count: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{prefix}-{i}")),
                labels: Some([("owner".to_string(), "bench".to_string())].into()),
                ..Default::default()
            },
            data: Some([("k".to_string(), "v".to_string())].into()),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        cms.create(&PostParams::default(), &cm)
            .await
            .unwrap_or_else(|e| panic!("create {prefix}-{i}: {e}"));
        samples.push(started.elapsed());
    }
    samples
}

/// `make bench-webhooks`: the latency a validating webhook adds to a create through the
/// API server. 200 ConfigMap creates in a namespace the webhook does not select, then
/// 200 in one it does (the POLICY script, which admits them), one run per executor;
/// prints p50/p99 of each and the difference. Not a test (no assertion on times):
/// ignored unless asked for.
#[tokio::test]
#[ignore = "a benchmark: make bench-webhooks"]
async fn bench_added_latency_of_a_validating_webhook() {
    const CREATES: usize = 200;
    for executor in ["embedded", "process"] {
        let with = TestEnv::new(&format!("wh-bench-with-{executor}")).await;
        let without = TestEnv::new(&format!("wh-bench-without-{executor}")).await;
        let tmp = tempfile::tempdir().expect("tempdir");
        let scripts = scripts_with(
            tmp.path(),
            "policy",
            &POLICY.replace("NAMESPACE", &with.namespace),
        );
        let nuop = Nuop::start(&scripts, tmp.path(), executor);
        nuop.wait_serving().await;
        let _configuration = register_validating(
            &with,
            &nuop,
            &[("policy", "/validate/policy", "Fail", 5, None)],
        )
        .await;
        let probe = configmap_yaml("probe", &[("probe", "dry-run")]);
        eventually("the webhook to be called", LIMIT, || async {
            let (ok, out) = kubectl(
                &with.namespace,
                &["create", "--dry-run=server", "-f", "-"],
                &probe,
            )
            .await;
            (!ok && out.contains("seen with")).then_some(())
        })
        .await;
        // Warm both paths (connections, caches) before measuring.
        timed_creates(&without.api::<ConfigMap>(), "warm", 20).await;
        timed_creates(&with.api::<ConfigMap>(), "warm", 20).await;
        let mut base = timed_creates(&without.api::<ConfigMap>(), "cm", CREATES).await;
        let mut hooked = timed_creates(&with.api::<ConfigMap>(), "cm", CREATES).await;
        let (b50, b99) = percentiles(&mut base);
        let (h50, h99) = percentiles(&mut hooked);
        println!(
            "bench-webhooks {executor}: {CREATES} creates without webhook p50 {b50:.2} ms p99 {b99:.2} ms; \
             with validating webhook p50 {h50:.2} ms p99 {h99:.2} ms; added p50 {:.2} ms p99 {:.2} ms",
            h50 - b50,
            h99 - b99
        );
    }
}
