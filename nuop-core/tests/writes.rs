//! Write-back against the real API server: what a script's answer changes, and what it
//! leaves alone (the rule is in `nuop_core::reconcile::write`).
//!
//! 1. a partial answer changes the one field it names and nothing else;
//! 2. a whole answer with a label and a data key removed removes them;
//! 3. a change another client makes to an unrelated field between read and write
//!    survives;
//! 4. a stale read of the field the script changes gets 409, and the object is re-read
//!    and reconciled again at once (no reconcile error is recorded).

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PostParams};
use kube::{Api, ResourceExt};
use nuop_core::metrics::METRICS;
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, eventually};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

const FOREIGN_FINALIZER: &str = "example.com/keep";

fn pairs(items: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A ConfigMap selected by `x=y`, with `labels` besides and `data`.
fn configmap(name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) -> ConfigMap {
    let mut all = pairs(labels);
    all.insert("x".into(), "y".into());
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(all),
            ..Default::default()
        },
        data: Some(pairs(data)),
        ..Default::default()
    }
}

/// The reconcile errors recorded for `controller`, as rendered metric lines.
fn errors_of(controller: &str) -> Vec<String> {
    METRICS
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("nuop_reconcile_errors_total")
                && l.contains(&format!("controller=\"{controller}\""))
        })
        .map(str::to_string)
        .collect()
}

async fn release_foreign_finalizer(cms: &Api<ConfigMap>, name: &str) {
    cms.patch(
        name,
        &Default::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("remove the foreign finalizer");
}

#[tokio::test]
async fn a_partial_answer_changes_only_the_field_it_names() {
    let env = TestEnv::new("writes-partial").await;
    let _controller = env
        .run_script(
            "partial",
            r#"
def "main config" [] { { name: "partial", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml }
def "main reconcile" [] {
  let obj = $in | from json
  if ($obj.data?.changed? == "yes") { exit 0 }
  # A fresh record: apiVersion, kind, name, namespace and the one field it changes.
  print ({ apiVersion: "v1", kind: "ConfigMap",
           metadata: { name: $obj.metadata.name, namespace: $obj.metadata.namespace },
           data: { changed: "yes" } } | to json)
  exit 2
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    // An owner that exists, so the garbage collector leaves the object alone.
    let owner = cms
        .create(
            &PostParams::default(),
            &configmap("owner", &[("x", "n")], &[]),
        )
        .await
        .expect("create owner");
    let mut object = configmap("target", &[("other", "keep")], &[("k", "v")]);
    object.metadata.annotations = Some(pairs(&[("note", "keep")]));
    object.metadata.finalizers = Some(vec![FOREIGN_FINALIZER.into()]);
    object.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.uid().expect("owner uid"),
        ..Default::default()
    }]);
    cms.create(&PostParams::default(), &object)
        .await
        .expect("create target");

    let after = eventually("data.changed to be written", LIMIT, || async {
        let cm = cms.get("target").await.ok()?;
        (cm.data.as_ref()?.get("changed").map(String::as_str) == Some("yes")).then_some(cm)
    })
    .await;
    assert_eq!(
        after.data,
        Some(pairs(&[("k", "v"), ("changed", "yes")])),
        "other data keys must stay"
    );
    assert_eq!(
        after.metadata.labels,
        Some(pairs(&[("x", "y"), ("other", "keep")]))
    );
    assert_eq!(after.metadata.annotations, Some(pairs(&[("note", "keep")])));
    assert_eq!(after.finalizers(), [FOREIGN_FINALIZER]);
    assert_eq!(
        after
            .owner_references()
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["owner"]
    );
    release_foreign_finalizer(&cms, "target").await;
}

#[tokio::test]
async fn a_whole_answer_without_a_label_and_a_data_key_removes_them() {
    let env = TestEnv::new("writes-whole").await;
    let _controller = env
        .run_script(
            "whole",
            r#"
def "main config" [] { { name: "whole", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml }
def "main reconcile" [] {
  let obj = $in | from json
  if ($obj.metadata.labels | get -o drop) == null { exit 0 }
  let labels = $obj.metadata.labels | reject drop
  let data = $obj.data | reject drop
  print ($obj | upsert metadata.labels $labels | upsert data $data | to json)
  exit 2
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &configmap(
            "target",
            &[("drop", "1"), ("keep", "1")],
            &[("drop", "1"), ("keep", "1")],
        ),
    )
    .await
    .expect("create");
    let after = eventually("the label to be removed", LIMIT, || async {
        let cm = cms.get("target").await.ok()?;
        (!cm.labels().contains_key("drop")).then_some(cm)
    })
    .await;
    assert_eq!(
        after.metadata.labels,
        Some(pairs(&[("x", "y"), ("keep", "1")]))
    );
    assert_eq!(after.data, Some(pairs(&[("keep", "1")])));
}

/// A script that records the resourceVersion it was given, waits long enough for the
/// test to change the object, and then answers.
fn slow_script(name: &str, answer: &str) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "{name}", version: "v1", kind: "ConfigMap", labelSelectors: {{ x: "y" }},
     requeue_after_change: 300, requeue_after_noop: 300 }} | to yaml
}}
def "main reconcile" [] {{
  let obj = $in | from json
  if ($obj.metadata.labels | get -o "nuop.dev/done") == "true" {{ exit 0 }}
  $"($obj.metadata.resourceVersion)\n" | save --append ($env.FILE_PWD | path join "calls.log")
  sleep 1500ms
  print ({answer} | to json)
  exit 2
}}
"#
    )
}

/// Waits for the script's first call, then changes the object with `patch`.
async fn change_during_first_call(
    controller: &nuop_core::testing::RunningController,
    cms: &Api<ConfigMap>,
    patch: serde_json::Value,
) {
    let log = controller.script_dir().join("calls.log");
    eventually("the script to start its first reconcile", LIMIT, || async {
        std::fs::read_to_string(&log)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|_| ())
    })
    .await;
    cms.patch("target", &Default::default(), &Patch::Merge(patch))
        .await
        .expect("concurrent update");
}

#[tokio::test]
async fn a_change_to_an_unrelated_field_between_read_and_write_survives() {
    let env = TestEnv::new("writes-unrelated").await;
    // A whole answer: without the resourceVersion guard it would remove the annotation
    // the test adds meanwhile.
    let controller = env
        .run_script(
            "unrelated",
            &slow_script(
                "unrelated",
                r#"($obj | upsert metadata.labels."nuop.dev/done" "true")"#,
            ),
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &configmap("target", &[], &[("k", "v")]),
    )
    .await
    .expect("create");
    change_during_first_call(
        &controller,
        &cms,
        json!({"metadata": {"annotations": {"late": "change"}}}),
    )
    .await;
    let after = eventually(
        "the label on top of the concurrent change",
        LIMIT,
        || async {
            let cm = cms.get("target").await.ok()?;
            (cm.labels().get("nuop.dev/done").map(String::as_str) == Some("true")).then_some(cm)
        },
    )
    .await;
    assert_eq!(
        after.annotations().get("late").map(String::as_str),
        Some("change"),
        "the concurrent change was overwritten"
    );
}

#[tokio::test]
async fn a_stale_read_of_the_changed_field_is_re_read_and_reconciled_at_once() {
    let env = TestEnv::new("writes-stale").await;
    // A partial answer derived from the field it changes: written from a stale read it
    // would be `ax`; from the re-read object it is `bx`.
    let controller = env
        .run_script(
            "stale-read",
            &slow_script(
                "stale-read",
                r#"{ apiVersion: "v1", kind: "ConfigMap",
                     metadata: { name: $obj.metadata.name, namespace: $obj.metadata.namespace,
                                 labels: { "nuop.dev/done": "true" } },
                     data: { count: $"($obj.data.count)x" } }"#,
            ),
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(
        &PostParams::default(),
        &configmap("target", &[], &[("count", "a")]),
    )
    .await
    .expect("create");
    change_during_first_call(&controller, &cms, json!({"data": {"count": "b"}})).await;
    let after = eventually("the script's answer to be written", LIMIT, || async {
        let cm = cms.get("target").await.ok()?;
        (cm.labels().get("nuop.dev/done").map(String::as_str) == Some("true")).then_some(cm)
    })
    .await;
    assert_eq!(
        after
            .data
            .as_ref()
            .and_then(|d| d.get("count"))
            .map(String::as_str),
        Some("bx"),
        "the answer computed from the stale read was written"
    );
    let calls = std::fs::read_to_string(controller.script_dir().join("calls.log")).expect("calls");
    assert!(
        calls.lines().count() >= 2,
        "the script ran only once: {calls}"
    );
    // Requeue intervals are 300 s, and a conflict returned as an error would be counted
    // and retried after a backoff: none may be recorded.
    assert_eq!(errors_of("stale-read"), Vec::<String>::new());
    assert_eq!(env.warnings("target").await, Vec::<String>::new());
}
