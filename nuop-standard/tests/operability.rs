//! `nuop-standard` run as a real process against the real control plane: readiness and
//! metrics, leader election across replicas, graceful shutdown and OTLP traces.
//!
//! Each test starts the built binary as child processes with their own probe and
//! metrics ports, scripts in a temp dir that watch only the test's namespace, and a
//! stderr log file that failures print.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nuop_core::testing::{TestEnv, create_crd, eventually, http_get, kubeconfig_path};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// One `nuop-standard` process.
struct Replica {
    name: String,
    child: tokio::process::Child,
    probes: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Replica {
    fn pid(&self) -> Pid {
        Pid::from_raw(
            self.child
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .expect("child still running"),
        )
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal)
            .unwrap_or_else(|e| panic!("signal {signal} to {}: {e}", self.name));
    }

    /// Its stderr so far, for failure messages.
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit and returns its exit code.
    async fn exit_code(&mut self, limit: Duration) -> i32 {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status.code().unwrap_or_else(|| {
                panic!(
                    "{} ended by a signal ({status}); logs:\n{}",
                    self.name,
                    self.logs()
                )
            }),
            Ok(Err(e)) => panic!("waiting for {}: {e}", self.name),
            Err(_) => panic!(
                "{} did not exit within {limit:?}; logs:\n{}",
                self.name,
                self.logs()
            ),
        }
    }

    async fn get(&self, address: SocketAddr, path: &str) -> Option<(u16, String)> {
        http_get(address, path).await
    }
}

/// A free loopback port: bind port 0, note the port, let it go.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// Writes `<root>/<name>/mod.nu`.
fn write_script(root: &Path, name: &str, source: &str) {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("script dir");
    std::fs::write(dir.join("mod.nu"), source).expect("write script");
}

/// Starts `nuop-standard` on the scripts under `scripts` with free probe and metrics
/// ports; `POD_NAME` and `TEST_REPLICA` carry `name`.
fn spawn(scripts: &Path, logs: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Replica {
    let probes = free_address();
    let metrics = free_address();
    let log = logs.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuop-standard"));
    command
        .arg("--scripts")
        .arg(scripts)
        .arg("--health-probe-bind-address")
        .arg(probes.to_string())
        .arg("--metrics-bind-address")
        .arg(metrics.to_string())
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "info")
        .env("POD_NAME", name)
        .env("TEST_REPLICA", name)
        .env_remove("POD_NAMESPACE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start nuop-standard: {e}"));
    Replica {
        name: name.to_string(),
        child,
        probes,
        metrics,
        log,
    }
}

/// Waits until the replica's /healthz answers.
async fn wait_alive(replica: &Replica) {
    eventually(
        &format!("{} to answer /healthz", replica.name),
        LIMIT,
        || async {
            let (status, _) = replica.get(replica.probes, "/healthz").await?;
            (status == 200).then_some(())
        },
    )
    .await;
}

/// The value of one sample line in Prometheus text, e.g.
/// `nuop_reconciles_total{controller="x",outcome="changed"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn labelled(name: &str, key: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(key.to_string(), value.to_string())].into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

fn annotation(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.annotations().get(key).cloned()
}

/// Marks each object with the replica that reconciled it, and logs every call.
const MARK_REPLICA: &str = r#"
def "main config" [] {
  { name: "marker", version: "v1", kind: "ConfigMap", namespaces: ["NAMESPACE"], labelSelectors: { LABEL: "yes" } } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  $"($env.TEST_REPLICA) ($obj.metadata.name)\n" | save --append $env.TEST_CALLS
  if ($obj.metadata.annotations? | default {} | get -o "nuop.dev/reconciled-by") == $env.TEST_REPLICA { exit 0 }
  print -e $"marking ($obj.metadata.name)"
  print ($obj | upsert metadata.annotations."nuop.dev/reconciled-by" $env.TEST_REPLICA | to json)
  exit 2
}
"#;

fn marker_script(namespace: &str, label: &str) -> String {
    MARK_REPLICA
        .replace("NAMESPACE", namespace)
        .replace("LABEL", label)
}

async fn wait_reconciled_by(cms: &Api<ConfigMap>, name: &str, replica: &str) {
    eventually(
        &format!("{name} to be reconciled by {replica}"),
        LIMIT,
        || async {
            let cm = cms.get(name).await.ok()?;
            (annotation(&cm, "nuop.dev/reconciled-by").as_deref() == Some(replica)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn readyz_waits_for_every_first_list_and_metrics_count_reconciles() {
    let env = TestEnv::new("op-ready").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    let group = format!("{}.ready.nuop.dev", env.namespace);
    write_script(&scripts, "marker", &marker_script(&env.namespace, "ready"));
    write_script(
        &scripts,
        "widgets",
        &format!(
            r#"
def "main config" [] {{ {{ name: "widgets", group: "{group}", version: "v1", kind: "Widget", namespaces: ["{ns}"] }} | to yaml }}
def "main reconcile" [] {{ exit 0 }}
"#,
            ns = env.namespace
        ),
    );
    let calls = tmp.path().join("calls.log");
    let calls_text = calls.to_string_lossy().into_owned();
    let mut replica = spawn(
        &scripts,
        tmp.path(),
        "solo",
        &[],
        &[("TEST_CALLS", calls_text.as_str())],
    );
    wait_alive(&replica).await;

    // The Widget kind is not served yet: the process must say it is not ready, naming it.
    let body = eventually("/readyz to name the widgets controller", LIMIT, || async {
        let (status, body) = replica.get(replica.probes, "/readyz").await?;
        assert_eq!(status, 503, "ready before the Widget CRD exists: {body}");
        body.contains("widgets").then_some(body)
    })
    .await;
    assert!(body.contains("waiting for the first list"), "{body}");

    // Objects of the served kind are reconciled meanwhile.
    let cms = env.api::<ConfigMap>();
    for i in 0..3 {
        cms.create(
            &PostParams::default(),
            &labelled(&format!("cm-{i}"), "ready", "yes"),
        )
        .await
        .expect("create configmap");
    }
    for i in 0..3 {
        wait_reconciled_by(&cms, &format!("cm-{i}"), "solo").await;
    }
    let (status, _) = replica
        .get(replica.probes, "/readyz")
        .await
        .expect("readyz");
    assert_eq!(status, 503, "still waiting for the Widget watch");

    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .expect("crd");
    create_crd(&env.client, &crd).await;
    let crds = Api::<CustomResourceDefinition>::all(env.client.clone());
    let crd_name = format!("widgets.{group}");

    // Discovery retries back off up to 30 s, so allow two limits.
    let deadline = tokio::time::Instant::now() + LIMIT * 2;
    loop {
        let answer = replica.get(replica.probes, "/readyz").await;
        if matches!(answer, Some((200, _))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz did not turn 200 after the CRD was established (last answer {answer:?}); logs:\n{}",
            replica.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let metrics = replica
        .get(replica.metrics, "/metrics")
        .await
        .expect("metrics answer")
        .1;
    let changed = sample(
        &metrics,
        r#"nuop_reconciles_total{controller="marker",outcome="changed"}"#,
    )
    .unwrap_or_else(|| panic!("no changed reconciles in:\n{metrics}"));
    assert!(changed >= 3.0, "{changed} changed reconciles:\n{metrics}");
    for series in [
        r#"nuop_reconcile_duration_seconds_count{controller="marker"}"#,
        r#"nuop_script_call_duration_seconds_count{controller="marker",executor="embedded",phase="reconcile"}"#,
        r#"nuop_reconciles_in_flight{controller="marker"}"#,
        "nuop_controllers_synced",
        "nuop_leader",
    ] {
        assert!(
            sample(&metrics, series).is_some(),
            "{series} missing from:\n{metrics}"
        );
    }
    assert_eq!(sample(&metrics, "nuop_leader"), Some(1.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "nuop_controllers_synced"),
        Some(2.0),
        "{metrics}"
    );
    // The cached-objects gauge refreshes every few seconds.
    eventually("nuop_cached_objects for marker", LIMIT, || async {
        let metrics = replica.get(replica.metrics, "/metrics").await?.1;
        (sample(&metrics, r#"nuop_cached_objects{controller="marker"}"#)? >= 3.0).then_some(())
    })
    .await;

    replica.signal(Signal::SIGTERM);
    let code = replica.exit_code(LIMIT).await;
    assert_eq!(code, 0, "logs:\n{}", replica.logs());
    let logs = replica.logs();
    // Lines logged inside a reconcile carry the object's coordinates.
    assert!(
        logs.lines().any(|l| l.contains("marking cm-")
            && l.contains("controller=marker")
            && l.contains("kind=ConfigMap")
            && l.contains(&format!("namespace={}", env.namespace))
            && l.contains("object=cm-")),
        "no reconcile log line with controller, kind, namespace and object:\n{logs}"
    );
    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .expect("delete crd");
}

/// The holder's identity is `<POD_NAME>_<random>`; returns the replica name.
async fn lease_holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    let lease = leases.get_opt(name).await.ok()??;
    let holder = lease.spec?.holder_identity?;
    holder
        .split_once('_')
        .map(|(replica, _)| replica.to_string())
        .filter(|r| !r.is_empty())
}

/// The replica names in call order, consecutive repeats collapsed.
fn runs(calls: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(calls).unwrap_or_default();
    let mut runs: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some(replica) = line.split_whitespace().next() else {
            continue;
        };
        if runs.last().map(String::as_str) != Some(replica) {
            runs.push(replica.to_string());
        }
    }
    runs
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over() {
    let env = TestEnv::new("op-leader").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    write_script(&scripts, "marker", &marker_script(&env.namespace, "elect"));
    let calls = tmp.path().join("calls.log");
    let calls_text = calls.to_string_lossy().into_owned();
    let lease_name = format!("lease-{}", env.namespace);
    let args = [
        "--leader-elect",
        "--leader-election-id",
        lease_name.as_str(),
        "--leader-election-namespace",
        env.namespace.as_str(),
        "--leader-election-lease-duration",
        "5s",
        "--leader-election-renew-deadline",
        "3s",
        "--leader-election-retry-period",
        "500ms",
    ];
    let vars = [("TEST_CALLS", calls_text.as_str())];
    let mut replicas: BTreeMap<String, Replica> = BTreeMap::new();
    for name in ["a", "b"] {
        replicas.insert(name.into(), spawn(&scripts, tmp.path(), name, &args, &vars));
    }
    let all_logs = |replicas: &BTreeMap<String, Replica>| {
        replicas
            .values()
            .map(|r| format!("--- {} ---\n{}", r.name, r.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let leases = Api::<Lease>::namespaced(env.client.clone(), &env.namespace);
    let first = eventually("a lease holder", LIMIT, || async {
        lease_holder(&leases, &lease_name).await
    })
    .await;
    let second = if first == "a" { "b" } else { "a" }.to_string();
    assert!(replicas.contains_key(&first), "unknown holder {first}");

    let cms = env.api::<ConfigMap>();
    for i in 0..3 {
        cms.create(
            &PostParams::default(),
            &labelled(&format!("cm-{i}"), "elect", "yes"),
        )
        .await
        .expect("create configmap");
    }
    for i in 0..3 {
        wait_reconciled_by(&cms, &format!("cm-{i}"), &first).await;
    }
    assert_eq!(
        runs(&calls),
        std::slice::from_ref(&first),
        "{}",
        all_logs(&replicas)
    );
    let standby_metrics = http_get(replicas[&second].metrics, "/metrics")
        .await
        .expect("standby metrics")
        .1;
    assert_eq!(sample(&standby_metrics, "nuop_leader"), Some(0.0));
    let (status, _) = http_get(replicas[&second].probes, "/readyz")
        .await
        .expect("standby readyz");
    assert_eq!(status, 200, "a healthy standby is ready");

    // SIGTERM: the holder drains, releases the lease, exits 0; the standby takes over.
    let mut holder = replicas.remove(&first).expect("holder");
    holder.signal(Signal::SIGTERM);
    let code = holder.exit_code(LIMIT).await;
    assert_eq!(code, 0, "logs:\n{}", holder.logs());
    eventually(&format!("{second} to hold the lease"), LIMIT, || async {
        (lease_holder(&leases, &lease_name).await? == second).then_some(())
    })
    .await;
    cms.create(&PostParams::default(), &labelled("cm-3", "elect", "yes"))
        .await
        .expect("create configmap");
    for i in 0..4 {
        wait_reconciled_by(&cms, &format!("cm-{i}"), &second).await;
    }

    // A new standby, then SIGKILL of the holder: the standby waits out the lease.
    replicas.insert("c".into(), spawn(&scripts, tmp.path(), "c", &args, &vars));
    wait_alive(&replicas["c"]).await;
    let mut holder = replicas.remove(&second).expect("holder");
    holder.signal(Signal::SIGKILL);
    let _ = holder.child.wait().await;
    eventually("c to hold the lease", LIMIT, || async {
        (lease_holder(&leases, &lease_name).await? == "c").then_some(())
    })
    .await;
    cms.create(&PostParams::default(), &labelled("cm-4", "elect", "yes"))
        .await
        .expect("create configmap");
    for i in 0..5 {
        wait_reconciled_by(&cms, &format!("cm-{i}"), "c").await;
    }

    // Every call, in order: one replica at a time, never interleaved.
    assert_eq!(
        runs(&calls),
        [first, second, "c".to_string()],
        "calls:\n{}\n{}",
        std::fs::read_to_string(&calls).unwrap_or_default(),
        all_logs(&replicas)
    );
    let mut last = replicas.remove("c").expect("c");
    last.signal(Signal::SIGTERM);
    assert_eq!(last.exit_code(LIMIT).await, 0, "logs:\n{}", last.logs());
}

#[tokio::test]
async fn sigterm_lets_a_slow_reconcile_finish_then_exits_zero() {
    let env = TestEnv::new("op-drain").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    write_script(
        &scripts,
        "slow",
        &format!(
            r#"
def "main config" [] {{ {{ name: "slow", version: "v1", kind: "ConfigMap", namespaces: ["{ns}"], labelSelectors: {{ slow: "yes" }} }} | to yaml }}
def "main reconcile" [] {{
  let obj = $in | from json
  if ($obj.metadata.annotations? | default {{}} | get -o "nuop.dev/done") == "true" {{ exit 0 }}
  "started" | save --force ($env.TEST_DIR | path join $"started-($obj.metadata.name)")
  sleep 3sec
  print ($obj | upsert metadata.annotations."nuop.dev/done" "true" | to json)
  exit 2
}}
"#,
            ns = env.namespace
        ),
    );
    let dir = tmp.path().to_string_lossy().into_owned();
    let mut replica = spawn(
        &scripts,
        tmp.path(),
        "drain",
        &["--shutdown-timeout", "30s"],
        &[("TEST_DIR", dir.as_str())],
    );
    wait_alive(&replica).await;
    let cms = env.api::<ConfigMap>();
    cms.create(&PostParams::default(), &labelled("slow-1", "slow", "yes"))
        .await
        .expect("create configmap");
    let started = tmp.path().join("started-slow-1");
    eventually("the slow reconcile to start", LIMIT, || async {
        started.exists().then_some(())
    })
    .await;
    replica.signal(Signal::SIGTERM);
    // Not ready once SIGTERM arrived (the server keeps answering while draining).
    // The slow reconcile holds the drain open for seconds: /readyz must answer 503 then.
    let body = eventually("/readyz to turn 503 during the drain", LIMIT, || async {
        match replica.get(replica.probes, "/readyz").await {
            Some((503, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert!(body.contains("shutting down"), "readyz said: {body}");
    let code = replica.exit_code(LIMIT).await;
    assert_eq!(code, 0, "logs:\n{}", replica.logs());
    let cm = cms.get("slow-1").await.expect("get");
    assert_eq!(
        annotation(&cm, "nuop.dev/done").as_deref(),
        Some("true"),
        "the in-flight reconcile's write must land before exit; logs:\n{}",
        replica.logs()
    );
}

#[tokio::test]
async fn shutdown_timeout_bounds_a_reconcile_that_does_not_finish() {
    let env = TestEnv::new("op-bound").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    write_script(
        &scripts,
        "stuck",
        &format!(
            r#"
def "main config" [] {{ {{ name: "stuck", version: "v1", kind: "ConfigMap", namespaces: ["{ns}"], labelSelectors: {{ stuck: "yes" }} }} | to yaml }}
def "main reconcile" [] {{
  let obj = $in | from json
  "started" | save --force ($env.TEST_DIR | path join "started")
  sleep 120sec
  print ($obj | upsert metadata.annotations."nuop.dev/done" "true" | to json)
  exit 2
}}
"#,
            ns = env.namespace
        ),
    );
    let dir = tmp.path().to_string_lossy().into_owned();
    let mut replica = spawn(
        &scripts,
        tmp.path(),
        "bound",
        &["--shutdown-timeout", "2s"],
        &[("TEST_DIR", dir.as_str())],
    );
    wait_alive(&replica).await;
    let cms = env.api::<ConfigMap>();
    cms.create(&PostParams::default(), &labelled("stuck-1", "stuck", "yes"))
        .await
        .expect("create configmap");
    eventually("the stuck reconcile to start", LIMIT, || async {
        tmp.path().join("started").exists().then_some(())
    })
    .await;
    replica.signal(Signal::SIGTERM);
    // The script would run two minutes; the bound is two seconds. A minute is generous.
    let code = replica.exit_code(LIMIT).await;
    assert_eq!(code, 0, "logs:\n{}", replica.logs());
    assert!(
        replica.logs().contains("shutdown timeout passed"),
        "logs:\n{}",
        replica.logs()
    );
    let cm = cms.get("stuck-1").await.expect("get");
    assert_eq!(annotation(&cm, "nuop.dev/done"), None);
}

/// Spans received by the test's OTLP/HTTP endpoint: (span name, attributes).
type Received = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

/// Collects every span object (one with `traceId`, `spanId` and `name`) in an OTLP JSON
/// export request.
fn collect_spans(value: &Value, into: &mut Vec<(String, BTreeMap<String, String>)>) {
    match value {
        Value::Object(map) => {
            if map.contains_key("traceId")
                && map.contains_key("spanId")
                && let Some(name) = map.get("name").and_then(Value::as_str)
            {
                let attributes = map
                    .get("attributes")
                    .and_then(Value::as_array)
                    .map(|list| {
                        list.iter()
                            .filter_map(|a| {
                                let key = a.get("key")?.as_str()?.to_string();
                                let value = a.get("value")?.get("stringValue")?.as_str()?;
                                Some((key, value.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                into.push((name.to_string(), attributes));
            }
            for child in map.values() {
                collect_spans(child, into);
            }
        }
        Value::Array(list) => list.iter().for_each(|v| collect_spans(v, into)),
        _ => {}
    }
}

/// A loopback OTLP/HTTP receiver accepting JSON trace exports.
async fn otlp_receiver() -> (SocketAddr, Received) {
    use axum::Router;
    use axum::body::Bytes;
    use axum::routing::post;
    let received: Received = Arc::default();
    let sink = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                    let mut spans = Vec::new();
                    collect_spans(&value, &mut spans);
                    sink.lock().expect("lock").extend(spans);
                }
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    "{}",
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (address, received)
}

#[tokio::test]
async fn reconciles_and_script_calls_are_exported_as_otlp_spans() {
    let env = TestEnv::new("op-otlp").await;
    let (receiver, received) = otlp_receiver().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    write_script(&scripts, "marker", &marker_script(&env.namespace, "traced"));
    let calls = tmp.path().join("calls.log");
    let calls_text = calls.to_string_lossy().into_owned();
    let endpoint = format!("http://{receiver}");
    let mut replica = spawn(
        &scripts,
        tmp.path(),
        "traced",
        &[],
        &[
            ("TEST_CALLS", calls_text.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    wait_alive(&replica).await;
    let cms = env.api::<ConfigMap>();
    let names: Vec<String> = (0..3).map(|i| format!("cm-{i}")).collect();
    for name in &names {
        cms.create(&PostParams::default(), &labelled(name, "traced", "yes"))
            .await
            .expect("create configmap");
    }
    for name in &names {
        wait_reconciled_by(&cms, name, "traced").await;
    }
    eventually("a reconcile span for every object", LIMIT, || async {
        let spans = received.lock().expect("lock").clone();
        names
            .iter()
            .all(|name| {
                spans.iter().any(|(span, attributes)| {
                    span == "reconcile"
                        && attributes.get("object") == Some(name)
                        && attributes.get("namespace") == Some(&env.namespace)
                        && attributes.get("controller").map(String::as_str) == Some("marker")
                })
            })
            .then_some(())
    })
    .await;
    let spans = received.lock().expect("lock").clone();
    let reconciles = spans.iter().filter(|(n, _)| n == "reconcile").count();
    let script_calls = spans.iter().filter(|(n, _)| n == "script").count();
    let calls_made = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .count();
    assert!(
        reconciles >= names.len() && script_calls >= names.len(),
        "{reconciles} reconcile spans, {script_calls} script spans for {calls_made} calls"
    );
    replica.signal(Signal::SIGTERM);
    assert_eq!(
        replica.exit_code(LIMIT).await,
        0,
        "logs:\n{}",
        replica.logs()
    );
}

#[tokio::test]
async fn a_holder_that_finds_its_lease_taken_exits_non_zero_at_once() {
    let env = TestEnv::new("op-lost").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts");
    write_script(&scripts, "marker", &marker_script(&env.namespace, "lost"));
    let calls = tmp.path().join("calls.log");
    let calls_text = calls.to_string_lossy().into_owned();
    let lease_name = format!("lease-{}", env.namespace);
    let mut replica = spawn(
        &scripts,
        tmp.path(),
        "holder",
        &[
            "--leader-elect",
            "--leader-election-id",
            lease_name.as_str(),
            "--leader-election-namespace",
            env.namespace.as_str(),
            "--leader-election-lease-duration",
            "5s",
            "--leader-election-renew-deadline",
            "3s",
            "--leader-election-retry-period",
            "500ms",
        ],
        &[("TEST_CALLS", calls_text.as_str())],
    );
    let leases = Api::<Lease>::namespaced(env.client.clone(), &env.namespace);
    eventually("the replica to hold the lease", LIMIT, || async {
        (lease_holder(&leases, &lease_name).await? == "holder").then_some(())
    })
    .await;
    // Someone else claims the lease (as a partitioned peer might after an expiry).
    eventually("the lease to be taken over", LIMIT, || async {
        let mut lease = leases.get(&lease_name).await.ok()?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("intruder_x".into());
        spec.lease_duration_seconds = Some(60);
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        leases
            .replace(&lease_name, &PostParams::default(), &lease)
            .await
            .ok()
    })
    .await;
    let code = replica.exit_code(LIMIT).await;
    assert_eq!(code, 1, "logs:\n{}", replica.logs());
    assert!(
        replica.logs().contains("leader election lost"),
        "logs:\n{}",
        replica.logs()
    );
    assert_eq!(
        lease_holder(&leases, &lease_name).await.as_deref(),
        Some("intruder"),
        "a replica that lost the lease must not write it again"
    );
}

/// `--audit-log FILE` on the real binary: the write-back of a reconcile is one JSON
/// line in the file (controller, the script's digest, the object, the changed path) and
/// is counted in `nuop_audit_records_total`.
#[tokio::test]
async fn the_audit_log_flag_records_writes_in_a_file_and_counts_them() {
    let env = TestEnv::new("audit-flag").await;
    let cms = env.api::<ConfigMap>();
    let dir = tempfile::tempdir().expect("tempdir");
    let scripts = dir.path().join("scripts");
    write_script(
        &scripts,
        "marker",
        &marker_script(&env.namespace, "audit-flag"),
    );
    let calls = dir.path().join("calls");
    let audit = dir.path().join("audit.jsonl");
    let replica = spawn(
        &scripts,
        dir.path(),
        "audited",
        &["--audit-log", audit.to_str().expect("utf-8 path")],
        &[("TEST_CALLS", calls.to_str().expect("utf-8 path"))],
    );
    wait_alive(&replica).await;
    cms.create(&PostParams::default(), &labelled("a", "audit-flag", "yes"))
        .await
        .expect("create a");
    wait_reconciled_by(&cms, "a", "audited").await;
    let uid = cms.get("a").await.expect("get a").uid();
    let record = eventually("the write-back's audit record", LIMIT, || async {
        let text = std::fs::read_to_string(&audit).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["verb"] == "write_back")
    })
    .await;
    assert_eq!(record["controller"], "marker");
    assert_eq!(record["result"], "ok");
    assert_eq!(record["field_manager"], "nuop-marker");
    assert!(
        record["revision"]
            .as_str()
            .is_some_and(|r| r.starts_with("sha256:")),
        "{record}"
    );
    assert_eq!(
        record["object"],
        json!({"apiVersion": "v1", "kind": "ConfigMap", "namespace": env.namespace,
               "name": "a", "uid": uid})
    );
    assert_eq!(
        record["changed"],
        json!(["/metadata/annotations/nuop.dev~1reconciled-by"])
    );
    let (_, metrics) = replica
        .get(replica.metrics, "/metrics")
        .await
        .expect("/metrics answers");
    assert_eq!(
        sample(
            &metrics,
            "nuop_audit_records_total{result=\"ok\",verb=\"write_back\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}
