//! `owns`, `watches` and the shared informer registry against the real API server.
//!
//! Every script here requeues only after 300 s, so whatever happens sooner was caused by
//! a watch: a deleted owned child recreated, a related object's change waking its
//! primary by label, by `map: all` and by `main map`. Two controllers owning ConfigMaps
//! in one process share one watch, and stopping them stops it. A kind the client may not
//! list keeps the controller from starting, with an error naming the kind and the verb.
//!
//! The scripts use kubectl, so these tests need `kubectl` on `PATH` and `KUBECONFIG`
//! naming the test control plane (`make test`, or `eval "$(hack/control-plane env)"`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{ApiResource, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use nuop_core::controller::{ControllerOptions, run};
use nuop_core::informers::{InformerKey, Informers, Received};
use nuop_core::script::{ExecutorKind, Script, ScriptRunner};
use nuop_core::testing::{TestEnv, eventually, kubeconfig_path, nu_binary};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// Panics unless the scripts can run `kubectl` against the test control plane.
fn require_kubectl() {
    const HOW: &str = "run through `make test`, or `eval \"$(hack/control-plane env)\"` first";
    let kubeconfig = std::env::var_os("KUBECONFIG")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("these scripts run kubectl, which needs KUBECONFIG: {HOW}"));
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .unwrap_or_else(|e| panic!("kubectl is not runnable ({e}): {HOW}"));
    assert!(
        out.status.success(),
        "`kubectl version --client` failed: {HOW}"
    );
    let canonical = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    assert_eq!(
        canonical(PathBuf::from(kubeconfig)),
        canonical(kubeconfig_path()),
        "KUBECONFIG (the scripts' kubectl) and the test kubeconfig differ: {HOW}"
    );
}

/// A controller running in the background until stopped (or dropped).
struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(LIMIT, &mut self.handle)
            .await
            .expect("the controller stops within a minute")
            .expect("the controller task ends cleanly");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs `tests/scripts/<script>` (every occurrence of its name replaced by `name`, so
/// one script can be two controllers) in the test's namespace with `options`.
async fn start(
    env: &TestEnv,
    client: Client,
    script: &str,
    name: &str,
    options: ControllerOptions,
) -> Running {
    start_in(env, client, script, name, options, false).await
}

/// [`start`], with every `watches` entry narrowed to the test namespace when `narrow`.
async fn start_in(
    env: &TestEnv,
    client: Client,
    script: &str,
    name: &str,
    options: ControllerOptions,
    narrow: bool,
) -> Running {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(script)
        .join("mod.nu");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .replace(script, name);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join(name)).expect("script dir");
    std::fs::write(dir.path().join(name).join("mod.nu"), source).expect("write script");
    let runner = ScriptRunner::load_with(
        ExecutorKind::Embedded,
        &Script::at(dir.path().join(name)),
        nu_binary(),
    )
    .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
    let mut config = runner
        .config(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{name} has no valid config: {e}"));
    config.namespaces = vec![env.namespace.clone()];
    if narrow {
        for watch in &mut config.watches {
            watch.namespaces = vec![env.namespace.clone()];
        }
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = nuop_core::shutdown::shutdown_signal(async move {
        let _ = stopped.await;
    });
    let handle = tokio::spawn(run(client, config, runner, options, shutdown));
    Running {
        stop: Some(stop),
        handle,
        _dir: dir,
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn configmap(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(strings(labels)),
            ..Default::default()
        },
        data: Some(strings(data)),
        ..Default::default()
    }
}

async fn create(api: &Api<ConfigMap>, cm: &ConfigMap) {
    api.create(&PostParams::default(), cm)
        .await
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", cm.name_any()));
}

async fn merge(api: &Api<ConfigMap>, name: &str, patch: serde_json::Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("cannot patch {name}: {e}"));
}

/// Waits until `name` exists with `data` (and, when given, a UID other than `not_uid`);
/// returns its UID.
async fn wait_data(
    api: &Api<ConfigMap>,
    name: &str,
    data: &[(&str, &str)],
    not_uid: Option<&str>,
) -> String {
    let want = strings(data);
    eventually(&format!("{name} with {want:?}"), LIMIT, || async {
        let cm = api.get_opt(name).await.ok()??;
        let uid = cm.uid()?;
        (cm.data.as_ref() == Some(&want) && Some(uid.as_str()) != not_uid).then_some(uid)
    })
    .await
}

fn annotation(cm: &ConfigMap, key: &str) -> Option<String> {
    cm.annotations().get(key).cloned()
}

fn configmap_resource() -> ApiResource {
    ApiResource::erase::<ConfigMap>(&())
}

#[tokio::test]
async fn a_deleted_or_edited_owned_child_is_restored_by_the_owns_watch() {
    require_kubectl();
    let env = TestEnv::new("owned-child-restored").await;
    let controller = start(
        &env,
        env.client.clone(),
        "owns-child",
        "owns-child",
        ControllerOptions::default(),
    )
    .await;
    let api = env.api::<ConfigMap>();
    create(
        &api,
        &configmap(
            "parent",
            &[("test.nuop.dev/parent", "owns-child")],
            &[("k", "v1")],
        ),
    )
    .await;
    let first = wait_data(&api, "parent-child", &[("k", "v1")], None).await;

    api.delete("parent-child", &DeleteParams::default())
        .await
        .expect("delete the child");
    let second = wait_data(&api, "parent-child", &[("k", "v1")], Some(&first)).await;

    // An edit of the child's data (`on: spec` sees data) is reverted.
    merge(&api, "parent-child", json!({"data": {"k": "edited"}})).await;
    wait_data(&api, "parent-child", &[("k", "v1")], Some(&first)).await;
    assert_eq!(
        api.get("parent-child")
            .await
            .expect("child")
            .uid()
            .as_deref(),
        Some(second.as_str()),
        "the edit is reverted in place"
    );

    // Garbage collection takes the child with its owner.
    api.delete("parent", &DeleteParams::default())
        .await
        .expect("delete the parent");
    eventually("the child garbage-collected", LIMIT, || async {
        api.get_opt("parent-child")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn a_changed_related_object_wakes_its_primary_by_label() {
    require_kubectl();
    let env = TestEnv::new("related-label-wakes").await;
    let controller = start(
        &env,
        env.client.clone(),
        "watch-label",
        "watch-label",
        ControllerOptions::default(),
    )
    .await;
    let api = env.api::<ConfigMap>();
    create(
        &api,
        &configmap(
            "source",
            &[("test.nuop.dev/source", "watch-label")],
            &[("k", "v")],
        ),
    )
    .await;
    let uid = wait_data(&api, "source-copy", &[("k", "v")], None).await;
    merge(&api, "source-copy", json!({"data": {"k": "edited"}})).await;
    wait_data(&api, "source-copy", &[("k", "v")], None).await;
    assert_eq!(
        api.get("source-copy").await.expect("copy").uid(),
        Some(uid),
        "restored in place"
    );
    api.delete("source-copy", &DeleteParams::default())
        .await
        .expect("delete the copy");
    let again = wait_data(&api, "source-copy", &[("k", "v")], None).await;
    assert!(!again.is_empty());
    controller.stop().await;
}

#[tokio::test]
async fn map_all_wakes_every_primary_when_a_namespace_appears() {
    require_kubectl();
    let env = TestEnv::new("map-all-wakes").await;
    let controller = start(
        &env,
        env.client.clone(),
        "watch-all",
        "watch-all",
        ControllerOptions::default(),
    )
    .await;
    let api = env.api::<ConfigMap>();
    for name in ["one", "two"] {
        create(
            &api,
            &configmap(name, &[("test.nuop.dev/counted", "watch-all")], &[]),
        )
        .await;
    }
    let counted = |want: &'static str| {
        let api = api.clone();
        async move {
            for name in ["one", "two"] {
                let cm = api.get(name).await.ok()?;
                if annotation(&cm, "test.nuop.dev/namespaces").as_deref() != Some(want) {
                    return None;
                }
            }
            Some(())
        }
    };
    eventually("both primaries count 0 namespaces", LIMIT, || counted("0")).await;

    let extra = format!("{}-x", env.namespace);
    let namespaces = Api::<Namespace>::all(env.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(extra.clone()),
                    labels: Some(strings(&[
                        ("nuop.dev/test", "true"),
                        ("test.nuop.dev/watch-all", "true"),
                        ("test.nuop.dev/for", &env.namespace),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create a namespace");
    eventually("both primaries count the new namespace", LIMIT, || {
        counted("1")
    })
    .await;
    let _ = namespaces.delete(&extra, &DeleteParams::default()).await;
    controller.stop().await;
}

#[tokio::test]
async fn map_script_asks_main_map_which_primary_a_change_concerns() {
    require_kubectl();
    let env = TestEnv::new("map-script-wakes").await;
    let controller = start(
        &env,
        env.client.clone(),
        "watch-script",
        "watch-script",
        ControllerOptions::default(),
    )
    .await;
    let api = env.api::<ConfigMap>();
    for name in ["p", "q"] {
        create(
            &api,
            &configmap(name, &[("test.nuop.dev/mapped", "watch-script")], &[]),
        )
        .await;
    }
    // Reconciled once at start (nothing to stamp yet), then only a watch can wake it.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("s1".into()),
            labels: Some(strings(&[("test.nuop.dev/mapped", "watch-script")])),
            annotations: Some(strings(&[("test.nuop.dev/for", "p")])),
            ..Default::default()
        },
        data: Some([("k".to_string(), ByteString(b"v".to_vec()))].into()),
        ..Default::default()
    };
    // Wait until the controller runs (its first reconciles happened) before the Secret
    // appears; the Secret's creation must be what wakes `p`.
    eventually("the controller listed its primaries", LIMIT, || async {
        nuop_core::metrics::METRICS
            .reconciles
            .with_label_values(&["watch-script", "no_change"])
            .get()
            .ge(&1)
            .then_some(())
    })
    .await;
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the secret");
    eventually("p names the secret mapped to it", LIMIT, || async {
        let cm = api.get("p").await.ok()?;
        (annotation(&cm, "test.nuop.dev/secrets").as_deref() == Some("s1")).then_some(())
    })
    .await;
    controller.stop().await;
}

#[tokio::test]
async fn two_controllers_owning_configmaps_share_one_watch_until_both_stop() {
    require_kubectl();
    let env = TestEnv::new("owns-share-one-watch").await;
    let options = ControllerOptions::default();
    let informers = options.informers.clone();
    let a = start(
        &env,
        env.client.clone(),
        "owns-child",
        "owns-child",
        options.clone(),
    )
    .await;
    let b = start(
        &env,
        env.client.clone(),
        "owns-child",
        "owns-child-b",
        options.clone(),
    )
    .await;
    let key = InformerKey {
        resource: configmap_resource(),
        namespace: Some(env.namespace.clone()),
        labels: Some("nuop.dev/controller".into()),
        fields: None,
    };
    eventually(
        "both controllers subscribed to one watch",
        LIMIT,
        || async { (informers.subscriptions(&key) == 2).then_some(()) },
    )
    .await;
    assert_eq!(informers.keys(), vec![key.clone()], "one watch for both");

    // Both are served by it.
    let api = env.api::<ConfigMap>();
    create(
        &api,
        &configmap(
            "pa",
            &[("test.nuop.dev/parent", "owns-child")],
            &[("k", "a")],
        ),
    )
    .await;
    create(
        &api,
        &configmap(
            "pb",
            &[("test.nuop.dev/parent", "owns-child-b")],
            &[("k", "b")],
        ),
    )
    .await;
    wait_data(&api, "pa-child", &[("k", "a")], None).await;
    let b_uid = wait_data(&api, "pb-child", &[("k", "b")], None).await;
    eventually("both synced", LIMIT, || async {
        options.readiness.check().ok()
    })
    .await;

    // The first to stop leaves the watch to the other, which still restores its child.
    a.stop().await;
    assert_eq!(informers.subscriptions(&key), 1);
    api.delete("pb-child", &DeleteParams::default())
        .await
        .expect("delete b's child");
    wait_data(&api, "pb-child", &[("k", "b")], Some(&b_uid)).await;

    // The last subscription gone, the watch stops.
    b.stop().await;
    assert_eq!(informers.watch_count(), 0);
    assert_eq!(informers.subscriptions(&key), 0);
}

/// A client that acts as a ServiceAccount no Role grants anything.
async fn unprivileged_client(namespace: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:nobody"));
    Client::try_from(config).expect("client")
}

/// Lets the ServiceAccount `nobody` of `namespace` do `verbs` on `resources`.
async fn grant(env: &TestEnv, name: &str, resources: &[&str], verbs: &[&str]) {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let role = Role {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "nobody".into(),
            namespace: Some(env.namespace.clone()),
            ..Default::default()
        }]),
    };
    env.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    env.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("create role binding");
}

#[tokio::test]
async fn a_kind_the_client_may_not_list_is_a_clear_error_and_no_start() {
    require_kubectl();
    let env = TestEnv::new("forbidden-watch").await;
    // The primary kind is allowed, the watched Secrets are not.
    grant(
        &env,
        "primaries",
        &["configmaps"],
        &["get", "list", "watch"],
    )
    .await;
    let api = env.api::<ConfigMap>();
    let name = "watch-script-forbidden";
    create(
        &api,
        &configmap("p", &[("test.nuop.dev/mapped", name)], &[]),
    )
    .await;
    let options = ControllerOptions::default();
    let client = unprivileged_client(&env.namespace).await;
    // The watch is narrowed to the test namespace, as the Role is.
    let controller = start_in(&env, client, "watch-script", name, options.clone(), true).await;
    let reason = eventually("readiness names the forbidden list", LIMIT, || async {
        match options.readiness.check() {
            Err(reason) if reason.contains("forbidden") => Some(reason),
            _ => None,
        }
    })
    .await;
    assert!(
        reason.contains("may not list Secret (v1)") && reason.contains("watches[0]"),
        "{reason}"
    );
    let reconciles = || {
        nuop_core::metrics::METRICS
            .reconciles
            .with_label_values(&[name, "no_change"])
            .get()
    };
    assert_eq!(
        reconciles(),
        0,
        "the controller must not start on an empty cache"
    );

    // Once RBAC allows the Secrets, the watch lists them and the controller starts.
    grant(&env, "secrets", &["secrets"], &["list", "watch"]).await;
    eventually(
        "the controller started",
        Duration::from_secs(120),
        || async { (reconciles() >= 1).then_some(()) },
    )
    .await;
    eventually("ready", LIMIT, || async { options.readiness.check().ok() }).await;
    controller.stop().await;
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_and_the_watch_goes_on() {
    let env = TestEnv::new("informer-lag").await;
    let informers = Informers::with_capacity(1);
    let key = InformerKey {
        resource: configmap_resource(),
        namespace: Some(env.namespace.clone()),
        labels: None,
        fields: None,
    };
    let mut slow = informers.subscribe(&env.client, key.clone());
    let fast = informers.subscribe(&env.client, key);
    let mut status = slow.status();
    tokio::time::timeout(LIMIT, status.wait_for(|s| s.synced))
        .await
        .expect("synced within a minute")
        .expect("entry alive");
    let api = env.api::<ConfigMap>();
    for i in 0..5 {
        create(&api, &configmap(&format!("cm-{i}"), &[], &[])).await;
    }
    // The watch did not wait for the slow subscriber: every object is in the cache.
    eventually("all five cached", LIMIT, || async {
        (fast.store().state().len() >= 5).then_some(())
    })
    .await;
    match tokio::time::timeout(LIMIT, slow.recv())
        .await
        .expect("a message")
    {
        Received::Lagged(missed) => assert!(missed >= 1, "missed {missed}"),
        other => panic!("expected the slow subscriber to have lagged, got {other:?}"),
    }
}
