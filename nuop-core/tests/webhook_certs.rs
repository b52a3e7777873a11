//! Webhook certificates and configurations against the real control plane
//! (`hack/control-plane`: the API server calls a webhook served from this process at
//! `https://127.0.0.1:<port>`, no kubelet needed).
//!
//! Every webhook configuration a test makes is scoped to that test's namespace
//! (namespaceSelector), so a test that fails and leaves it behind blocks nobody else.
//!
//! The server here is a tiny always-allow handler; the real one is `nuop_core::webhook`'s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use nuop_core::testing::{TestEnv, create_crd, eventually};
use nuop_core::webhook::certs::{
    CA_NAME_ANNOTATION, CertError, CertSource, Certs, PREVIOUS_CA_NOT_AFTER_ANNOTATION,
};
use nuop_core::webhook::configuration::{
    Conversion, Endpoint, Hook, HookKind, IDENTITY_LABEL, NAMESPACE_NAME_LABEL, Registrar,
    configuration_name,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

fn self_signed(namespace: &str, name: &str, validity: Duration) -> CertSource {
    CertSource::SelfSigned {
        namespace: namespace.into(),
        name: name.into(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().expect("ip")],
        validity,
    }
}

/// A validate hook on ConfigMap creates in `namespace` only, failing closed.
fn configmap_hook(controller: &str, namespace: &str) -> Hook {
    Hook {
        controller: controller.into(),
        kind: HookKind::Validate,
        rules: vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["configmaps".into()]),
            scope: Some("Namespaced".into()),
        }],
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                namespace.to_string(),
            )])),
            match_expressions: None,
        }),
        object_selector: None,
        failure_policy: "Fail".into(),
        timeout_seconds: 5,
        path: format!("/validate/{controller}"),
    }
}

/// The always-allow server: counts reviews and TLS handshakes, closes every
/// connection after its answer so that each call makes a new handshake (and so meets
/// the certificate of the moment).
struct AllowServer {
    port: u16,
    reviews: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl AllowServer {
    async fn start(certs: &Certs) -> Self {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        let reviews = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counter = reviews.clone();
        let app = axum::Router::new().route(
            "/validate/{controller}",
            axum::routing::post(move |body: axum::body::Bytes| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let review: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    let uid = review["request"]["uid"].clone();
                    let answer = serde_json::json!({
                        "apiVersion": "admission.k8s.io/v1",
                        "kind": "AdmissionReview",
                        "response": {"uid": uid, "allowed": true},
                    });
                    (
                        [
                            ("content-type", "application/json"),
                            ("connection", "close"),
                        ],
                        answer.to_string(),
                    )
                }
            }),
        );
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(certs.server_config()),
            handshakes: handshakes.clone(),
            failed: failed_handshakes.clone(),
        };
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Self {
            port,
            reviews,
            handshakes,
            failed_handshakes,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for AllowServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handshakes: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(tcp).await {
                Ok(tls) => {
                    self.handshakes.fetch_add(1, Ordering::SeqCst);
                    return (tls, addr);
                }
                Err(_) => {
                    self.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn the_secret_is_created_once_and_every_replica_serves_its_ca() {
    let env = TestEnv::new("webhook-secret").await;
    let source = self_signed(
        &env.namespace,
        "nuop-webhook-tls",
        Duration::from_secs(3600),
    );
    let stop = CancellationToken::new();
    // Two replicas starting at once: one creates, the other loses the race (or comes
    // second) and reads the winner's Secret.
    let (a, b) = tokio::join!(
        Certs::start(Some(env.client.clone()), source.clone(), stop.clone()),
        Certs::start(Some(env.client.clone()), source.clone(), stop.clone()),
    );
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    let bundle = a.ca_bundle().borrow().clone().expect("a CA bundle");
    assert!(String::from_utf8_lossy(&bundle).contains("BEGIN CERTIFICATE"));
    assert_eq!(b.ca_bundle().borrow().as_deref(), Some(bundle.as_slice()));

    let secrets: Api<Secret> = env.api();
    let secret = secrets.get("nuop-webhook-tls").await.expect("the Secret");
    let version = secret.metadata.resource_version.clone();
    let data = secret.data.clone().expect("data");
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(data.contains_key(key), "key {key} in {:?}", data.keys());
    }
    assert_eq!(data["ca.crt"].0, bundle);

    // A third start, later, changes nothing.
    let c = Certs::start(Some(env.client.clone()), source, stop.clone())
        .await
        .expect("replica c");
    assert_eq!(c.ca_bundle().borrow().as_deref(), Some(bundle.as_slice()));
    let again = secrets.get("nuop-webhook-tls").await.expect("the Secret");
    assert_eq!(again.metadata.resource_version, version, "written once");

    // A Secret of that name nuop did not make is never taken over.
    env.create_secret("foreign", "tls.crt", "not mine").await;
    let err = Certs::start(
        Some(env.client.clone()),
        self_signed(&env.namespace, "foreign", Duration::from_secs(3600)),
        stop.clone(),
    )
    .await
    .expect_err("a foreign Secret");
    assert!(matches!(err, CertError::Foreign { .. }), "{err}");
    let foreign = secrets.get("foreign").await.expect("still there");
    assert_eq!(foreign.data.expect("data")["tls.crt"].0, b"not mine");
    stop.cancel();
}

#[tokio::test]
async fn rotation_under_continuous_admission_fails_no_request() {
    let env = TestEnv::new("webhook-rotation").await;
    let stop = CancellationToken::new();
    // 6 s serving lifetime: renewed every 4 s; the CA (24 s) rotates at 16 s, the
    // serving certificate moves to the new CA at 20 s, the old CA leaves at 24 s.
    let certs = Certs::start(
        Some(env.client.clone()),
        self_signed(&env.namespace, "rotating-tls", Duration::from_secs(6)),
        stop.clone(),
    )
    .await
    .expect("certs");
    let server = AllowServer::start(&certs).await;
    let identity = format!("test-{}", env.namespace);
    let registrar = Registrar::new(
        env.client.clone(),
        identity.clone(),
        Endpoint::Url(server.url()),
    );
    let hook = configmap_hook("rotation", &env.namespace);
    let (_hooks_tx, hooks) = watch::channel((vec![hook], Vec::<Conversion>::new()));
    let registrar_stop = stop.clone();
    let bundle = certs.ca_bundle();
    let registrar_task = tokio::spawn(async move {
        registrar.run(hooks, bundle, registrar_stop).await;
        registrar
    });

    // The configuration takes effect: a create reaches the server.
    let config_maps: Api<ConfigMap> = env.api();
    let mut n = 0usize;
    eventually("the webhook to be called", LIMIT, || {
        n += 1;
        let config_maps = config_maps.clone();
        let reviews = server.reviews.clone();
        async move {
            let _ = config_maps
                .create(&PostParams::default(), &config_map(&format!("warmup-{n}")))
                .await;
            (reviews.load(Ordering::SeqCst) > 0).then_some(())
        }
    })
    .await;

    // Creates, one after another, across serving renewals and a CA rotation, until the
    // serving certificate issued by the new CA has been served and the old CA dropped.
    let secrets: Api<Secret> = env.api();
    let first = secrets.get("rotating-tls").await.expect("secret");
    let first_ca = annotation(&first, CA_NAME_ANNOTATION);
    let mut serving_seen = std::collections::BTreeSet::new();
    let mut bundles_seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    let mut creates = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut dropped_old_ca = false;
    while tokio::time::Instant::now() < deadline {
        creates += 1;
        if let Err(e) = config_maps
            .create(
                &PostParams::default(),
                &config_map(&format!("cm-{creates}")),
            )
            .await
        {
            failures.push(e.to_string());
        }
        let secret = secrets.get("rotating-tls").await.expect("secret");
        let data = secret.data.clone().expect("data");
        serving_seen.insert(data["tls.crt"].0.clone());
        bundles_seen.insert(data["ca.crt"].0.clone());
        let ca_changed = annotation(&secret, CA_NAME_ANNOTATION) != first_ca;
        let in_overlap = secret
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(PREVIOUS_CA_NOT_AFTER_ANNOTATION));
        if ca_changed && !in_overlap {
            dropped_old_ca = true;
            // A few more calls with the old CA gone.
            for extra in 0..10 {
                if let Err(e) = config_maps
                    .create(
                        &PostParams::default(),
                        &config_map(&format!("after-{extra}")),
                    )
                    .await
                {
                    failures.push(e.to_string());
                }
                creates += 1;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dropped_old_ca,
        "the CA rotated and the old CA left the bundle within 90 s"
    );
    assert!(
        failures.is_empty(),
        "{} of {creates} creates failed: {failures:?}",
        failures.len()
    );
    assert!(
        serving_seen.len() >= 5,
        "serving certificates seen: {}",
        serving_seen.len()
    );
    // The first CA, the pair during the overlap, the new CA alone.
    assert!(
        bundles_seen.len() >= 3,
        "bundles seen: {}",
        bundles_seen.len()
    );
    assert!(
        server.handshakes.load(Ordering::SeqCst) >= creates,
        "every call made a new handshake"
    );
    assert_eq!(server.failed_handshakes.load(Ordering::SeqCst), 0);

    // The configuration carries the current bundle.
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let config = validating
        .get(&configuration_name(&identity))
        .await
        .expect("configuration");
    let current = certs.ca_bundle().borrow().clone().expect("bundle");
    assert_eq!(
        config.webhooks.expect("webhooks")[0]
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone()),
        Some(current)
    );

    stop.cancel();
    let registrar = registrar_task.await.expect("registrar");
    registrar.remove().await.expect("removed");
    assert!(
        validating
            .get_opt(&configuration_name(&identity))
            .await
            .expect("get")
            .is_none()
    );
}

fn annotation(secret: &Secret, key: &str) -> Option<String> {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

#[tokio::test]
async fn the_registrar_applies_updates_and_removes_configurations() {
    let env = TestEnv::new("webhook-registrar").await;
    let identity = format!("test-{}", env.namespace);
    let name = configuration_name(&identity);
    // Two real CA bundles (the API server checks a CRD's caBundle is PEM).
    let stop = CancellationToken::new();
    let mut bundles = Vec::new();
    for secret in ["first-tls", "second-tls"] {
        let certs = Certs::start(
            Some(env.client.clone()),
            self_signed(&env.namespace, secret, Duration::from_secs(3600)),
            stop.clone(),
        )
        .await
        .expect("certs");
        let bundle = certs.ca_bundle().borrow().clone().expect("bundle");
        bundles.push(bundle);
    }
    let (ca1, ca2) = (bundles[0].clone(), bundles[1].clone());
    let registrar = Registrar::new(
        env.client.clone(),
        identity.clone(),
        Endpoint::Url("https://127.0.0.1:1".into()),
    );
    // Ignore: nothing serves at port 1, and these hooks only need to exist.
    let mut validate = configmap_hook("policy", &env.namespace);
    validate.failure_policy = "Ignore".into();
    let mut mutate = configmap_hook("defaults", &env.namespace);
    mutate.kind = HookKind::Mutate;
    mutate.failure_policy = "Ignore".into();
    mutate.path = "/mutate/defaults".into();

    // A CRD of this test's own, converted while the registrar says so.
    let group = format!("{}.nuop.test", env.namespace);
    let crd = two_version_crd(&group);
    create_crd(&env.client, &crd).await;
    let crd_name = crd.metadata.name.clone().expect("name");
    let conversion = Conversion {
        crd: crd_name.clone(),
        path: "/convert/widget".into(),
    };

    registrar
        .apply(
            &[validate.clone(), mutate.clone()],
            std::slice::from_ref(&conversion),
            Some(&ca1),
        )
        .await
        .expect("applied");
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(env.client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(env.client.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let v = validating.get(&name).await.expect("validating");
    let labels = v.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "nuop");
    assert_eq!(labels[IDENTITY_LABEL], identity);
    let hook = &v.webhooks.expect("webhooks")[0];
    assert_eq!(hook.name, "policy.validate.nuop.dev");
    assert_eq!(
        hook.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(ca1.clone())
    );
    assert_eq!(
        hook.client_config.url.as_deref(),
        Some("https://127.0.0.1:1/validate/policy")
    );
    let m = mutating.get(&name).await.expect("mutating");
    assert_eq!(
        m.webhooks.expect("webhooks")[0].name,
        "defaults.mutate.nuop.dev"
    );
    let converted = crds.get(&crd_name).await.expect("crd");
    let stanza = converted.spec.conversion.expect("conversion");
    assert_eq!(stanza.strategy, "Webhook");
    let client = stanza
        .webhook
        .expect("webhook")
        .client_config
        .expect("client");
    assert_eq!(
        client.url.as_deref(),
        Some("https://127.0.0.1:1/convert/widget")
    );
    assert_eq!(client.ca_bundle.map(|b| b.0), Some(ca1.clone()));

    // A new CA bundle reaches every configuration through run().
    let (hooks_tx, hooks) = watch::channel((
        vec![validate.clone(), mutate.clone()],
        vec![conversion.clone()],
    ));
    let (ca_tx, ca) = watch::channel(Some(ca1.clone()));
    let running = {
        let stop = stop.clone();
        let client = env.client.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            Registrar::new(
                client,
                identity,
                Endpoint::Url("https://127.0.0.1:1".into()),
            )
            .run(hooks, ca, stop)
            .await;
        })
    };
    ca_tx.send(Some(ca2.clone())).expect("send");
    eventually("the new bundle in both configurations", LIMIT, || {
        let (validating, mutating, name) = (validating.clone(), mutating.clone(), name.clone());
        let ca2 = ca2.clone();
        async move {
            let v = validating.get(&name).await.ok()?;
            let m = mutating.get(&name).await.ok()?;
            let vb = v.webhooks?.first()?.client_config.ca_bundle.clone()?;
            let mb = m.webhooks?.first()?.client_config.ca_bundle.clone()?;
            (vb.0 == ca2 && mb.0 == ca2).then_some(())
        }
    })
    .await;

    // Hooks go away one kind at a time; the conversion is given back.
    hooks_tx.send((vec![mutate.clone()], vec![])).expect("send");
    eventually(
        "the validating configuration deleted, the CRD given back",
        LIMIT,
        || {
            let (validating, crds, name, crd_name) = (
                validating.clone(),
                crds.clone(),
                name.clone(),
                crd_name.clone(),
            );
            async move {
                let gone = validating.get_opt(&name).await.ok()?.is_none();
                let crd = crds.get(&crd_name).await.ok()?;
                let strategy = crd.spec.conversion.map(|c| c.strategy);
                (gone && strategy.as_deref() != Some("Webhook")).then_some(())
            }
        },
    )
    .await;
    assert!(mutating.get_opt(&name).await.expect("get").is_some());
    stop.cancel();
    running.await.expect("run stops");

    registrar.remove().await.expect("removed");
    assert!(mutating.get_opt(&name).await.expect("get").is_none());
    assert!(validating.get_opt(&name).await.expect("get").is_none());
    let _ = crds.delete(&crd_name, &DeleteParams::default()).await;
}

/// A namespaced CRD `widgets.<group>` with versions v1 (stored) and v2.
fn two_version_crd(group: &str) -> CustomResourceDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("widgets.{group}")},
        "spec": {
            "group": group,
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [
                {"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                {"name": "v2", "served": true, "storage": false, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            ],
        },
    }))
    .expect("a valid CRD")
}
