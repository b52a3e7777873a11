//! The hand-written kube-rs replicator (`examples/kube-replicator.rs`, the limit
//! `make bench-e2e` measures nuop's replicators against) against the real API server:
//! it must do config-replicator's work, or the comparison means nothing.
//!
//! `cargo test` builds the example before it runs tests; this test runs that binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use nuop_core::testing::{KillOnDrop, TestEnv, eventually, kubeconfig_path};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);
const REPLICA_OF: &str = "nuop.dev/replica-of";

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("examples/kube-replicator");
    assert!(
        path.is_file(),
        "{} is missing: `cargo test` builds it (examples are built with the tests)",
        path.display()
    );
    path
}

async fn create_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some([("nuop.dev/test".to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Namespaces holding a copy of `tag` with `data`, sorted.
async fn copies(client: &Client, tag: &str, data: &BTreeMap<String, String>) -> Vec<String> {
    let list = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{REPLICA_OF}={tag}")))
        .await
        .expect("list copies");
    let mut namespaces: Vec<String> = list
        .items
        .iter()
        .filter(|cm| cm.data.as_ref() == Some(data))
        .filter_map(|cm| cm.namespace())
        .collect();
    namespaces.sort();
    namespaces
}

#[tokio::test]
async fn the_kube_rs_replicator_does_config_replicators_work() {
    let env = TestEnv::new("kube-replicator").await;
    let client = env.client.clone();
    let [a, b, c, later] = ["a", "b", "c", "later"].map(|s| format!("{}-{s}", env.namespace));
    for ns in [&a, &b, &c] {
        create_namespace(&client, ns).await;
    }
    let _controller = KillOnDrop(
        std::process::Command::new(binary())
            .args(["--namespace", &env.namespace])
            .env("KUBECONFIG", kubeconfig_path())
            .spawn()
            .expect("start kube-replicator"),
    );
    let name = "settings";
    let tag = format!("{}.{name}", env.namespace);
    let data: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
    let sources = env.api::<ConfigMap>();
    sources
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some([("nuop.dev/replicate".to_string(), "true".to_string())].into()),
                    annotations: Some(
                        [
                            (
                                "nuop.dev/replicate-include".to_string(),
                                format!("{a}, {b},{c},{later},kube-public"),
                            ),
                            ("nuop.dev/replicate-exclude".to_string(), c.clone()),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                },
                data: Some(data.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("create the source");
    // Included minus excluded; a system namespace when named; one that does not exist
    // yet is skipped.
    let mut want = vec![a.clone(), b.clone(), "kube-public".to_string()];
    want.sort();
    eventually("copies in the included namespaces", LIMIT, || async {
        (copies(&client, &tag, &data).await == want).then_some(())
    })
    .await;

    // Edited: the value restored, the added key removed. Deleted: created again.
    Api::<ConfigMap>::namespaced(client.clone(), &a)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "edited", "added": "x"}})),
        )
        .await
        .expect("edit a copy");
    Api::<ConfigMap>::namespaced(client.clone(), &b)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete a copy");
    create_namespace(&client, &later).await;
    want.push(later.clone());
    want.sort();
    eventually(
        "the edited and deleted copies back, and one in the new namespace",
        LIMIT,
        || async { (copies(&client, &tag, &data).await == want).then_some(()) },
    )
    .await;

    // The finalizer deletes every copy with the source.
    sources
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete the source");
    eventually("the source and its copies to go", LIMIT, || async {
        let gone = sources.get_opt(name).await.ok()?.is_none();
        let left = Api::<ConfigMap>::all(client.clone())
            .list(&ListParams::default().labels(&format!("{REPLICA_OF}={tag}")))
            .await
            .ok()?;
        (gone && left.items.is_empty()).then_some(())
    })
    .await;
    for ns in [&a, &b, &c, &later] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::background())
            .await;
    }
}
