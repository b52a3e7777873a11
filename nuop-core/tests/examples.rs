//! The example controllers in `examples/` against the real API server: config-replicator
//! and secret-cloner (namespace include/exclude annotations, keeping copies in step,
//! cleanup by their finalizer, deleted/edited copies and new namespaces served through
//! their watches), greeting (status through the status subresource, an owned ConfigMap
//! recreated when deleted and garbage-collected with its owner), and the kubectl-style
//! replicator written for the original nuop (`tests/scripts/kubectl-replicator`), which
//! must keep working unchanged.
//!
//! The examples use `k8s` commands and need no kubectl. The kubectl-style fixture runs
//! `kubectl`, so its tests need `kubectl` on `PATH` and `KUBECONFIG` naming the test
//! control plane: `make test` provides both.
//!
//! "No LIST request from reconciles" is counted on the controller's own client (a tower
//! layer, [`counting_client`]): the API server's `apiserver_request_total` is shared by
//! every test running in parallel, so only its growth (the fixture's LISTs) can be
//! asserted there.
//!
//! Tests in this file run in parallel on one cluster. Each owns its namespace plus extra
//! ones named after it (`<ns>-a`, ...), and restricts its sources with the include
//! annotation; the one exclude test copies into every namespace, so its source has a
//! unique name and the test deletes it (its finalizer removes every copy) at the end.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::core::GroupVersionKind;
use kube::{Api, Client, ResourceExt};
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, create_crd, eventually, kubeconfig_path, repo_root};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

const REPLICATE_LABEL: &str = "nuop.dev/replicate";
const REPLICA_LABEL: &str = "nuop.dev/replica-of";
const REPLICATE_INCLUDE: &str = "nuop.dev/replicate-include";
const REPLICATE_EXCLUDE: &str = "nuop.dev/replicate-exclude";
const REPLICATOR_FINALIZER: &str = "nuop.dev/config-replicator";

const CLONE_LABEL: &str = "nuop.dev/clone";
const CLONE_OF_LABEL: &str = "nuop.dev/clone-of";
const CLONE_INCLUDE: &str = "nuop.dev/clone-include";
const CLONER_FINALIZER: &str = "nuop.dev/secret-cloner";

const GREETING_CRD: &str = "greetings.examples.nuop.dev";

/// Panics unless the example scripts can run `kubectl` against the test control plane.
/// Never skips: without kubectl these tests would prove nothing.
fn require_kubectl() {
    const HOW: &str = "run through `make test`, or `eval \"$(hack/control-plane env)\"` first";
    let Some(kubeconfig) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) else {
        panic!(
            "the example controllers run `kubectl`, which needs KUBECONFIG set to the test \
             control plane's kubeconfig; KUBECONFIG is not set: {HOW}"
        );
    };
    match Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`kubectl version --client` failed ({}): {}\nthe example controllers need a \
             working `kubectl` on PATH: {HOW}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "the example controllers run `kubectl`, which is not runnable from this test \
             process ({e}): {HOW}"
        ),
    }
    // The scripts' kubectl must write to the cluster the test client reads from.
    let canonical = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
    let scripts = canonical(PathBuf::from(kubeconfig));
    let tests = canonical(kubeconfig_path());
    assert_eq!(
        scripts, tests,
        "KUBECONFIG (used by the scripts' kubectl) and the test kubeconfig differ: {HOW}"
    );
}

/// The source of an example controller.
fn example(name: &str) -> String {
    let path = repo_root().join("examples").join(name).join("mod.nu");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read example {}: {e}", path.display()))
}

/// The kubectl-style config-replicator written for the original nuop, kept unchanged.
fn kubectl_replicator() -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/kubectl-replicator/mod.nu");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Whether a request is a LIST: a GET of a collection (`/api/v1/configmaps`,
/// `/apis/g/v/namespaces/ns/things`) that is not a watch.
fn is_list(method: &axum::http::Method, uri: &axum::http::Uri) -> bool {
    if method != axum::http::Method::GET
        || uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
    {
        return false;
    }
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return false,
    };
    rest.len() == 1 || (rest.len() == 3 && rest[0] == "namespaces")
}

#[test]
fn lists_are_gets_of_collections_that_are_not_watches() {
    let get = axum::http::Method::GET;
    let list = |uri: &str| is_list(&get, &uri.parse().expect("uri"));
    assert!(list("/api/v1/namespaces"));
    assert!(list("/api/v1/configmaps?labelSelector=a"));
    assert!(list("/api/v1/namespaces/x/configmaps"));
    assert!(list(
        "/apis/examples.nuop.dev/v1alpha1/namespaces/x/greetings"
    ));
    assert!(!list("/api/v1/namespaces/x"));
    assert!(!list("/api/v1/namespaces/x/configmaps/y"));
    assert!(!list("/api/v1/configmaps?watch=true&resourceVersion=1"));
    assert!(!list("/api/v1"));
    assert!(!list("/apis"));
    assert!(!is_list(
        &axum::http::Method::PATCH,
        &"/api/v1/namespaces/x/configmaps".parse().expect("uri")
    ));
}

/// Counts the LIST requests going through it into `lists`.
#[derive(Clone)]
struct CountLists<S> {
    inner: S,
    lists: Arc<AtomicUsize>,
}

impl<S, B> tower::Service<axum::http::Request<B>> for CountLists<S>
where
    S: tower::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        if is_list(request.method(), request.uri()) {
            self.lists.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.call(request)
    }
}

/// A client for the test control plane that counts the LIST requests it sends.
async fn counting_client(lists: Arc<AtomicUsize>) -> Client {
    let path = kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read the kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("a valid kubeconfig");
    kube::client::ClientBuilder::try_from(config)
        .expect("a client for the test control plane")
        .with_layer(&tower::layer::layer_fn(move |inner| CountLists {
            inner,
            lists: lists.clone(),
        }))
        .build()
}

/// `env` with a client that counts the LIST requests of the controllers it runs.
/// ManuallyDrop: `env` itself deletes the namespace, once.
async fn counted(env: &TestEnv) -> (ManuallyDrop<TestEnv>, Arc<AtomicUsize>) {
    let lists = Arc::new(AtomicUsize::new(0));
    let view = TestEnv {
        client: counting_client(lists.clone()).await,
        namespace: env.namespace.clone(),
    };
    (ManuallyDrop::new(view), lists)
}

/// `apiserver_request_total{verb="LIST",resource=<resource>}` from the API server's own
/// `/metrics`, summed over scopes and codes (every client of the cluster counts).
async fn apiserver_lists(client: &Client, resource: &str) -> f64 {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    let text = client
        .request_text(request)
        .await
        .expect("the admin client reads the API server's /metrics");
    let wanted = format!("resource=\"{resource}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("verb=\"LIST\"") && l.contains(&wanted))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Fails unless a controller's periodic reconciles are at least 300 s apart, so that
/// anything it does within [`LIMIT`] of a change is the work of its watches.
fn assert_only_watches_wake(config: &nuop_core::protocol::ScriptConfig) {
    for (field, every) in [
        ("requeue_after_change", config.requeue_after_change),
        ("requeue_after_noop", config.requeue_after_noop),
    ] {
        assert!(
            every >= Duration::from_secs(300) && every > LIMIT,
            "{}: {field} is {every:?}; these tests need >= 300 s so that only its watches explain a quick reaction",
            config.name
        );
    }
}

fn strings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn bytes(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// Creates `<test namespace>-<suffix>` for each suffix, labelled as test namespaces.
async fn extra_namespaces<const N: usize>(env: &TestEnv, suffixes: [&str; N]) -> [String; N] {
    let namespaces = Api::<Namespace>::all(env.client.clone());
    let names = suffixes.map(|s| format!("{}-{s}", env.namespace));
    for name in &names {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(strings(&[("nuop.dev/test", "true")])),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    }
    names
}

/// Deletes the extra namespaces and the test's own (TestEnv's drop cannot be relied on
/// to run its deletion before the test's runtime shuts down).
async fn delete_namespaces(env: &TestEnv, extra: &[String]) {
    let namespaces = Api::<Namespace>::all(env.client.clone());
    for name in extra.iter().chain([&env.namespace]) {
        match namespaces.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => panic!("cannot delete namespace {name}: {e}"),
        }
    }
}

async fn get_in<K>(client: &Client, namespace: &str, name: &str) -> Option<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()
        .flatten()
}

/// The namespaces holding objects labelled `label=value`, sorted.
async fn labelled_in<K>(client: &Client, label: &str, value: &str) -> Option<Vec<String>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    let list = Api::<K>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{label}={value}")))
        .await
        .ok()?;
    let mut namespaces: Vec<String> = list.items.iter().filter_map(|o| o.namespace()).collect();
    namespaces.sort();
    Some(namespaces)
}

/// Deletes `name` from `api` and waits until it is gone (its finalizer has run).
async fn delete_and_wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("cannot delete {what}: {e}"));
    eventually(&format!("{what} to disappear"), LIMIT, || async {
        match api.get_opt(name).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
}

fn replicated_configmap(
    name: &str,
    annotations: &[(&str, &str)],
    data: &[(&str, &str)],
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(strings(&[(REPLICATE_LABEL, "true")])),
            annotations: Some(strings(annotations)),
            ..Default::default()
        },
        data: Some(strings(data)),
        ..Default::default()
    }
}

/// Waits until `namespace` holds an up-to-date copy of `source` (data equal, labelled
/// with `tag`) and returns it.
async fn configmap_copy(
    client: &Client,
    namespace: &str,
    name: &str,
    tag: &str,
    data: &BTreeMap<String, String>,
) -> ConfigMap {
    eventually(
        &format!("a copy of {tag} in {namespace} with data {data:?}"),
        LIMIT,
        || async {
            let copy: ConfigMap = get_in(client, namespace, name).await?;
            (copy.labels().get(REPLICA_LABEL).map(String::as_str) == Some(tag)
                && copy.data.as_ref() == Some(data))
            .then_some(copy)
        },
    )
    .await
}

/// The whole life of a replicated ConfigMap restricted with the include annotation:
/// copies, updates, retargeting, a foreign ConfigMap left alone, cleanup on delete.
async fn config_replicator_lifecycle(kind: ExecutorKind, script: &str) {
    let env = TestEnv::new(&format!("cr-{kind}")).await;
    let client = env.client.clone();
    let ns = env.namespace.clone();
    let extra = extra_namespaces(&env, ["a", "b", "c", "d"]).await;
    let [a, b, c, d] = &extra;
    let name = "settings";
    let tag = format!("{ns}.{name}");

    // `d` already holds a ConfigMap of the same name that is not a copy.
    let foreign = Api::<ConfigMap>::namespaced(client.clone(), d)
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                data: Some(strings(&[("mine", "yes")])),
                ..Default::default()
            },
        )
        .await
        .expect("create the foreign ConfigMap");

    let controller = env.run_script("config-replicator", script, kind).await;
    let cms = env.api::<ConfigMap>();
    let mut source = replicated_configmap(
        name,
        &[
            // Spaces, an empty item and a namespace that does not exist are tolerated.
            (REPLICATE_INCLUDE, &format!("{a}, {b},,{d}, {ns}-missing")),
            ("note", "not copied"),
        ],
        &[("log-level", "info"), ("old", "gone soon")],
    );
    source
        .metadata
        .labels
        .as_mut()
        .expect("labels")
        .insert("team".into(), "platform".into());
    cms.create(&PostParams::default(), &source)
        .await
        .expect("create the source");

    let data = strings(&[("log-level", "info"), ("old", "gone soon")]);
    for target in [a, b] {
        let copy = configmap_copy(&client, target, name, &tag, &data).await;
        assert_eq!(
            copy.labels(),
            &strings(&[(REPLICA_LABEL, &tag)]),
            "a copy carries only the replica label, not the source's labels"
        );
        assert!(
            copy.annotations().is_empty(),
            "a copy carries none of the source's annotations: {:?}",
            copy.annotations()
        );
    }
    // a and b were written by one apply: any other copy would exist by now.
    assert_eq!(
        labelled_in::<ConfigMap>(&client, REPLICA_LABEL, &tag).await,
        Some(vec![a.clone(), b.clone()]),
        "copies only in the included namespaces"
    );
    let untouched: ConfigMap = get_in(&client, d, name).await.expect("foreign still there");
    assert_eq!(
        untouched.resource_version(),
        foreign.resource_version(),
        "a ConfigMap that is not a copy must not be written"
    );
    let with_finalizer = cms.get(name).await.expect("get the source");
    assert!(
        with_finalizer
            .finalizers()
            .contains(&REPLICATOR_FINALIZER.to_string()),
        "the source carries the finalizer: {:?}",
        with_finalizer.finalizers()
    );

    // A changed value, a new key and a removed key reach every copy.
    cms.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"log-level": "debug", "old": null, "new": "yes"}})),
    )
    .await
    .expect("update the source data");
    let data = strings(&[("log-level", "debug"), ("new", "yes")]);
    for target in [a, b] {
        configmap_copy(&client, target, name, &tag, &data).await;
    }

    // Retarget: a is dropped (its copy deleted), c is added.
    cms.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {REPLICATE_INCLUDE: format!("{b},{c},{d}")}}}),
        ),
    )
    .await
    .expect("change the include annotation");
    configmap_copy(&client, c, name, &tag, &data).await;
    eventually(
        "the copy in the dropped namespace to be deleted",
        LIMIT,
        || async {
            let where_ = labelled_in::<ConfigMap>(&client, REPLICA_LABEL, &tag).await?;
            (where_ == [b.clone(), c.clone()]).then_some(())
        },
    )
    .await;

    // Deleting the source runs the finalizer: every copy goes, then the source.
    delete_and_wait_gone(&cms, name, "the source ConfigMap").await;
    assert_eq!(
        labelled_in::<ConfigMap>(&client, REPLICA_LABEL, &tag).await,
        Some(vec![]),
        "every copy is deleted with the source"
    );
    let untouched: ConfigMap = get_in(&client, d, name).await.expect("foreign still there");
    assert_eq!(
        untouched.resource_version(),
        foreign.resource_version(),
        "the finalizer must not touch a ConfigMap that is not a copy"
    );

    controller.stop().await;
    delete_namespaces(&env, &extra).await;
}

#[tokio::test]
async fn config_replicator_copies_into_included_namespaces_with_the_embedded_executor() {
    config_replicator_lifecycle(ExecutorKind::Embedded, &example("config-replicator")).await;
}

#[tokio::test]
async fn config_replicator_copies_into_included_namespaces_with_the_process_executor() {
    config_replicator_lifecycle(ExecutorKind::Process, &example("config-replicator")).await;
}

/// Scripts written for the original nuop keep working unchanged.
#[tokio::test]
async fn the_kubectl_style_replicator_still_replicates() {
    require_kubectl();
    let script = kubectl_replicator();
    assert!(
        script.contains("^kubectl") && !script.contains("k8s "),
        "the fixture is the kubectl-style script"
    );
    config_replicator_lifecycle(ExecutorKind::Embedded, &script).await;
}

/// Deleted and edited copies come back and a new namespace gets its copy with periodic
/// reconciles 300 s apart: only the watches can explain it. Reconciles read from the
/// caches: the controller sends no LIST request after its caches have synced.
async fn config_replicator_follows_its_watches(kind: ExecutorKind) {
    let env = TestEnv::new(&format!("cr-watch-{kind}")).await;
    let client = env.client.clone();
    let extra = extra_namespaces(&env, ["a", "b"]).await;
    let [a, b] = &extra;
    let later = format!("{}-later", env.namespace);
    let (view, lists) = counted(&env).await;
    let controller = view
        .run_script("config-replicator", &example("config-replicator"), kind)
        .await;
    assert_only_watches_wake(&controller.config);
    let name = "settings";
    let tag = format!("{}.{name}", env.namespace);
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &replicated_configmap(
            name,
            &[(REPLICATE_INCLUDE, &format!("{a},{b},{later}"))],
            &[("k", "v")],
        ),
    )
    .await
    .expect("create the source");
    let data = strings(&[("k", "v")]);
    let copy_a = configmap_copy(&client, a, name, &tag, &data).await;
    configmap_copy(&client, b, name, &tag, &data).await;
    let lists_before = lists.load(Ordering::SeqCst);
    assert!(
        lists_before > 0,
        "the counting client sees the caches' first LISTs (else it counts nothing)"
    );

    // A deleted copy comes back (a new object).
    Api::<ConfigMap>::namespaced(client.clone(), a)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete a copy");
    let back = configmap_copy(&client, a, name, &tag, &data).await;
    assert_ne!(
        back.uid(),
        copy_a.uid(),
        "the deleted copy was created again"
    );

    // An edited copy is put back: the value restored, the added key removed.
    Api::<ConfigMap>::namespaced(client.clone(), b)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "edited", "added": "x"}})),
        )
        .await
        .expect("edit a copy");
    configmap_copy(&client, b, name, &tag, &data).await;

    // A namespace created later gets its copy.
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(later.clone()),
                    labels: Some(strings(&[("nuop.dev/test", "true")])),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the later namespace");
    configmap_copy(&client, &later, name, &tag, &data).await;
    assert_eq!(
        lists.load(Ordering::SeqCst) - lists_before,
        0,
        "the reconciles read ConfigMaps and Namespaces from the caches of `watches`, never with a LIST"
    );

    delete_and_wait_gone(&cms, name, "the source ConfigMap").await;
    assert_eq!(
        labelled_in::<ConfigMap>(&client, REPLICA_LABEL, &tag).await,
        Some(vec![]),
        "every copy is deleted with the source"
    );
    controller.stop().await;
    delete_namespaces(&env, &[a.clone(), b.clone(), later]).await;
}

#[tokio::test]
async fn config_replicator_restores_copies_and_serves_new_namespaces_through_its_watches() {
    config_replicator_follows_its_watches(ExecutorKind::Embedded).await;
}

#[tokio::test]
async fn config_replicator_follows_its_watches_with_the_process_executor() {
    config_replicator_follows_its_watches(ExecutorKind::Process).await;
}

/// The kubectl-style replicator LISTs ConfigMaps on every reconcile (what the `k8s`
/// commands' caches save): each of these reconciles restores an edited copy, and the API
/// server's LIST counter for configmaps grows by at least one per reconcile.
#[tokio::test]
async fn the_kubectl_style_replicator_lists_on_every_reconcile() {
    require_kubectl();
    let env = TestEnv::new("cr-kubectl-lists").await;
    let client = env.client.clone();
    let extra = extra_namespaces(&env, ["a"]).await;
    let [a] = &extra;
    let controller = env
        .run_script(
            "config-replicator",
            &kubectl_replicator(),
            ExecutorKind::Embedded,
        )
        .await;
    let name = "settings";
    let tag = format!("{}.{name}", env.namespace);
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &replicated_configmap(name, &[(REPLICATE_INCLUDE, a)], &[("k", "v")]),
    )
    .await
    .expect("create the source");
    let data = strings(&[("k", "v")]);
    configmap_copy(&client, a, name, &tag, &data).await;

    let before = apiserver_lists(&client, "configmaps").await;
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        Api::<ConfigMap>::namespaced(client.clone(), a)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"k": "edited"}})),
            )
            .await
            .expect("edit the copy");
        // The fixture has no watches: a change of the source wakes it.
        cms.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"round": round.to_string()}}})),
        )
        .await
        .expect("touch the source");
        configmap_copy(&client, a, name, &tag, &data).await;
    }
    let grown = apiserver_lists(&client, "configmaps").await - before;
    assert!(
        grown >= ROUNDS as f64,
        "{ROUNDS} reconciles of the kubectl-style replicator, each running `kubectl get configmaps -A`: the API server counted only {grown} LISTs of configmaps"
    );

    delete_and_wait_gone(&cms, name, "the source ConfigMap").await;
    controller.stop().await;
    delete_namespaces(&env, &extra).await;
}

#[tokio::test]
async fn config_replicator_skips_excluded_namespaces_and_cleans_up_everywhere() {
    let env = TestEnv::new("cr-exclude").await;
    let client = env.client.clone();
    let extra = extra_namespaces(&env, ["x", "y"]).await;
    let [excluded, included] = &extra;
    let controller = env
        .run_script(
            "config-replicator",
            &example("config-replicator"),
            ExecutorKind::Embedded,
        )
        .await;

    // Without an include annotation the source goes to every namespace, including other
    // tests': a unique name, no label but the replicate one, and removed at the end.
    let name = format!("shared-{}", env.namespace);
    let tag = format!("{}.{name}", env.namespace);
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &replicated_configmap(&name, &[(REPLICATE_EXCLUDE, excluded)], &[("k", "v")]),
    )
    .await
    .expect("create the source");

    let data = strings(&[("k", "v")]);
    configmap_copy(&client, included, &name, &tag, &data).await;
    // Without an include annotation every non-system namespace gets one; the copies are
    // written one after another, so wait for `default`'s too.
    configmap_copy(&client, "default", &name, &tag, &data).await;
    let copy: Option<ConfigMap> = get_in(&client, excluded, &name).await;
    assert!(
        copy.is_none(),
        "the excluded namespace {excluded} got a copy"
    );
    let everywhere = labelled_in::<ConfigMap>(&client, REPLICA_LABEL, &tag)
        .await
        .expect("list copies");
    assert!(
        everywhere.iter().any(|n| n == "default"),
        "by default every non-system namespace gets a copy: {everywhere:?}"
    );
    for never in [
        env.namespace.as_str(),
        excluded,
        "kube-system",
        "kube-public",
        "kube-node-lease",
    ] {
        assert!(
            !everywhere.iter().any(|n| n == never),
            "{never} must not get a copy: {everywhere:?}"
        );
    }

    delete_and_wait_gone(&cms, &name, "the source ConfigMap").await;
    assert_eq!(
        labelled_in::<ConfigMap>(&client, REPLICA_LABEL, &tag).await,
        Some(vec![]),
        "every copy, in every namespace, is deleted with the source"
    );

    controller.stop().await;
    delete_namespaces(&env, &extra).await;
}

#[tokio::test]
async fn secret_cloner_copies_data_and_type_into_included_namespaces_and_cleans_up() {
    let env = TestEnv::new("secret-cloner").await;
    let client = env.client.clone();
    let extra = extra_namespaces(&env, ["a", "b", "c"]).await;
    let [a, b, c] = &extra;
    let name = "token";
    let tag = format!("{}.{name}", env.namespace);
    let kind = "nuop.dev/test-token";

    // b holds an earlier copy of another type: a Secret's type cannot change in place,
    // so the cloner must replace it.
    let stale = Api::<Secret>::namespaced(client.clone(), b)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(strings(&[(CLONE_OF_LABEL, &tag)])),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(bytes(&[("token", "old")])),
                ..Default::default()
            },
        )
        .await
        .expect("create the stale copy");

    let controller = env
        .run_script(
            "secret-cloner",
            &example("secret-cloner"),
            ExecutorKind::Embedded,
        )
        .await;
    let secrets = env.api::<Secret>();
    let data = bytes(&[("token", "s3cr3t-value"), ("user", "ada")]);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(strings(&[(CLONE_LABEL, "true")])),
                    annotations: Some(strings(&[(CLONE_INCLUDE, &format!("{a},{b}"))])),
                    ..Default::default()
                },
                type_: Some(kind.into()),
                data: Some(data.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("create the source");

    for target in [a, b] {
        let copy = eventually(
            &format!("a copy of {tag} in {target} with the source's type and data"),
            LIMIT,
            || async {
                let copy: Secret = get_in(&client, target, name).await?;
                (copy.type_.as_deref() == Some(kind) && copy.data.as_ref() == Some(&data))
                    .then_some(copy)
            },
        )
        .await;
        assert_eq!(
            copy.labels(),
            &strings(&[(CLONE_OF_LABEL, &tag)]),
            "a copy carries only the clone-of label"
        );
        if target == b {
            assert_ne!(copy.uid(), stale.uid(), "the stale copy was replaced");
        }
    }
    assert_eq!(
        labelled_in::<Secret>(&client, CLONE_OF_LABEL, &tag).await,
        Some(vec![a.clone(), b.clone()]),
        "copies only in the included namespaces ({c} is not one)"
    );
    let source = secrets.get(name).await.expect("get the source");
    assert!(
        source.finalizers().contains(&CLONER_FINALIZER.to_string()),
        "the source carries the finalizer: {:?}",
        source.finalizers()
    );

    delete_and_wait_gone(&secrets, name, "the source Secret").await;
    assert_eq!(
        labelled_in::<Secret>(&client, CLONE_OF_LABEL, &tag).await,
        Some(vec![]),
        "every copy is deleted with the source"
    );

    controller.stop().await;
    delete_namespaces(&env, &extra).await;
}

/// Creates the Greeting CRD from `examples/greeting/crd.yaml` unless it exists (it is
/// cluster-wide and shared with parallel runs: never deleted), and waits until it is
/// established.
async fn ensure_greeting_crd(client: &Client) {
    let path = repo_root().join("examples/greeting/crd.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a CRD: {e}", path.display()));
    assert_eq!(crd.name_any(), GREETING_CRD);
    create_crd(client, &crd).await;
}

async fn events_for(env: &TestEnv, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
}

#[tokio::test]
async fn greeting_writes_its_message_through_the_status_subresource() {
    let env = TestEnv::new("greeting").await;
    ensure_greeting_crd(&env.client).await;
    let controller = env
        .run_script("greeting", &example("greeting"), ExecutorKind::Embedded)
        .await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("examples.nuop.dev", "v1alpha1", "Greeting"),
        "greetings",
    );
    let greetings =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let greeting: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "examples.nuop.dev/v1alpha1", "kind": "Greeting",
        "metadata": {"name": "ada"}, "spec": {"name": "Ada"}
    }))
    .expect("greeting");
    // Right after the CRD is established the API may still answer 404 for a while.
    eventually("the Greeting to be accepted", LIMIT, || async {
        match greetings.create(&PostParams::default(), &greeting).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;

    let status_for = |message: &'static str, generation: i64| {
        let greetings = greetings.clone();
        async move {
            eventually(
                &format!("status {{message: {message:?}, observedGeneration: {generation}}}"),
                LIMIT,
                || async {
                    let g = greetings.get("ada").await.ok()?;
                    (g.data["status"]["message"] == message
                        && g.data["status"]["observedGeneration"] == generation)
                        .then_some(g)
                },
            )
            .await
        }
    };
    let first = status_for("Hello, Ada!", 1).await;
    assert_eq!(
        first.data["spec"]["style"], "plain",
        "the CRD defaults the style"
    );
    assert_eq!(
        first.metadata.generation,
        Some(1),
        "writing the status must not bump the generation"
    );

    greetings
        .patch(
            "ada",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"style": "loud"}})),
        )
        .await
        .expect("make it loud");
    let second = status_for("HELLO, ADA!", 2).await;
    assert_eq!(
        second.metadata.generation,
        Some(2),
        "writing the status must not bump the generation"
    );

    let events = events_for(&env, "ada").await;
    let reasons: Vec<_> = events.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(
        reasons.iter().any(|r| r == "StatusUpdated"),
        "expected a StatusUpdated event, got {reasons:?}"
    );
    assert!(
        !reasons.iter().any(|r| r == "Updated"),
        "only the status changed: the Greeting itself must not be written ({reasons:?})"
    );

    controller.stop().await;
    delete_namespaces(&env, &[]).await;
}

/// greeting's child: a ConfigMap with the message, owned by the Greeting (controller
/// ownerReference, nuop's labels), recreated when deleted, put back when edited, kept in
/// step with the spec, garbage-collected with the Greeting; reconciles read it from the
/// owns cache (no LIST request).
#[tokio::test]
async fn greeting_owns_a_configmap_that_is_recreated_and_garbage_collected() {
    let env = TestEnv::new("greeting-child").await;
    ensure_greeting_crd(&env.client).await;
    let (view, lists) = counted(&env).await;
    let controller = view
        .run_script("greeting", &example("greeting"), ExecutorKind::Embedded)
        .await;
    assert_only_watches_wake(&controller.config);
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("examples.nuop.dev", "v1alpha1", "Greeting"),
        "greetings",
    );
    let greetings =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let greeting: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "examples.nuop.dev/v1alpha1", "kind": "Greeting",
        "metadata": {"name": "ada"}, "spec": {"name": "Ada"}
    }))
    .expect("greeting");
    eventually("the Greeting to be accepted", LIMIT, || async {
        match greetings.create(&PostParams::default(), &greeting).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;
    let uid = greetings.get("ada").await.expect("get ada").uid();

    let cms = env.api::<ConfigMap>();
    let child_with = |message: &'static str| {
        let cms = cms.clone();
        async move {
            eventually(
                &format!("ConfigMap ada-greeting with message {message:?}"),
                LIMIT,
                || async {
                    let cm = cms.get_opt("ada-greeting").await.ok()??;
                    (cm.data.as_ref()?.get("message").map(String::as_str) == Some(message))
                        .then_some(cm)
                },
            )
            .await
        }
    };
    let child = child_with("Hello, Ada!").await;
    let owner = child
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .unwrap_or_else(|| {
            panic!(
                "the child has a controller owner: {:?}",
                child.owner_references()
            )
        });
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.name.as_str(),
            Some(owner.uid.clone())
        ),
        ("Greeting", "ada", uid),
        "the Greeting is the child's controller owner"
    );
    assert_eq!(owner.block_owner_deletion, Some(true));
    for (label, value) in [
        ("app.kubernetes.io/managed-by", "nuop"),
        ("nuop.dev/controller", "greeting"),
    ] {
        assert_eq!(
            child.labels().get(label).map(String::as_str),
            Some(value),
            "the child carries nuop's label {label}: {:?}",
            child.labels()
        );
    }
    let lists_before = lists.load(Ordering::SeqCst);
    assert!(
        lists_before > 0,
        "the counting client sees the caches' first LISTs (else it counts nothing)"
    );

    // Deleted: created again.
    cms.delete("ada-greeting", &DeleteParams::default())
        .await
        .expect("delete the child");
    let again = child_with("Hello, Ada!").await;
    assert_ne!(
        again.uid(),
        child.uid(),
        "the deleted child was created again"
    );

    // Edited: put back.
    cms.patch(
        "ada-greeting",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"message": "tampered"}})),
    )
    .await
    .expect("edit the child");
    child_with("Hello, Ada!").await;

    // The spec changes: the child follows.
    greetings
        .patch(
            "ada",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"style": "loud"}})),
        )
        .await
        .expect("make it loud");
    child_with("HELLO, ADA!").await;
    assert_eq!(
        lists.load(Ordering::SeqCst) - lists_before,
        0,
        "the reconciles read the child from the owns cache, never with a LIST"
    );

    // The Greeting goes: Kubernetes' garbage collector deletes the child.
    greetings
        .delete("ada", &DeleteParams::background())
        .await
        .expect("delete the Greeting");
    eventually(
        "the garbage collector to delete ada-greeting",
        LIMIT,
        || async {
            match cms.get_opt("ada-greeting").await {
                Ok(None) => Some(()),
                _ => None,
            }
        },
    )
    .await;

    controller.stop().await;
    delete_namespaces(&env, &[]).await;
}
