//! Controllers survive an API server restart: on a private control plane (its own
//! state dir and ports, sharing the built binaries, so the shared plane other tests use
//! is never disturbed), two controllers converge their objects, kube-apiserver is
//! stopped and started again, and both pick up objects created and changed afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use nuop_core::controller::ControllerOptions;
use nuop_core::script::{ExecutorKind, Script, ScriptRunner};
use nuop_core::shutdown::shutdown_signal;
use nuop_core::testing::{eventually, nu_binary, repo_root};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(90);
const NAMESPACE: &str = "restart";

/// A control plane of this test's own; `down` when dropped.
struct PrivatePlane {
    _state: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl PrivatePlane {
    fn control_plane(&self, command: &str) -> String {
        let out = Command::new(repo_root().join("hack/control-plane"))
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap_or_else(|e| panic!("cannot run hack/control-plane {command}: {e}"));
        assert!(
            out.status.success(),
            "hack/control-plane {command} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn apiserver_pid(&self) -> String {
        let state = &self.env[0].1;
        std::fs::read_to_string(Path::new(state).join("apiserver.pid"))
            .expect("apiserver pid file")
            .trim()
            .to_string()
    }

    fn up() -> (Self, PathBuf) {
        let state = tempfile::tempdir().expect("state dir");
        let env = vec![
            (
                "NUOP_CP_STATE_DIR",
                state.path().join("cp").display().to_string(),
            ),
            ("NUOP_ETCD_CLIENT_PORT", free_port()),
            ("NUOP_ETCD_PEER_PORT", free_port()),
            ("NUOP_APISERVER_PORT", free_port()),
            ("NUOP_KCM_PORT", free_port()),
            ("NUOP_CP_WAIT_GC", "0".into()),
        ];
        let plane = Self { _state: state, env };
        let out = plane.control_plane("up");
        let kubeconfig = PathBuf::from(out.lines().last().expect("kubeconfig path"));
        (plane, kubeconfig)
    }
}

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("hack/control-plane"))
            .arg("down")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output();
    }
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener
        .local_addr()
        .expect("local addr")
        .port()
        .to_string()
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("read the private kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    nuop_core::install_crypto_provider();
    Client::try_from(config).expect("client")
}

/// A script over ConfigMaps labelled `<label>=yes` that sets the label `done-<label>`.
fn marking_script(label: &str) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "mark-{label}", version: "v1", kind: "ConfigMap", labelSelectors: {{ "{label}": "yes" }} }} | to yaml
}}
def "main reconcile" [] {{
  let obj = $in | from json
  if ($obj.metadata.labels? | default {{}} | get -o "done-{label}") == "true" {{ exit 0 }}
  print ($obj | upsert metadata.labels."done-{label}" "true" | to json)
  exit 2
}}
"#
    )
}

/// Starts the controller of `marking_script(label)`; stops it when the sender drops.
async fn start_controller(
    client: &Client,
    dir: &Path,
    label: &str,
) -> tokio::sync::oneshot::Sender<()> {
    let script_dir = dir.join(format!("mark-{label}"));
    std::fs::create_dir_all(&script_dir).expect("script dir");
    std::fs::write(script_dir.join("mod.nu"), marking_script(label)).expect("script");
    let runner = ScriptRunner::load_with(
        ExecutorKind::Embedded,
        &Script::at(&script_dir),
        nu_binary(),
    )
    .expect("load the script");
    let mut config = runner
        .config(Duration::from_secs(30))
        .await
        .expect("valid config");
    config.namespaces = vec![NAMESPACE.into()];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(nuop_core::controller::run(
        client.clone(),
        config,
        runner,
        ControllerOptions::default(),
        shutdown_signal(async move {
            let _ = stopped.await;
        }),
    ));
    stop
}

async fn create(cms: &Api<ConfigMap>, name: &str, label: &str) {
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(label.to_string(), "yes".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

async fn all_marked(cms: &Api<ConfigMap>, label: &str, count: usize, when: &str) {
    let done = format!("done-{label}");
    eventually(
        &format!("{count} ConfigMaps labelled {label} to be marked {when}"),
        LIMIT,
        || async {
            let list = cms
                .list(&ListParams::default().labels(&format!("{label}=yes")))
                .await
                .ok()?;
            let marked = list
                .items
                .iter()
                .filter(|c| c.labels().get(&done).map(String::as_str) == Some("true"))
                .count();
            (list.items.len() == count && marked == count).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn controllers_resume_after_the_api_server_restarts() {
    let (plane, kubeconfig) = PrivatePlane::up();
    let client = client_for(&kubeconfig).await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the namespace");
    let scripts = tempfile::tempdir().expect("scripts dir");
    let _stop_a = start_controller(&client, scripts.path(), "a").await;
    let _stop_b = start_controller(&client, scripts.path(), "b").await;

    let cms = Api::<ConfigMap>::namespaced(client.clone(), NAMESPACE);
    for i in 0..5 {
        create(&cms, &format!("a-{i}"), "a").await;
        create(&cms, &format!("b-{i}"), "b").await;
    }
    all_marked(&cms, "a", 5, "before the restart").await;
    all_marked(&cms, "b", 5, "before the restart").await;

    let pid_before = plane.apiserver_pid();
    plane.control_plane("restart-apiserver");
    assert_ne!(
        plane.apiserver_pid(),
        pid_before,
        "kube-apiserver was not restarted"
    );

    // New objects, and an old one that lost its mark, are reconciled by both
    // controllers once their watches have reconnected.
    for i in 5..10 {
        create(&cms, &format!("a-{i}"), "a").await;
        create(&cms, &format!("b-{i}"), "b").await;
    }
    cms.patch(
        "b-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"done-b": null}}})),
    )
    .await
    .expect("unmark b-0");
    all_marked(&cms, "a", 10, "after the restart").await;
    all_marked(&cms, "b", 10, "after the restart").await;
}
