//! The built `nuop-managed` binary against the real control plane, configured with the
//! `nuop.yaml` the manager writes for a NuOperator (`ManagedConfig::for_operator`):
//! probes, metrics, a script fetched over https (smart HTTP, private CA) with a token
//! read from a Secret reconciling, the token never in logs, the cache or a script's
//! environment (nor in its console), and a clean exit on SIGTERM. Its live `/metrics`
//! offers the source metrics the dashboard and alerts in `config/prometheus/` use.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{HttpGit, Repo, Tls};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nuop_core::testing::{KillOnDrop, TestEnv, eventually, http_get, kubeconfig_path, local};
use nuop_crd::{ManagedConfig, Mapping, NuOperator, SecretKeyRef, Source};

const LIMIT: Duration = Duration::from_secs(60);

/// Stamps each object and dumps its whole environment to ENVFILE.
const ENV_DUMPER: &str = r#"
def "main config" [] {
  { name: "dumper", version: "v1", kind: "ConfigMap", namespaces: ["NAMESPACE"] } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  $env | to json -r | save --force "ENVFILE"
  if ($obj.metadata.annotations? | default {} | get -o "nuop.dev/dumped") == "yes" { exit 0 }
  print ($obj | upsert metadata.annotations."nuop.dev/dumped" "yes" | to json)
  exit 2
}
"#;

fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default())
            .contains(needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_fetches_over_https_with_a_token_and_never_leaks_it() {
    let env = TestEnv::new("managed-binary").await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = format!("tok-{}-secret", env.namespace);
    env.create_secret("git-credentials", "token", &token).await;

    let repo = Repo::new();
    let env_file = tmp.path().join("script-env.json");
    repo.write(
        "controllers/dumper/mod.nu",
        &ENV_DUMPER
            .replace("NAMESPACE", &env.namespace)
            .replace("ENVFILE", &env_file.display().to_string()),
    );
    repo.commit("dumper");
    let tls = Tls::new();
    let server = HttpGit::serve_tls(repo.tmp.path(), Some(&token), &tls).await;
    let url = format!("{}/.git", server.https_url("repo"));

    // The configuration exactly as the manager renders it for this NuOperator.
    let operator = NuOperator::test()
        .named("bin")
        .in_namespace(&env.namespace)
        .with_sync_interval(10)
        .with_source(
            Source::new(&url)
                .at_path("controllers")
                .at_ref("main")
                .with_token(SecretKeyRef::new("git-credentials", "token")),
        )
        .with_mapping(Mapping::new("dumper", "v1", "ConfigMap"));
    let config = tmp.path().join("nuop.yaml");
    std::fs::write(
        &config,
        ManagedConfig::for_operator(&operator)
            .to_yaml()
            .expect("yaml"),
    )
    .expect("write config");
    let cache = tmp.path().join("cache");
    let log = tmp.path().join("managed.log");
    let (probes, metrics) = (common::free_port(), common::free_port());
    let console = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_nuop-managed"))
        .arg(format!("--health-probe-bind-address=127.0.0.1:{probes}"))
        .arg(format!("--metrics-bind-address=127.0.0.1:{metrics}"))
        // Only a port: the console binds 127.0.0.1.
        .arg(format!("--console-bind-address=:{console}"))
        .env("NUOP_CONFIG", &config)
        .env("NUOP_CACHE_DIR", &cache)
        .env("NUOP_SECRETS_DIR", tmp.path().join("no-mounted-secrets"))
        .env("NUOP_SYNC_INTERVAL", "1")
        .env("SSL_CERT_FILE", tls.ca_file())
        .env("KUBECONFIG", kubeconfig_path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("nuop-managed starts");
    let mut process = KillOnDrop(child);

    eventually("/readyz to answer 200", LIMIT, || async {
        (http_get(local(probes), "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        http_get(local(probes), "/healthz").await.map(|r| r.0),
        Some(200)
    );
    let configmaps: Api<ConfigMap> = env.api();
    configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("dump-me".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("configmap");
    eventually("the ConfigMap reconciled", LIMIT, || async {
        let cm = configmaps.get_opt("dump-me").await.ok().flatten()?;
        (cm.annotations().get("nuop.dev/dumped").map(String::as_str) == Some("yes")).then_some(())
    })
    .await;
    // Several fetches, each reading the Secret again.
    let success = format!("nuop_source_syncs_total{{result=\"success\",source=\"{url}\"}}");
    eventually("three successful syncs", LIMIT, || async {
        let (_, body) = http_get(local(metrics), "/metrics").await?;
        let count: u64 = body
            .lines()
            .find(|l| l.starts_with(&success))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()?;
        (count >= 3).then_some(())
    })
    .await;

    // The source metrics the dashboard and the alerts refer to are exposed.
    let (_, exposition) = http_get(local(metrics), "/metrics")
        .await
        .expect("/metrics");
    let exposed = nuop_core::testing::exposed_metrics(&exposition);
    for name in nuop_core::testing::prometheus_referenced_metrics()
        .iter()
        .filter(|m| m.starts_with("nuop_source_"))
    {
        assert!(
            exposed.contains(name),
            "{name} is not in /metrics:\n{exposition}"
        );
    }
    // The console shows the source with its revision and the mapping, never the token.
    let overview = eventually(
        "the console to show the source's revision",
        LIMIT,
        || async {
            let (code, body) = http_get(local(console), "/debug/controllers").await?;
            let overview: serde_json::Value = serde_json::from_str(&body).ok()?;
            (code == 200 && overview["managed"]["sources"][0]["revision"].is_string())
                .then_some(overview)
        },
    )
    .await;
    assert_eq!(overview["binary"], "nuop-managed", "{overview}");
    assert_eq!(
        overview["managed"]["mappings"][0]["running"], true,
        "{overview}"
    );
    assert_eq!(overview["controllers"][0]["name"], "dumper", "{overview}");
    for path in ["/", "/debug/controllers", "/debug/controllers/dumper"] {
        let (_, body) = http_get(local(console), path)
            .await
            .expect("the console answers");
        assert!(
            !body.contains(&token),
            "the console's {path} shows the token"
        );
    }

    kill(Pid::from_raw(process.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    let deadline = std::time::Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = process.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");

    // The server asked for credentials and got the right ones.
    use std::sync::atomic::Ordering::SeqCst;
    assert!(server.refused.load(SeqCst) > 0);
    assert!(server.served.load(SeqCst) > 0);
    let logs = std::fs::read_to_string(&log).expect("logs");
    assert!(logs.contains("new revision loaded"), "{logs}");
    assert!(!logs.contains(&token), "the token is in the logs");
    let script_env = std::fs::read_to_string(&env_file).expect("script env");
    // The dump is the script's environment (nuop sets NUOP_CONTROLLER per call), and
    // the operator's own NUOP_* settings are not passed on (issue 18).
    assert!(script_env.contains("\"NUOP_CONTROLLER\""), "{script_env}");
    assert!(!script_env.contains("\"NUOP_CONFIG\""), "{script_env}");
    assert!(
        !script_env.contains(&token),
        "the token is in the script's environment"
    );
    assert_eq!(files_containing(&cache, &token), Vec::<String>::new());
}
