//! The desired children of a `NuOperator`: its ConfigMap and its Deployment. Pure
//! functions over the CR and the manager's [`Settings`]; no I/O.
//!
//! Both children are named [`child_name`], carry the recommended
//! `app.kubernetes.io/*` labels and a controller owner reference to the CR (so the
//! garbage collector removes them with it), and are applied whole by server-side apply:
//! what these functions leave out is not ours to set (the image pull policy, for one,
//! is left to the cluster).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;
use kube::api::ObjectMeta;
use nuop_crd::{MANAGED_CONFIG_KEY, ManagedConfig, NuOperator};

use crate::{Error, Result};

/// Pod-template annotation holding [`config_hash`]: a new configuration rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "nuop.dev/config-hash";

/// Value of `app.kubernetes.io/name` on every child.
pub const APP_NAME: &str = "nuop-managed";

/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "nuop-manager";

/// Name of the managed container.
pub const CONTAINER_NAME: &str = "nuop-managed";

/// Port of the managed binary's `/healthz` and `/readyz`.
pub const HEALTH_PORT: i32 = 8081;

/// Port of the managed binary's `/metrics`.
pub const METRICS_PORT: i32 = 8080;

/// Where the ConfigMap is mounted in the managed container.
pub const CONFIG_DIR: &str = "/etc/nuop";

/// Where the managed binary checks out its sources (an emptyDir: the root filesystem
/// is read-only).
pub const WORK_DIR: &str = "/var/lib/nuop";

/// The user and group the managed container runs as (the images' non-root user).
pub const RUN_AS_USER: i64 = 65_532;

/// The manager's own settings that shape every child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The `nuop-managed` image used when the CR names none.
    pub default_image: String,
    /// Where the CA of NuOperators' webhooks lives when they are allowed
    /// (`--allow-webhooks`); `None`: webhooks are refused (see [`crate::webhooks`]).
    pub webhooks: Option<crate::webhooks::WebhookSettings>,
}

/// Name of both children of `operator`: `nuop-<name>`.
pub fn child_name(operator: &NuOperator) -> String {
    format!(
        "nuop-{}",
        operator.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The labels that select the managed pods (a Deployment's selector cannot change, so
/// these never do).
pub fn selector_labels(operator: &NuOperator) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP_NAME.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            operator.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

/// The recommended labels every child carries.
pub fn labels(operator: &NuOperator) -> BTreeMap<String, String> {
    let mut labels = selector_labels(operator);
    labels.insert("app.kubernetes.io/part-of".to_string(), "nuop".to_string());
    labels.insert(
        "app.kubernetes.io/component".to_string(),
        "operator".to_string(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGED_BY.to_string(),
    );
    labels
}

/// A label selector (as text) matching every child of `operator`.
pub fn children_selector(operator: &NuOperator) -> String {
    format!(
        "app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/instance={}",
        operator.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The controller owner reference to `operator`.
///
/// # Errors
/// When the CR has no name or uid (an object read from the API server has both).
pub fn owner_reference(operator: &NuOperator) -> Result<OwnerReference> {
    Ok(OwnerReference {
        api_version: NuOperator::api_version(&()).into_owned(),
        kind: NuOperator::kind(&()).into_owned(),
        name: operator
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingMetadata("name"))?,
        uid: operator
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The metadata of every object the manager makes for `operator`: its namespace,
/// labels and controller owner reference, named `nuop-<name>`.
pub(crate) fn child_metadata(operator: &NuOperator) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(child_name(operator)),
        namespace: Some(
            operator
                .metadata
                .namespace
                .clone()
                .ok_or(Error::MissingMetadata("namespace"))?,
        ),
        labels: Some(labels(operator)),
        owner_references: Some(vec![owner_reference(operator)?]),
        ..ObjectMeta::default()
    })
}

/// The ConfigMap holding `nuop.yaml` ([`ManagedConfig`]): sources (credentials only as
/// Secret references) and mappings.
///
/// # Errors
/// When the CR lacks metadata, or the configuration cannot be rendered.
pub fn desired_config_map(operator: &NuOperator) -> Result<ConfigMap> {
    let yaml = ManagedConfig::for_operator(operator)
        .to_yaml()
        .map_err(|e| Error::Render(e.to_string()))?;
    Ok(ConfigMap {
        metadata: child_metadata(operator)?,
        data: Some(BTreeMap::from([(MANAGED_CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// A stable hash of a ConfigMap's data ([`nuop_crd::fnv`], as 16 hex digits): keys in
/// order, each key and value a length-prefixed field.
///
/// Stable across builds and platforms, unlike `std`'s hasher, so a manager upgrade does
/// not roll every managed pod. Not a security measure: it only detects change.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut hash = nuop_crd::fnv::Fnv::default();
    // BTreeMap iterates in key order.
    for (key, value) in config_map.data.iter().flatten() {
        hash.feed(key.as_bytes()).feed(value.as_bytes());
    }
    hash.hex()
}

/// The Deployment running `nuop-managed` for `operator`, reading the ConfigMap whose
/// hash is `config_hash`.
///
/// # Errors
/// When the CR lacks metadata.
pub fn desired_deployment(
    operator: &NuOperator,
    settings: &Settings,
    config_hash: &str,
) -> Result<Deployment> {
    let spec = &operator.spec;
    let name = child_name(operator);
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
    ];
    env.extend(spec.env.iter().cloned());
    let http_probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("probes".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        args: Some(
            [
                "--config",
                &format!("{CONFIG_DIR}/{MANAGED_CONFIG_KEY}"),
                "--health-probe-bind-address",
                &format!(":{HEALTH_PORT}"),
                "--metrics-bind-address",
                &format!(":{METRICS_PORT}"),
                "--leader-elect",
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(env),
        ports: Some(vec![
            container_port("probes", HEALTH_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(5),
            ..http_probe("/healthz", 20)
        }),
        readiness_probe: Some(http_probe("/readyz", 10)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("work", WORK_DIR, false),
            mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };
    let pod = PodSpec {
        service_account_name: spec.service_account_name.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "config".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            empty_dir("work"),
            empty_dir("tmp"),
        ]),
        ..PodSpec::default()
    };
    Ok(Deployment {
        metadata: child_metadata(operator)?,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector_labels(operator)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(operator)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use nuop_crd::{Mapping, SecretKeyRef, Source};

    use super::*;

    fn settings() -> Settings {
        Settings {
            webhooks: None,
            default_image: "ghcr.io/nuop-dev/nuop-managed:test".to_string(),
        }
    }

    fn operator() -> NuOperator {
        NuOperator::test()
            .named("replicator")
            .in_namespace("tenant-a")
            .with_uid("0000-1111")
            .with_source(
                Source::new("https://git.example.com/scripts.git")
                    .with_token(SecretKeyRef::new("git", "token")),
            )
            .with_mapping(Mapping::new("config-replicator", "v1", "ConfigMap"))
    }

    fn deployment(op: &NuOperator) -> Deployment {
        let cm = desired_config_map(op).expect("config map");
        desired_deployment(op, &settings(), &config_hash(&cm)).expect("deployment")
    }

    fn pod(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("a pod spec")
    }

    #[test]
    fn config_map_holds_the_managed_config_with_secret_references_only() {
        let cm = desired_config_map(&operator()).expect("builds");
        assert_eq!(cm.metadata.name.as_deref(), Some("nuop-replicator"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("tenant-a"));
        let data = cm.data.as_ref().expect("data");
        assert_eq!(data.keys().collect::<Vec<_>>(), ["nuop.yaml"]);
        let config = ManagedConfig::from_yaml(&data["nuop.yaml"]).expect("parses");
        assert_eq!(config, ManagedConfig::for_operator(&operator()));
        let token = config.sources[0]
            .credentials
            .as_ref()
            .and_then(|c| c.token.as_ref())
            .expect("a token reference");
        assert_eq!(token, &SecretKeyRef::new("git", "token"));
    }

    #[test]
    fn children_are_owned_and_labelled() {
        let op = operator();
        let cm = desired_config_map(&op).expect("builds");
        let dep = deployment(&op);
        for meta in [&cm.metadata, &dep.metadata] {
            let owner = &meta.owner_references.as_ref().expect("owner refs")[0];
            assert_eq!(owner.api_version, "nuop.dev/v1alpha1");
            assert_eq!(owner.kind, "NuOperator");
            assert_eq!(owner.name, "replicator");
            assert_eq!(owner.uid, "0000-1111");
            assert_eq!(owner.controller, Some(true));
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(labels["app.kubernetes.io/name"], "nuop-managed");
            assert_eq!(labels["app.kubernetes.io/instance"], "replicator");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "nuop-manager");
        }
        assert_eq!(
            children_selector(&op),
            "app.kubernetes.io/managed-by=nuop-manager,app.kubernetes.io/instance=replicator"
        );
    }

    #[test]
    fn an_object_without_uid_cannot_own() {
        let mut op = operator();
        op.metadata.uid = None;
        let err = desired_config_map(&op).expect_err("no uid");
        assert_eq!(err.to_string(), "the NuOperator lacks metadata.uid");
    }

    #[test]
    fn the_hash_follows_the_configuration() {
        let op = operator();
        let hash = |op: &NuOperator| config_hash(&desired_config_map(op).expect("builds"));
        assert_eq!(hash(&op), hash(&op.clone()));
        assert_eq!(hash(&op).len(), 16);
        let changed = op
            .clone()
            .with_mapping(Mapping::new("secret-cloner", "v1", "Secret"));
        assert_ne!(hash(&op), hash(&changed));
        // Settings of the Deployment alone do not change the configuration.
        assert_eq!(hash(&op), hash(&op.clone().with_replicas(3)));
        let dep = deployment(&changed);
        let annotations = dep
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .expect("annotations");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], hash(&changed));
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // A fixed input has a fixed hash: a manager upgrade must not roll every pod.
        let cm = ConfigMap {
            data: Some(BTreeMap::from([(
                "nuop.yaml".to_string(),
                "a: 1\n".to_string(),
            )])),
            ..ConfigMap::default()
        };
        assert_eq!(config_hash(&cm), "f179a0c44be0f24c");
        assert_eq!(config_hash(&ConfigMap::default()), "cbf29ce484222325");
    }

    #[test]
    fn deployment_runs_managed_with_the_cr_settings() {
        let op = operator()
            .with_image("registry.example.com/custom:1")
            .with_service_account("replicator-sa")
            .with_replicas(2)
            .with_env("RUST_LOG", "debug");
        let dep = deployment(&op);
        let spec = dep.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(
            spec.selector.match_labels.as_ref().expect("selector"),
            &selector_labels(&op)
        );
        let pod = pod(&dep);
        assert_eq!(pod.service_account_name.as_deref(), Some("replicator-sa"));
        let container = &pod.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example.com/custom:1")
        );
        assert_eq!(container.image_pull_policy, None, "left to the cluster");
        let args = container.args.as_ref().expect("args");
        assert_eq!(args[..2], ["--config", "/etc/nuop/nuop.yaml"]);
        assert!(args.contains(&"--leader-elect".to_string()));
        let env = container.env.as_ref().expect("env");
        assert_eq!(env.last().map(|e| e.name.as_str()), Some("RUST_LOG"));
        assert!(env.iter().any(|e| e.name == "POD_NAMESPACE"));
        let volumes = pod.volumes.as_ref().expect("volumes");
        assert_eq!(
            volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
            Some("nuop-replicator")
        );
    }

    #[test]
    fn deployment_defaults_to_the_manager_image() {
        let dep = deployment(&operator());
        let pod = pod(&dep);
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("ghcr.io/nuop-dev/nuop-managed:test")
        );
        assert_eq!(pod.service_account_name, None);
        assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(1));
    }

    #[test]
    fn deployment_is_locked_down_and_probed_on_the_health_port() {
        let op = operator();
        let dep = deployment(&op);
        let pod = pod(&dep);
        let pod_security = pod.security_context.as_ref().expect("pod security");
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(RUN_AS_USER));
        let container = &pod.containers[0];
        let security = container
            .security_context
            .as_ref()
            .expect("container security");
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        let probes = container
            .ports
            .as_ref()
            .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("probes")))
            .expect("a probes port");
        assert_eq!(probes.container_port, 8081);
        for (probe, path) in [
            (&container.liveness_probe, "/healthz"),
            (&container.readiness_probe, "/readyz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("http probe");
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("probes".to_string()));
        }
        // Every writable path is a volume, since the root filesystem is read-only.
        let mounts: Vec<_> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.as_str(), m.read_only.unwrap_or(false)))
            .collect();
        assert_eq!(
            mounts,
            [
                ("/etc/nuop", true),
                ("/var/lib/nuop", false),
                ("/tmp", false)
            ]
        );
    }

    #[test]
    fn resources_are_passed_through() {
        let mut op = operator();
        op.spec.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("128Mi".to_string()),
            )])),
            ..ResourceRequirements::default()
        });
        let dep = deployment(&op);
        assert_eq!(pod(&dep).containers[0].resources, op.spec.resources);
    }
}
