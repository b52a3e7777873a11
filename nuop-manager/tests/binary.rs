//! The built `nuop-manager` binary against the real control plane: flags and
//! environment wired, `/readyz` ready once the watch has synced, a NuOperator turned
//! into its Deployment, and a clean exit on SIGTERM.

use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use nuop_core::testing::{KillOnDrop, TestEnv, eventually, http_get, kubeconfig_path, local};
use nuop_crd::{Mapping, NuOperator, Source};

const LIMIT: Duration = Duration::from_secs(60);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn the_binary_serves_probes_reconciles_and_stops_on_sigterm() {
    let env = TestEnv::new("manager-binary").await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("the CRD installs");
    let (probes, metrics) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_nuop-manager"))
        .arg("--namespace")
        .arg(&env.namespace)
        .arg(format!("--health-probe-bind-address=127.0.0.1:{probes}"))
        .arg(format!("--metrics-bind-address=127.0.0.1:{metrics}"))
        .env("KUBECONFIG", kubeconfig_path())
        .env("NUOP_DEFAULT_IMAGE", "registry.invalid/from-env:1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nuop-manager starts");
    let mut manager = KillOnDrop(child);

    eventually("/readyz to answer 200", LIMIT, || async {
        (http_get(local(probes), "/readyz").await.map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    assert_eq!(
        http_get(local(probes), "/healthz").await.map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http_get(local(metrics), "/metrics").await.map(|r| r.0),
        Some(200)
    );

    let operators: Api<NuOperator> = env.api();
    let op = NuOperator::test()
        .named("bin")
        .with_source(Source::new("https://github.com/nuop-dev/nuop.git"))
        .with_mapping(Mapping::new("config-replicator", "v1", "ConfigMap"));
    eventually("the NuOperator to be created", LIMIT, || async {
        match operators.create(&PostParams::default(), &op).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => panic!("cannot create the NuOperator: {e}"),
        }
    })
    .await;
    let deployments: Api<Deployment> = env.api();
    let deployment = eventually("the Deployment", LIMIT, || async {
        deployments.get_opt("nuop-bin").await.expect("get")
    })
    .await;
    let image = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers[0].image.clone());
    assert_eq!(
        image.as_deref(),
        Some("registry.invalid/from-env:1"),
        "NUOP_DEFAULT_IMAGE is read"
    );

    let pid = nix::unistd::Pid::from_raw(i32::try_from(manager.0.id()).expect("a pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM is sent");
    let status = eventually("the manager to exit after SIGTERM", LIMIT, || {
        let exited = manager.0.try_wait().expect("wait");
        async move { exited }
    })
    .await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
