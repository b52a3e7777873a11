//! The whole chain without a kubelet: a NuOperator is applied, `nuop-manager` (run
//! in-process) produces its ConfigMap and Deployment, and the built `nuop-managed` runs
//! as a local process with exactly that ConfigMap's `nuop.yaml` and the Deployment's
//! arguments and environment (addresses and paths moved to the test's own), fetching
//! over https with a token from a Secret and reconciling ConfigMaps; its status reaches
//! the NuOperator.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{HttpGit, Repo, Tls};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nuop_core::controller::shutdown_signal;
use nuop_core::health::Readiness;
use nuop_core::testing::{KillOnDrop, TestEnv, eventually, http_get, kubeconfig_path, local};
use nuop_crd::{MANAGED_CONFIG_KEY, Mapping, NuOperator, SecretKeyRef, Source};

const LIMIT: Duration = Duration::from_secs(90);

const SCRIPT: &str = r#"
def "main config" [] {
  { name: "chained", version: "v1", kind: "ConfigMap", namespaces: ["NAMESPACE"] } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  if ($obj.metadata.annotations? | default {} | get -o "nuop.dev/chained") == "yes" { exit 0 }
  print ($obj | upsert metadata.annotations."nuop.dev/chained" "yes" | to json)
  exit 2
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn nuoperator_to_manager_to_managed_to_reconciled_objects() {
    let env = TestEnv::new("managed-chain").await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("CRD installed");
    let tmp = tempfile::tempdir().expect("tempdir");
    let token = format!("chain-{}-token", env.namespace);
    env.create_secret("git", "token", &token).await;
    let repo = Repo::new();
    repo.write(
        "scripts/chained/mod.nu",
        &SCRIPT.replace("NAMESPACE", &env.namespace),
    );
    let commit = repo.commit("chained");
    let tls = Tls::new();
    let server = HttpGit::serve_tls(repo.tmp.path(), Some(&token), &tls).await;
    let url = format!("{}/.git", server.https_url("repo"));

    // The manager, in-process, restricted to the test's namespace.
    let (stop_manager, manager_stopped) = tokio::sync::oneshot::channel::<()>();
    let manager = tokio::spawn(nuop_manager::run(
        env.client.clone(),
        nuop_manager::Options {
            namespace: Some(env.namespace.clone()),
            settings: nuop_manager::build::Settings {
                webhooks: None,
                default_image: "registry.invalid/nuop-managed:test".into(),
            },
            concurrency: 2,
            readiness: Readiness::new(),
        },
        shutdown_signal(async move {
            let _ = manager_stopped.await;
        }),
    ));
    let operators: Api<NuOperator> = env.api();
    let operator = NuOperator::test()
        .named("chain")
        .in_namespace(&env.namespace)
        .with_source(
            Source::new(&url)
                .at_path("scripts")
                .at_ref("main")
                .with_token(SecretKeyRef::new("git", "token")),
        )
        .with_mapping(Mapping::new("chained", "v1", "ConfigMap"));
    eventually("the NuOperator created", LIMIT, || async {
        operators
            .create(&PostParams::default(), &operator)
            .await
            .ok()
    })
    .await;

    // What the manager wrote.
    let configmaps: Api<ConfigMap> = env.api();
    let deployments: Api<Deployment> = env.api();
    let yaml = eventually("the manager's ConfigMap", LIMIT, || async {
        let cm = configmaps.get_opt("nuop-chain").await.ok().flatten()?;
        cm.data?.get(MANAGED_CONFIG_KEY).cloned()
    })
    .await;
    let container = eventually("the manager's Deployment", LIMIT, || async {
        let deployment = deployments.get_opt("nuop-chain").await.ok().flatten()?;
        deployment
            .spec?
            .template
            .spec?
            .containers
            .into_iter()
            .next()
    })
    .await;
    let config = tmp.path().join(MANAGED_CONFIG_KEY);
    std::fs::write(&config, &yaml).expect("write config");

    // Its arguments, with the test's own addresses and config path.
    let (probes, metrics) = (common::free_port(), common::free_port());
    let args: Vec<String> = container
        .args
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if a.ends_with(MANAGED_CONFIG_KEY) {
                config.display().to_string()
            } else if a == ":8081" {
                format!("127.0.0.1:{probes}")
            } else if a == ":8080" {
                format!("127.0.0.1:{metrics}")
            } else {
                a
            }
        })
        .collect();
    assert!(args.contains(&"--leader-elect".to_string()), "{args:?}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nuop-managed"));
    command.args(&args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    // The Deployment's environment: literal values as they are, the downward API as a
    // kubelet would fill it in.
    for var in container.env.clone().unwrap_or_default() {
        let value = match (var.value, var.value_from) {
            (Some(v), _) => v,
            (None, Some(from)) => match from.field_ref.map(|f| f.field_path).as_deref() {
                Some("metadata.namespace") => env.namespace.clone(),
                Some("metadata.name") => "nuop-chain-0".to_string(),
                other => panic!("unexpected env source {other:?} for {}", var.name),
            },
            (None, None) => String::new(),
        };
        command.env(&var.name, value);
    }
    let log = tmp.path().join("managed.log");
    let child = command
        // Where a pod has its emptyDir and service account: here the test's files.
        .env("NUOP_CACHE_DIR", tmp.path().join("work"))
        .env("KUBECONFIG", kubeconfig_path())
        .env("SSL_CERT_FILE", tls.ca_file())
        .env("HOME", tmp.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("nuop-managed starts");
    let mut process = KillOnDrop(child);

    let probe = || async { (http_get(local(probes), "/readyz").await?.0 == 200).then_some(()) };
    eventually("nuop-managed ready", LIMIT, probe).await;
    configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("reconcile-me".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("configmap");
    eventually("the ConfigMap reconciled by the chain", LIMIT, || async {
        let cm = configmaps.get_opt("reconcile-me").await.ok().flatten()?;
        (cm.annotations().get("nuop.dev/chained").map(String::as_str) == Some("yes")).then_some(())
    })
    .await;
    eventually("the revision in the NuOperator's status", LIMIT, || async {
        let status = operators.get("chain").await.ok()?.status?;
        let source = status.sources.first()?;
        let mapping = status.mappings.first()?;
        (source.revision.as_deref() == Some(commit.as_str()) && mapping.running).then_some(())
    })
    .await;

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
    let logs = std::fs::read_to_string(&log).expect("logs");
    assert!(status.success(), "exit status {status}; logs:\n{logs}");
    assert!(!logs.contains(&token), "the token is in the logs");
    let _ = stop_manager.send(());
    let _ = manager.await;
}
