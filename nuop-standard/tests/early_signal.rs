//! A SIGTERM that arrives while `nuop-standard` is still starting (here: while the kube
//! client runs its exec credential plugin) is a graceful stop with exit code 0, not the
//! default action (status 143): the handlers are installed before start-up (m21).
//!
//! No control plane: the kubeconfig names a server nothing listens on, and its exec
//! plugin holds start-up until the test lets it go, so the signal lands inside
//! start-up without any timing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LIMIT: Duration = Duration::from_secs(60);

/// A kubeconfig for an unreachable server whose user's exec plugin (written to `dir`)
/// touches `<dir>/started`, waits for `<dir>/go`, then answers a token.
fn held_kubeconfig(dir: &Path) -> String {
    let plugin = dir.join("plugin.sh");
    std::fs::write(
        &plugin,
        format!(
            r#"touch '{dir}/started'
while [ ! -e '{dir}/go' ]; do sleep 0.05; done
echo '{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{{"token":"t"}}}}'
"#,
            dir = dir.display()
        ),
    )
    .expect("write plugin");
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster:
    server: https://127.0.0.1:1
    insecure-skip-tls-verify: true
contexts:
- name: nowhere
  context: {{ cluster: nowhere, user: held }}
current-context: nowhere
users:
- name: held
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      interactiveMode: Never
      command: sh
      args: ['{plugin}']
"#,
        plugin = plugin.display()
    )
}

#[tokio::test]
async fn sigterm_during_start_up_is_a_graceful_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let scripts = tmp.path().join("scripts/early");
    std::fs::create_dir_all(&scripts).expect("scripts dir");
    std::fs::write(
        scripts.join("mod.nu"),
        r#"
def "main config" [] { { name: "early", version: "v1", kind: "ConfigMap", namespaces: ["default"] } | to yaml }
def "main reconcile" [] { exit 0 }
"#,
    )
    .expect("write script");
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, held_kubeconfig(tmp.path())).expect("write kubeconfig");
    let log = tmp.path().join("stderr.log");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .to_string()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nuop-standard"))
        .arg("--scripts")
        .arg(tmp.path().join("scripts"))
        .arg("--health-probe-bind-address")
        .arg(free())
        .arg("--metrics-bind-address")
        .arg(free())
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("POD_NAMESPACE")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start nuop-standard");
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = tmp.path().join("started");
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !started.exists() {
        if let Some(status) = child.try_wait().expect("poll the child") {
            panic!(
                "exited before the credential plugin ran ({status}); logs:\n{}",
                logs()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "start-up did not reach the credential plugin within {LIMIT:?}; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = Pid::from_raw(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .expect("running"),
    );
    kill(pid, Signal::SIGTERM).expect("send SIGTERM");
    std::fs::write(tmp.path().join("go"), "").expect("let start-up go on");
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within {LIMIT:?}; logs:\n{}", logs()))
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a SIGTERM during start-up must stop gracefully ({status}); logs:\n{}",
        logs()
    );
    assert!(
        logs().contains("termination requested"),
        "logs:\n{}",
        logs()
    );
}
