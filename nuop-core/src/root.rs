//! Loading a scripts root: every `<root>/*/mod.nu` is loaded and its `config` run, each
//! under a load timeout; a broken script is rejected with the reason and the others
//! load. Standard mode loads its `--scripts` root with it, managed mode each checkout.
//!
//! Does I/O (reads the root, loads scripts on blocking threads). [`missing_phase`] and
//! [`config_warnings`] are pure. A script whose top level hangs is rejected by name
//! (test `conformance::a_top_level_that_hangs_is_a_load_error`).

use std::collections::HashMap;
use std::path::Path;

use tracing::warn;

use crate::protocol::{DEFAULT_TIMEOUT, Phase, ScriptConfig, finalizer_warning};
use crate::script::{ExecutorKind, ScriptRunner, discover, embedded, process};

/// A script ready to become a controller.
pub struct LoadedScript {
    /// Its validated config.
    pub config: ScriptConfig,
    /// The loaded script.
    pub runner: ScriptRunner,
}

/// A script that cannot become a controller, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The script (directory name).
    pub script: String,
    /// Why it was rejected.
    pub reason: String,
}

/// Loads every script under `root` and runs its `config`, each load bounded by
/// [`embedded::DEFAULT_LOAD_TIMEOUT`].
///
/// # Errors
/// When `root` cannot be read.
pub async fn load_root(
    root: &Path,
    kind: ExecutorKind,
) -> std::io::Result<(Vec<LoadedScript>, Vec<Rejected>)> {
    load_root_within(root, kind, embedded::DEFAULT_LOAD_TIMEOUT).await
}

/// [`load_root`] with an explicit load timeout per script.
///
/// # Errors
/// When `root` cannot be read.
pub async fn load_root_within(
    root: &Path,
    kind: ExecutorKind,
    load_timeout: std::time::Duration,
) -> std::io::Result<(Vec<LoadedScript>, Vec<Rejected>)> {
    let found = discover(root)?;
    for skipped in &found.skipped {
        warn!("skipping {}: {}", skipped.dir.display(), skipped.reason);
    }
    let mut loaded: Vec<LoadedScript> = Vec::new();
    let mut rejected = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for script in found.scripts {
        let loaded_runner =
            ScriptRunner::load_off_runtime(kind, &script, process::nu_binary(), load_timeout).await;
        let runner = match loaded_runner {
            Ok(r) => r,
            Err(e) => {
                rejected.push(Rejected {
                    script: script.name.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let config = match runner.config(DEFAULT_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                rejected.push(Rejected {
                    script: script.name.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Some(reason) = missing_phase(&config, |phase| runner.has_phase(phase)) {
            rejected.push(Rejected {
                script: script.name.clone(),
                reason,
            });
            continue;
        }
        for warning in config_warnings(&config) {
            warn!(script = %script.name, "{warning}");
        }
        if let Some(first) = names.insert(config.name.clone(), script.name.clone()) {
            rejected.push(Rejected {
                script: script.name.clone(),
                reason: format!(
                    "controller name `{}` is already used by script {first}",
                    config.name
                ),
            });
            continue;
        }
        loaded.push(LoadedScript { config, runner });
    }
    Ok((loaded, rejected))
}

/// The webhook phases `config` may declare: (declared, phase, config field). Pure.
pub fn declared_webhook_phases(config: &ScriptConfig) -> [(bool, Phase, &'static str); 3] {
    [
        (
            config.webhooks.validate.is_some(),
            Phase::Validate,
            "webhooks.validate",
        ),
        (
            config.webhooks.mutate.is_some(),
            Phase::Mutate,
            "webhooks.mutate",
        ),
        (config.conversion.is_some(), Phase::Convert, "conversion"),
    ]
}

/// Why a script with `config` cannot become a controller for want of a phase: every
/// script needs `main reconcile`, and one that declares a `finalizer` needs `main
/// finalize` — without it every deleted object would hang in Terminating — and one that
/// maps a watch by `map: script` needs `main map`.
///
/// A script with `webhooks` or `conversion` needs the phase of each hook it declares
/// (`main validate`, `main mutate`, `main convert`), and may then go without `main
/// reconcile`: it is webhook-only and no controller starts for it.
pub fn missing_phase(config: &ScriptConfig, has: impl Fn(Phase) -> bool) -> Option<String> {
    let declared = declared_webhook_phases(config);
    if let Some((_, phase, field)) = declared.iter().find(|(d, p, _)| *d && !has(*p)) {
        return Some(format!(
            "script {} declares `{field}` but has no `main {phase}` command",
            config.name
        ));
    }
    let webhook_only = declared.iter().any(|(d, _, _)| *d);
    if !has(Phase::Reconcile) && webhook_only {
        return None;
    }
    if !has(Phase::Reconcile) {
        return Some(format!(
            "script {} has no `main reconcile` command",
            config.name
        ));
    }
    match &config.finalizer {
        Some(finalizer) if !has(Phase::Finalize) => Some(format!(
            "script {} declares finalizer `{finalizer}` but has no `main finalize` command: \
             every deleted object would wait forever for it; add `def \"main finalize\" [] {{ ... }}` \
             or remove the finalizer",
            config.name
        )),
        _ if !has(Phase::Map)
            && config
                .watches
                .iter()
                .any(|w| w.map == crate::protocol::Mapper::Script) =>
        {
            Some(format!(
                "script {} maps a watch with `map: script` but has no `main map` command; \
                 add `def \"main map\" [] {{ ... }}` returning [{{namespace, name}}]",
                config.name
            ))
        }
        _ => None,
    }
}

/// What is accepted in a config but worth a warning (in the log and in `check`).
pub fn config_warnings(config: &ScriptConfig) -> Vec<String> {
    config
        .finalizer
        .as_deref()
        .and_then(finalizer_warning)
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_config_value;
    use serde_json::json;

    fn config(finalizer: Option<&str>) -> ScriptConfig {
        let mut value = json!({"name": "c", "version": "v1", "kind": "ConfigMap"});
        if let Some(f) = finalizer {
            value["finalizer"] = json!(f);
        }
        parse_config_value("c", &value).expect("config")
    }

    #[test]
    fn a_finalizer_without_main_finalize_is_refused() {
        let only_reconcile = |p: Phase| p == Phase::Reconcile;
        let reason =
            missing_phase(&config(Some("example.com/f")), only_reconcile).expect("refused");
        assert!(reason.contains("no `main finalize`"), "{reason}");
        assert_eq!(missing_phase(&config(None), only_reconcile), None);
        assert_eq!(
            missing_phase(&config(Some("example.com/f")), |_| true),
            None
        );
        let reason = missing_phase(&config(None), |_| false).expect("refused");
        assert!(reason.contains("no `main reconcile`"), "{reason}");
    }

    #[test]
    fn a_script_mapper_without_main_map_is_refused() {
        let mapped = parse_config_value(
            "c",
            &json!({"name": "c", "version": "v1", "kind": "ConfigMap",
                    "watches": [{"version": "v1", "kind": "Service", "map": "script"}]}),
        )
        .expect("config");
        let no_map = |p: Phase| p != Phase::Map;
        let reason = missing_phase(&mapped, no_map).expect("refused");
        assert!(reason.contains("no `main map`"), "{reason}");
        assert_eq!(missing_phase(&mapped, |_| true), None);
        assert_eq!(missing_phase(&config(None), no_map), None);
    }

    #[test]
    fn a_webhook_script_needs_its_phases_but_not_reconcile() {
        let hooks = parse_config_value(
            "c",
            &json!({"name": "c", "version": "v1", "kind": "ConfigMap",
                    "webhooks": {"validate": {}}, "conversion": {"crd": "ws.example.com"}}),
        )
        .expect("config");
        let webhook_only = |p: Phase| matches!(p, Phase::Validate | Phase::Convert);
        assert_eq!(missing_phase(&hooks, webhook_only), None);
        let no_convert = |p: Phase| p == Phase::Validate;
        let reason = missing_phase(&hooks, no_convert).expect("refused");
        assert!(
            reason.contains("declares `conversion` but has no `main convert`"),
            "{reason}"
        );
        let reason = missing_phase(&hooks, |p| p == Phase::Reconcile).expect("refused");
        assert!(reason.contains("`webhooks.validate`"), "{reason}");
    }

    #[test]
    fn a_bare_finalizer_name_is_a_warning() {
        assert_eq!(
            config_warnings(&config(Some("example.com/f"))),
            Vec::<String>::new()
        );
        assert_eq!(
            config_warnings(&config(Some("bare.finalizer.example.com"))).len(),
            1
        );
    }
}
