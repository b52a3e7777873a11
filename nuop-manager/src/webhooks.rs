//! Admission webhooks of managed operators: a webhook is a cluster-wide power, so the
//! manager, not the tenant, decides and registers.
//!
//! The managed pods only serve: they publish the hooks their scripts declare in
//! `status.webhooks` / `status.conversions`. The manager then ([`plan`], pure):
//! - refuses them all unless it was started with `--allow-webhooks` (condition
//!   `Webhooks=False`, reason `Refused`), and refuses every CRD conversion (a CRD is
//!   cluster-wide; reason `ConversionRefused` when conversions are all there is);
//! - otherwise confines every hook to the NuOperator's namespace
//!   ([`nuop_core::webhook::configuration::confine`]) and, in [`sync`] (I/O), adds its
//!   finalizer, keeps one CA in a Secret of its own namespace ([`WebhookSettings`]),
//!   applies the webhook configurations `nuop-managed-<namespace>-<name>` with its
//!   bundle, writes a serving certificate it signed into a Secret the managed Deployment
//!   mounts ([`with_webhook_serving`]; the pods read it as a cert dir) and applies a
//!   Service in front of the pods (port 9443) whose annotations record the certificate's
//!   times. The manager writes tenants' Secrets but never reads them.
//!
//! Cluster-scoped configurations cannot carry a namespaced owner reference, so they are
//! removed by the manager itself: when the hooks go away, when webhooks are refused, and
//! when the NuOperator is deleted (the finalizer [`FINALIZER`] holds the deletion until
//! then).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    EnvVar, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use nuop_core::webhook::certs::{self, CertSource, Lifetime};
use nuop_core::webhook::configuration::{Endpoint, Hook, HookKind, Registrar, confine};
use nuop_crd::{CONDITION_WEBHOOKS, NuOperator};
use serde_json::json;
use tracing::info;

use crate::build::{self, child_name};
use crate::{Error, FIELD_MANAGER, Result};

/// The finalizer the manager puts on a NuOperator whose webhooks it registered.
pub const FINALIZER: &str = "nuop.dev/webhooks";

/// The managed pods' webhook port (controller-runtime's default).
pub const WEBHOOK_PORT: i32 = 9443;

/// Where the managed container finds the certificate Secret.
pub const CERT_DIR: &str = "/etc/nuop/webhook-certs";

/// The managed binary's setting for its cert directory (`--webhook-cert-dir`).
pub const CERT_DIR_ENV: &str = "NUOP_WEBHOOK_CERT_DIR";

/// The managed binary's setting for its webhook address (`--webhook-bind-address`).
pub const BIND_ADDRESS_ENV: &str = "NUOP_WEBHOOK_BIND_ADDRESS";

/// Reason of `Webhooks=True`.
pub const REASON_REGISTERED: &str = "Registered";
/// Reason of `Webhooks=False` when the manager does not allow webhooks.
pub const REASON_REFUSED: &str = "Refused";
/// Reason of `Webhooks=False` when only CRD conversions were declared.
pub const REASON_CONVERSION_REFUSED: &str = "ConversionRefused";
/// Reason of `Webhooks=False` when a declared hook cannot be registered as written.
pub const REASON_INVALID: &str = "InvalidWebhook";

/// The Service in front of the managed pods' webhook server: `nuop-<name>-webhook`.
pub fn service_name(operator: &NuOperator) -> String {
    format!("{}-webhook", child_name(operator))
}

/// The certificate Secret: `nuop-<name>-webhook-tls`.
pub fn secret_name(operator: &NuOperator) -> String {
    format!("{}-webhook-tls", child_name(operator))
}

/// The identity naming the configurations: `managed-<namespace>-<name>`.
pub fn identity(operator: &NuOperator) -> String {
    format!(
        "managed-{}-{}",
        operator.namespace().unwrap_or_default(),
        operator.name_any()
    )
}

/// What the manager does about a NuOperator's declared webhooks.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Nothing declared: nothing registered, and no condition.
    Nothing,
    /// Declared but not registered; the condition says why.
    Refused {
        /// The condition's reason.
        reason: &'static str,
        /// The condition's message.
        message: String,
    },
    /// Register these hooks, already confined to the namespace.
    Register {
        /// The confined hooks.
        hooks: Vec<Hook>,
        /// How many declared conversions were refused (said in the condition).
        conversions_refused: usize,
    },
}

/// Decides from the declared hooks and the manager's `allow` flag. Pure.
pub fn plan(operator: &NuOperator, allow: bool) -> Plan {
    let status = operator.status.clone().unwrap_or_default();
    let (declared, conversions) = (status.webhooks, status.conversions);
    if declared.is_empty() && conversions.is_empty() {
        return Plan::Nothing;
    }
    let namespace = operator.namespace().unwrap_or_default();
    if !allow {
        return Plan::Refused {
            reason: REASON_REFUSED,
            message: format!(
                "{} webhook(s) and {} conversion(s) declared, but webhooks are off for managed \
                 operators: start nuop-manager with --allow-webhooks (they are then confined to \
                 namespace {namespace})",
                declared.len(),
                conversions.len()
            ),
        };
    }
    if declared.is_empty() {
        return Plan::Refused {
            reason: REASON_CONVERSION_REFUSED,
            message: format!(
                "{} CRD conversion(s) declared: a CRD is cluster-wide, so a managed operator \
                 never converts one",
                conversions.len()
            ),
        };
    }
    let mut hooks = Vec::new();
    for declared in declared {
        // Same JSON shape on both sides (see nuop_crd::DeclaredWebhook).
        let hook: Hook = match serde_json::to_value(&declared).and_then(serde_json::from_value) {
            Ok(hook) => hook,
            Err(e) => return invalid(&declared.controller, &e.to_string()),
        };
        if let Some(problem) = problem(&hook) {
            return invalid(&hook.controller, &problem);
        }
        hooks.push(confine(hook, &namespace));
    }
    Plan::Register {
        hooks,
        conversions_refused: conversions.len(),
    }
}

fn invalid(controller: &str, problem: &str) -> Plan {
    Plan::Refused {
        reason: REASON_INVALID,
        message: format!("webhook of controller {controller:?}: {problem}"),
    }
}

/// What makes a hook unregistrable as published (checked here so that the apply does
/// not fail on every reconcile).
fn problem(hook: &Hook) -> Option<String> {
    let prefix = match hook.kind {
        HookKind::Validate => "/validate/",
        HookKind::Mutate => "/mutate/",
    };
    if !["Fail", "Ignore"].contains(&hook.failure_policy.as_str()) {
        return Some(format!(
            "failurePolicy must be Fail or Ignore, not {:?}",
            hook.failure_policy
        ));
    }
    if !(1..=30).contains(&hook.timeout_seconds) {
        return Some(format!(
            "timeoutSeconds must be 1 to 30, not {}",
            hook.timeout_seconds
        ));
    }
    if !hook.path.starts_with(prefix) {
        return Some(format!(
            "path must start with {prefix}, not {:?}",
            hook.path
        ));
    }
    if hook.rules.is_empty() {
        return Some("no rules".into());
    }
    None
}

/// The `Webhooks` condition for `plan` (none for [`Plan::Nothing`]). Pure.
pub fn condition(operator: &NuOperator, plan: &Plan, now: &Time) -> Option<Condition> {
    let (status, reason, message) = match plan {
        Plan::Nothing => return None,
        Plan::Refused { reason, message } => (false, *reason, message.clone()),
        Plan::Register {
            hooks,
            conversions_refused,
        } => {
            let mut message = format!(
                "{} webhook(s) registered, confined to namespace {}",
                hooks.len(),
                operator.namespace().unwrap_or_default()
            );
            if *conversions_refused > 0 {
                message.push_str(&format!(
                    "; {conversions_refused} CRD conversion(s) refused (a CRD is cluster-wide)"
                ));
            }
            (true, REASON_REGISTERED, message)
        }
    };
    Some(Condition {
        type_: CONDITION_WEBHOOKS.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: operator.metadata.generation,
        last_transition_time: now.clone(),
    })
}

/// The Service in front of the managed pods' webhook port. Pure.
///
/// # Errors
/// When the CR lacks metadata.
pub fn desired_service(operator: &NuOperator) -> Result<Service> {
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(service_name(operator)),
            ..build::child_metadata(operator)?
        },
        spec: Some(ServiceSpec {
            selector: Some(build::selector_labels(operator)),
            ports: Some(vec![ServicePort {
                name: Some("webhook".into()),
                port: WEBHOOK_PORT,
                target_port: Some(IntOrString::String("webhook".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Makes the managed pods serve webhooks: the certificate Secret mounted read-only as
/// their cert dir, the webhook port, and the two settings naming both. Pure.
pub fn with_webhook_serving(deployment: &mut Deployment, operator: &NuOperator) {
    let Some(pod) = deployment
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
    else {
        return;
    };
    pod.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: "webhook-certs".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name(operator)),
            // The pods need the serving pair only, never the CA key.
            items: Some(
                ["tls.crt", "tls.key", "ca.crt"]
                    .map(|key| k8s_openapi::api::core::v1::KeyToPath {
                        key: key.into(),
                        path: key.into(),
                        mode: None,
                    })
                    .to_vec(),
            ),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    for container in &mut pod.containers {
        container
            .volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "webhook-certs".into(),
                mount_path: CERT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        container.ports.get_or_insert_with(Vec::new).push(
            k8s_openapi::api::core::v1::ContainerPort {
                name: Some("webhook".into()),
                container_port: WEBHOOK_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        );
        let env = container.env.get_or_insert_with(Vec::new);
        for (name, value) in [
            (CERT_DIR_ENV, CERT_DIR.to_string()),
            (BIND_ADDRESS_ENV, format!(":{WEBHOOK_PORT}")),
        ] {
            env.push(EnvVar {
                name: name.into(),
                value: Some(value),
                value_from: None,
            });
        }
    }
}

/// Where the manager keeps the CA that signs every managed operator's serving
/// certificate (`--allow-webhooks` on; its own namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The manager's namespace.
    pub ca_namespace: String,
    /// The CA Secret's name ([`DEFAULT_CA_SECRET`] unless configured).
    pub ca_secret: String,
}

/// The CA Secret's default name.
pub const DEFAULT_CA_SECRET: &str = "nuop-manager-webhook-ca";

fn ca_source(settings: &WebhookSettings) -> CertSource {
    CertSource::SelfSigned {
        namespace: settings.ca_namespace.clone(),
        name: settings.ca_secret.clone(),
        // The Secret's own serving pair is unused: only its CA signs.
        dns_names: vec![settings.ca_secret.clone()],
        ip_addresses: Vec::new(),
        validity: certs::DEFAULT_VALIDITY,
    }
}

/// The serving certificate's DNS names: the Service's short and qualified names.
pub fn dns_names(operator: &NuOperator) -> Vec<String> {
    let namespace = operator.namespace().unwrap_or_default();
    let service = service_name(operator);
    vec![
        service.clone(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
    ]
}

/// The serving certificate recorded in the Service's annotations, while it needs no
/// renewal at `now`: same names, before 2/3 of its lifetime, the CA still valid. The
/// manager never reads the tenant's Secret (it holds no read right on Secrets), so the
/// Service it owns keeps the times. Pure.
pub fn current_serving(
    annotations: Option<&BTreeMap<String, String>>,
    sans: &str,
    ca_not_after: i64,
    now: i64,
) -> Option<Lifetime> {
    let annotations = annotations?;
    let time = |key: &str| annotations.get(key).and_then(|v| certs::parse_rfc3339(v));
    let lifetime = Lifetime {
        issued_at: time(certs::ISSUED_AT_ANNOTATION)?,
        not_after: time(certs::NOT_AFTER_ANNOTATION)?,
    };
    let same_names = annotations.get(certs::SANS_ANNOTATION).map(String::as_str) == Some(sans);
    (same_names && now < lifetime.renew_at() && now < ca_not_after).then_some(lifetime)
}

fn serving_annotations(lifetime: Lifetime, sans: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            certs::ISSUED_AT_ANNOTATION.to_string(),
            certs::rfc3339(lifetime.issued_at),
        ),
        (
            certs::NOT_AFTER_ANNOTATION.to_string(),
            certs::rfc3339(lifetime.not_after),
        ),
        (certs::SANS_ANNOTATION.to_string(), sans.to_string()),
    ])
}

/// The serving Secret the managed pods mount: the pair and the CA bundle, never the CA
/// key. Pure.
///
/// # Errors
/// When the CR lacks metadata.
pub fn desired_secret(operator: &NuOperator, crt: &str, key: &str, bundle: &str) -> Result<Secret> {
    let data = [("tls.crt", crt), ("tls.key", key), ("ca.crt", bundle)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(operator)),
            ..build::child_metadata(operator)?
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Secret::default()
    })
}

fn registrar(client: &Client, operator: &NuOperator) -> Registrar {
    Registrar::new(
        client.clone(),
        identity(operator),
        Endpoint::Service {
            namespace: operator.namespace().unwrap_or_default(),
            name: service_name(operator),
            port: WEBHOOK_PORT,
        },
    )
    .without_conversions()
}

fn has_finalizer(operator: &NuOperator) -> bool {
    operator.finalizers().iter().any(|f| f == FINALIZER)
}

fn webhook_error(e: impl std::fmt::Display) -> Error {
    Error::Webhooks(e.to_string())
}

/// Carries out `plan`: registers (finalizer, the manager's CA, the configurations with
/// its bundle, the serving Secret, the Service) or removes what an earlier reconcile
/// registered. Returns how long until a certificate needs a look again.
///
/// Order matters for rotation: the configurations get the current CA bundle before a
/// serving certificate signed by that CA is written, and the old CA stays in the bundle
/// until it expires (see `nuop_core::webhook::certs::decide`).
///
/// # Errors
/// When a request fails.
pub async fn sync(
    client: &Client,
    operator: &NuOperator,
    plan: &Plan,
    settings: Option<&WebhookSettings>,
) -> Result<Option<Duration>> {
    let (Plan::Register { hooks, .. }, Some(settings)) = (plan, settings) else {
        if has_finalizer(operator) {
            remove(client, operator).await?;
        }
        return Ok(None);
    };
    let namespace = operator.namespace().unwrap_or_default();
    let name = operator.name_any();
    if !has_finalizer(operator) {
        // Before anything cluster-scoped exists, so a deletion always finds it.
        set_finalizers(client, operator, true).await?;
    }
    let (ca, ca_wait) = certs::reconcile_secret(client.clone(), &ca_source(settings))
        .await
        .map_err(webhook_error)?;
    registrar(client, operator)
        .apply(hooks, &[], Some(ca.ca_bundle.as_bytes()))
        .await
        .map_err(webhook_error)?;

    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let service_name = service_name(operator);
    let existing = services
        .get_opt(&service_name)
        .await
        .map_err(Error::kube(format!(
            "read service {namespace}/{service_name}"
        )))?;
    let names = dns_names(operator);
    let sans = certs::sans_key(&names, &[]);
    let now = certs::now();
    let annotations = existing
        .as_ref()
        .and_then(|s| s.metadata.annotations.as_ref());
    let lifetime = match current_serving(annotations, &sans, ca.ca.not_after, now) {
        Some(lifetime) => lifetime,
        None => {
            let (crt, key, lifetime) = certs::issue(&ca, &names, &[], certs::DEFAULT_VALIDITY, now)
                .map_err(webhook_error)?;
            let secret = desired_secret(operator, &crt, &key, &ca.ca_bundle)?;
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
            secrets
                .patch(
                    &secret_name(operator),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&secret),
                )
                .await
                .map_err(Error::kube(format!(
                    "apply secret {namespace}/{}",
                    secret_name(operator)
                )))?;
            info!(%namespace, %name, not_after = %certs::rfc3339(lifetime.not_after), "issued the webhook serving certificate");
            lifetime
        }
    };
    let mut service = desired_service(operator)?;
    service.metadata.annotations = Some(serving_annotations(lifetime, &sans));
    services
        .patch(
            &service_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await
        .map_err(Error::kube(format!(
            "apply service {namespace}/{service_name}"
        )))?;
    info!(%namespace, %name, hooks = hooks.len(), "webhooks registered");
    let serving_wait =
        Duration::from_secs(u64::try_from(lifetime.renew_at() - now).unwrap_or(0).max(1));
    Ok(Some(ca_wait.min(serving_wait)))
}

/// Removes the configurations, the Service and the serving Secret, then the finalizer
/// (the NuOperator is being deleted, or its webhooks went away or are refused).
///
/// # Errors
/// When a request fails; the finalizer stays until a later attempt succeeds.
pub async fn remove(client: &Client, operator: &NuOperator) -> Result<()> {
    let namespace = operator.namespace().unwrap_or_default();
    registrar(client, operator)
        .remove()
        .await
        .map_err(webhook_error)?;
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    delete_if_present(&services, &service_name(operator)).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    delete_if_present(&secrets, &secret_name(operator)).await?;
    if has_finalizer(operator) {
        set_finalizers(client, operator, false).await?;
    }
    info!(%namespace, name = %operator.name_any(), "webhooks removed");
    Ok(())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!(
            "delete {} {name}",
            K::kind(&()).to_lowercase()
        ))(e)),
    }
}

/// Adds or removes [`FINALIZER`], guarded by the resourceVersion read (a JSON merge
/// patch replaces the whole list, so a concurrent change to it must fail, not be lost).
async fn set_finalizers(client: &Client, operator: &NuOperator, present: bool) -> Result<()> {
    let namespace = operator.namespace().unwrap_or_default();
    let name = operator.name_any();
    let mut finalizers: Vec<String> = operator
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": operator.resource_version(),
        }
    });
    let api: Api<NuOperator> = Api::namespaced(client.clone(), &namespace);
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
        .map_err(Error::kube(format!(
            "{} the webhooks finalizer of nuoperator {namespace}/{name}",
            if present { "add" } else { "remove" }
        )))
}

/// Labels a NuOperator's webhook configurations carry (for finding strays by hand).
pub fn configuration_labels(operator: &NuOperator) -> BTreeMap<String, String> {
    nuop_core::webhook::configuration::labels(&identity(operator))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::RuleWithOperations;
    use nuop_crd::{DeclaredConversion, DeclaredWebhook, NuOperatorStatus};

    use super::*;
    use nuop_core::webhook::configuration::NAMESPACE_NAME_LABEL;

    fn declared(controller: &str) -> DeclaredWebhook {
        DeclaredWebhook {
            controller: controller.into(),
            kind: "Validate".into(),
            rules: vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["configmaps".into()]),
                scope: Some("*".into()),
            }],
            failure_policy: "Fail".into(),
            timeout_seconds: 5,
            path: format!("/validate/{controller}"),
            ..DeclaredWebhook::default()
        }
    }

    fn operator(webhooks: Vec<DeclaredWebhook>, conversions: usize) -> NuOperator {
        let mut op = NuOperator::test()
            .named("ops")
            .in_namespace("tenant")
            .with_uid("u1");
        op.status = Some(NuOperatorStatus {
            webhooks,
            conversions: (0..conversions)
                .map(|i| DeclaredConversion {
                    crd: format!("w{i}.example.com"),
                    path: "/convert/x".into(),
                })
                .collect(),
            ..NuOperatorStatus::default()
        });
        op
    }

    #[test]
    fn nothing_declared_means_nothing_to_say() {
        let op = operator(vec![], 0);
        assert_eq!(plan(&op, true), Plan::Nothing);
        assert_eq!(
            condition(&op, &Plan::Nothing, &Time(Default::default())),
            None
        );
    }

    #[test]
    fn without_the_allow_flag_webhooks_are_refused() {
        let op = operator(vec![declared("policy")], 1);
        let plan = plan(&op, false);
        let Plan::Refused { reason, message } = &plan else {
            panic!("{plan:?}")
        };
        assert_eq!(*reason, REASON_REFUSED);
        assert!(message.contains("--allow-webhooks"), "{message}");
        let c = condition(&op, &plan, &Time(Default::default())).expect("condition");
        assert_eq!((c.type_.as_str(), c.status.as_str()), ("Webhooks", "False"));
    }

    #[test]
    fn allowed_webhooks_are_confined_and_conversions_refused() {
        let op = operator(vec![declared("policy")], 2);
        let plan = plan(&op, true);
        let Plan::Register {
            hooks,
            conversions_refused,
        } = &plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(*conversions_refused, 2);
        let selector = hooks[0].namespace_selector.clone().expect("selector");
        assert_eq!(
            selector.match_labels.expect("labels")[NAMESPACE_NAME_LABEL],
            "tenant"
        );
        assert_eq!(hooks[0].rules[0].scope.as_deref(), Some("Namespaced"));
        let c = condition(&op, &plan, &Time(Default::default())).expect("condition");
        assert_eq!(c.status, "True");
        assert!(
            c.message.contains("2 CRD conversion(s) refused"),
            "{}",
            c.message
        );

        let only_conversions = operator(vec![], 1);
        assert!(matches!(
            super::plan(&only_conversions, true),
            Plan::Refused {
                reason: REASON_CONVERSION_REFUSED,
                ..
            }
        ));
    }

    #[test]
    fn unregistrable_hooks_are_refused_with_the_reason() {
        for (change, expected) in [
            (
                (|h: &mut DeclaredWebhook| h.kind = "Delete".into()) as fn(&mut DeclaredWebhook),
                "unknown variant",
            ),
            (|h| h.failure_policy = "Maybe".into(), "failurePolicy"),
            (|h| h.timeout_seconds = 60, "timeoutSeconds"),
            (
                |h| h.path = "/mutate/policy".into(),
                "path must start with /validate/",
            ),
            (|h| h.rules.clear(), "no rules"),
        ] {
            let mut hook = declared("policy");
            change(&mut hook);
            let plan = plan(&operator(vec![hook], 0), true);
            let Plan::Refused { reason, message } = &plan else {
                panic!("{plan:?}")
            };
            assert_eq!(*reason, REASON_INVALID);
            assert!(message.contains(expected), "{message} lacks {expected}");
        }
    }

    #[test]
    fn the_service_and_the_deployment_serve_on_9443_from_the_secret() {
        let op = operator(vec![declared("policy")], 0);
        let service = desired_service(&op).expect("service");
        assert_eq!(service.metadata.name.as_deref(), Some("nuop-ops-webhook"));
        let spec = service.spec.expect("spec");
        assert_eq!(spec.selector, Some(build::selector_labels(&op)));
        assert_eq!(spec.ports.expect("ports")[0].port, 9443);

        let settings = build::Settings {
            default_image: "img".into(),
            webhooks: None,
        };
        let mut deployment = build::desired_deployment(&op, &settings, "h").expect("deployment");
        with_webhook_serving(&mut deployment, &op);
        let pod = deployment.spec.expect("spec").template.spec.expect("pod");
        let volume = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == "webhook-certs")
            .expect("cert volume");
        let secret = volume.secret.expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("nuop-ops-webhook-tls"));
        let keys: Vec<String> = secret
            .items
            .expect("items")
            .into_iter()
            .map(|i| i.key)
            .collect();
        assert!(
            !keys.contains(&"ca.key".to_string()),
            "the CA key stays with the manager"
        );
        let container = &pod.containers[0];
        assert!(
            container
                .ports
                .iter()
                .flatten()
                .any(|p| p.container_port == 9443)
        );
        let env = container.env.clone().expect("env");
        assert!(
            env.iter()
                .any(|e| e.name == CERT_DIR_ENV && e.value.as_deref() == Some(CERT_DIR))
        );
        assert_eq!(identity(&op), "managed-tenant-ops");
        assert_eq!(
            configuration_labels(&op)["nuop.dev/identity"],
            "managed-tenant-ops"
        );
    }
}
