//! What the managed pods report in their NuOperator's status: per source the revision in
//! use, the last successful sync and the last error; per mapping whether its controller
//! runs, why not, and whether it is restarting for a new revision. The manager folds
//! these into the Ready, Progressing and Degraded conditions. Building it is pure; [`StatusWriter`] server-side applies it.
//!
//! Only `status.sources` and `status.mappings` are applied, under the field manager
//! [`FIELD_MANAGER`]: the manager owns the conditions and replica counts, so neither
//! side overwrites the other's fields.

use std::collections::{BTreeSet, HashSet};
use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource as _};
use nuop_crd::{Mapping, MappingStatus, NuOperator, OperatorRef, SourceStatus};
use tracing::{debug, warn};

use crate::plan::MappingProblem;
use crate::supervisor::SourceState;

/// The field manager of the managed pods' status writes.
pub const FIELD_MANAGER: &str = "nuop-managed";

/// The status entries for `sources` and `mappings` (one per mapping name, in order).
pub fn desired(
    sources: &[SourceState],
    mappings: &[Mapping],
    running: &BTreeSet<String>,
    restarting: &BTreeSet<String>,
    problems: &[MappingProblem],
) -> (Vec<SourceStatus>, Vec<MappingStatus>) {
    let sources = sources
        .iter()
        .map(|s| SourceStatus {
            location: s.location.clone(),
            revision: s.good.as_ref().map(|g| g.commit.clone()),
            last_sync_time: s.last_sync.and_then(time),
            last_error: s.last_error.clone(),
            signed_by: s.good.as_ref().and_then(|g| g.signed_by.clone()),
        })
        .collect();
    let mut seen = HashSet::new();
    let mappings = mappings
        .iter()
        // The API keys this list by name: one entry per name.
        .filter(|m| seen.insert(m.name.clone()))
        .map(|m| MappingStatus {
            name: m.name.clone(),
            running: running.contains(&m.name),
            message: problems
                .iter()
                .find(|p| p.mapping == m.name)
                .map(|p| p.reason.clone()),
            restarting: restarting.contains(&m.name),
        })
        .collect();
    (sources, mappings)
}

/// The console's view of the same status: sources as reported, and each mapping with
/// its kind (pure).
pub fn console_view(
    status: &(Vec<SourceStatus>, Vec<MappingStatus>),
    mappings: &[Mapping],
) -> nuop_core::console::view::Managed {
    use nuop_core::console::view::{Managed, MappingView, SourceView};
    let sources = status
        .0
        .iter()
        .map(|s| SourceView {
            location: s.location.clone(),
            revision: s.revision.clone(),
            last_sync: s.last_sync_time.as_ref().map(|t| t.0.to_string()),
            last_error: s.last_error.clone(),
        })
        .collect();
    let mappings = status
        .1
        .iter()
        .map(|m| {
            let spec = mappings.iter().find(|s| s.name == m.name);
            MappingView {
                name: m.name.clone(),
                api_version: spec
                    .map(|s| {
                        if s.group.is_empty() {
                            s.version.clone()
                        } else {
                            format!("{}/{}", s.group, s.version)
                        }
                    })
                    .unwrap_or_default(),
                kind: spec.map(|s| s.kind.clone()).unwrap_or_default(),
                running: m.running,
                restarting: m.restarting,
                message: m.message.clone(),
            }
        })
        .collect();
    Managed { sources, mappings }
}

fn time(at: SystemTime) -> Option<Time> {
    k8s_openapi::jiff::Timestamp::try_from(at).ok().map(Time)
}

/// Writes the status of one NuOperator when it changed.
pub struct StatusWriter {
    client: Client,
    operator: OperatorRef,
    last: Option<(Vec<SourceStatus>, Vec<MappingStatus>)>,
    last_error: Option<String>,
}

impl StatusWriter {
    /// A writer for `operator`.
    pub fn new(client: Client, operator: OperatorRef) -> Self {
        Self {
            client,
            operator,
            last: None,
            last_error: None,
        }
    }

    /// Applies `status` unless it is what was last written. A failure is logged (once
    /// per distinct error) and retried at the next change or sync.
    pub async fn write(&mut self, status: (Vec<SourceStatus>, Vec<MappingStatus>)) {
        if self.last.as_ref() == Some(&status) {
            return;
        }
        let patch = serde_json::json!({
            "apiVersion": NuOperator::api_version(&()),
            "kind": NuOperator::kind(&()),
            "status": { "sources": status.0, "mappings": status.1 },
        });
        let api: Api<NuOperator> = Api::namespaced(self.client.clone(), &self.operator.namespace);
        match api
            .patch_status(
                &self.operator.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                debug!(operator = %self.operator.name, "status written");
                self.last = Some(status);
                self.last_error = None;
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_error.as_ref() != Some(&message) {
                    warn!(
                        operator = %self.operator.name,
                        namespace = %self.operator.namespace,
                        "cannot write the NuOperator's status: {message}"
                    );
                }
                self.last_error = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_source_and_per_mapping_name() {
        let sources = [
            SourceState {
                location: "git://h/a.git".into(),
                last_error: Some("unreachable".into()),
                last_sync: Some(SystemTime::UNIX_EPOCH),
                ..SourceState::default()
            },
            SourceState {
                location: "git://h/b.git".into(),
                ..SourceState::default()
            },
        ];
        let mappings = [
            Mapping::new("a", "v1", "ConfigMap"),
            Mapping::new("dup", "v1", "ConfigMap"),
            Mapping::new("dup", "v1", "Secret"),
        ];
        let running = BTreeSet::from(["a".to_string()]);
        let problems = [MappingProblem {
            mapping: "dup".into(),
            reason: "2 mappings are named `dup`".into(),
        }];
        let restarting = BTreeSet::from(["a".to_string()]);
        let (sources, mappings) = desired(&sources, &mappings, &running, &restarting, &problems);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].last_error.as_deref(), Some("unreachable"));
        assert_eq!(
            sources[0].last_sync_time.as_ref().map(|t| t.0.as_second()),
            Some(0)
        );
        assert_eq!(sources[1].revision, None);
        assert_eq!(mappings.len(), 2);
        assert!(mappings[0].running && mappings[0].message.is_none());
        assert!(mappings[0].restarting && !mappings[1].restarting);
        assert!(!mappings[1].running);
        assert_eq!(
            mappings[1].message.as_deref(),
            Some("2 mappings are named `dup`")
        );
    }

    #[test]
    fn the_console_sees_sources_and_mappings_with_their_kinds() {
        let sources = [SourceState {
            location: "git://h/a.git".into(),
            last_error: Some("unreachable".into()),
            last_sync: Some(SystemTime::UNIX_EPOCH),
            ..SourceState::default()
        }];
        let mappings = [Mapping::new("a", "v1", "ConfigMap")];
        let running = BTreeSet::from(["a".to_string()]);
        let status = desired(&sources, &mappings, &running, &BTreeSet::new(), &[]);
        let view = console_view(&status, &mappings);
        assert_eq!(view.sources[0].last_error.as_deref(), Some("unreachable"));
        assert_eq!(
            view.sources[0].last_sync.as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(view.mappings[0].kind, "ConfigMap");
        assert_eq!(view.mappings[0].api_version, "v1");
        assert!(view.mappings[0].running);
    }
}
