//! What a script prints, against the real API server (issue 18 points 1 and 6): an
//! object on a stdout that passed its cap is never written, and an error exit puts the
//! last lines of stdout and stderr into the Warning Event.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use nuop_core::script::ExecutorKind;
use nuop_core::testing::{TestEnv, eventually};

const LIMIT: Duration = Duration::from_secs(60);

fn selected(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("x".to_string(), "y".to_string())].into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_object_on_a_cut_stdout_is_never_written() {
    let env = TestEnv::new("output-cut").await;
    // The object's YAML comes first and parses on its own; 5 MB of padding after it
    // push stdout past the 4 MiB cap, so what is kept is a cut, still-parsing object
    // whose `data` lost its key `k` (the kind of cut that used to be written).
    let _controller = env
        .run_script(
            "cut",
            r#"
def "main config" [] { { name: "cut", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml }
def "main reconcile" [] {
  let obj = $in | from json
  let pad = ("" | fill -c "p" -w 5000000)
  print ($obj | reject data | upsert data { cut: $pad } | to yaml)
  exit 2
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    let cms = env.api::<ConfigMap>();
    cms.create(&PostParams::default(), &selected("big"))
        .await
        .expect("create");
    let warning = eventually("a Warning saying stdout was cut", LIMIT, || async {
        env.warnings("big")
            .await
            .into_iter()
            .find(|w| w.contains("stdout was cut at 4194304 bytes"))
    })
    .await;
    assert!(warning.contains("nothing was written"), "{warning}");
    let after = cms.get("big").await.expect("get");
    assert_eq!(
        after.data,
        Some([("k".to_string(), "v".to_string())].into()),
        "the object is untouched"
    );
}

#[tokio::test]
async fn an_error_exit_puts_the_last_lines_of_stdout_and_stderr_in_the_event() {
    let env = TestEnv::new("output-error").await;
    let _controller = env
        .run_script(
            "fails",
            r#"
def "main config" [] { { name: "fails", version: "v1", kind: "ConfigMap", labelSelectors: { x: "y" } } | to yaml }
def "main reconcile" [] {
  print "progress: step 3 of 4"
  print -e "cannot reach the backend"
  exit 3
}
"#,
            ExecutorKind::Embedded,
        )
        .await;
    env.api::<ConfigMap>()
        .create(&PostParams::default(), &selected("failing"))
        .await
        .expect("create");
    let warning = eventually("a Warning for the error exit", LIMIT, || async {
        env.warnings("failing")
            .await
            .into_iter()
            .find(|w| w.contains("exited with code 3"))
    })
    .await;
    assert!(warning.contains("cannot reach the backend"), "{warning}");
    assert!(warning.contains("progress: step 3 of 4"), "{warning}");
}
