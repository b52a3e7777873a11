//! Failures classified by whether retrying can help (issue 12 point 3), against the real
//! API server; the classification itself is `nuop_core::reconcile::error`.
//!
//! 1. an object deleted between read and write (404 on the write) is done: no Warning
//!    Event, no reconcile error, no backoff entry;
//! 2. output nuop cannot encode (a non-string label) and a 422 from the API server (an
//!    invalid label value) are permanent: one call, one error, no backoff entry, until
//!    the object changes — then exactly one more call;
//! 3. a release whose `finalize` fails ten times in a row is retried without a cap and
//!    ends with the finalizer removed.
//!
//! "No retry" is observed without waiting out a time window: the backoff gauge
//! (`nuop_backoff_objects`) is read after a later object of the same controller has been
//! reconciled, by which time the failed reconcile's error policy has run.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{DeleteParams, ObjectMeta, Patch, PostParams};
use nuop_core::metrics::METRICS;
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, eventually};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

fn configmap(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("x".to_string(), "y".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `nuop_reconcile_errors_total` of `controller`, by category.
fn errors_of(controller: &str) -> Vec<(String, u64)> {
    ["ApiError", "InvalidOutput", "ScriptFailed", "Conflict"]
        .into_iter()
        .map(|c| {
            let n = METRICS.errors.with_label_values(&[controller, c]).get();
            (c.to_string(), n)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn reconciles(controller: &str, outcome: &str) -> u64 {
    METRICS
        .reconciles
        .with_label_values(&[controller, outcome])
        .get()
}

fn backoff_size(controller: &str) -> i64 {
    METRICS.backoff.with_label_values(&[controller]).get()
}

/// The lines of `file` (the script's call log), empty while it does not exist.
fn lines(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn an_object_deleted_during_its_reconcile_gets_no_warning_and_no_backoff() {
    let env = TestEnv::new("gone-during-write").await;
    // `held` waits inside its call until the test creates `go`, then answers a change;
    // `sentinel` fails at once: its Warning, sent after anything queued for `held`,
    // tells the test that the Event queue has caught up.
    let controller = env
        .run_script(
            "gone",
            r#"
def "main config" [] { { name: "gone", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml }
def "main reconcile" [] {
  let obj = $in | from json
  let dir = $env.FILE_PWD
  $"($obj.metadata.name)\n" | save --append ($dir | path join "calls.log")
  if $obj.metadata.name == "sentinel" { print -e "sentinel fails"; exit 1 }
  while not ($dir | path join "go" | path exists) { sleep 50ms }
  print ({ apiVersion: "v1", kind: "ConfigMap",
           metadata: { name: $obj.metadata.name, namespace: $obj.metadata.namespace },
           data: { changed: "yes" } } | to json)
  exit 2
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let calls = controller.script_dir().join("calls.log");
    let cms = env.api::<ConfigMap>();
    cms.create(&PostParams::default(), &configmap("held"))
        .await
        .expect("create held");
    eventually("the call for `held` to start", LIMIT, || async {
        lines(&calls).contains(&"held".to_string()).then_some(())
    })
    .await;
    // No finalizer of ours: the delete removes the object at once.
    cms.delete("held", &DeleteParams::default())
        .await
        .expect("delete held");
    eventually("`held` to be gone", LIMIT, || async {
        cms.get_opt("held").await.ok()?.is_none().then_some(())
    })
    .await;
    let durations = METRICS.reconcile_duration.with_label_values(&["gone"]);
    std::fs::write(controller.script_dir().join("go"), "").expect("let the call answer");
    eventually("the reconcile of `held` to end", LIMIT, || async {
        (durations.get_sample_count() >= 1).then_some(())
    })
    .await;

    cms.create(&PostParams::default(), &configmap("sentinel"))
        .await
        .expect("create sentinel");
    eventually("the sentinel's Warning", LIMIT, || async {
        (!env.warnings("sentinel").await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        env.warnings("held").await,
        Vec::<String>::new(),
        "a gone object gets no Warning"
    );
    let errors = errors_of("gone");
    assert!(
        errors
            .iter()
            .all(|(category, _)| category == "ScriptFailed"),
        "only the sentinel failed: {errors:?}"
    );
    assert_eq!(
        backoff_size("gone"),
        1,
        "only the sentinel waits to retry; a gone object keeps no backoff entry"
    );
    assert_eq!(
        lines(&calls).iter().filter(|l| *l == "held").count(),
        1,
        "`held` was called once"
    );
}

/// A controller whose reconcile logs its call and answers `bad_label` as a label of
/// the object, until the object carries the annotation `fixed`.
fn labelling_script(name: &str, bad_label: &str) -> String {
    format!(
        r#"
def "main config" [] {{ {{ name: "{name}", version: "v1", kind: "ConfigMap", labelSelectors: {{ x: "y" }} }} | to yaml }}
def "main reconcile" [] {{
  let obj = $in | from json
  $"($obj.metadata.name)\n" | save --append ($env.FILE_PWD | path join "calls.log")
  if $obj.metadata.name == "sentinel" {{ exit 0 }}
  print ({{ apiVersion: "v1", kind: "ConfigMap",
           metadata: {{ name: $obj.metadata.name, namespace: $obj.metadata.namespace,
                       labels: {{ bad: {bad_label} }} }} }} | to json)
  exit 2
}}
"#
    )
}

/// A permanent failure is tried once, warned about once and not retried (no backoff
/// entry) until the object changes; the change gives exactly one more call.
async fn permanent_failure_waits_for_a_change(test: &str, name: &str, bad_label: &str) {
    let env = TestEnv::new(test).await;
    let controller = env
        .run_script(
            name,
            &labelling_script(name, bad_label),
            ExecutorKind::Embedded,
        )
        .await;
    let calls = controller.script_dir().join("calls.log");
    let cms = env.api::<ConfigMap>();
    cms.create(&PostParams::default(), &configmap("bad"))
        .await
        .expect("create bad");
    let warning = eventually("a Warning on the object", LIMIT, || async {
        env.warnings("bad").await.into_iter().next()
    })
    .await;
    // A later object reconciled: the failed reconcile's error policy has run by now.
    cms.create(&PostParams::default(), &configmap("sentinel"))
        .await
        .expect("create sentinel");
    eventually("the sentinel's reconcile", LIMIT, || async {
        (reconciles(name, "no_change") >= 1).then_some(())
    })
    .await;
    let bad_calls = || lines(&calls).iter().filter(|l| *l == "bad").count();
    assert_eq!(
        backoff_size(name),
        0,
        "a permanent failure keeps no backoff entry (no retry scheduled); warning was {warning}"
    );
    assert_eq!(bad_calls(), 1, "one call until the object changes");
    let errors: u64 = errors_of(name).iter().map(|(_, n)| n).sum();
    assert_eq!(errors, 1, "one error: {:?}", errors_of(name));

    cms.patch(
        "bad",
        &Default::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"touched": "yes"}}})),
    )
    .await
    .expect("change the object");
    eventually("one more call after the change", LIMIT, || async {
        (bad_calls() >= 2).then_some(())
    })
    .await;
    eventually("the second error", LIMIT, || async {
        (errors_of(name).iter().map(|(_, n)| n).sum::<u64>() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        backoff_size(name),
        0,
        "still no backoff entry: {:?}",
        errors_of(name)
    );
}

#[tokio::test]
async fn output_that_cannot_be_encoded_is_permanent() {
    // `labels.bad: 3` is a number: nuop refuses to encode it (InvalidOutput).
    permanent_failure_waits_for_a_change("permanent-encode", "encode", "3").await;
    assert!(
        errors_of("encode")
            .iter()
            .all(|(category, _)| category == "InvalidOutput"),
        "{:?}",
        errors_of("encode")
    );
}

#[tokio::test]
async fn an_unprocessable_write_is_permanent() {
    // A label value with a space: the API server answers 422 Invalid (ApiError).
    permanent_failure_waits_for_a_change("permanent-422", "unprocessable", r#""not valid""#).await;
    assert!(
        errors_of("unprocessable")
            .iter()
            .all(|(category, _)| category == "ApiError"),
        "{:?}",
        errors_of("unprocessable")
    );
}

#[tokio::test]
async fn a_release_is_retried_without_a_cap_until_finalize_succeeds() {
    const FAILURES: usize = 10;
    let env = TestEnv::new("release-uncapped").await;
    let finalizer = "nuop.dev/test-uncapped";
    // Retry delays from 10 ms (doubling): ten failures fit in about ten seconds, where
    // the default 0.5 s base would need over four minutes.
    let controller = env
        .run_script_with_backoff(
            "uncapped",
            &format!(
                r#"
def "main config" [] {{ {{ name: "uncapped", version: "v1", kind: "ConfigMap", labelSelectors: {{ x: "y" }}, finalizer: "{finalizer}" }} | to yaml }}
def "main reconcile" [] {{ exit 0 }}
def "main finalize" [] {{
  let log = ($env.FILE_PWD | path join "finalize.log")
  let before = if ($log | path exists) {{ open $log | lines | length }} else {{ 0 }}
  "call\n" | save --append $log
  if $before < {FAILURES} {{ print -e $"failure ($before + 1)"; exit 1 }}
  exit 0
}}
"#
            ),
            ExecutorKind::Embedded,
            Duration::from_millis(10),
        )
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(&PostParams::default(), &configmap("leaving"))
        .await
        .expect("create");
    eventually("our finalizer on the object", LIMIT, || async {
        let cm = cms.get("leaving").await.ok()?;
        cm.finalizers().iter().any(|f| f == finalizer).then_some(())
    })
    .await;
    cms.patch(
        "leaving",
        &Default::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": null}}})),
    )
    .await
    .expect("remove the selected label");
    eventually(
        "the finalizer to be removed",
        Duration::from_secs(120),
        || async {
            let cm = cms.get("leaving").await.ok()?;
            (!cm.finalizers().iter().any(|f| f == finalizer)).then_some(())
        },
    )
    .await;
    let calls = lines(&controller.script_dir().join("finalize.log")).len();
    assert_eq!(calls, FAILURES + 1, "ten failures, then the success");
    // The finalizer goes before the success is recorded: wait for the record.
    eventually("the release's backoff entry to go", LIMIT, || async {
        (backoff_size("uncapped") == 0).then_some(())
    })
    .await;
}
