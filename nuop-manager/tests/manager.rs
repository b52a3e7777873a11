//! The manager against the real control plane (`hack/control-plane`: etcd,
//! kube-apiserver and kube-controller-manager, so the garbage collector runs; no
//! kubelet, so pods never start). Each test gets its own namespace and runs its own
//! manager in-process, restricted to that namespace.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use nuop_core::controller::shutdown_signal;
use nuop_core::health::Readiness;
use nuop_core::testing::{TestEnv, eventually};
use nuop_crd::{Mapping, NuOperator, NuOperatorStatus, Source};
use nuop_manager::build::{CONFIG_HASH_ANNOTATION, Settings, config_hash};
use nuop_manager::webhooks::WebhookSettings;
use nuop_manager::{Options, run};
use serde_json::json;

/// Generous: the garbage collector of a freshly started kube-controller-manager needs
/// a few seconds to sync before it removes anything.
const LIMIT: Duration = Duration::from_secs(60);

/// For the garbage collector alone: other tests on the same control plane create and
/// delete CRDs, and each change makes kube-controller-manager resync its monitors;
/// while one of them cannot sync (its CRD just went away) the collector waits, for up
/// to a minute or more in the logs seen.
const GC_LIMIT: Duration = Duration::from_secs(180);

const IMAGE: &str = "registry.invalid/nuop-managed:test";

/// A manager running in the background for one test's namespace; stopped when dropped.
struct Manager {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn setup(test: &str) -> (TestEnv, Manager) {
    setup_with(test, false).await
}

/// A manager whose `--allow-webhooks` is `allow_webhooks` (its CA in the test's
/// namespace).
async fn setup_with(test: &str, allow_webhooks: bool) -> (TestEnv, Manager) {
    // Logs help when a test fails; a second install (another test) is refused, fine.
    let _ = nuop_core::telemetry::init_logs("plain");
    let env = TestEnv::new(test).await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("the CRD installs");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = Options {
        namespace: Some(env.namespace.clone()),
        settings: Settings {
            webhooks: allow_webhooks.then(|| WebhookSettings {
                ca_namespace: env.namespace.clone(),
                ca_secret: "manager-webhook-ca".to_string(),
            }),
            default_image: IMAGE.to_string(),
        },
        concurrency: 2,
        readiness: Readiness::new(),
    };
    let readiness = options.readiness.clone();
    // Registered before the spawn so that the wait below cannot see an empty (ready)
    // state before `run` registers itself.
    readiness.register(nuop_manager::run::READINESS_NAME);
    tokio::spawn(run(
        env.client.clone(),
        options,
        shutdown_signal(async move {
            let _ = stopped.await;
        }),
    ));
    eventually("the manager's watch to sync", LIMIT, || {
        let ready = readiness.check().is_ok();
        async move { ready.then_some(()) }
    })
    .await;
    (env, Manager { stop: Some(stop) })
}

/// Creates `operator`, retrying while the API server warms up its handler for a CRD
/// another test may just have installed.
async fn create(api: &Api<NuOperator>, operator: &NuOperator) -> NuOperator {
    eventually("the NuOperator to be created", LIMIT, || async {
        match api.create(&PostParams::default(), operator).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => panic!("cannot create the NuOperator: {e}"),
        }
    })
    .await
}

async fn service_account(env: &TestEnv, name: &str) {
    let accounts: Api<ServiceAccount> = env.api();
    let account = ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("the ServiceAccount is created");
}

fn sample(name: &str) -> NuOperator {
    NuOperator::test()
        .named(name)
        .with_service_account("replicator")
        .with_source(Source::new("https://github.com/nuop-dev/nuop.git").at_path("examples"))
        .with_mapping(
            Mapping::new("config-replicator", "v1", "ConfigMap")
                .with_label_selector("nuop.dev/replicate", "true"),
        )
}

async fn status_where(
    api: &Api<NuOperator>,
    name: &str,
    what: &str,
    check: impl Fn(&NuOperator, &NuOperatorStatus) -> bool,
) -> NuOperator {
    eventually(what, LIMIT, || async {
        let op = api.get(name).await.expect("the NuOperator exists");
        let status = op.status.clone()?;
        check(&op, &status).then_some(op)
    })
    .await
}

fn condition(status: &NuOperatorStatus, type_: &str) -> Option<(String, String)> {
    status
        .condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

fn pod_hash(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
}

#[tokio::test]
async fn a_nuoperator_gets_owned_children_status_and_garbage_collection() {
    let (env, _manager) = setup("manager-sample").await;
    let operators: Api<NuOperator> = env.api();
    let config_maps: Api<ConfigMap> = env.api();
    let deployments: Api<Deployment> = env.api();
    // The tenant's ServiceAccount: without it the ReplicaSet cannot create pods, and the
    // status turns Degraded (see `a_missing_service_account_degrades`).
    service_account(&env, "replicator").await;
    let created = create(&operators, &sample("replicator")).await;
    let uid = created.metadata.uid.clone().expect("a uid");

    let deployment = eventually("the Deployment", LIMIT, || async {
        deployments.get_opt("nuop-replicator").await.expect("get")
    })
    .await;
    let config_map = config_maps
        .get("nuop-replicator")
        .await
        .expect("the ConfigMap exists");
    for meta in [&deployment.metadata, &config_map.metadata] {
        let owner = &meta.owner_references.as_ref().expect("owner references")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("NuOperator", uid.as_str())
        );
        assert_eq!(owner.controller, Some(true));
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels["app.kubernetes.io/name"], "nuop-managed");
        assert_eq!(labels["app.kubernetes.io/instance"], "replicator");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "nuop-manager");
    }
    let first_hash = pod_hash(&deployment).expect("a config-hash annotation");
    assert_eq!(first_hash, config_hash(&config_map));
    let managed = config_map.data.as_ref().expect("data")["nuop.yaml"].clone();
    assert!(managed.contains("config-replicator"), "{managed}");
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some("replicator"));
    assert_eq!(pod.containers[0].image.as_deref(), Some(IMAGE));

    // No kubelet: the Deployment never becomes available, so the rollout stays in
    // progress.
    let generation = created.metadata.generation;
    status_where(
        &operators,
        "replicator",
        "status Progressing for generation 1",
        |op, s| {
            s.observed_generation == op.metadata.generation
                && condition(s, "Progressing") == Some(("True".into(), "RollingOut".into()))
                && condition(s, "Ready") == Some(("False".into(), "DeploymentNotAvailable".into()))
                && condition(s, "Degraded") == Some(("False".into(), "AsExpected".into()))
        },
    )
    .await;
    assert_eq!(generation, Some(1));

    // Changing a mapping changes the configuration, so the hash rolls the pods.
    operators
        .patch(
            "replicator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mappings": [
                {"name": "config-replicator", "version": "v1", "kind": "ConfigMap",
                 "labelSelectors": {"nuop.dev/replicate": "yes"}}
            ]}})),
        )
        .await
        .expect("the mapping changes");
    let rolled = eventually("a new config hash", LIMIT, || async {
        let deployment = deployments.get("nuop-replicator").await.expect("get");
        pod_hash(&deployment).filter(|h| *h != first_hash)
    })
    .await;
    let config_map = config_maps.get("nuop-replicator").await.expect("get");
    assert_eq!(rolled, config_hash(&config_map));
    assert!(config_map.data.as_ref().expect("data")["nuop.yaml"].contains("yes"));
    status_where(&operators, "replicator", "observedGeneration 2", |_, s| {
        s.observed_generation == Some(2)
    })
    .await;

    // Deleting the CR removes both children through the garbage collector.
    operators
        .delete("replicator", &DeleteParams::background())
        .await
        .expect("delete");
    eventually("the children to be garbage collected", GC_LIMIT, || async {
        let cm = config_maps.get_opt("nuop-replicator").await.expect("get");
        let dep = deployments.get_opt("nuop-replicator").await.expect("get");
        (cm.is_none() && dep.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn duplicate_mapping_names_degrade_without_a_deployment() {
    let (env, _manager) = setup("manager-invalid").await;
    let operators: Api<NuOperator> = env.api();
    let invalid = sample("twins").with_mapping(Mapping::new("config-replicator", "v1", "Secret"));
    create(&operators, &invalid).await;
    let op = status_where(&operators, "twins", "status Degraded", |op, s| {
        s.observed_generation == op.metadata.generation
            && condition(s, "Degraded") == Some(("True".into(), "DuplicateMappingName".into()))
    })
    .await;
    let status = op.status.expect("a status");
    assert_eq!(
        condition(&status, "Ready"),
        Some(("False".into(), "DuplicateMappingName".into()))
    );
    let degraded = status.condition("Degraded").expect("Degraded");
    assert!(
        degraded.message.contains("config-replicator"),
        "{}",
        degraded.message
    );
    // And a Warning Event on the CR says the same.
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    let event = eventually("a Warning Event", LIMIT, || async {
        events
            .list(&Default::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .find(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("twins"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.reason.as_deref(), Some("DuplicateMappingName"));
    assert_eq!(event.reporting_controller.as_deref(), Some("nuop-manager"));
    // The status is written after the children would have been applied: none was.
    let deployments: Api<Deployment> = env.api();
    let config_maps: Api<ConfigMap> = env.api();
    assert!(
        deployments
            .get_opt("nuop-twins")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        config_maps
            .get_opt("nuop-twins")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn a_same_named_configmap_is_not_taken_over() {
    let (env, _manager) = setup("manager-name-conflict").await;
    let config_maps: Api<ConfigMap> = env.api();
    // A tenant's own ConfigMap that happens to carry the child's name.
    let theirs = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("nuop-squatted".to_string()),
            ..Default::default()
        },
        data: Some([("mine".to_string(), "keep".to_string())].into()),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &theirs)
        .await
        .expect("created");
    let operators: Api<NuOperator> = env.api();
    create(&operators, &sample("squatted")).await;
    let op = status_where(
        &operators,
        "squatted",
        "status Degraded NameConflict",
        |_, s| condition(s, "Degraded") == Some(("True".into(), "NameConflict".into())),
    )
    .await;
    let message = &op
        .status
        .as_ref()
        .and_then(|s| s.condition("Degraded"))
        .expect("Degraded")
        .message;
    assert!(
        message.contains("ConfigMap named `nuop-squatted`"),
        "{message}"
    );
    let after = config_maps.get("nuop-squatted").await.expect("still there");
    assert_eq!(after.data, theirs.data, "its data is untouched");
    assert!(after.metadata.owner_references.is_none(), "no owner added");
    let deployments: Api<Deployment> = env.api();
    assert!(
        deployments
            .get_opt("nuop-squatted")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn an_original_nuop_source_is_accepted_and_a_bad_one_named_in_the_status() {
    let (env, _manager) = setup("manager-original-source").await;
    service_account(&env, "replicator").await;
    let operators: Api<NuOperator> = env.api();
    let original = NuOperator::test()
        .named("original")
        .with_service_account("replicator")
        .with_source(
            Source::new("https://host/repo.git?ref=main&dir=scripts").at_path("/scripts/example"),
        )
        .with_mapping(Mapping::new("example", "v1", "ConfigMap"));
    create(&operators, &original).await;
    let deployments: Api<Deployment> = env.api();
    eventually("the Deployment of the original-style CR", LIMIT, || async {
        deployments.get_opt("nuop-original").await.expect("get")
    })
    .await;

    // What the managed pods would refuse is reported by the manager, naming the field.
    let conflicting = NuOperator::test()
        .named("conflicting")
        .with_source(Source::new("https://host/repo.git?ref=main").at_ref("v2"))
        .with_mapping(Mapping::new("example", "v1", "ConfigMap"));
    create(&operators, &conflicting).await;
    let op = status_where(
        &operators,
        "conflicting",
        "status Degraded InvalidSource",
        |_, s| condition(s, "Degraded") == Some(("True".into(), "InvalidSource".into())),
    )
    .await;
    let message = &op
        .status
        .as_ref()
        .and_then(|s| s.condition("Degraded"))
        .expect("Degraded")
        .message;
    assert!(message.starts_with("spec.sources[0].ref:"), "{message}");
    assert!(
        deployments
            .get_opt("nuop-conflicting")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn a_missing_service_account_degrades() {
    // kube-controller-manager's ReplicaSet controller cannot create pods for an account
    // that does not exist; the Deployment reports ReplicaFailure and so does the status.
    let (env, _manager) = setup("manager-no-sa").await;
    let operators: Api<NuOperator> = env.api();
    create(&operators, &sample("orphan")).await;
    let op = status_where(
        &operators,
        "orphan",
        "status Degraded by ReplicaFailure",
        |_, s| condition(s, "Degraded") == Some(("True".into(), "ReplicaFailure".into())),
    )
    .await;
    let status = op.status.expect("a status");
    assert_eq!(
        condition(&status, "Progressing"),
        Some(("False".into(), "ReplicaFailure".into()))
    );
    let message = &status.condition("Degraded").expect("Degraded").message;
    assert!(message.contains("replicator"), "{message}");
}

#[tokio::test]
async fn a_bad_edit_keeps_the_running_children() {
    let (env, _manager) = setup("manager-bad-edit").await;
    service_account(&env, "replicator").await;
    let operators: Api<NuOperator> = env.api();
    let deployments: Api<Deployment> = env.api();
    create(&operators, &sample("edited")).await;
    let before = eventually("the Deployment", LIMIT, || async {
        deployments.get_opt("nuop-edited").await.expect("get")
    })
    .await;
    // A second mapping with the same name passes the schema but not validation.
    operators
        .patch(
            "edited",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"mappings": [
                {"name": "config-replicator", "version": "v1", "kind": "ConfigMap"},
                {"name": "config-replicator", "version": "v1", "kind": "Secret"}
            ]}})),
        )
        .await
        .expect("the edit is accepted by the API server");
    status_where(&operators, "edited", "Degraded for generation 2", |_, s| {
        s.observed_generation == Some(2)
            && condition(s, "Degraded") == Some(("True".into(), "DuplicateMappingName".into()))
    })
    .await;
    let after = deployments.get("nuop-edited").await.expect("still there");
    assert_eq!(
        pod_hash(&after),
        pod_hash(&before),
        "the last good configuration keeps running"
    );
}

#[tokio::test]
async fn children_no_longer_wanted_are_deleted() {
    let (env, _manager) = setup("manager-stray").await;
    service_account(&env, "replicator").await;
    let operators: Api<NuOperator> = env.api();
    let config_maps: Api<ConfigMap> = env.api();
    let created = create(&operators, &sample("tidy")).await;
    eventually("the ConfigMap", LIMIT, || async {
        config_maps.get_opt("nuop-tidy").await.expect("get")
    })
    .await;
    // A child of this CR under a name the manager no longer uses (an older naming),
    // and a look-alike owned by nothing, which must be left alone.
    let labelled = |name: &str, owned: bool| ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(nuop_manager::build::labels(&created)),
            owner_references: owned.then(|| {
                vec![nuop_manager::build::owner_reference(&created).expect("an owner reference")]
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    for (name, owned) in [("tidy-old", true), ("tidy-unowned", false)] {
        config_maps
            .create(&PostParams::default(), &labelled(name, owned))
            .await
            .expect("created");
    }
    // Any change to the CR triggers a reconcile.
    operators
        .patch(
            "tidy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .expect("patched");
    eventually("the stray child to be deleted", LIMIT, || async {
        config_maps
            .get_opt("tidy-old")
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        config_maps
            .get_opt("tidy-unowned")
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        config_maps
            .get_opt("nuop-tidy")
            .await
            .expect("get")
            .is_some()
    );
}

/// The YAML documents of `config/<path>` as JSON.
fn config_documents(path: &str) -> Vec<serde_json::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    render_documents(&text, &path.display().to_string())
}

fn render_documents(text: &str, what: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
}

/// The TCP ports a NetworkPolicy's ingress (or egress) rules open, as numbers.
fn policy_ports(
    rules: &[k8s_openapi::api::networking::v1::NetworkPolicyIngressRule],
) -> std::collections::BTreeSet<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    rules
        .iter()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| match &p.port {
            Some(IntOrString::Int(port)) => Some(*port),
            _ => None,
        })
        .collect()
}

/// Whether `selector` is set, names labels, and every one of them is on `labels`.
fn selects(
    selector: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.is_some_and(|selector| {
        selector.match_expressions.is_none()
            && selector.match_labels.as_ref().is_some_and(|wanted| {
                !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
    })
}

/// `config/network-policy`: the manager's metrics policy and the managed pods' template
/// are accepted by the API server (created in the test's namespace: schema and
/// validation; nothing enforces them without a CNI), and the ports they open are the
/// ports of the Deployments: the manager's `metrics` port of config/manager, and every
/// container port of the managed Deployment the manager builds plus the webhook port.
#[tokio::test]
async fn network_policies_are_valid_and_open_only_the_deployments_ports() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let env = TestEnv::new("netpol").await;
    let policies = Api::<NetworkPolicy>::namespaced(env.client.clone(), &env.namespace);

    // Listed by the kustomization, and not enabled by config/default.
    let kustomization = &config_documents("network-policy/kustomization.yaml")[0];
    assert_eq!(
        kustomization["resources"],
        json!(["allow-metrics-traffic.yaml"])
    );
    let default = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../config/default/kustomization.yaml"),
    )
    .expect("config/default");
    assert!(
        default.contains("#  - ../network-policy")
            && !default.lines().any(|l| l.trim() == "- ../network-policy"),
        "config/default names the network policies, commented out"
    );

    // The manager: only its metrics port, only from labelled namespaces.
    let manager: Deployment = config_documents("manager/manager.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .map(|d| serde_json::from_value(d).expect("a Deployment"))
        .expect("config/manager/manager.yaml has a Deployment");
    let template = manager.spec.as_ref().expect("spec").template.clone();
    let pod_labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let metrics_port = template.spec.as_ref().expect("pod spec").containers[0]
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port")
        .container_port;
    let mut metrics: NetworkPolicy = serde_json::from_value(
        config_documents("network-policy/allow-metrics-traffic.yaml")[0].clone(),
    )
    .expect("a NetworkPolicy");
    let spec = metrics.spec.clone().expect("spec");
    assert!(
        selects(spec.pod_selector.as_ref(), &pod_labels),
        "selects the manager's pods"
    );
    let ingress = spec.ingress.clone().unwrap_or_default();
    assert_eq!(policy_ports(&ingress), [metrics_port].into());
    assert_eq!(
        serde_json::to_value(&ingress[0].from).expect("json"),
        json!([{"namespaceSelector": {"matchLabels": {"metrics": "enabled"}}}])
    );
    metrics.metadata.namespace = Some(env.namespace.clone());
    policies
        .create(&PostParams::default(), &metrics)
        .await
        .expect("the API server accepts allow-metrics-traffic.yaml");

    // The managed pods: the template rendered for one NuOperator.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/network-policy/managed-operator.template.yaml");
    let mut text = std::fs::read_to_string(&path).expect("the managed template");
    for (name, value) in [
        ("NAMESPACE", env.namespace.as_str()),
        ("NUOPERATOR", "netpol"),
        ("API_SERVER_CIDR", "10.0.0.10/32"),
        ("API_SERVER_PORT", "6443"),
        ("GIT_CIDR", "192.0.2.0/24"),
        ("GIT_PORT", "443"),
    ] {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!body.contains("${"), "a placeholder is left:\n{text}");
    let managed: NetworkPolicy =
        serde_json::from_value(render_documents(&text, "the rendered template")[0].clone())
            .expect("a NetworkPolicy");
    let operator = NuOperator::test()
        .named("netpol")
        .in_namespace(env.namespace.clone())
        .with_uid("u-netpol");
    let built = nuop_manager::build::desired_deployment(
        &operator,
        &Settings {
            default_image: IMAGE.to_string(),
            webhooks: None,
        },
        "hash",
    )
    .expect("the managed Deployment");
    let template = built.spec.expect("spec").template;
    let pod_labels = template.metadata.and_then(|m| m.labels).unwrap_or_default();
    let container_ports: std::collections::BTreeSet<i32> = template
        .spec
        .expect("pod spec")
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten().map(|p| p.container_port))
        .collect();
    let spec = managed.spec.clone().expect("spec");
    assert!(
        selects(spec.pod_selector.as_ref(), &pod_labels),
        "selects the managed pods: {:?} vs {pod_labels:?}",
        spec.pod_selector
    );
    let opened = policy_ports(&spec.ingress.clone().unwrap_or_default());
    let webhook = 9443;
    assert!(
        container_ports.is_subset(&opened),
        "every container port ({container_ports:?}) is open ({opened:?})"
    );
    assert!(
        opened
            .iter()
            .all(|p| container_ports.contains(p) || *p == webhook),
        "only the container ports and the webhook port are open: {opened:?}"
    );
    let egress: Vec<(String, i32)> = spec
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| match &p.port {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                Some((p.protocol.clone().unwrap_or_default(), *n))
            }
            _ => None,
        })
        .collect();
    for want in [("TCP", 6443), ("UDP", 53), ("TCP", 53), ("TCP", 443)] {
        assert!(
            egress.contains(&(want.0.to_string(), want.1)),
            "egress {want:?} missing: {egress:?}"
        );
    }
    policies
        .create(&PostParams::default(), &managed)
        .await
        .expect("the API server accepts the rendered managed template");
}

/// Publishes `hooks` in the NuOperator's status as its managed pods would (their field
/// manager, their field), re-installing the CRD first: parallel test runs on the shared
/// control plane may have applied an older schema without `status.webhooks`.
async fn publish_hooks(env: &TestEnv, name: &str, hooks: serde_json::Value) {
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("the CRD installs");
    let operators: Api<NuOperator> = env.api();
    let patch = json!({
        "apiVersion": "nuop.dev/v1alpha1",
        "kind": "NuOperator",
        "status": {"webhooks": hooks},
    });
    operators
        .patch_status(
            name,
            &PatchParams::apply("nuop-managed-webhooks").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("the declared webhooks are published");
}

/// A validate hook as a script declares it: every namespace, cluster-scoped objects
/// too. Ignore, on a kind nothing here creates: no pod will ever serve it.
fn declared_hook(controller: &str) -> serde_json::Value {
    json!([{
        "controller": controller,
        "kind": "Validate",
        "rules": [{
            "apiGroups": ["example.invalid"],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["widgets"],
            "scope": "*",
        }],
        "failurePolicy": "Ignore",
        "timeoutSeconds": 5,
        "path": format!("/validate/{controller}"),
    }])
}

#[tokio::test]
async fn webhooks_are_refused_without_the_allow_flag() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let (env, _manager) = setup_with("manager-webhooks-off", false).await;
    let operators: Api<NuOperator> = env.api();
    service_account(&env, "replicator").await;
    create(&operators, &sample("guarded")).await;
    publish_hooks(&env, "guarded", declared_hook("policy")).await;
    let op = status_where(&operators, "guarded", "Webhooks=False Refused", |_, s| {
        condition(s, "Webhooks") == Some(("False".into(), "Refused".into()))
    })
    .await;
    let message = op
        .status
        .expect("status")
        .condition("Webhooks")
        .expect("condition")
        .message
        .clone();
    assert!(message.contains("--allow-webhooks"), "{message}");
    let name = format!("nuop-managed-{}-guarded", env.namespace);
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    assert!(configurations.get_opt(&name).await.expect("get").is_none());
    let services: Api<k8s_openapi::api::core::v1::Service> = env.api();
    assert!(
        services
            .get_opt("nuop-guarded-webhook")
            .await
            .expect("get")
            .is_none()
    );
    assert!(op.metadata.finalizers.unwrap_or_default().is_empty());
}

#[tokio::test]
async fn allowed_webhooks_are_confined_served_and_removed_with_the_nuoperator() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::{Secret, Service};
    let (env, _manager) = setup_with("manager-webhooks-on", true).await;
    let operators: Api<NuOperator> = env.api();
    let deployments: Api<Deployment> = env.api();
    let services: Api<Service> = env.api();
    let secrets: Api<Secret> = env.api();
    service_account(&env, "replicator").await;
    create(&operators, &sample("guarded")).await;
    publish_hooks(&env, "guarded", declared_hook("policy")).await;
    status_where(&operators, "guarded", "Webhooks=True Registered", |_, s| {
        condition(s, "Webhooks") == Some(("True".into(), "Registered".into()))
    })
    .await;

    let name = format!("nuop-managed-{}-guarded", env.namespace);
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let configuration = configurations.get(&name).await.expect("the configuration");
    let hook = &configuration.webhooks.expect("webhooks")[0];
    assert_eq!(hook.name, "policy.validate.nuop.dev");
    let selector = hook
        .namespace_selector
        .clone()
        .expect("a namespace selector");
    assert_eq!(
        selector.match_labels.expect("labels")["kubernetes.io/metadata.name"],
        env.namespace,
        "confined to the NuOperator's namespace"
    );
    assert!(
        hook.rules
            .iter()
            .flatten()
            .all(|r| r.scope.as_deref() == Some("Namespaced"))
    );
    let service_ref = hook.client_config.service.clone().expect("a service");
    assert_eq!(
        (
            service_ref.namespace.as_str(),
            service_ref.name.as_str(),
            service_ref.port
        ),
        (env.namespace.as_str(), "nuop-guarded-webhook", Some(9443))
    );
    let ca = secrets
        .get("manager-webhook-ca")
        .await
        .expect("the manager's CA");
    let bundle = ca.data.expect("data")["ca.crt"].0.clone();
    assert_eq!(
        hook.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(bundle.clone())
    );

    let service = services
        .get("nuop-guarded-webhook")
        .await
        .expect("the Service");
    assert_eq!(
        service.spec.expect("spec").ports.expect("ports")[0].port,
        9443
    );
    let serving = secrets
        .get("nuop-guarded-webhook-tls")
        .await
        .expect("the serving Secret");
    let data = serving.data.expect("data");
    assert!(data.contains_key("tls.crt") && data.contains_key("tls.key"));
    assert!(
        !data.contains_key("ca.key"),
        "the CA key never leaves the manager's namespace"
    );
    assert_eq!(data["ca.crt"].0, bundle);
    let deployment = deployments
        .get("nuop-guarded")
        .await
        .expect("the Deployment");
    let pod = deployment.spec.and_then(|s| s.template.spec).expect("pod");
    assert!(
        pod.volumes.iter().flatten().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some("nuop-guarded-webhook-tls"))
    );

    // Deleting the NuOperator removes the cluster-scoped configuration too.
    operators
        .delete("guarded", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the configuration and the NuOperator gone", LIMIT, || {
        let (configurations, operators, name) =
            (configurations.clone(), operators.clone(), name.clone());
        async move {
            let configuration = configurations.get_opt(&name).await.ok()?;
            let operator = operators.get_opt("guarded").await.ok()?;
            (configuration.is_none() && operator.is_none()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn webhooks_that_go_away_are_unregistered() {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    let (env, _manager) = setup_with("manager-webhooks-gone", true).await;
    let operators: Api<NuOperator> = env.api();
    service_account(&env, "replicator").await;
    create(&operators, &sample("guarded")).await;
    publish_hooks(&env, "guarded", declared_hook("policy")).await;
    let name = format!("nuop-managed-{}-guarded", env.namespace);
    let configurations: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    eventually("the configuration", LIMIT, || {
        let (configurations, name) = (configurations.clone(), name.clone());
        async move { configurations.get_opt(&name).await.ok().flatten() }
    })
    .await;
    // The script no longer declares it.
    publish_hooks(&env, "guarded", json!([])).await;
    let op = status_where(
        &operators,
        "guarded",
        "the Webhooks condition gone",
        |_, s| s.condition("Webhooks").is_none(),
    )
    .await;
    assert!(configurations.get_opt(&name).await.expect("get").is_none());
    assert!(
        !op.metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == "nuop.dev/webhooks"),
        "the finalizer goes with the webhooks"
    );
}
