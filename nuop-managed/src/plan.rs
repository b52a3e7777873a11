//! Mappings × scripts → the controllers that should run, and what changes from those
//! that do. Pure: no I/O.
//!
//! A mapping selects a script by name (the name its `config` returns, or its
//! directory's) and becomes one controller named after the mapping: it watches the
//! mapping's group/version/kind, adds the mapping's label and field selectors to the
//! script's and may override the requeue times. A mapping narrows, it never widens: a
//! selector key the script also sets must have the same value, otherwise the mapping
//! does not run (test `a_mapping_that_would_widen_a_selector_does_not_run`). A mapping
//! naming no script, and every mapping of a duplicated name, is a [`MappingProblem`] too;
//! the other mappings are planned as usual.
//!
//! [`stranded_finalizers`] tells which restarted or stopped controllers no longer add
//! the finalizer they used to: objects that carry the old one would hang in Terminating.
//!
//! A controller is identified by its mapping's name and compared by [`Desired::fingerprint`]
//! (the script's content digest) and its effective config: only a controller whose
//! script or mapping changed is restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nuop_core::protocol::ScriptConfig;
use nuop_crd::Mapping;

/// A script available in a good revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    /// The script's directory name.
    pub dir_name: String,
    /// What its `config` returned.
    pub config: ScriptConfig,
    /// A digest of its files (and of the shared files beside it).
    pub fingerprint: String,
}

/// A controller that should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The mapping's name, also the controller's.
    pub mapping: String,
    /// The key of the selected script in the `available` map given to [`plan`].
    pub script: String,
    /// The script's config with the mapping applied.
    pub config: ScriptConfig,
    /// The selected script's digest.
    pub fingerprint: String,
}

/// A mapping that cannot run, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingProblem {
    /// The mapping's name.
    pub mapping: String,
    /// Why it does not run.
    pub reason: String,
}

/// What to do to go from the running controllers to the desired ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Controllers to start (not running yet).
    pub start: Vec<String>,
    /// Controllers to stop and start again (script or mapping changed).
    pub restart: Vec<String>,
    /// Controllers to stop (no longer desired).
    pub stop: Vec<String>,
    /// Controllers left alone.
    pub keep: Vec<String>,
}

/// Plans one controller per mapping over the `available` scripts (keyed by any name,
/// typically the script's config name).
pub fn plan(
    mappings: &[Mapping],
    available: &BTreeMap<String, Available>,
) -> (Vec<Desired>, Vec<MappingProblem>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for m in mappings {
        *counts.entry(m.name.as_str()).or_default() += 1;
    }
    let mut desired = Vec::new();
    let mut problems = Vec::new();
    let mut reported = BTreeSet::new();
    for mapping in mappings {
        if counts[mapping.name.as_str()] > 1 {
            if reported.insert(mapping.name.clone()) {
                problems.push(MappingProblem {
                    mapping: mapping.name.clone(),
                    reason: format!(
                        "{} mappings are named `{}`: names must be unique, none of them runs",
                        counts[mapping.name.as_str()],
                        mapping.name
                    ),
                });
            }
            continue;
        }
        match find_script(&mapping.name, available) {
            Some((key, script)) => match effective_config(&script.config, mapping) {
                Ok(config) => desired.push(Desired {
                    mapping: mapping.name.clone(),
                    script: key.to_string(),
                    config,
                    fingerprint: script.fingerprint.clone(),
                }),
                Err(reason) => problems.push(MappingProblem {
                    mapping: mapping.name.clone(),
                    reason,
                }),
            },
            None => problems.push(MappingProblem {
                mapping: mapping.name.clone(),
                reason: if available.is_empty() {
                    format!(
                        "no script named `{}`: no source has a good revision yet",
                        mapping.name
                    )
                } else {
                    format!(
                        "no script named `{}` in the sources (available: {})",
                        mapping.name,
                        available.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                },
            }),
        }
    }
    (desired, problems)
}

fn find_script<'a>(
    name: &str,
    available: &'a BTreeMap<String, Available>,
) -> Option<(&'a str, &'a Available)> {
    available
        .get_key_value(name)
        .or_else(|| available.iter().find(|(_, s)| s.config.name == name))
        .or_else(|| available.iter().find(|(_, s)| s.dir_name == name))
        .map(|(k, s)| (k.as_str(), s))
}

/// The script's config as `mapping` shapes it (module docs).
///
/// # Errors
/// A message naming the selector key when the mapping gives a key the script also
/// sets a different value for: that would widen the script's watch.
pub fn effective_config(script: &ScriptConfig, mapping: &Mapping) -> Result<ScriptConfig, String> {
    let mut config = script.clone();
    config.name.clone_from(&mapping.name);
    config.group.clone_from(&mapping.group);
    config.version.clone_from(&mapping.version);
    config.kind.clone_from(&mapping.kind);
    narrow(
        &mut config.label_selectors,
        &mapping.label_selectors,
        "labelSelectors",
    )?;
    narrow(
        &mut config.field_selectors,
        &mapping.field_selectors,
        "fieldSelectors",
    )?;
    if let Some(s) = mapping.requeue_after_noop {
        config.requeue_after_noop = Duration::from_secs(s);
    }
    if let Some(s) = mapping.requeue_after_change {
        config.requeue_after_change = Duration::from_secs(s);
    }
    Ok(config)
}

/// Adds the mapping's selectors to the script's, refusing a key whose values differ.
fn narrow(
    script: &mut BTreeMap<String, String>,
    mapping: &BTreeMap<String, String>,
    field: &str,
) -> Result<(), String> {
    for (key, value) in mapping {
        match script.get(key) {
            Some(own) if own != value => {
                return Err(format!(
                    "{field}.{key} is `{value}` in the mapping but `{own}` in the script's config: a mapping may only narrow what the script watches; drop the key from the mapping or change the script"
                ));
            }
            Some(_) => {}
            None => {
                script.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

/// A controller whose finalizer goes away: `(mapping, old finalizer, new finalizer)`,
/// `None` when it is stopped or no longer sets one.
pub type Stranded = (String, String, Option<String>);

/// The running controllers that will stop adding (and removing) their finalizer: a
/// restart with another or no `finalizer`, or a stop. Objects that already carry the
/// old finalizer are then never released by nuop.
pub fn stranded_finalizers(
    running: &BTreeMap<String, Desired>,
    desired: &[Desired],
) -> Vec<Stranded> {
    running
        .iter()
        .filter_map(|(name, r)| {
            let old = r.config.finalizer.clone()?;
            let new = desired
                .iter()
                .find(|d| d.mapping == *name)
                .and_then(|d| d.config.finalizer.clone());
            (new.as_deref() != Some(old.as_str())).then(|| (name.clone(), old, new))
        })
        .collect()
}

/// Compares what runs (`running`: controller name → the [`Desired`] it was started
/// from) with `desired`.
pub fn diff(running: &BTreeMap<String, Desired>, desired: &[Desired]) -> Changes {
    let mut changes = Changes::default();
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.mapping.as_str()).collect();
    for name in running.keys() {
        if !wanted.contains(name.as_str()) {
            changes.stop.push(name.clone());
        }
    }
    for d in desired {
        match running.get(&d.mapping) {
            None => changes.start.push(d.mapping.clone()),
            Some(r) if r.fingerprint == d.fingerprint && r.config == d.config => {
                changes.keep.push(d.mapping.clone());
            }
            Some(_) => changes.restart.push(d.mapping.clone()),
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use nuop_core::protocol::parse_config_text;

    fn script(name: &str, fingerprint: &str) -> (String, Available) {
        let config = parse_config_text(
            name,
            &format!(
                "name: {name}\nversion: v1\nkind: Secret\nlabelSelectors: {{team: a}}\nrequeue_after_noop: 60"
            ),
        )
        .expect("valid config");
        (
            name.to_string(),
            Available {
                dir_name: name.to_string(),
                config,
                fingerprint: fingerprint.to_string(),
            },
        )
    }

    fn available(list: &[(&str, &str)]) -> BTreeMap<String, Available> {
        list.iter().map(|(n, f)| script(n, f)).collect()
    }

    #[test]
    fn a_mapping_takes_its_kind_adds_selectors_and_overrides_requeues() {
        let mapping = Mapping::new("replicator", "v1", "ConfigMap")
            .with_label_selector("env", "prod")
            .with_field_selector("metadata.namespace", "a")
            .with_requeue_after_change(3);
        let (desired, problems) = plan(&[mapping], &available(&[("replicator", "f1")]));
        assert!(problems.is_empty());
        let config = &desired[0].config;
        assert_eq!(config.name, "replicator");
        assert_eq!(config.kind, "ConfigMap");
        assert_eq!(
            config.label_selector_string().as_deref(),
            Some("env=prod,team=a")
        );
        assert_eq!(
            config.field_selector_string().as_deref(),
            Some("metadata.namespace=a")
        );
        assert_eq!(config.requeue_after_change, Duration::from_secs(3));
        assert_eq!(config.requeue_after_noop, Duration::from_secs(60));
        assert_eq!(desired[0].fingerprint, "f1");
    }

    #[test]
    fn missing_scripts_and_duplicate_names_are_problems_others_still_run() {
        let mappings = [
            Mapping::new("a", "v1", "ConfigMap"),
            Mapping::new("dup", "v1", "ConfigMap"),
            Mapping::new("missing", "v1", "ConfigMap"),
            Mapping::new("dup", "v1", "Secret"),
        ];
        let (desired, problems) = plan(&mappings, &available(&[("a", "1"), ("dup", "2")]));
        assert_eq!(
            desired
                .iter()
                .map(|d| d.mapping.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].mapping, "dup");
        assert!(problems[0].reason.contains("2 mappings"), "{problems:?}");
        assert_eq!(problems[1].mapping, "missing");
        assert!(
            problems[1].reason.contains("available: a, dup"),
            "{problems:?}"
        );
        let (_, problems) = plan(&mappings[..1], &BTreeMap::new());
        assert!(problems[0].reason.contains("no source has a good revision"));
    }

    #[test]
    fn a_script_is_found_by_directory_name_too() {
        let mut scripts = available(&[("cfg-name", "1")]);
        if let Some(s) = scripts.get_mut("cfg-name") {
            s.dir_name = "dir-name".into();
        }
        let (desired, _) = plan(&[Mapping::new("dir-name", "v1", "Pod")], &scripts);
        assert_eq!(desired[0].script, "cfg-name");
    }

    #[test]
    fn a_mapping_that_would_widen_a_selector_does_not_run() {
        // The script selects team=a; a mapping for team=b would watch team b instead.
        let widening = Mapping::new("wide", "v1", "ConfigMap").with_label_selector("team", "b");
        let same = Mapping::new("same", "v1", "ConfigMap").with_label_selector("team", "a");
        let scripts: BTreeMap<String, Available> = [("wide", "1"), ("same", "1")]
            .iter()
            .map(|(n, f)| script(n, f))
            .collect();
        let (desired, problems) = plan(&[widening, same], &scripts);
        assert_eq!(
            desired
                .iter()
                .map(|d| d.mapping.as_str())
                .collect::<Vec<_>>(),
            ["same"]
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].mapping, "wide");
        assert!(
            problems[0]
                .reason
                .starts_with("labelSelectors.team is `b` in the mapping but `a` in the script"),
            "{problems:?}"
        );
        assert_eq!(
            desired[0].config.label_selector_string().as_deref(),
            Some("team=a")
        );
    }

    #[test]
    fn a_finalizer_dropped_or_renamed_by_a_reload_is_reported() {
        let with = |name: &str, finalizer: Option<&str>| {
            let (_, mut s) = script(name, "1");
            s.config.finalizer = finalizer.map(str::to_string);
            let (mut desired, _) = plan(
                &[Mapping::new(name, "v1", "ConfigMap")],
                &BTreeMap::from([(name.to_string(), s)]),
            );
            desired.remove(0)
        };
        let running: BTreeMap<String, Desired> = [
            with("kept", Some("example.com/a")),
            with("renamed", Some("example.com/a")),
            with("dropped", Some("example.com/a")),
            with("stopped", Some("example.com/a")),
            with("never", None),
        ]
        .into_iter()
        .map(|d| (d.mapping.clone(), d))
        .collect();
        let desired = [
            with("kept", Some("example.com/a")),
            with("renamed", Some("example.com/b")),
            with("dropped", None),
            with("never", Some("example.com/new")),
        ];
        assert_eq!(
            stranded_finalizers(&running, &desired),
            [
                ("dropped".to_string(), "example.com/a".to_string(), None),
                (
                    "renamed".to_string(),
                    "example.com/a".to_string(),
                    Some("example.com/b".to_string())
                ),
                ("stopped".to_string(), "example.com/a".to_string(), None),
            ]
        );
    }

    #[test]
    fn only_changed_controllers_restart() {
        let mappings = [
            Mapping::new("a", "v1", "ConfigMap"),
            Mapping::new("b", "v1", "ConfigMap"),
            Mapping::new("c", "v1", "ConfigMap"),
        ];
        let (before, _) = plan(&mappings, &available(&[("a", "1"), ("b", "1"), ("c", "1")]));
        let running: BTreeMap<String, Desired> =
            before.into_iter().map(|d| (d.mapping.clone(), d)).collect();
        // b's script changes, c's mapping changes, a stays, d appears, nothing stops.
        let mut mappings = mappings.to_vec();
        mappings[2] = mappings[2].clone().with_requeue_after_noop(5);
        mappings.push(Mapping::new("d", "v1", "ConfigMap"));
        let (after, _) = plan(
            &mappings,
            &available(&[("a", "1"), ("b", "2"), ("c", "1"), ("d", "1")]),
        );
        let changes = diff(&running, &after);
        assert_eq!(changes.keep, ["a"]);
        assert_eq!(changes.restart, ["b", "c"]);
        assert_eq!(changes.start, ["d"]);
        assert!(changes.stop.is_empty());
        let changes = diff(&running, &after[..1]);
        assert_eq!(changes.stop, ["b", "c"]);
    }
}
