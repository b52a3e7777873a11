//! The console (`--console-bind-address`) of a real `nuop-standard` running the
//! examples against the real control plane, looked at in a real browser: headless
//! Chromium driven over WebDriver (chromedriver, with fantoccini), as a person on a
//! phone-sized window would see it. Also its JSON endpoints, the replay of a live
//! tail that reconnects, and that a Secret's contents never show.
//!
//! The same running binary's `/metrics` must offer every metric the Grafana dashboard
//! and the alert rules in `config/prometheus/` refer to, and `promtool check rules`
//! must accept the rules.
//!
//! Needs the control plane, Chromium with chromedriver and promtool
//! (`make test-deps`, which `make test` runs, installs them from Debian's
//! packages): fails, never skips, without them. Screenshots are written to
//! `target/console/` for people to look at.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use nuop_core::testing::{TestEnv, create_crd, eventually, http_get, kubeconfig_path, repo_root};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);

/// A free loopback port: bind port 0, note the port, let it go.
fn free_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// `name` on PATH, or a loud failure saying how to get it.
fn required_binary(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{name}` on PATH: run `make test-deps` (make test does), \
                 which installs Debian's chromium and chromium-driver"
            )
        })
}

/// A controller that fails every reconcile of ConfigMaps labelled
/// `nuop.dev/console-test: fail` in `namespace`, after logging a line.
const FAILING: &str = r#"
def "main config" [] {
  { name: "console-fails", version: "v1", kind: "ConfigMap", namespaces: ["NAMESPACE"],
    labelSelectors: {"nuop.dev/console-test": "fail"}, requeue_after_noop: 300 } | to yaml
}
def "main reconcile" [] {
  print -e "about to fail on purpose"
  exit 1
}
"#;

/// Metrics the dashboard refers to whose series appear only once a webhook request was
/// answered (no script here declares webhooks); `nuop-standard/tests/webhooks.rs`
/// checks `nuop_webhook_requests_total` in a live `/metrics` after requests.
const WEBHOOKS_ONLY: [&str; 2] = [
    "nuop_webhook_requests_total",
    "nuop_webhook_request_duration_seconds",
];

/// Metrics only `nuop-managed` has (its sources); `nuop-managed/tests/binary.rs`
/// checks them in its own live `/metrics`.
const MANAGED_ONLY: [&str; 2] = ["nuop_source_syncs_total", "nuop_source_revision_info"];

/// The examples, each narrowed to `namespace` (its primaries only: the examples'
/// `watches` stay cluster-wide), written under `root`.
fn scoped_examples(root: &Path, namespace: &str) {
    for name in ["config-replicator", "greeting", "secret-cloner"] {
        let source =
            std::fs::read_to_string(repo_root().join("examples").join(name).join("mod.nu"))
                .unwrap_or_else(|e| panic!("cannot read example {name}: {e}"));
        let anchor = "def \"main config\" [] {\n  {\n";
        assert!(
            source.contains(anchor),
            "{name}: its config no longer starts with {anchor:?}"
        );
        let scoped = source.replacen(
            anchor,
            &format!("{anchor}    namespaces: [\"{namespace}\"]\n"),
            1,
        );
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("script dir");
        std::fs::write(dir.join("mod.nu"), scoped).expect("write script");
    }
    let dir = root.join("console-fails");
    std::fs::create_dir_all(&dir).expect("script dir");
    std::fs::write(dir.join("mod.nu"), FAILING.replace("NAMESPACE", namespace)).expect("write");
}

/// promtool from where `make test-deps` unpacks it, or from PATH.
fn promtool() -> PathBuf {
    let unpacked = repo_root().join(".tools/prometheus/usr/bin/promtool");
    if unpacked.is_file() {
        return unpacked;
    }
    required_binary("promtool")
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let path = repo_root().join("config/prometheus/rules.yaml");
    let text = std::fs::read_to_string(&path).expect("read config/prometheus/rules.yaml");
    let rule = nuop_core::protocol::parse_document(&text).expect("rules.yaml is YAML");
    assert_eq!(rule["kind"], "PrometheusRule", "{rule}");
    // promtool reads a plain rules file: the PrometheusRule's spec (JSON is YAML).
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("rules.json");
    std::fs::write(&plain, rule["spec"].to_string()).expect("write the rules");
    let output = std::process::Command::new(promtool())
        .args(["check", "rules"])
        .arg(&plain)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Every alert has a runbook line in the README.
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README");
    for alert in rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
    {
        let name = alert["alert"].as_str().expect("an alert name");
        assert!(
            readme.contains(&format!("**{name}**")),
            "README.md has no runbook line for {name}"
        );
    }
}

async fn greeting_crd(client: &kube::Client) {
    let text = std::fs::read_to_string(repo_root().join("examples/greeting/crd.yaml"))
        .expect("read examples/greeting/crd.yaml");
    let value = nuop_core::protocol::parse_document(&text).expect("the CRD is YAML");
    let crd: CustomResourceDefinition = serde_json::from_value(value).expect("a CRD");
    create_crd(client, &crd).await;
}

async fn create_greeting(env: &TestEnv, name: &str, who: &str) {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("examples.nuop.dev", "v1alpha1", "Greeting"),
        "greetings",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "examples.nuop.dev/v1alpha1", "kind": "Greeting",
        "metadata": {"name": name}, "spec": {"name": who}
    }))
    .expect("a Greeting");
    // The first custom resource after a new CRD can meet a warming-up API server.
    eventually(&format!("Greeting {name} to be created"), LIMIT, || async {
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;
}

/// GET `path` from the console as JSON, once it answers 200.
async fn json_get(console: SocketAddr, path: &str) -> Value {
    eventually(&format!("{path} to answer 200"), LIMIT, || async {
        match http_get(console, path).await {
            Some((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    })
    .await
}

/// Reads `/events` as a reconnecting browser would (with `Last-Event-ID: after`) until
/// `count` events came, and returns their ids.
async fn replayed_ids(console: SocketAddr, after: u64, count: usize) -> Vec<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(console)
        .await
        .expect("connect to the console");
    let request = format!(
        "GET /events HTTP/1.1\r\nHost: {console}\r\nAccept: text/event-stream\r\nLast-Event-ID: {after}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut text = String::new();
    let mut buffer = [0u8; 8192];
    let ids = |text: &str| -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("id:"))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    tokio::time::timeout(LIMIT, async {
        while ids(&text).len() < count {
            let n = stream.read(&mut buffer).await.expect("read the tail");
            assert!(n > 0, "the tail closed early: {text}");
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("fewer than {count} events replayed: {text}"));
    ids(&text)
}

/// chromedriver on a free port, killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn start_chromedriver(logs: &Path) -> Driver {
    let binary = required_binary("chromedriver");
    let address = free_address();
    let log = std::fs::File::create(logs.join("chromedriver.log")).expect("log file");
    let child = tokio::process::Command::new(binary)
        .arg(format!("--port={}", address.port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    // chromedriver keeps connections open after answering, so a plain GET that reads
    // to the end would wait: accepting a connection is the sign it listens.
    eventually("chromedriver to listen", LIMIT, || async {
        tokio::net::TcpStream::connect(address).await.ok()
    })
    .await;
    Driver {
        _child: child,
        url: format!("http://{address}"),
    }
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let chromium = required_binary("chromium");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            // A phone-sized window: the console must read there too.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=430,1000"]
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("cannot start headless Chromium through chromedriver: {e}"))
}

/// The text of the element `css`, once it exists.
async fn text_of(page: &fantoccini::Client, css: &str) -> String {
    page.wait()
        .at_most(LIMIT)
        .for_element(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no element {css} on the page: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("cannot read the text of {css}: {e}"))
}

/// Polls the element `css` until its text contains `wanted`.
async fn wait_text(page: &fantoccini::Client, css: &str, wanted: &str) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let text = text_of(page, css).await;
        if text.contains(wanted) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} never showed {wanted:?}; it shows:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_examples_in_a_real_browser() {
    let env = TestEnv::new("console").await;
    let ns = env.namespace.clone();
    greeting_crd(&env.client).await;
    let work = tempfile::tempdir().expect("tempdir");
    let scripts = work.path().join("scripts");
    scoped_examples(&scripts, &ns);

    let console = free_address();
    let probes = free_address();
    let metrics = free_address();
    let log = work.path().join("nuop-standard.log");
    let mut nuop = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuop-standard"))
        .arg("--scripts")
        .arg(&scripts)
        .args(["--health-probe-bind-address", &probes.to_string()])
        .args(["--metrics-bind-address", &metrics.to_string()])
        .args(["--console-bind-address", &console.to_string()])
        .args(["--console-history", "50"])
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "info")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log file")))
        .kill_on_drop(true)
        .spawn()
        .expect("start nuop-standard");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("nuop-standard to be ready", LIMIT, || async {
        http_get(probes, "/readyz")
            .await
            .filter(|(code, _)| *code == 200)
    })
    .await;

    create_greeting(&env, "hello", "console").await;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(env.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &k8s_openapi::api::core::v1::ConfigMap {
                metadata: ObjectMeta {
                    name: Some("broken".into()),
                    labels: Some(
                        [("nuop.dev/console-test".to_string(), "fail".to_string())].into(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the ConfigMap that fails");
    // A labelled Secret for secret-cloner, copied nowhere: only its name may show.
    let secret_value = "console-test-s3cr3t";
    Api::<Secret>::namespaced(env.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("token".into()),
                    labels: Some([("nuop.dev/clone".to_string(), "true".to_string())].into()),
                    annotations: Some(
                        [(
                            "nuop.dev/clone-include".to_string(),
                            format!("{ns}-nowhere"),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                string_data: Some([("token".to_string(), secret_value.to_string())].into()),
                ..Default::default()
            },
        )
        .await
        .expect("create the Secret");

    // The JSON endpoints: every controller, and why `hello` was reconciled.
    let hello = eventually(
        "a changed reconcile of hello in /debug/objects",
        LIMIT,
        || async {
            let report = json_get(console, &format!("/debug/objects/{ns}/hello")).await;
            let records = report["controllers"][0]["records"].as_array()?.clone();
            records
                .iter()
                .any(|r| r["outcome"] == "changed")
                .then_some(records)
        },
    )
    .await;
    assert!(
        hello.iter().any(|r| r["trigger"]["type"] == "own_event"),
        "the first reconcile of a new object is its own event: {hello:?}"
    );
    let overview = json_get(console, "/debug/controllers").await;
    let names: Vec<&str> = overview["controllers"]
        .as_array()
        .expect("controllers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "config-replicator",
            "console-fails",
            "greeting",
            "secret-cloner"
        ],
        "{overview}"
    );
    let greeting = &overview["controllers"][2];
    assert_eq!(greeting["kind"], "Greeting", "{greeting}");
    assert_eq!(greeting["synced"], true, "{greeting}");
    assert_eq!(greeting["namespaces"], json!([ns]), "{greeting}");
    assert_eq!(greeting["watches"][0]["list"], "owns", "{greeting}");

    // A failing reconcile: outcome, category and the script's line.
    let broken = eventually("a failed reconcile of broken", LIMIT, || async {
        let report = json_get(console, &format!("/debug/objects/{ns}/broken")).await;
        report["controllers"][0]["records"]
            .as_array()?
            .iter()
            .find(|r| r["outcome"] == "error")
            .cloned()
    })
    .await;
    assert_eq!(broken["category"], "ScriptFailed", "{broken}");
    assert_eq!(
        broken["lines"],
        json!(["about to fail on purpose"]),
        "{broken}"
    );

    // Every metric the dashboard and the alerts use is in this binary's /metrics
    // (managed mode's in nuop-managed's, the webhooks' in webhooks.rs).
    let (_, exposition) = http_get(metrics, "/metrics")
        .await
        .expect("/metrics answers");
    let exposed = nuop_core::testing::exposed_metrics(&exposition);
    let missing: Vec<String> = nuop_core::testing::prometheus_referenced_metrics()
        .into_iter()
        .filter(|m| !exposed.contains(m))
        .filter(|m| !MANAGED_ONLY.contains(&m.as_str()) && !WEBHOOKS_ONLY.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "config/prometheus refers to metrics nuop-standard does not expose: {missing:?}\n{exposition}"
    );

    // A Secret's contents never show, even when asked for.
    let token = eventually("secret-cloner to reconcile the Secret", LIMIT, || async {
        let report = json_get(console, &format!("/debug/objects/{ns}/token?content=true")).await;
        let entry = report["controllers"]
            .as_array()?
            .iter()
            .find(|c| c["controller"] == "secret-cloner")?
            .clone();
        (!entry["records"].as_array()?.is_empty()).then_some(entry)
    })
    .await;
    assert!(token["content"].is_null(), "{token}");
    assert!(
        token["content_note"]
            .as_str()
            .is_some_and(|n| n.contains("never")),
        "{token}"
    );
    let encoded = "Y29uc29sZS10ZXN0LXMzY3IzdA"; // base64 of the value, unpadded prefix
    for path in [
        format!("/debug/objects/{ns}/token?content=true"),
        format!("/objects/{ns}/token?content=true"),
        "/debug/controllers/secret-cloner".to_string(),
        "/".to_string(),
    ] {
        let (_, body) = http_get(console, &path).await.expect("the console answers");
        assert!(
            !body.contains(secret_value) && !body.contains(encoded),
            "{path} shows the Secret's value:\n{body}"
        );
    }

    // A live tail that reconnects with Last-Event-ID is sent what it missed, in order.
    let newest = hello
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .max()
        .expect("ids");
    let ids = replayed_ids(console, newest.saturating_sub(2), 2).await;
    assert_eq!(ids[..2], [newest - 1, newest], "replayed ids: {ids:?}");

    // The browser.
    let driver = start_chromedriver(work.path()).await;
    let page = browser(&driver).await;
    let base = format!("http://{console}");
    page.goto(&format!("{base}/"))
        .await
        .expect("open the console");
    let table = text_of(&page, "#controllers").await;
    for name in ["config-replicator", "greeting", "secret-cloner"] {
        assert!(
            table.contains(name),
            "the controllers table lacks {name}:\n{table}"
        );
    }
    let tail = wait_text(&page, "#tail-list", &format!("{ns}/hello")).await;
    assert!(
        tail.contains("changed"),
        "no changed reconcile of hello in the tail:\n{tail}"
    );
    assert!(
        tail.contains("about to fail on purpose"),
        "no failed reconcile in the tail:\n{tail}"
    );
    wait_text(&page, "#tail-status", "live").await;

    // A new Greeting while the page is open: its reconcile and the script's log line
    // arrive over the live tail, without a reload.
    create_greeting(&env, "live", "tail").await;
    let tail = wait_text(&page, "#tail-list", "live: Hello, tail!").await;
    assert!(tail.contains(&format!("{ns}/live")), "{tail}");

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("console");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let png = page.screenshot().await.expect("screenshot");
    std::fs::write(shots.join("index.png"), png).expect("write the screenshot");

    // A controller's page, and an object's page offering its contents.
    page.goto(&format!("{base}/controllers/greeting"))
        .await
        .expect("open the greeting page");
    let facts = text_of(&page, "dl.facts").await;
    assert!(facts.contains("Greeting"), "{facts}");
    wait_text(&page, "#tail-list", "Hello, console!").await;
    let png = page.screenshot().await.expect("screenshot");
    std::fs::write(shots.join("controller.png"), png).expect("write the screenshot");
    page.goto(&format!("{base}/objects/{ns}/hello?content=true"))
        .await
        .expect("open hello's page");
    let content = text_of(&page, "pre.content").await;
    assert!(content.contains("\"observedGeneration\""), "{content}");

    page.close().await.expect("close the browser");
    nuop.kill().await.expect("stop nuop-standard");
    let _ = Api::<Namespace>::all(env.client.clone())
        .delete(&ns, &DeleteParams::background())
        .await;
    assert!(
        !logs().contains("panicked"),
        "nuop-standard panicked:\n{}",
        logs()
    );
    eprintln!("screenshots in {}", shots.display());
}
