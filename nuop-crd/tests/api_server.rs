//! The CRD's schema against the real API server (`hack/control-plane`): a CR it
//! rejects is refused with a message naming the field, a valid one is accepted with
//! its defaults filled in.

use std::time::Duration;

use kube::api::{DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};
use nuop_core::testing::TestEnv;
use nuop_crd::install::ensure_crd;
use serde_json::{Value, json};

async fn setup(test: &str) -> (TestEnv, Api<DynamicObject>) {
    let env = TestEnv::new(test).await;
    ensure_crd(env.client.clone(), "nuop-tests", Duration::from_secs(30))
        .await
        .expect("the CRD installs");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nuop.dev", "v1alpha1", "NuOperator"),
        "nuoperators",
    );
    let api = Api::namespaced_with(env.client.clone(), &env.namespace, &resource);
    (env, api)
}

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "nuop.dev/v1alpha1",
        "kind": "NuOperator",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid object")
}

/// Creates `object`, retrying while the API server is still warming up its handler
/// for a CRD that another test may have just installed (404 for a few seconds).
async fn create(
    api: &Api<DynamicObject>,
    object: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match api.create(&PostParams::default(), object).await {
            Err(kube::Error::Api(status))
                if status.code == 404 && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

fn refusal(result: Result<DynamicObject, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "expected a validation error: {status:?}");
            status.message
        }
        Err(other) => panic!("expected a 422 from the API server, got {other}"),
        Ok(created) => panic!("the API server accepted an invalid CR: {created:?}"),
    }
}

#[tokio::test]
async fn a_mapping_without_kind_is_refused_naming_the_field() {
    let (_env, api) = setup("crd-missing-kind").await;
    let message = refusal(
        create(
            &api,
            &object(
                "no-kind",
                json!({"mappings": [{"name": "s", "version": "v1"}]}),
            ),
        )
        .await,
    );
    assert!(message.contains("spec.mappings[0].kind"), "{message}");
    assert!(message.contains("Required value"), "{message}");
}

#[tokio::test]
async fn schema_rules_are_enforced_by_the_api_server() {
    let (_env, api) = setup("crd-schema-rules").await;

    let message = refusal(create(&api, &object("no-mappings", json!({"mappings": []}))).await);
    assert!(message.contains("spec.mappings"), "{message}");

    let message = refusal(
        create(
            &api,
            &object(
                "fast-sync",
                json!({"syncInterval": 1, "mappings": [{"name": "s", "version": "v1", "kind": "ConfigMap"}]}),
            ),
        )
        .await,
    );
    assert!(message.contains("spec.syncInterval"), "{message}");

    let message = refusal(
        create(
            &api,
            &object(
                "half-basic-auth",
                json!({
                    "sources": [{"location": "https://example.com/x.git", "credentials": {"username": {"name": "git", "key": "user"}}}],
                    "mappings": [{"name": "s", "version": "v1", "kind": "ConfigMap"}]
                }),
            ),
        )
        .await,
    );
    assert!(
        message.contains("username and password go together"),
        "{message}"
    );

    // A mapping name becomes a controller name: a DNS label.
    for name in ["Config_Replicator", &"x".repeat(64)] {
        let message = refusal(
            create(
                &api,
                &object(
                    "bad-mapping-name",
                    json!({"mappings": [{"name": name, "version": "v1", "kind": "ConfigMap"}]}),
                ),
            )
            .await,
        );
        assert!(message.contains("spec.mappings[0].name"), "{message}");
    }
}

#[tokio::test]
async fn a_valid_cr_is_accepted_with_defaults() {
    let (_env, api) = setup("crd-defaults").await;
    let created = create(
        &api,
        &object(
            "ok",
            json!({"mappings": [{"name": "s", "version": "v1", "kind": "ConfigMap"}]}),
        ),
    )
    .await
    .expect("a valid CR is accepted");
    let spec = &created.data["spec"];
    assert_eq!(spec["replicas"], json!(1));
    assert_eq!(spec["syncInterval"], json!(60));
    assert_eq!(spec["mappings"][0]["group"], json!(""));
    // The typed client reads it back.
    let typed: Api<nuop_crd::NuOperator> = Api::namespaced(
        client_of(&api),
        &created.metadata.namespace.clone().unwrap_or_default(),
    );
    let op = typed.get("ok").await.expect("reads back");
    assert_eq!(op.spec.mappings[0].kind, "ConfigMap");
}

fn client_of(api: &Api<DynamicObject>) -> Client {
    api.clone().into_client()
}
