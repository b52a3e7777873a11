//! The local control plane is real: objects of every kind nuop relies on round-trip
//! through the kube client.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, ResourceExt};
use nuop_core::testing::{TestEnv, create_crd};
use serde_json::json;

#[tokio::test]
async fn namespace_configmap_crd_instance_and_lease_round_trip() {
    let env = TestEnv::new("control-plane-round-trip").await;

    let ns = Api::<Namespace>::all(env.client.clone())
        .get(&env.namespace)
        .await
        .expect("the test namespace reads back");
    assert_eq!(ns.name_any(), env.namespace);

    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..Default::default()
        },
        data: Some([("colour".to_string(), "blue".to_string())].into()),
        ..Default::default()
    };
    env.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let read = env
        .api::<ConfigMap>()
        .get("settings")
        .await
        .expect("read configmap");
    assert_eq!(read.data.expect("data")["colour"], "blue");

    // A CRD per test namespace keeps parallel runs independent.
    let group = format!("{}.test.nuop.dev", env.namespace);
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                }}}
            }]
        }
    }))
    .expect("crd");
    create_crd(&env.client, &crd).await;
    let crds = Api::<CustomResourceDefinition>::all(env.client.clone());
    let crd_name = format!("widgets.{group}");

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3}
    }))
    .expect("widget");
    // Right after a CRD is established, the first create can race discovery; retry briefly.
    let mut created = None;
    for _ in 0..50 {
        match widgets.create(&PostParams::default(), &widget).await {
            Ok(w) => {
                created = Some(w);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    created.expect("create widget");
    let read = widgets.get("w1").await.expect("read widget");
    assert_eq!(read.data["spec"]["size"], 3);

    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("leader".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("test-holder".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    env.api::<Lease>()
        .create(&PostParams::default(), &lease)
        .await
        .expect("create lease");
    let read = env.api::<Lease>().get("leader").await.expect("read lease");
    assert_eq!(
        read.spec.expect("spec").holder_identity.as_deref(),
        Some("test-holder")
    );

    crds.delete(&crd_name, &Default::default())
        .await
        .expect("delete crd");
}
