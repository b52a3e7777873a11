//! The manager's ClusterRole in `config/rbac/role.yaml` is enough, and no more than it
//! says: the manager runs as a ServiceAccount bound to a copy of that role (a client
//! that impersonates the account), against the real control plane, and still creates
//! the children and writes the status.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use nuop_core::controller::shutdown_signal;
use nuop_core::health::Readiness;
use nuop_core::testing::{TestEnv, eventually, kubeconfig_path};
use nuop_crd::{Mapping, NuOperator, Source};
use nuop_manager::build::Settings;
use nuop_manager::{Options, run};

const LIMIT: Duration = Duration::from_secs(60);

fn manager_role() -> ClusterRole {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/rbac/role.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a ClusterRole: {e}", path.display()))
}

/// The verbs that return a Secret's data to whoever holds them: `get`, `list` and
/// `watch` (and `*`). A metadata-only request needs the same verbs, so there is no
/// "existence check only" right.
const DATA_READING_VERBS: [&str; 4] = ["get", "list", "watch", "*"];

/// Why `rule` lets its holder read Secret data, if it does.
fn reads_secret_data(rule: &k8s_openapi::api::rbac::v1::PolicyRule) -> Option<String> {
    let core = rule
        .api_groups
        .iter()
        .flatten()
        .any(|g| g.is_empty() || g == "*");
    let secrets = rule
        .resources
        .iter()
        .flatten()
        .any(|r| r == "secrets" || r == "*");
    let verbs: Vec<&String> = rule
        .verbs
        .iter()
        .filter(|v| DATA_READING_VERBS.contains(&v.as_str()))
        .collect();
    (core && secrets && !verbs.is_empty()).then(|| format!("{verbs:?} on secrets: {rule:?}"))
}

#[test]
fn the_manager_role_grants_no_rbac_and_reads_no_secret_data() {
    let role = manager_role();
    for rule in role.rules.iter().flatten() {
        let groups = rule.api_groups.clone().unwrap_or_default();
        assert!(
            !groups.iter().any(|g| g == "rbac.authorization.k8s.io"),
            "the manager must never create RBAC: {rule:?}"
        );
        if let Some(why) = reads_secret_data(rule) {
            panic!("the manager must hold no right that returns Secret data: {why}");
        }
        assert!(
            !rule.verbs.iter().any(|v| v == "*"),
            "no wildcard verbs: {rule:?}"
        );
    }
}

#[test]
fn a_secrets_rule_that_returns_data_is_caught() {
    // The check above must fail for the rule the manager used to hold, and for its
    // list/watch and wildcard cousins.
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| {
        k8s_openapi::api::rbac::v1::PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    };
    for verbs in [
        &["get"][..],
        &["list"],
        &["watch"],
        &["*"],
        &["create", "get"],
    ] {
        assert!(
            reads_secret_data(&rule(&[""], &["secrets"], verbs)).is_some(),
            "{verbs:?}"
        );
    }
    assert!(reads_secret_data(&rule(&["*"], &["*"], &["get"])).is_some());
    assert!(reads_secret_data(&rule(&[""], &["configmaps"], &["get"])).is_none());
    assert!(reads_secret_data(&rule(&[""], &["secrets"], &["create"])).is_none());
}

/// A client for the control plane that acts as `user`.
async fn client_as(user: &str) -> Client {
    nuop_core::install_crypto_provider();
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).expect("a kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a config");
    config.auth_info.impersonate = Some(user.to_string());
    Client::try_from(config).expect("a client")
}

#[tokio::test]
async fn the_manager_works_with_exactly_its_role() {
    let env = TestEnv::new("manager-rbac").await;
    nuop_crd::install::ensure_crd(env.client.clone(), "nuop-tests", LIMIT)
        .await
        .expect("the CRD installs");
    let ns = env.namespace.clone();

    // A copy of the role, bound to a ServiceAccount of this test's namespace.
    let name = format!("nuop-test-{ns}");
    let mut role = manager_role();
    role.metadata = ObjectMeta {
        name: Some(name.clone()),
        ..ObjectMeta::default()
    };
    let roles: Api<ClusterRole> = Api::all(env.client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(env.client.clone());
    // Cluster-scoped: not removed with the namespace, so removed by a guard even when
    // the test fails.
    let _cleanup = Cleanup { name: name.clone() };
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("the role is created");
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_string()),
            kind: "ClusterRole".to_string(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name: "manager".to_string(),
            namespace: Some(ns.clone()),
            ..Subject::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("the binding is created");
    let accounts: Api<ServiceAccount> = env.api();
    for account in ["manager", "replicator"] {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(account.to_string()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        accounts
            .create(&PostParams::default(), &sa)
            .await
            .expect("a ServiceAccount");
    }

    let as_manager = client_as(&format!("system:serviceaccount:{ns}:manager")).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let readiness = Readiness::new();
    readiness.register(nuop_manager::run::READINESS_NAME);
    let options = Options {
        namespace: Some(ns.clone()),
        settings: Settings {
            webhooks: None,
            default_image: "registry.invalid/nuop-managed:test".to_string(),
        },
        concurrency: 2,
        readiness: readiness.clone(),
    };
    tokio::spawn(run(
        as_manager,
        options,
        shutdown_signal(async move {
            let _ = stopped.await;
        }),
    ));
    eventually(
        "the manager's watch to sync as the ServiceAccount",
        LIMIT,
        || {
            let ready = readiness.check().is_ok();
            async move { ready.then_some(()) }
        },
    )
    .await;

    let operators: Api<NuOperator> = env.api();
    let op = NuOperator::test()
        .named("replicator")
        .with_service_account("replicator")
        .with_source(Source::new("https://github.com/nuop-dev/nuop.git").at_path("examples"))
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
    eventually(
        "the Deployment, applied as the ServiceAccount",
        LIMIT,
        || async { deployments.get_opt("nuop-replicator").await.expect("get") },
    )
    .await;
    eventually(
        "the status, written as the ServiceAccount",
        LIMIT,
        || async {
            let op = operators.get("replicator").await.expect("get");
            op.status
                .filter(|s| s.observed_generation == op.metadata.generation)
                .and_then(|s| s.condition("Progressing").map(|c| c.status.clone()))
                .filter(|s| s == "True")
        },
    )
    .await;

    // The Warning Event of an invalid NuOperator, as the ServiceAccount; a credential
    // reference is passed on without the manager reading any Secret.
    let invalid = NuOperator::test()
        .named("invalid")
        .with_source(
            Source::new("https://git.example.com/private.git?dir=a")
                .at_path("b")
                .with_token(nuop_crd::SecretKeyRef::new("git-token", "token")),
        )
        .with_mapping(Mapping::new("config-replicator", "v1", "ConfigMap"));
    operators
        .create(&PostParams::default(), &invalid)
        .await
        .expect("created");
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    eventually(
        "an InvalidSource Event, published as the ServiceAccount",
        LIMIT,
        || async {
            events
                .list(&Default::default())
                .await
                .expect("list events")
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("InvalidSource"))
        },
    )
    .await;

    let _ = stop.send(());
}

/// Deletes the test's ClusterRole and ClusterRoleBinding when dropped.
struct Cleanup {
    name: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let name = self.name.clone();
        // A thread with its own runtime and its own client: the test's client runs its
        // connection task on the test's (single-threaded) runtime, which is blocked here.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let client = nuop_core::testing::client().await;
                let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
                let roles: Api<ClusterRole> = Api::all(client);
                let _ = bindings.delete(&name, &DeleteParams::default()).await;
                let _ = roles.delete(&name, &DeleteParams::default()).await;
            });
        })
        .join();
    }
}
