//! Support for tests that run against the real local control plane.
//!
//! Does I/O. [`TestEnv::new`] connects to the control plane named by
//! `NUOP_TEST_KUBECONFIG`, or starts one with `hack/control-plane up` once per test
//! process, and gives each test its own namespace so tests run in parallel without
//! seeing each other. A test that cannot get a control plane panics with the reason: it
//! never passes silently. Compiled into the library (it is small) so every crate's tests
//! can use it without a feature dance.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Environment variable naming an admin kubeconfig for tests; `make test` sets it.
pub const KUBECONFIG_ENV: &str = "NUOP_TEST_KUBECONFIG";

/// The repository root (where `hack/` lives), found from this crate's manifest dir.
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("hack/control-plane").is_file())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// The admin kubeconfig of the local control plane, starting it if needed (once per
/// process).
///
/// # Panics
/// When no control plane can be had; the message says why.
pub fn kubeconfig_path() -> PathBuf {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(find_or_start_control_plane)
        .clone()
        .unwrap_or_else(|why| panic!("this test needs the local control plane: {why}"))
}

fn find_or_start_control_plane() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(KUBECONFIG_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{KUBECONFIG_ENV}={} does not exist",
                path.display()
            ))
        };
    }
    let script = repo_root().join("hack/control-plane");
    let output = Command::new(&script)
        .arg("up")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`{} up` failed ({}):\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default().trim();
    if last.is_empty() || !Path::new(last).is_file() {
        return Err(format!(
            "`{} up` printed no kubeconfig path; stdout was:\n{stdout}",
            script.display()
        ));
    }
    Ok(PathBuf::from(last))
}

/// A kube client for the local control plane.
///
/// # Panics
/// When the control plane cannot be reached; the message says why.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", path.display()));
    crate::install_crypto_provider();
    Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a kube client: {e}"))
}

/// A test's own namespace on the local control plane, deleted when dropped.
pub struct TestEnv {
    /// A client for the control plane.
    pub client: Client,
    /// The namespace this test owns.
    pub namespace: String,
}

impl TestEnv {
    /// Connects and creates a fresh namespace named after `test` (plus a random suffix).
    ///
    /// # Panics
    /// When the control plane is unavailable or the namespace cannot be created.
    pub async fn new(test: &str) -> Self {
        let client = client().await;
        let namespace = format!("{}-{}", sanitize(test), random_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([("nuop.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create test namespace {namespace}: {e}"));
        Self { client, namespace }
    }

    /// A namespaced API in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The Warning Events on `name` in this test's namespace, as `reason: message`.
    ///
    /// # Panics
    /// When the Events cannot be listed.
    pub async fn warnings(&self, name: &str) -> Vec<String> {
        use kube::api::ListParams;
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
            .await
            .unwrap_or_else(|e| panic!("cannot list the Events of {name}: {e}"))
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| {
                format!(
                    "{}: {}",
                    e.reason.unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .collect()
    }

    /// Creates the Secret `name` holding `key: value` in this test's namespace.
    ///
    /// # Panics
    /// When the Secret cannot be created.
    pub async fn create_secret(&self, name: &str, key: &str, value: &str) {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        self.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
            .unwrap_or_else(|e| panic!("cannot create secret {name}: {e}"));
    }
}

/// A child process (a binary under test) killed and reaped when dropped, so a failing
/// test never leaves it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal HTTP/1.1 GET for probe and metrics endpoints: the status code and body,
/// or `None` while nothing answers (or the answer takes over 10 s).
pub async fn http_get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// `127.0.0.1:port`, for [`http_get`] on a binary's local port.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Deletion is asynchronous and best effort: the namespace carries a test label,
        // and `hack/control-plane down` removes everything anyway.
        let client = self.client.clone();
        let namespace = self.namespace.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = Api::<Namespace>::all(client)
                    .delete(&namespace, &DeleteParams::background())
                    .await;
            });
        }
    }
}

fn sanitize(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(40);
    out.trim_matches('-').to_string()
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:06x}", h.finish() & 0xff_ffff)
}

/// The `nu` binary for tests of the process executor: `$NUOP_NU` (set by the Makefile)
/// or the one `make tools` installs.
///
/// # Panics
/// When neither exists: tests of the process executor must not pass without `nu`.
pub fn nu_binary() -> PathBuf {
    let candidate = std::env::var_os(crate::script::process::NU_BINARY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/node_modules/@nushell/linux-x64/bin/nu"));
    assert!(
        candidate.is_file(),
        "this test needs the `nu` binary at {} (run `make tools`, or set NUOP_NU)",
        candidate.display()
    );
    candidate
}

/// A script controller running in-process against the test's namespace; stopped when
/// dropped.
pub struct RunningController {
    /// The directory holding the script (`<dir>/<name>/mod.nu`).
    pub dir: tempfile::TempDir,
    /// The script's config, with the watch narrowed to the test namespace.
    pub config: crate::protocol::ScriptConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningController {
    /// The script's directory.
    pub fn script_dir(&self) -> PathBuf {
        self.dir.path().join(&self.config.name)
    }

    /// Stops the controller and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.handle).await;
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestEnv {
    /// Writes `source` as `<tmp>/<name>/mod.nu`, loads it with `kind`, narrows its watch
    /// to this test's namespace and runs its controller in the background.
    ///
    /// # Panics
    /// When the script does not load or its config is invalid.
    pub async fn run_script(
        &self,
        name: &str,
        source: &str,
        kind: crate::script::ExecutorKind,
    ) -> RunningController {
        self.run_script_with_backoff(name, source, kind, crate::reconcile::backoff::BASE_DELAY)
            .await
    }

    /// [`TestEnv::run_script`] with per-object retry delays starting at `backoff_base`,
    /// for tests that wait through many retries.
    ///
    /// # Panics
    /// When the script does not load or its config is invalid.
    pub async fn run_script_with_backoff(
        &self,
        name: &str,
        source: &str,
        kind: crate::script::ExecutorKind,
        backoff_base: Duration,
    ) -> RunningController {
        self.run_script_with_options(
            name,
            source,
            kind,
            backoff_base,
            crate::controller::ControllerOptions::default(),
        )
        .await
    }

    /// [`TestEnv::run_script_with_backoff`] with `options` (an audit log, a
    /// concurrency) instead of the defaults.
    ///
    /// # Panics
    /// When the script does not load or its config is invalid.
    pub async fn run_script_with_options(
        &self,
        name: &str,
        source: &str,
        kind: crate::script::ExecutorKind,
        backoff_base: Duration,
        options: crate::controller::ControllerOptions,
    ) -> RunningController {
        let dir = tempfile::tempdir().expect("tempdir");
        let script_dir = dir.path().join(name);
        std::fs::create_dir(&script_dir).expect("script dir");
        std::fs::write(script_dir.join("mod.nu"), source).expect("write script");
        let script = crate::script::Script::at(&script_dir);
        let runner = crate::script::ScriptRunner::load_with(kind, &script, nu_binary())
            .unwrap_or_else(|e| panic!("script {name} does not load: {e}"));
        let mut config = runner
            .config(crate::protocol::DEFAULT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("script {name} has no valid config: {e}"));
        config.namespaces = vec![self.namespace.clone()];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = crate::shutdown::shutdown_signal(async move {
            let _ = stopped.await;
        });
        let handle = tokio::spawn(crate::controller::run_with_backoff(
            self.client.clone(),
            config.clone(),
            runner,
            options,
            shutdown,
            backoff_base,
        ));
        RunningController {
            dir,
            config,
            stop: Some(stop),
            handle,
        }
    }
}

/// Creates `crd` and waits until the API server reports it established. A CRD that
/// already exists (a parallel run made it first) is fine.
///
/// # Panics
/// When the CRD cannot be created or is not established within a minute.
pub async fn create_crd(
    client: &Client,
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) {
    use kube::runtime::wait::{await_condition, conditions};
    let api = Api::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >::all(client.clone());
    let name = crd.metadata.name.clone().expect("a CRD has a name");
    match api.create(&PostParams::default(), crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("cannot create the CRD {name}: {e}"),
    }
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|_| panic!("the CRD {name} was not established within 60 s"))
    .unwrap_or_else(|e| panic!("cannot watch the CRD {name}: {e}"));
}

/// The metric families the Grafana dashboard and the alert rules in
/// `config/prometheus/` refer to, histograms by their family name (`_bucket`, `_sum`
/// and `_count` removed): what a live `/metrics` must offer for them to show anything.
///
/// # Panics
/// When the files cannot be read.
pub fn prometheus_referenced_metrics() -> std::collections::BTreeSet<String> {
    let names = regex::Regex::new(r"\bnuop_[a-z_]+").expect("a valid pattern");
    let mut out = std::collections::BTreeSet::new();
    for file in ["dashboard.json", "rules.yaml"] {
        let path = repo_root().join("config/prometheus").join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for name in names.find_iter(&text) {
            let name = name.as_str();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            out.insert(family.to_string());
        }
    }
    out
}

/// The metric families a Prometheus text exposition (`/metrics`) declares (`# TYPE`).
pub fn exposed_metrics(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit` saying
/// what was awaited.
///
/// # Panics
/// When `limit` passes first.
pub async fn eventually<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_valid_labels() {
        assert_eq!(sanitize("Creates_A::ConfigMap"), "creates-a--configmap");
        assert!(sanitize(&"x".repeat(100)).len() <= 40);
        assert_eq!(random_suffix().len(), 6);
    }
}
