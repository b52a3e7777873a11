//! Script controllers against the real API server: convergence, finalizers, identity
//! protection, backoff, status subresource and conflicts.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, ResourceExt};
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, create_crd, eventually};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

const ADD_LABEL: &str = r#"
def "main config" [] {
  { name: "add-label", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  if ($obj.metadata.labels? | default {} | get -o "nuop.dev/seen") == "true" { exit 0 }
  print ($obj | upsert metadata.labels."nuop.dev/seen" "true" | to json)
  exit 2
}
"#;

fn configmap(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

/// A script over ConfigMaps labelled `x=y` with `finalizer`, whose `finalize` appends
/// the object's name to `finalized.log` beside the script.
fn finalizing_script(name: &str, finalizer: &str) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "{name}", version: "v1", kind: "ConfigMap", labelSelectors: {{ x: "y" }}, finalizer: "{finalizer}" }} | to yaml
}}
def "main reconcile" [] {{ exit 0 }}
def "main finalize" [] {{
  let obj = $in | from json
  $"($obj.metadata.name)\n" | save --append ($env.FILE_PWD | path join "finalized.log")
  exit 0
}}
"#
    )
}

async fn events_for(env: &TestEnv, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
}

async fn converges_with(kind: ExecutorKind) {
    let env = TestEnv::new(&format!("converge-{kind}")).await;
    let _controller = env.run_script("add-label", ADD_LABEL, kind).await;
    let cms = env.api::<ConfigMap>();
    for i in 0..50 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("cm-{i}"), &[("x", "y")]),
        )
        .await
        .expect("create labelled");
    }
    let mut untouched = Vec::new();
    for i in 0..5 {
        let created = cms
            .create(
                &PostParams::default(),
                &configmap(&format!("plain-{i}"), &[]),
            )
            .await
            .expect("create unlabelled");
        untouched.push(created);
    }
    eventually("all 50 labelled ConfigMaps to converge", LIMIT, || async {
        let list = cms.list(&ListParams::default().labels("x=y")).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|c| c.labels().get("nuop.dev/seen").map(String::as_str) == Some("true"))
            .count();
        (done == 50).then_some(())
    })
    .await;
    for before in untouched {
        let after = cms.get(&before.name_any()).await.expect("get unlabelled");
        assert_eq!(
            after.resource_version(),
            before.resource_version(),
            "{} was written",
            before.name_any()
        );
    }
}

#[tokio::test]
async fn fifty_labelled_configmaps_converge_with_the_embedded_executor() {
    converges_with(ExecutorKind::Embedded).await;
}

#[tokio::test]
async fn fifty_labelled_configmaps_converge_with_the_process_executor() {
    converges_with(ExecutorKind::Process).await;
}

#[tokio::test]
async fn finalizer_is_added_runs_on_delete_and_is_never_added_to_a_deleting_object() {
    let env = TestEnv::new("finalizer").await;
    let cms = env.api::<ConfigMap>();
    // Already being deleted, held only by someone else's finalizer, before we start.
    let mut held = configmap("held", &[("x", "y")]);
    held.metadata.finalizers = Some(vec!["other.example.com/keep".into()]);
    cms.create(&PostParams::default(), &held)
        .await
        .expect("create held");
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete held");

    let controller = env
        .run_script(
            "finalizing",
            &finalizing_script("finalizing", "nuop.dev/test-cleanup"),
            ExecutorKind::Embedded,
        )
        .await;

    cms.create(&PostParams::default(), &configmap("tracked", &[("x", "y")]))
        .await
        .expect("create tracked");
    eventually("our finalizer on the tracked object", LIMIT, || async {
        let cm = cms.get("tracked").await.ok()?;
        cm.finalizers()
            .contains(&"nuop.dev/test-cleanup".to_string())
            .then_some(())
    })
    .await;

    // The tracked object was reconciled after the held one was listed: the held one has
    // had its chance and must still carry only the foreign finalizer.
    let held = cms.get("held").await.expect("held still there");
    assert_eq!(held.finalizers(), ["other.example.com/keep"]);

    cms.delete("tracked", &DeleteParams::default())
        .await
        .expect("delete tracked");
    eventually("the tracked object to disappear", LIMIT, || async {
        match cms.get_opt("tracked").await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;
    let log = std::fs::read_to_string(controller.script_dir().join("finalized.log"))
        .expect("finalize ran");
    assert_eq!(log.trim(), "tracked");

    // Let the held object go.
    cms.patch(
        "held",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("release held");
}

#[tokio::test]
async fn an_object_that_leaves_the_selector_is_finalized_and_let_go() {
    let env = TestEnv::new("release").await;
    let cms = env.api::<ConfigMap>();
    let controller = env
        .run_script(
            "releasing",
            &finalizing_script("releasing", "nuop.dev/test-release"),
            ExecutorKind::Embedded,
        )
        .await;
    cms.create(&PostParams::default(), &configmap("leaving", &[("x", "y")]))
        .await
        .expect("create");
    eventually("our finalizer on the object", LIMIT, || async {
        let cm = cms.get("leaving").await.ok()?;
        cm.finalizers()
            .contains(&"nuop.dev/test-release".to_string())
            .then_some(())
    })
    .await;

    // The label goes: the watch no longer sees the object, but it still exists.
    cms.patch(
        "leaving",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"metadata": {"labels": {"x": null}}})),
    )
    .await
    .expect("remove the selected label");
    eventually("the finalizer to be removed", LIMIT, || async {
        let cm = cms.get("leaving").await.ok()?;
        cm.finalizers().is_empty().then_some(())
    })
    .await;
    let log = std::fs::read_to_string(controller.script_dir().join("finalized.log"))
        .expect("finalize ran");
    assert_eq!(log.trim(), "leaving");
    let still_there = cms.get("leaving").await.expect("the object is not deleted");
    assert!(still_there.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn an_identity_change_writes_nothing_and_explains_why() {
    let env = TestEnv::new("identity").await;
    let _controller = env
        .run_script(
            "renamer",
            r#"
def "main config" [] { { name: "renamer", version: "v1", kind: "ConfigMap" } | to yaml }
def "main reconcile" [] {
  let obj = $in | from json
  print ($obj | upsert metadata.name "renamed" | upsert metadata.labels { changed: "yes" } | to json)
  exit 2
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    let created = cms
        .create(&PostParams::default(), &configmap("original", &[]))
        .await
        .expect("create");
    let event = eventually(
        "a Warning Event about the identity change",
        LIMIT,
        || async {
            events_for(&env, "original")
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("IdentityChange"))
        },
    )
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("metadata.name") && message.contains("renamed"),
        "{message}"
    );
    let after = cms.get("original").await.expect("get");
    assert_eq!(
        after.resource_version(),
        created.resource_version(),
        "nothing may be written"
    );
    assert!(cms.get_opt("renamed").await.expect("get renamed").is_none());
}

#[tokio::test]
async fn failing_script_backs_off_while_a_healthy_controller_keeps_converging() {
    let env = TestEnv::new("backoff").await;
    let failing = env
        .run_script(
            "failing",
            r#"
def "main config" [] { { name: "failing", version: "v1", kind: "ConfigMap", labelSelectors: { fail: "yes" } } | to yaml }
def "main reconcile" [] {
  $"((date now | into int) / 1_000_000 | math floor)\n" | save --append ($env.FILE_PWD | path join "calls.log")
  print -e "refusing on purpose"
  exit 1
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let _healthy = env
        .run_script("add-label", ADD_LABEL, ExecutorKind::Embedded)
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &configmap("doomed", &[("fail", "yes")]),
    )
    .await
    .expect("create");

    let log = failing.script_dir().join("calls.log");
    let calls: Vec<i64> = eventually("five attempts of the failing script", LIMIT, || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let calls: Vec<i64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (calls.len() >= 5).then_some(calls)
    })
    .await;
    let gaps: Vec<i64> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    // 0.5 s, 1 s, 2 s, 4 s: each gap doubles; compare gaps two apart to stay clear of noise.
    assert!(
        gaps[2] > gaps[0] && gaps[3] > gaps[1],
        "retry gaps do not grow: {gaps:?} ms"
    );

    // Meanwhile the healthy controller converges new objects.
    for i in 0..10 {
        cms.create(
            &PostParams::default(),
            &configmap(&format!("fine-{i}"), &[("x", "y")]),
        )
        .await
        .expect("create");
    }
    eventually(
        "the healthy controller's objects to converge",
        LIMIT,
        || async {
            let list = cms
                .list(&ListParams::default().labels("x=y,nuop.dev/seen=true"))
                .await
                .ok()?;
            (list.items.len() == 10).then_some(())
        },
    )
    .await;
    let warning = events_for(&env, "doomed")
        .await
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("ScriptFailed"));
    let warning = warning.expect("a ScriptFailed Event on the failing object");
    assert!(
        warning
            .message
            .unwrap_or_default()
            .contains("refusing on purpose")
    );
}

#[tokio::test]
async fn status_is_written_through_the_status_subresource() {
    let env = TestEnv::new("status").await;
    let group = format!("{}.test.nuop.dev", env.namespace);
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("greetings.{group}")},
        "spec": {
            "group": group,
            "names": {"kind": "Greeting", "plural": "greetings", "singular": "greeting", "listKind": "GreetingList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"message": {"type": "string"}}}
                }}}
            }]
        }
    }))
    .expect("crd");
    create_crd(&env.client, &crd).await;

    let script = r#"
def "main config" [] { { name: "greeter", group: "GROUP", version: "v1", kind: "Greeting" } | to yaml }
def "main reconcile" [] {
  let obj = $in | from json
  let message = $"Hello, ($obj.spec.name)!"
  if ($obj.status?.message? == $message) { exit 0 }
  print ($obj | upsert status { message: $message } | to json)
  exit 2
}
"#
    .replace("GROUP", &group);
    let _controller = env
        .run_script("greeter", &script, ExecutorKind::Embedded)
        .await;

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Greeting"),
        "greetings",
    );
    let greetings =
        Api::<DynamicObject>::namespaced_with(env.client.clone(), &env.namespace, &resource);
    let greeting: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"), "kind": "Greeting",
        "metadata": {"name": "world"}, "spec": {"name": "World"}
    }))
    .expect("greeting");
    eventually("the first Greeting to be accepted", LIMIT, || async {
        greetings
            .create(&PostParams::default(), &greeting)
            .await
            .ok()
    })
    .await;
    eventually("status.message to be written", LIMIT, || async {
        let g = greetings.get("world").await.ok()?;
        (g.data["status"]["message"] == "Hello, World!").then_some(())
    })
    .await;
    // Events are sent in the background, after the write they report.
    let events = eventually("a StatusUpdated event", LIMIT, || async {
        let events = events_for(&env, "world").await;
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("StatusUpdated"))
            .then_some(events)
    })
    .await;
    assert!(
        !events
            .iter()
            .any(|e| e.reason.as_deref() == Some("Updated")),
        "only the status changed: the main resource must not be written"
    );
    Api::<CustomResourceDefinition>::all(env.client.clone())
        .delete(&format!("greetings.{group}"), &DeleteParams::default())
        .await
        .expect("delete crd");
}

#[tokio::test]
async fn a_conflicting_update_is_re_read_and_reconciled_at_once() {
    let env = TestEnv::new("conflict").await;
    let controller = env
        .run_script(
            "slow-labeller",
            r#"
def "main config" [] {
  { name: "slow-labeller", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" },
    requeue_after_change: 300, requeue_after_noop: 300 } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  if ($obj.metadata.labels? | default {} | get -o "nuop.dev/seen") == "true" { exit 0 }
  $"($obj.metadata.resourceVersion)\n" | save --append ($env.FILE_PWD | path join "calls.log")
  sleep 1500ms
  print ($obj | upsert metadata.labels."nuop.dev/seen" "true" | to json)
  exit 2
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &configmap("contested", &[("x", "y")]),
    )
    .await
    .expect("create");
    let log = controller.script_dir().join("calls.log");
    eventually("the script to start its first reconcile", LIMIT, || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|_| ())
    })
    .await;
    // Change the object while the script is still working on the old version.
    cms.patch(
        "contested",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"data": {"late": "change"}})),
    )
    .await
    .expect("concurrent update");
    // Requeue intervals are 300 s; the error checks below tell the immediate re-read
    // from the other ways of converging.
    let final_cm = eventually(
        "the label on top of the concurrent change",
        LIMIT,
        || async {
            let cm = cms.get("contested").await.ok()?;
            (cm.labels().get("nuop.dev/seen").map(String::as_str) == Some("true")).then_some(cm)
        },
    )
    .await;
    let data = final_cm.data.expect("data");
    assert_eq!(
        data.get("late").map(String::as_str),
        Some("change"),
        "the concurrent change was overwritten"
    );
    let calls = std::fs::read_to_string(&log).expect("calls");
    assert!(
        calls.lines().count() >= 2,
        "the script ran only once: {calls}"
    );
    // The concurrent patch's own watch event, or a conflict returned as an error and
    // retried after the backoff, would converge too. Only the immediate re-read records
    // no reconcile error and no Warning.
    let errors: Vec<String> = nuop_core::metrics::METRICS
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("nuop_reconcile_errors_total")
                && l.contains("controller=\"slow-labeller\"")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(
        errors,
        Vec::<String>::new(),
        "the conflict was not re-read at once"
    );
    let warnings: Vec<_> = events_for(&env, "contested")
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| e.reason)
        .collect();
    assert!(warnings.is_empty(), "warnings: {warnings:?}");
}
