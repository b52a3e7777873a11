//! config-replicator written by hand with kube-rs: the limit `make bench-e2e` measures
//! nuop's replicators against (`nuop-core/benches/e2e/replicator.rs`).
//!
//! It does the work of `examples/config-replicator/mod.nu` with no script: ConfigMaps
//! labelled `nuop.dev/replicate: "true"` are copied into every Active namespace except
//! their own and kube-system, kube-public, kube-node-lease (or the namespaces named by
//! `nuop.dev/replicate-include`, minus `nuop.dev/replicate-exclude`); copies are labelled
//! `nuop.dev/replica-of: <namespace>.<name>`, written with forced server-side apply, keys
//! a copy has beyond the source's are removed, a same-named ConfigMap that is not a copy
//! is left alone, copies in namespaces that stop being targets are deleted, and a
//! finalizer deletes every copy with the source. A changed or deleted copy wakes its
//! source (label mapper over a cache of all ConfigMaps); a namespace change wakes every
//! source. Reads come from those caches, not from the API server.
//!
//! Does I/O (the API server named by `KUBECONFIG`). Usage:
//! `kube-replicator [--namespace NS] [--concurrency N]` (sources in NS only; 8 reconciles
//! at once). `cargo test` builds it into `target/<profile>/examples/`;
//! `tests/kube_replicator.rs` runs it against the local control plane.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::finalizer::{self, Event, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const REPLICATE: &str = "nuop.dev/replicate";
const REPLICA_OF: &str = "nuop.dev/replica-of";
const INCLUDE: &str = "nuop.dev/replicate-include";
const EXCLUDE: &str = "nuop.dev/replicate-exclude";
const FINALIZER: &str = "nuop.dev/config-replicator";
const FIELD_MANAGER: &str = "kube-replicator";
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What every reconcile shares: the client and the two caches.
struct Ctx {
    client: Client,
    configmaps: Store<ConfigMap>,
    namespaces: Store<Namespace>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("cannot replicate {0}: `<namespace>.<name>` is longer than 63 characters")]
    TagTooLong(String),
    #[error("a cache's writer is gone")]
    CacheGone,
}

type Data = (
    BTreeMap<String, String>,
    BTreeMap<String, k8s_openapi::ByteString>,
);

fn data_of(cm: &ConfigMap) -> Data {
    (
        cm.data.clone().unwrap_or_default(),
        cm.binary_data.clone().unwrap_or_default(),
    )
}

/// The namespaces a source goes to, sorted.
fn targets(source: &ConfigMap, namespaces: &[Arc<Namespace>]) -> Vec<String> {
    let split = |v: &String| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let active: Vec<String> = namespaces
        .iter()
        .filter(|n| n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Active"))
        .map(|n| n.name_any())
        .collect();
    let exclude = source
        .annotations()
        .get(EXCLUDE)
        .map(split)
        .unwrap_or_default();
    let candidates = match source.annotations().get(INCLUDE) {
        None => active
            .into_iter()
            .filter(|n| !SYSTEM_NAMESPACES.contains(&n.as_str()))
            .collect(),
        Some(include) => split(include)
            .into_iter()
            .filter(|n| active.contains(n))
            .collect::<Vec<_>>(),
    };
    let own = source.namespace().unwrap_or_default();
    let mut targets: Vec<String> = candidates
        .into_iter()
        .filter(|n| *n != own && !exclude.contains(n))
        .collect();
    targets.sort();
    targets.dedup();
    targets
}

/// The source a copy belongs to: its `nuop.dev/replica-of` label, split at the first
/// dot (namespaces cannot contain one).
fn source_of(copy: ConfigMap) -> Option<ObjectRef<ConfigMap>> {
    let (namespace, name) = copy.labels().get(REPLICA_OF)?.split_once('.')?;
    Some(ObjectRef::new(name).within(namespace))
}

/// How often a reconcile waiting for a cache's first list looks again.
const READY_POLL: Duration = Duration::from_millis(100);

/// Waits until `store` has its first list. Its readiness signal wakes only the task that
/// polled it last (kube-runtime's `DelayedInit` keeps one waker), so of several
/// reconciles waiting at start-up all but one would wait forever — 7 of 8 here, which
/// left 7 of the replicator benchmark's 50 sources uncopied: each waiter polls again.
async fn until_ready<K>(store: &Store<K>) -> Result<(), Error>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(READY_POLL, store.wait_until_ready()).await {
            Ok(ready) => return ready.map_err(|_| Error::CacheGone),
            Err(_) => continue,
        }
    }
}

async fn replicate(source: &ConfigMap, ctx: &Ctx) -> Result<Action, Error> {
    until_ready(&ctx.configmaps).await?;
    until_ready(&ctx.namespaces).await?;
    let name = source.name_any();
    let tag = format!("{}.{name}", source.namespace().unwrap_or_default());
    if tag.len() > 63 {
        return Err(Error::TagTooLong(tag));
    }
    let is_copy = |cm: &ConfigMap| cm.labels().get(REPLICA_OF) == Some(&tag);
    let targets = targets(source, &ctx.namespaces.state());
    let (data, binary_data) = data_of(source);
    let mut changed = false;
    for target in &targets {
        let existing = ctx.configmaps.get(&ObjectRef::new(&name).within(target));
        let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), target);
        match existing.as_deref() {
            Some(cm) if !is_copy(cm) => {
                eprintln!("warning: {target}/{name} exists and is not a copy of {tag}; left alone");
                continue;
            }
            Some(cm) if data_of(cm) == (data.clone(), binary_data.clone()) => continue,
            _ => {}
        }
        let copy = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(target.clone()),
                labels: Some([(REPLICA_OF.to_string(), tag.clone())].into()),
                ..Default::default()
            },
            data: source.data.clone(),
            binary_data: source.binary_data.clone(),
            ..Default::default()
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&copy)).await?;
        changed = true;
        // Apply removes only keys this field manager owned: others' keys go by a patch.
        if let Some((have, have_binary)) = existing.as_deref().map(data_of) {
            let extra = |have: Vec<&String>, want: &dyn Fn(&String) -> bool| {
                have.into_iter()
                    .filter(|k| !want(k))
                    .map(|k| (k.clone(), serde_json::Value::Null))
                    .collect::<serde_json::Map<_, _>>()
            };
            let patch = json!({
                "data": extra(have.keys().collect(), &|k| data.contains_key(k)),
                "binaryData": extra(have_binary.keys().collect(), &|k| binary_data.contains_key(k)),
            });
            if patch
                .as_object()
                .into_iter()
                .flatten()
                .any(|(_, v)| v != &json!({}))
            {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
    }
    for orphan in ctx.configmaps.state().iter().filter(|cm| {
        is_copy(cm)
            && cm.name_any() == name
            && !targets.contains(&cm.namespace().unwrap_or_default())
    }) {
        let api = Api::<ConfigMap>::namespaced(
            ctx.client.clone(),
            &orphan.namespace().unwrap_or_default(),
        );
        delete(&api, &name).await?;
        changed = true;
    }
    Ok(Action::requeue(Duration::from_secs(if changed {
        10
    } else {
        300
    })))
}

/// Deletes every copy of a source that is going away.
async fn cleanup(source: &ConfigMap, ctx: &Ctx) -> Result<Action, Error> {
    let tag = format!(
        "{}.{}",
        source.namespace().unwrap_or_default(),
        source.name_any()
    );
    for copy in ctx
        .configmaps
        .state()
        .iter()
        .filter(|cm| cm.labels().get(REPLICA_OF) == Some(&tag))
    {
        let api =
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &copy.namespace().unwrap_or_default());
        delete(&api, &copy.name_any()).await?;
    }
    Ok(Action::await_change())
}

/// Deletes one ConfigMap; an absent one is not an error.
async fn delete(api: &Api<ConfigMap>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(
    source: Arc<ConfigMap>,
    ctx: Arc<Ctx>,
) -> Result<Action, finalizer::Error<Error>> {
    let api =
        Api::<ConfigMap>::namespaced(ctx.client.clone(), &source.namespace().unwrap_or_default());
    finalizer(&api, FINALIZER, source, |event| async {
        match event {
            Event::Apply(source) => replicate(&source, &ctx).await,
            Event::Cleanup(source) => cleanup(&source, &ctx).await,
        }
    })
    .await
}

fn error_policy(source: Arc<ConfigMap>, error: &finalizer::Error<Error>, _: Arc<Ctx>) -> Action {
    eprintln!("reconcile {} failed: {error}", source.name_any());
    Action::requeue(Duration::from_secs(1))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let concurrency = flag("--concurrency").map_or(Ok(8), |c| c.parse())?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Client::try_default().await?;

    let sources = match flag("--namespace") {
        Some(namespace) => Api::<ConfigMap>::namespaced(client.clone(), &namespace),
        None => Api::all(client.clone()),
    };
    let (configmaps, writer) = reflector::store();
    let configmap_changes = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects();
    let (namespaces, writer) = reflector::store();
    let namespace_changes = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .touched_objects()
    .map(|_| ());
    let ctx = Arc::new(Ctx {
        client,
        configmaps,
        namespaces,
    });
    Controller::new(
        sources,
        watcher::Config::default().labels(&format!("{REPLICATE}=true")),
    )
    .with_config(controller::Config::default().concurrency(concurrency))
    .watches_stream(configmap_changes, source_of)
    .reconcile_all_on(namespace_changes)
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
    Ok(())
}
