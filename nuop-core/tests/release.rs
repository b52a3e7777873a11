//! Objects that leave a controller's selectors while carrying its finalizer, against the
//! real API server: they are released (finalize, then the finalizer removed) however
//! they left, field selectors included; and `--concurrency` holds per controller across
//! several namespaces.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, Patch, PostParams};
use kube::{Api, ResourceExt};
use nuop_core::controller::{ControllerOptions, run};
use nuop_core::script::{ExecutorKind, Script, ScriptRunner};
use nuop_core::shutdown::shutdown_signal;
use nuop_core::testing::{TestEnv, eventually, nu_binary};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

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
        ..Default::default()
    }
}

/// A controller over ConfigMaps labelled `x=y` (and `extra` config fields) with
/// `finalizer`, whose `finalize` appends the object's name to `finalized.log`.
fn finalizing_script(name: &str, finalizer: &str, extra: &str) -> String {
    format!(
        r#"
def "main config" [] {{
  {{ name: "{name}", version: "v1", kind: "ConfigMap", labelSelectors: {{ x: "y" }}, finalizer: "{finalizer}" {extra} }} | to yaml
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

async fn has_finalizer(cms: &Api<ConfigMap>, name: &str, finalizer: &str) -> Option<bool> {
    let cm = cms.get(name).await.ok()?;
    Some(cm.finalizers().iter().any(|f| f == finalizer))
}

#[tokio::test]
async fn an_object_that_left_the_selector_while_nuop_was_down_is_released() {
    let env = TestEnv::new("release-restart").await;
    let cms = env.api::<ConfigMap>();
    let finalizer = "nuop.dev/test-restart";
    let script = finalizing_script("restarting", finalizer, "");
    let first = env
        .run_script("restarting", &script, ExecutorKind::Embedded)
        .await;
    cms.create(&PostParams::default(), &configmap("leaving", &[("x", "y")]))
        .await
        .expect("create");
    eventually("our finalizer on the object", LIMIT, || async {
        has_finalizer(&cms, "leaving", finalizer)
            .await?
            .then_some(())
    })
    .await;
    first.stop().await;

    // The label goes while no controller runs: no watch sees the object leave.
    cms.patch(
        "leaving",
        &Default::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": null}}})),
    )
    .await
    .expect("remove the selected label");

    let second = env
        .run_script("restarting", &script, ExecutorKind::Embedded)
        .await;
    eventually("the finalizer to be removed", LIMIT, || async {
        (!has_finalizer(&cms, "leaving", finalizer).await?).then_some(())
    })
    .await;
    let log =
        std::fs::read_to_string(second.script_dir().join("finalized.log")).expect("finalize ran");
    assert_eq!(log.trim(), "leaving");
    let still_there = cms.get("leaving").await.expect("the object is not deleted");
    assert!(still_there.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn field_selectors_are_honoured_when_releasing() {
    let env = TestEnv::new("release-fields").await;
    let cms = env.api::<ConfigMap>();
    let finalizer = "nuop.dev/test-fields";
    // Labels match for both objects; only the field selector tells them apart.
    let stray = ConfigMap {
        metadata: ObjectMeta {
            finalizers: Some(vec![finalizer.into()]),
            ..configmap("stray", &[("x", "y")]).metadata
        },
        ..Default::default()
    };
    cms.create(&PostParams::default(), &stray)
        .await
        .expect("create stray");
    let controller = env
        .run_script(
            "fields",
            &finalizing_script(
                "fields",
                finalizer,
                r#", fieldSelectors: { "metadata.name": "picked" }"#,
            ),
            ExecutorKind::Embedded,
        )
        .await;
    cms.create(&PostParams::default(), &configmap("picked", &[("x", "y")]))
        .await
        .expect("create picked");
    eventually("our finalizer on the selected object", LIMIT, || async {
        has_finalizer(&cms, "picked", finalizer)
            .await?
            .then_some(())
    })
    .await;
    eventually("the stray object to be released", LIMIT, || async {
        (!has_finalizer(&cms, "stray", finalizer).await?).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(controller.script_dir().join("finalized.log"))
        .expect("finalize ran");
    assert_eq!(log.trim(), "stray", "only the stray object is finalized");
    assert_eq!(has_finalizer(&cms, "picked", finalizer).await, Some(true));
    drop(controller);
    cms.patch(
        "picked",
        &Default::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("let the selected object go");
}

#[tokio::test]
async fn concurrency_is_per_controller_across_namespaces() {
    let env = TestEnv::new("concurrency").await;
    let second_namespace = format!("{}-b", env.namespace);
    let namespaces = Api::<Namespace>::all(env.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(second_namespace.clone()),
                    labels: Some([("nuop.dev/test".to_string(), "true".to_string())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create the second namespace");

    // Each call holds a lock directory while it works: a second call at the same time
    // finds it taken and records an overlap.
    let dir = tempfile::tempdir().expect("tempdir");
    let script_dir = dir.path().join("serial");
    std::fs::create_dir(&script_dir).expect("script dir");
    std::fs::write(
        script_dir.join("mod.nu"),
        r#"
def "main config" [] {
  { name: "serial", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml
}
def "main reconcile" [] {
  let obj = $in | from json
  let lock = ($env.FILE_PWD | path join "lock")
  let taken = (do { ^mkdir $lock } | complete).exit_code != 0
  if $taken { "overlap\n" | save --append ($env.FILE_PWD | path join "overlaps.log") }
  sleep 300ms
  if not $taken { ^rmdir $lock }
  $"($obj.metadata.namespace)/($obj.metadata.name)\n" | save --append ($env.FILE_PWD | path join "calls.log")
  exit 0
}
"#,
    )
    .expect("write script");
    let runner = ScriptRunner::load_with(
        ExecutorKind::Embedded,
        &Script::at(&script_dir),
        nu_binary(),
    )
    .expect("load");
    let mut config = runner
        .config(nuop_core::protocol::DEFAULT_TIMEOUT)
        .await
        .expect("config");
    config.namespaces = vec![env.namespace.clone(), second_namespace.clone()];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(run(
        env.client.clone(),
        config,
        runner,
        ControllerOptions {
            concurrency: 1,
            ..ControllerOptions::default()
        },
        shutdown_signal(async move {
            let _ = stopped.await;
        }),
    ));

    for namespace in [&env.namespace, &second_namespace] {
        let cms = Api::<ConfigMap>::namespaced(env.client.clone(), namespace);
        for i in 0..3 {
            cms.create(
                &PostParams::default(),
                &configmap(&format!("cm-{i}"), &[("x", "y")]),
            )
            .await
            .expect("create");
        }
    }
    let calls = script_dir.join("calls.log");
    eventually("all six objects to be reconciled", LIMIT, || async {
        let text = std::fs::read_to_string(&calls).ok()?;
        let done: std::collections::BTreeSet<&str> = text.lines().collect();
        (done.len() == 6).then_some(())
    })
    .await;
    let _ = stop.send(());
    let _ = handle.await;
    assert!(
        !script_dir.join("overlaps.log").exists(),
        "two reconciles ran at once with --concurrency 1: {}",
        std::fs::read_to_string(script_dir.join("overlaps.log")).unwrap_or_default()
    );
    let _ = namespaces
        .delete(&second_namespace, &DeleteParams::background())
        .await;
}
