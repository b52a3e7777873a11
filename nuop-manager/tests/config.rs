//! The kustomize tree under `config/` says what the code expects: the sample is a valid
//! NuOperator, the manager Deployment runs with leader election, probes on the ports the
//! binary serves and a locked-down security context, and `config/default` deploys the
//! CRD, RBAC and manager but not the ServiceMonitor. Pure: reads files only.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nuop_crd::NuOperator;
use serde_json::Value;

fn config(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config")
        .join(path)
}

fn documents(path: &str) -> Vec<Value> {
    let path = config(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn of_kind(path: &str, kind: &str) -> Value {
    documents(path)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in config/{path}"))
}

#[test]
fn the_sample_is_a_valid_nuoperator_running_config_replicator() {
    let sample: NuOperator = serde_json::from_value(of_kind(
        "samples/nuop_v1alpha1_nuoperator.yaml",
        "NuOperator",
    ))
    .expect("the sample deserializes as a NuOperator");
    let mut sample = sample;
    sample.metadata.namespace = Some("tenant-a".to_string());
    assert_eq!(nuop_manager::validate::validate(&sample), []);
    assert_eq!(sample.spec.mappings[0].name, "config-replicator");
    assert!(sample.spec.sources[0].location.starts_with("https://"));
    assert!(sample.spec.service_account_name.is_some());
}

#[test]
fn the_manager_deployment_matches_the_binary() {
    let deployment: Deployment =
        serde_json::from_value(of_kind("manager/manager.yaml", "Deployment"))
            .expect("a Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("controller-manager")
    );
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    for flag in [
        "--leader-elect",
        "--health-probe-bind-address=:8081",
        "--metrics-bind-address=:8080",
    ] {
        assert!(args.iter().any(|a| a == flag), "missing {flag} in {args:?}");
    }
    let port = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
    };
    assert_eq!(port("probes"), Some(8081));
    assert_eq!(port("metrics"), Some(8080));
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("probes".to_string()));
    }
    let security = container
        .security_context
        .as_ref()
        .expect("a security context");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert!(
        container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some()
    );
    let env: Vec<_> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(
        env.contains(&"POD_NAMESPACE"),
        "the lease namespace: {env:?}"
    );
}

#[test]
fn default_deploys_crd_rbac_and_manager_but_not_the_service_monitor() {
    let kustomization = of_kind("default/kustomization.yaml", "Kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(resources, ["../crd", "../rbac", "../manager"]);
    assert_eq!(kustomization["namespace"], "nuop-system");
    assert_eq!(kustomization["namePrefix"], "nuop-");
    let rbac = of_kind("rbac/kustomization.yaml", "Kustomization");
    let files: Vec<&str> = rbac["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for file in &files {
        assert!(
            config(&format!("rbac/{file}")).is_file(),
            "rbac/{file} is listed but missing"
        );
    }
    assert!(
        !files.contains(&"managed_operator_template.yaml"),
        "a template, not a resource"
    );
}
