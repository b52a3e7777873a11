//! Unit tests of the v1alpha1 types: wire names, defaults, schema, status helpers.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResourceExt as _, Resource as _};
use serde_json::{Value, json};

use super::*;

fn full() -> NuOperator {
    NuOperator::test()
        .named("replicator")
        .in_namespace("tenant-a")
        .with_image("ghcr.io/nuop-dev/nuop-managed:v1")
        .with_service_account("replicator")
        .with_replicas(2)
        .with_sync_interval(30)
        .with_env("RUST_LOG", "info")
        .with_source(
            Source::new("https://git.example.com/platform/scripts.git")
                .at_path("controllers")
                .at_ref("v1.2.0")
                .with_token(SecretKeyRef::new("scripts-git", "token")),
        )
        .with_mapping(
            Mapping::new("config-replicator", "v1", "ConfigMap")
                .with_label_selector("nuop.dev/replicate", "yes")
                .with_field_selector("metadata.namespace", "default")
                .with_requeue_after_noop(300)
                .with_requeue_after_change(10),
        )
}

#[test]
fn spec_keeps_the_original_field_names() {
    let value = serde_json::to_value(full()).expect("serializes");
    let spec = &value["spec"];
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().expect("an object").keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(
        keys(spec),
        [
            "env",
            "image",
            "mappings",
            "replicas",
            "serviceAccountName",
            "sources",
            "syncInterval"
        ]
    );
    assert_eq!(
        keys(&spec["mappings"][0]),
        [
            "fieldSelectors",
            "group",
            "kind",
            "labelSelectors",
            "name",
            "requeue_after_change",
            "requeue_after_noop",
            "version"
        ]
    );
    assert_eq!(
        keys(&spec["sources"][0]),
        ["credentials", "location", "path", "ref"]
    );
    assert_eq!(
        spec["sources"][0]["credentials"],
        json!({"token": {"name": "scripts-git", "key": "token"}})
    );
    assert_eq!(value["apiVersion"], "nuop.dev/v1alpha1");
    assert_eq!(value["kind"], "NuOperator");
}

#[test]
fn an_original_nuop_cr_deserializes() {
    // The shape of a CR written for the original nuop (minus its API group).
    let yaml = r#"
apiVersion: nuop.dev/v1alpha1
kind: NuOperator
metadata:
  name: secret-cloner
  namespace: default
spec:
  serviceAccountName: secret-cloner-sa
  env:
    - name: RUST_LOG
      value: info
  mappings:
    - name: secret-cloner
      group: ""
      version: v1
      kind: Secret
      labelSelectors:
        app.kubernetes.io/replicate: "yes"
      requeue_after_noop: 300
      requeue_after_change: 10
  sources:
    - location: https://github.com/ck3mp3r/nuop.git
      credentials:
        username: {name: git, key: username}
        password: {name: git, key: password}
"#;
    let op: NuOperator = serde_saphyr::from_str(yaml).expect("parses");
    assert_eq!(
        op.spec.service_account_name.as_deref(),
        Some("secret-cloner-sa")
    );
    let mapping = &op.spec.mappings[0];
    assert_eq!(mapping.requeue_after_noop, Some(300));
    assert_eq!(mapping.requeue_after_change, Some(10));
    assert_eq!(
        mapping.label_selectors["app.kubernetes.io/replicate"],
        "yes"
    );
    let credentials = op.spec.sources[0]
        .credentials
        .as_ref()
        .expect("credentials");
    assert_eq!(
        credentials.username,
        Some(SecretKeyRef::new("git", "username"))
    );
    assert_eq!(credentials.token, None);
    // Added fields take their defaults.
    assert_eq!(op.spec.replicas, DEFAULT_REPLICAS);
    assert_eq!(op.spec.sync_interval, DEFAULT_SYNC_INTERVAL_SECONDS);
}

#[test]
fn defaults_apply_when_fields_are_absent() {
    let spec: NuOperatorSpec = serde_json::from_value(json!({
        "mappings": [{"name": "s", "version": "v1", "kind": "ConfigMap"}]
    }))
    .expect("parses");
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.sync_interval, 60);
    assert!(spec.sources.is_empty());
    assert!(spec.env.is_empty());
    assert_eq!(spec.mappings[0].group, "");
    assert_eq!(spec.mappings[0].requeue_after_noop, None);
    assert_eq!(
        NuOperatorSpec {
            mappings: spec.mappings.clone(),
            ..NuOperatorSpec::default()
        },
        spec
    );
}

#[test]
fn absent_options_are_not_serialized() {
    let value =
        serde_json::to_value(NuOperator::test().with_mapping(Mapping::new("s", "v1", "ConfigMap")))
            .expect("serializes");
    assert_eq!(
        value["spec"],
        json!({
            "sources": [],
            "mappings": [{"name": "s", "group": "", "version": "v1", "kind": "ConfigMap"}],
            "replicas": 1,
            "syncInterval": 60
        })
    );
    assert!(value.get("status").is_none());
}

#[test]
fn a_literal_credential_does_not_deserialize() {
    let err = serde_json::from_value::<Source>(json!({
        "location": "https://example.com/x.git",
        "credentials": {"token": "ghp_literal"}
    }))
    .expect_err("a literal token is not a Secret reference");
    assert!(
        err.to_string().contains("expected struct SecretKeyRef"),
        "{err}"
    );
}

#[test]
fn crd_identity() {
    let crd = NuOperator::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some(crate::CRD_NAME));
    assert_eq!(crd.spec.group, "nuop.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["nuop".to_string()]));
    assert_eq!(NuOperator::api_version(&()), "nuop.dev/v1alpha1");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Ready", r#".status.conditions[?(@.type=="Ready")].status"#),
            ("Revision", ".status.sources[0].revision"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
}

fn schema() -> Value {
    let crd = NuOperator::crd();
    serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes")["openAPIV3Schema"]
        .clone()
}

#[test]
fn schema_validates_what_the_api_server_must_reject() {
    let schema = schema();
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], json!(["mappings"]));
    let mappings = &spec["properties"]["mappings"];
    assert_eq!(mappings["minItems"], json!(1));
    // Duplicate names are the manager's to report (Degraded), not a schema error.
    assert!(mappings.get("x-kubernetes-list-type").is_none());
    assert_eq!(
        mappings["items"]["required"],
        json!(["kind", "name", "version"])
    );
    let mapping = &mappings["items"]["properties"];
    assert_eq!(mapping["group"]["default"], "");
    assert_eq!(mapping["requeue_after_noop"]["minimum"], json!(1.0));
    assert_eq!(mapping["requeue_after_change"]["minimum"], json!(1.0));
    assert_eq!(mapping["requeue_after_noop"]["format"], "int64");
    assert_eq!(spec["properties"]["replicas"]["minimum"], json!(0.0));
    assert_eq!(spec["properties"]["replicas"]["default"], json!(1));
    let sync = &spec["properties"]["syncInterval"];
    assert_eq!(sync["minimum"], json!(10.0));
    assert_eq!(sync["default"], json!(60));
    assert_eq!(sync["format"], "int64");
    let source = &spec["properties"]["sources"]["items"];
    assert_eq!(source["required"], json!(["location"]));
    let credentials = &source["properties"]["credentials"];
    assert_eq!(
        credentials["properties"]["token"]["required"],
        json!(["key", "name"])
    );
    assert_eq!(
        credentials["x-kubernetes-validations"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

/// Kubernetes wants a structural schema: every node typed (or int-or-string /
/// preserve-unknown), no `type` lists, no `anyOf`/`oneOf` carrying types.
#[test]
fn schema_is_structural() {
    fn walk(path: &str, node: &Value) {
        let Some(object) = node.as_object() else {
            return;
        };
        for forbidden in ["anyOf", "oneOf", "allOf", "$ref", "not"] {
            assert!(!object.contains_key(forbidden), "{forbidden} at {path}");
        }
        if let Some(t) = object.get("type") {
            assert!(t.is_string(), "type list at {path}: {t}");
        } else {
            assert!(
                object.contains_key("x-kubernetes-int-or-string")
                    || object.contains_key("x-kubernetes-preserve-unknown-fields"),
                "untyped node at {path}"
            );
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, child) in properties {
                walk(&format!("{path}.{name}"), child);
            }
        }
        if let Some(items) = object.get("items") {
            walk(&format!("{path}[]"), items);
        }
        if let Some(additional) = object.get("additionalProperties") {
            walk(&format!("{path}{{}}"), additional);
        }
    }
    walk("", &schema());
}

fn condition(type_: &str, status: &str, second: i64) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: "Test".to_string(),
        message: String::new(),
        observed_generation: Some(1),
        last_transition_time: Time(
            k8s_openapi::jiff::Timestamp::from_second(second).expect("a valid timestamp"),
        ),
    }
}

#[test]
fn set_condition_keeps_the_transition_time_while_the_status_holds() {
    let mut status = NuOperatorStatus::default();
    assert!(!status.is_ready());
    assert!(status.set_condition(condition(CONDITION_READY, "False", 1)));
    assert!(!status.is_ready());

    // Same status, later time: nothing changes.
    assert!(!status.set_condition(condition(CONDITION_READY, "False", 2)));
    assert_eq!(
        status
            .condition(CONDITION_READY)
            .map(|c| c.last_transition_time.0.as_second()),
        Some(1)
    );

    // Same status, new message: the message changes, the time does not.
    let mut with_message = condition(CONDITION_READY, "False", 3);
    with_message.message = "waiting for the deployment".to_string();
    assert!(status.set_condition(with_message));
    let ready = status.condition(CONDITION_READY).expect("ready");
    assert_eq!(ready.message, "waiting for the deployment");
    assert_eq!(ready.last_transition_time.0.as_second(), 1);

    // A transition takes the new time.
    assert!(status.set_condition(condition(CONDITION_READY, "True", 4)));
    assert!(status.is_ready());
    assert_eq!(
        status
            .condition(CONDITION_READY)
            .map(|c| c.last_transition_time.0.as_second()),
        Some(4)
    );

    assert!(status.set_condition(condition(CONDITION_DEGRADED, "False", 5)));
    assert_eq!(status.conditions.len(), 2);
    assert!(status.condition(CONDITION_PROGRESSING).is_none());
}

#[test]
fn status_uses_camel_case() {
    let status = NuOperatorStatus {
        observed_generation: Some(3),
        ready_replicas: 1,
        sources: vec![SourceStatus {
            location: "https://example.com/x.git".to_string(),
            revision: Some("abc123".to_string()),
            last_sync_time: None,
            last_error: Some("fetch failed".to_string()),
            signed_by: None,
        }],
        mappings: vec![MappingStatus {
            name: "s".to_string(),
            running: true,
            message: None,
            restarting: false,
        }],
        ..NuOperatorStatus::default()
    };
    assert_eq!(
        serde_json::to_value(&status).expect("serializes"),
        json!({
            "observedGeneration": 3,
            "readyReplicas": 1,
            "sources": [{"location": "https://example.com/x.git", "revision": "abc123", "lastError": "fetch failed"}],
            "mappings": [{"name": "s", "running": true}]
        })
    );
}
