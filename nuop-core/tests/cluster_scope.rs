//! Cluster-scoped kinds and kinds that do not exist yet, against the real API server:
//! a controller over Namespaces, and one over a cluster-scoped CRD that is only created
//! after the controller started (discovery is retried, not fatal).
//!
//! Both watches are cluster-wide, so each test selects its objects by a label carrying
//! its own test namespace's name and never touches anything else.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, ResourceExt};
use nuop_core::controller::ControllerOptions;
use nuop_core::script::{ExecutorKind, Script, ScriptRunner};
use nuop_core::shutdown::shutdown_signal;
use nuop_core::testing::{TestEnv, create_crd, eventually, nu_binary};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// A script over `kind` (cluster-scoped) that annotates objects labelled
/// `nuop.dev/scope-test=<selector>` with `nuop.dev/seen-by=<script>`.
fn annotate_script(group: &str, version: &str, kind: &str, selector: &str) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "annotate", group: "{group}", version: "{version}", kind: "{kind}",
     labelSelectors: {{ "nuop.dev/scope-test": "{selector}" }} }} | to yaml
}}
def "main reconcile" [] {{
  let obj = $in | from json
  if ($obj.metadata.annotations? | default {{}} | get -o "nuop.dev/seen-by") == "annotate" {{ exit 0 }}
  print ($obj | upsert metadata.annotations."nuop.dev/seen-by" "annotate" | to json)
  exit 2
}}
"#
    )
}

fn seen(object: &impl ResourceExt) -> bool {
    object
        .annotations()
        .get("nuop.dev/seen-by")
        .map(String::as_str)
        == Some("annotate")
}

#[tokio::test]
async fn a_controller_over_a_cluster_scoped_kind_reconciles_namespaces() {
    let env = TestEnv::new("scope-ns").await;
    let _controller = env
        .run_script(
            "annotate",
            &annotate_script("", "v1", "Namespace", &env.namespace),
            ExecutorKind::Embedded,
        )
        .await;
    let namespaces = Api::<Namespace>::all(env.client.clone());
    let names: Vec<String> = (0..3).map(|i| format!("{}-n{i}", env.namespace)).collect();
    for name in &names {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        ("nuop.dev/test".to_string(), "true".to_string()),
                        ("nuop.dev/scope-test".to_string(), env.namespace.clone()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }
    for name in &names {
        eventually(
            &format!("namespace {name} to be annotated"),
            LIMIT,
            || async { namespaces.get(name).await.ok().filter(seen).map(|_| ()) },
        )
        .await;
    }
    // The test's own namespace does not carry the label: never written.
    let own = namespaces.get(&env.namespace).await.expect("own namespace");
    assert!(!seen(&own), "an unlabelled namespace was annotated");
    for name in &names {
        namespaces
            .delete(name, &DeleteParams::background())
            .await
            .unwrap_or_else(|e| panic!("delete namespace {name}: {e}"));
    }
}

#[tokio::test]
async fn a_kind_that_appears_later_is_retried_and_then_reconciled() {
    let env = TestEnv::new("scope-crd").await;
    // A group of its own, so parallel runs never share the CRD.
    let group = format!("{}.scope.nuop.dev", env.namespace);
    // The controller runs with a readiness state of our own, to see its discovery fail.
    let dir = tempfile::tempdir().expect("tempdir");
    let script_dir = dir.path().join("annotate");
    std::fs::create_dir(&script_dir).expect("script dir");
    std::fs::write(
        script_dir.join("mod.nu"),
        annotate_script(&group, "v1", "Gadget", &env.namespace),
    )
    .expect("write script");
    let runner = ScriptRunner::load_with(
        ExecutorKind::Embedded,
        &Script::at(&script_dir),
        nu_binary(),
    )
    .expect("load");
    let config = runner
        .config(nuop_core::protocol::DEFAULT_TIMEOUT)
        .await
        .expect("config");
    let options = ControllerOptions::default();
    let readiness = options.readiness.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(nuop_core::controller::run(
        env.client.clone(),
        config,
        runner,
        options,
        shutdown_signal(async move {
            let _ = stopped.await;
        }),
    ));

    // Create the CRD only once discovery has failed twice: the kind is retried.
    eventually("a second failed discovery attempt", LIMIT, || async {
        readiness
            .check()
            .err()
            .filter(|reason| reason.contains("not served yet, attempt 2"))
    })
    .await;
    let crds = Api::<CustomResourceDefinition>::all(env.client.clone());
    let crd_name = format!("gadgets.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": crd_name },
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": { "plural": "gadgets", "singular": "gadget", "kind": "Gadget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true
                }}
            }]
        }
    }))
    .expect("crd");
    create_crd(&env.client, &crd).await;

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Gadget"),
        "gadgets",
    );
    let gadgets = Api::<DynamicObject>::all_with(env.client.clone(), &resource);
    let mut gadget = DynamicObject::new("g1", &resource);
    gadget.metadata.labels =
        Some([("nuop.dev/scope-test".to_string(), env.namespace.clone())].into());
    // Discovery caches may lag the Established condition for a moment.
    eventually("the Gadget to be created", LIMIT, || async {
        gadgets.create(&PostParams::default(), &gadget).await.ok()
    })
    .await;
    eventually(
        "the cluster-scoped Gadget to be annotated",
        LIMIT,
        || async { gadgets.get("g1").await.ok().filter(seen).map(|_| ()) },
    )
    .await;

    crds.delete(&crd_name, &DeleteParams::background())
        .await
        .expect("delete the CRD");
    let _ = stop.send(());
    let _ = controller.await;
}
