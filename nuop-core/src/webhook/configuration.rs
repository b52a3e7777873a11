//! The webhook configurations that point the API server at nuop's webhook server:
//! ValidatingWebhookConfiguration, MutatingWebhookConfiguration and the
//! `spec.conversion` stanza of converted CRDs.
//!
//! The builders ([`validating_configuration`], [`mutating_configuration`],
//! [`conversion_patch`]) and [`confine`] are pure. [`Registrar`] does the I/O: it
//! server-side applies what the builders produce with one field manager per identity,
//! re-applies when the hooks or the CA bundle change, deletes a configuration whose
//! hooks are gone, and releases the conversion stanza of a CRD no script converts any
//! more. It never deletes on shutdown: a `failurePolicy: Fail` webhook is meant to
//! fail closed while nuop is down.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Label on every configuration nuop manages.
pub const MANAGED_BY_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "nuop");
/// Label naming the identity (binary or NuOperator) a configuration belongs to.
pub const IDENTITY_LABEL: &str = "nuop.dev/identity";
/// The namespace label the API server sets on every namespace, used by [`confine`].
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How often [`Registrar::run`] re-applies unchanged configurations, to restore ones
/// deleted or edited by hand.
const RESYNC: Duration = Duration::from_secs(600);

/// Which admission phase a hook serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    /// `main validate`: allowed or denied.
    Validate,
    /// `main mutate`: the changed object.
    Mutate,
}

/// One webhook as the API server must call it (already resolved: plural resources).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// The controller (script or mapping) serving it.
    pub controller: String,
    /// Validate or mutate.
    pub kind: HookKind,
    /// What the API server sends.
    pub rules: Vec<RuleWithOperations>,
    /// Which namespaces' objects are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Which objects are sent, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,
    /// `Fail` or `Ignore`.
    pub failure_policy: String,
    /// 1 to 30 (the script timeout is set below it).
    pub timeout_seconds: i32,
    /// Path on the server: `/validate/<controller>` or `/mutate/<controller>`.
    pub path: String,
}

/// Where the API server reaches the server: a URL base (tests, local dev:
/// `https://127.0.0.1:PORT`) or a Service (namespace, name, port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://host:port`, the hook's path appended.
    Url(String),
    /// A Service in front of the server.
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The Service port.
        port: i32,
    },
}

/// A CRD whose versions a script converts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversion {
    /// The CRD's name (`plural.group`).
    pub crd: String,
    /// Path on the server: `/convert/<controller>`.
    pub path: String,
}

/// The name of the configurations an identity owns: `nuop-<identity>`.
pub fn configuration_name(identity: &str) -> String {
    format!("nuop-{identity}")
}

/// The field manager of an identity's applies (configurations and CRD conversion).
pub fn field_manager(identity: &str) -> String {
    // Field managers are at most 128 bytes.
    let mut manager = format!("nuop-webhooks-{identity}");
    manager.truncate(128);
    manager
}

/// The ownership labels of an identity's configurations.
pub fn labels(identity: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            MANAGED_BY_LABEL.0.to_string(),
            MANAGED_BY_LABEL.1.to_string(),
        ),
        (IDENTITY_LABEL.to_string(), label_value(identity)),
    ])
}

/// A valid label value from any string: at most 63 characters of `[A-Za-z0-9._-]`,
/// starting and ending alphanumeric.
fn label_value(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The webhook's name in its configuration: `<controller>.validate.nuop.dev` or
/// `<controller>.mutate.nuop.dev` (the controller name made a DNS label).
pub fn webhook_name(hook: &Hook) -> String {
    let label: String = hook
        .controller
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label = label.trim_matches('-');
    let label = if label.is_empty() {
        "controller"
    } else {
        label
    };
    let phase = match hook.kind {
        HookKind::Validate => "validate",
        HookKind::Mutate => "mutate",
    };
    format!("{label}.{phase}.nuop.dev")
}

/// The admission client config for `path` at `endpoint`.
pub fn client_config(
    endpoint: &Endpoint,
    path: &str,
    ca_bundle: Option<&[u8]>,
) -> WebhookClientConfig {
    let ca_bundle = ca_bundle.map(|b| ByteString(b.to_vec()));
    match endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle,
            service: None,
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                port: Some(*port),
                path: Some(path.to_string()),
            }),
        },
    }
}

fn metadata(identity: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(configuration_name(identity)),
        labels: Some(labels(identity)),
        ..Default::default()
    }
}

fn of_kind(hooks: &[Hook], kind: HookKind) -> impl Iterator<Item = &Hook> {
    hooks.iter().filter(move |h| h.kind == kind)
}

/// The ValidatingWebhookConfiguration holding `hooks`' validate hooks, or `None` when
/// there are none (the configuration must then not exist).
pub fn validating_configuration(
    identity: &str,
    hooks: &[Hook],
    endpoint: &Endpoint,
    ca_bundle: Option<&[u8]>,
) -> Option<ValidatingWebhookConfiguration> {
    let webhooks: Vec<ValidatingWebhook> = of_kind(hooks, HookKind::Validate)
        .map(|hook| ValidatingWebhook {
            name: webhook_name(hook),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(endpoint, &hook.path, ca_bundle),
            failure_policy: Some(hook.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: hook.namespace_selector.clone(),
            object_selector: hook.object_selector.clone(),
            rules: Some(hook.rules.clone()),
            side_effects: "None".into(),
            timeout_seconds: Some(hook.timeout_seconds),
            ..Default::default()
        })
        .collect();
    (!webhooks.is_empty()).then(|| ValidatingWebhookConfiguration {
        metadata: metadata(identity),
        webhooks: Some(webhooks),
    })
}

/// The MutatingWebhookConfiguration holding `hooks`' mutate hooks, or `None` when
/// there are none.
pub fn mutating_configuration(
    identity: &str,
    hooks: &[Hook],
    endpoint: &Endpoint,
    ca_bundle: Option<&[u8]>,
) -> Option<MutatingWebhookConfiguration> {
    let webhooks: Vec<MutatingWebhook> = of_kind(hooks, HookKind::Mutate)
        .map(|hook| MutatingWebhook {
            name: webhook_name(hook),
            admission_review_versions: vec!["v1".into()],
            client_config: client_config(endpoint, &hook.path, ca_bundle),
            failure_policy: Some(hook.failure_policy.clone()),
            match_policy: Some("Equivalent".into()),
            namespace_selector: hook.namespace_selector.clone(),
            object_selector: hook.object_selector.clone(),
            reinvocation_policy: Some("Never".into()),
            rules: Some(hook.rules.clone()),
            side_effects: "None".into(),
            timeout_seconds: Some(hook.timeout_seconds),
            ..Default::default()
        })
        .collect();
    (!webhooks.is_empty()).then(|| MutatingWebhookConfiguration {
        metadata: metadata(identity),
        webhooks: Some(webhooks),
    })
}

/// The server-side apply body setting `spec.conversion` of `conversion.crd` to call
/// the server (only that stanza: everything else in the CRD stays its owner's).
pub fn conversion_patch(
    conversion: &Conversion,
    endpoint: &Endpoint,
    ca_bundle: Option<&[u8]>,
) -> Value {
    let client = client_config(endpoint, &conversion.path, ca_bundle);
    // The admission and apiextensions client configs have the same JSON shape.
    let client = serde_json::to_value(client).unwrap_or(Value::Null);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": conversion.crd},
        "spec": {"conversion": {
            "strategy": "Webhook",
            "webhook": {"conversionReviewVersions": ["v1"], "clientConfig": client},
        }},
    })
}

/// The apply body that gives up every field this manager set on `crd` (the conversion
/// strategy falls back to `None`).
fn release_patch(crd: &str) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd},
    })
}

/// Confines `hook` to objects in `namespace`: the namespace selector gains
/// `kubernetes.io/metadata.name: <namespace>` (replacing any other value for that key;
/// every other term stays and can only narrow it further), and every rule's scope
/// becomes `Namespaced`, since a namespace selector does not apply to cluster-scoped
/// objects. Pure.
pub fn confine(mut hook: Hook, namespace: &str) -> Hook {
    let mut selector = hook.namespace_selector.take().unwrap_or_default();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string());
    hook.namespace_selector = Some(selector);
    for rule in &mut hook.rules {
        rule.scope = Some("Namespaced".into());
    }
    hook
}

/// A request of the [`Registrar`] failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {object}: {source}")]
pub struct RegistrarError {
    /// What was being done (apply, delete, list).
    pub action: &'static str,
    /// What it was done to (`ValidatingWebhookConfiguration nuop-x`).
    pub object: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// Keeps an identity's webhook configurations and CRD conversion stanzas in the
/// cluster as its hooks and CA bundle say.
pub struct Registrar {
    client: Client,
    identity: String,
    endpoint: Endpoint,
}

impl Registrar {
    /// `identity` names the configurations (`nuop-<identity>`) and labels them
    /// (`app.kubernetes.io/managed-by: nuop`, `nuop.dev/identity: <identity>`).
    pub fn new(client: Client, identity: String, endpoint: Endpoint) -> Self {
        Self {
            client,
            identity,
            endpoint,
        }
    }

    fn params(&self) -> PatchParams {
        // Force: nuop owns these objects (or this stanza) outright.
        PatchParams::apply(&field_manager(&self.identity)).force()
    }

    /// Applies the configurations holding exactly `hooks` (deleting one that would be
    /// empty), points each CRD of `conversions` at the server, and releases the
    /// conversion stanza of every other CRD this identity had set.
    ///
    /// # Errors
    /// The first failed request; the rest are still attempted on the next call.
    pub async fn apply(
        &self,
        hooks: &[Hook],
        conversions: &[Conversion],
        ca_bundle: Option<&[u8]>,
    ) -> Result<(), RegistrarError> {
        let name = configuration_name(&self.identity);
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
        match validating_configuration(&self.identity, hooks, &self.endpoint, ca_bundle) {
            Some(config) => apply_one(&validating, &name, &config, &self.params()).await?,
            None => delete_one(&validating, &name).await?,
        }
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        match mutating_configuration(&self.identity, hooks, &self.endpoint, ca_bundle) {
            Some(config) => apply_one(&mutating, &name, &config, &self.params()).await?,
            None => delete_one(&mutating, &name).await?,
        }
        self.apply_conversions(conversions, ca_bundle).await
    }

    async fn apply_conversions(
        &self,
        conversions: &[Conversion],
        ca_bundle: Option<&[u8]>,
    ) -> Result<(), RegistrarError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for conversion in conversions {
            let body = conversion_patch(conversion, &self.endpoint, ca_bundle);
            crds.patch(&conversion.crd, &self.params(), &Patch::Apply(&body))
                .await
                .map_err(|source| RegistrarError {
                    action: "apply the conversion webhook of",
                    object: format!("CustomResourceDefinition {}", conversion.crd),
                    source,
                })?;
        }
        // Released by what the cluster says this manager owns, so a restart that lost
        // a conversion still gives the CRD back.
        let manager = field_manager(&self.identity);
        let owned: Vec<String> = crds
            .list_metadata(&ListParams::default())
            .await
            .map_err(|source| RegistrarError {
                action: "list",
                object: "CustomResourceDefinitions".into(),
                source,
            })?
            .items
            .into_iter()
            .filter(|crd| {
                crd.metadata
                    .managed_fields
                    .iter()
                    .flatten()
                    .any(|f| f.manager.as_deref() == Some(manager.as_str()))
            })
            .filter_map(|crd| crd.metadata.name)
            .collect();
        for crd in owned {
            if conversions.iter().any(|c| c.crd == crd) {
                continue;
            }
            crds.patch(&crd, &self.params(), &Patch::Apply(&release_patch(&crd)))
                .await
                .map_err(|source| RegistrarError {
                    action: "release the conversion webhook of",
                    object: format!("CustomResourceDefinition {crd}"),
                    source,
                })?;
            info!(crd, "released the conversion webhook");
        }
        Ok(())
    }

    /// Deletes this identity's configurations and releases its CRD conversions (the
    /// script or controller is gone).
    ///
    /// # Errors
    /// The first failed request.
    pub async fn remove(&self) -> Result<(), RegistrarError> {
        self.apply(&[], &[], None).await
    }

    /// Server-side applies the Validating/MutatingWebhookConfiguration holding exactly
    /// `hooks` (deleting one that would be empty) and patches `spec.conversion` of each
    /// CRD in `conversions`; re-applies whenever the CA bundle changes until `shutdown`.
    /// Failures are logged and retried with a capped backoff.
    pub async fn run(
        &self,
        mut hooks: watch::Receiver<(Vec<Hook>, Vec<Conversion>)>,
        mut ca_bundle: watch::Receiver<Option<Vec<u8>>>,
        shutdown: CancellationToken,
    ) {
        let mut failures = 0u32;
        let mut hooks_open = true;
        let mut ca_open = true;
        loop {
            let (current_hooks, conversions) = hooks.borrow_and_update().clone();
            let bundle = ca_bundle.borrow_and_update().clone();
            let wait = match self
                .apply(&current_hooks, &conversions, bundle.as_deref())
                .await
            {
                Ok(()) => {
                    failures = 0;
                    RESYNC
                }
                Err(e) => {
                    failures += 1;
                    warn!(identity = %self.identity, "webhook configuration not applied (retrying): {e}");
                    Duration::from_secs(1 << failures.min(5))
                }
            };
            // A closed channel changes no more; the other one and the timer still do.
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                changed = hooks.changed(), if hooks_open => hooks_open = changed.is_ok(),
                changed = ca_bundle.changed(), if ca_open => ca_open = changed.is_ok(),
            }
        }
    }
}

async fn apply_one<K>(
    api: &Api<K>,
    name: &str,
    object: &K,
    params: &PatchParams,
) -> Result<(), RegistrarError>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    api.patch(name, params, &Patch::Apply(object))
        .await
        .map(|_| ())
        .map_err(|source| RegistrarError {
            action: "apply",
            object: format!("{} {name}", K::kind(&())),
            source,
        })
}

async fn delete_one<K>(api: &Api<K>, name: &str) -> Result<(), RegistrarError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {
            info!(name, kind = %K::kind(&()), "deleted the webhook configuration (no hooks left)");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(RegistrarError {
            action: "delete",
            object: format!("{} {name}", K::kind(&())),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn hook(controller: &str, kind: HookKind) -> Hook {
        let phase = match kind {
            HookKind::Validate => "validate",
            HookKind::Mutate => "mutate",
        };
        Hook {
            controller: controller.into(),
            kind,
            rules: vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["configmaps".into()]),
                scope: Some("*".into()),
            }],
            namespace_selector: None,
            object_selector: None,
            failure_policy: "Fail".into(),
            timeout_seconds: 5,
            path: format!("/{phase}/{controller}"),
        }
    }

    fn service() -> Endpoint {
        Endpoint::Service {
            namespace: "ops".into(),
            name: "nuop-webhook".into(),
            port: 9443,
        }
    }

    #[test]
    fn validating_configuration_has_the_safe_fixed_fields() {
        let hooks = [
            hook("policy", HookKind::Validate),
            hook("defaults", HookKind::Mutate),
        ];
        let config = validating_configuration("ops-x", &hooks, &service(), Some(b"PEM"))
            .expect("one validate hook");
        assert_eq!(config.metadata.name.as_deref(), Some("nuop-ops-x"));
        assert_eq!(config.metadata.labels, Some(labels("ops-x")));
        let webhooks = config.webhooks.expect("webhooks");
        assert_eq!(webhooks.len(), 1);
        let w = &webhooks[0];
        assert_eq!(w.name, "policy.validate.nuop.dev");
        assert_eq!(w.match_policy.as_deref(), Some("Equivalent"));
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.admission_review_versions, vec!["v1".to_string()]);
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(w.timeout_seconds, Some(5));
        assert_eq!(w.client_config.ca_bundle, Some(ByteString(b"PEM".to_vec())));
        assert_eq!(
            w.client_config.service,
            Some(ServiceReference {
                namespace: "ops".into(),
                name: "nuop-webhook".into(),
                port: Some(9443),
                path: Some("/validate/policy".into()),
            })
        );
        assert_eq!(w.client_config.url, None);
        // apiVersion and kind are in the applied body.
        let body = serde_json::to_value(ValidatingWebhookConfiguration {
            metadata: ObjectMeta::default(),
            webhooks: None,
        })
        .expect("json");
        assert_eq!(body["kind"], "ValidatingWebhookConfiguration");
    }

    #[test]
    fn mutating_configuration_and_url_endpoints() {
        let hooks = [hook("defaults", HookKind::Mutate)];
        let endpoint = Endpoint::Url("https://127.0.0.1:9443/".into());
        let config = mutating_configuration("std", &hooks, &endpoint, None).expect("mutate hook");
        let w = &config.webhooks.expect("webhooks")[0];
        assert_eq!(w.name, "defaults.mutate.nuop.dev");
        assert_eq!(w.reinvocation_policy.as_deref(), Some("Never"));
        assert_eq!(
            w.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/mutate/defaults")
        );
        assert_eq!(w.client_config.ca_bundle, None);
        assert!(validating_configuration("std", &hooks, &endpoint, None).is_none());
        assert!(mutating_configuration("std", &[], &endpoint, None).is_none());
    }

    #[test]
    fn webhook_names_are_dns_names() {
        assert_eq!(
            webhook_name(&hook("Config_Replicator", HookKind::Validate)),
            "config-replicator.validate.nuop.dev"
        );
        assert_eq!(
            webhook_name(&hook("__", HookKind::Mutate)),
            "controller.mutate.nuop.dev"
        );
    }

    #[test]
    fn labels_are_valid_label_values() {
        let long = "a".repeat(80);
        assert_eq!(labels(&long)[IDENTITY_LABEL].len(), 63);
        assert_eq!(label_value("ns/name!"), "ns-name");
        assert_eq!(field_manager("x"), "nuop-webhooks-x");
    }

    #[test]
    fn conversion_patch_sets_only_the_conversion_stanza() {
        let conversion = Conversion {
            crd: "widgets.example.com".into(),
            path: "/convert/widget".into(),
        };
        let body = conversion_patch(
            &conversion,
            &Endpoint::Url("https://127.0.0.1:1".into()),
            Some(b"CA"),
        );
        assert_eq!(body["metadata"], json!({"name": "widgets.example.com"}));
        assert_eq!(body["spec"].as_object().map(|o| o.len()), Some(1));
        let conversion = &body["spec"]["conversion"];
        assert_eq!(conversion["strategy"], "Webhook");
        assert_eq!(
            conversion["webhook"]["conversionReviewVersions"],
            json!(["v1"])
        );
        assert_eq!(
            conversion["webhook"]["clientConfig"]["url"],
            "https://127.0.0.1:1/convert/widget"
        );
        // base64 of "CA"
        assert_eq!(conversion["webhook"]["clientConfig"]["caBundle"], "Q0E=");
        assert_eq!(
            release_patch("w.example.com")["metadata"]["name"],
            "w.example.com"
        );
        assert!(release_patch("w.example.com").get("spec").is_none());
    }

    #[test]
    fn confine_forces_the_namespace_and_namespaced_scope() {
        let mut h = hook("policy", HookKind::Validate);
        h.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                (NAMESPACE_NAME_LABEL.to_string(), "kube-system".to_string()),
                ("team".to_string(), "a".to_string()),
            ])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: Some(vec!["prod".into()]),
            }]),
        });
        let confined = confine(h.clone(), "tenant");
        let selector = confined.namespace_selector.expect("selector");
        let labels = selector.match_labels.expect("labels");
        assert_eq!(labels[NAMESPACE_NAME_LABEL], "tenant");
        assert_eq!(labels["team"], "a", "other terms only narrow further");
        assert_eq!(
            selector.match_expressions,
            h.namespace_selector.and_then(|s| s.match_expressions)
        );
        assert!(
            confined
                .rules
                .iter()
                .all(|r| r.scope.as_deref() == Some("Namespaced"))
        );

        let bare = confine(hook("policy", HookKind::Mutate), "t2");
        assert_eq!(
            bare.namespace_selector,
            Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(NAMESPACE_NAME_LABEL.into(), "t2".into())])),
                match_expressions: None,
            })
        );
    }

    #[test]
    fn hooks_round_trip_as_json() {
        let mut h = hook("policy", HookKind::Validate);
        h.object_selector = Some(LabelSelector::default());
        let value = serde_json::to_value(&h).expect("json");
        assert_eq!(value["kind"], "Validate");
        assert_eq!(value["failurePolicy"], "Fail");
        assert_eq!(value["timeoutSeconds"], 5);
        assert!(value.get("namespaceSelector").is_none());
        assert_eq!(serde_json::from_value::<Hook>(value).expect("back"), h);
    }
}
