//! The configuration file a `nuop-managed` Deployment reads (`nuop-managed --config`),
//! written by the manager into the ConfigMap key [`MANAGED_CONFIG_KEY`]. Pure data.
//!
//! It carries a `NuOperator`'s sources and mappings as they are in the spec, so the
//! managed binary needs no access to the CR to know what to run, plus the CR's
//! reference so it can report per-source revisions and per-mapping state back to the
//! CR's status. Credentials stay references to Secrets ([`SecretKeyRef`](crate::SecretKeyRef)):
//! the file never holds a secret value.

use serde::{Deserialize, Serialize};

use crate::{Mapping, NuOperator, Source};

/// The ConfigMap key holding the managed configuration.
pub const MANAGED_CONFIG_KEY: &str = "nuop.yaml";

/// What one `nuop-managed` Deployment runs: the scripts' sources, the controllers, and
/// how often to fetch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedConfig {
    /// The `NuOperator` this configuration comes from.
    pub nu_operator: OperatorRef,

    /// Git repositories holding the scripts, as in the spec.
    #[serde(default)]
    pub sources: Vec<Source>,

    /// One controller per mapping, as in the spec.
    pub mappings: Vec<Mapping>,

    /// Seconds between two fetches of each source.
    pub sync_interval: u64,
}

/// The namespace and name of a `NuOperator`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRef {
    /// The NuOperator's namespace (also where the managed pods run).
    pub namespace: String,
    /// The NuOperator's name.
    pub name: String,
}

impl ManagedConfig {
    /// The configuration for `operator`'s managed Deployment.
    pub fn for_operator(operator: &NuOperator) -> Self {
        Self {
            nu_operator: OperatorRef {
                namespace: operator.metadata.namespace.clone().unwrap_or_default(),
                name: operator.metadata.name.clone().unwrap_or_default(),
            },
            sources: operator.spec.sources.clone(),
            mappings: operator.spec.mappings.clone(),
            sync_interval: operator.spec.sync_interval,
        }
    }

    /// The configuration as YAML text, the form the ConfigMap holds.
    ///
    /// # Errors
    /// When serialization fails (it does not for these types; passed on, not unwrapped).
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        serde_saphyr::to_string(self)
    }

    /// Parses the configuration from YAML (or JSON) text.
    ///
    /// # Errors
    /// When the text is not a valid configuration; the message names the field.
    pub fn from_yaml(text: &str) -> Result<Self, serde_saphyr::Error> {
        serde_saphyr::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKeyRef;

    #[test]
    fn round_trips_through_yaml_and_keeps_only_secret_references() {
        let operator = NuOperator::test()
            .named("replicator")
            .in_namespace("tenant-a")
            .with_sync_interval(30)
            .with_source(
                Source::new("https://git.example.com/scripts.git")
                    .at_path("controllers")
                    .with_token(SecretKeyRef::new("git", "token")),
            )
            .with_mapping(Mapping::new("config-replicator", "v1", "ConfigMap"));
        let config = ManagedConfig::for_operator(&operator);
        assert_eq!(config.nu_operator.namespace, "tenant-a");
        assert_eq!(config.nu_operator.name, "replicator");
        let yaml = config.to_yaml().expect("serializes");
        assert!(yaml.contains("nuOperator:"), "{yaml}");
        assert!(yaml.contains("syncInterval: 30"), "{yaml}");
        assert!(yaml.contains("name: git"), "{yaml}");
        assert_eq!(ManagedConfig::from_yaml(&yaml).expect("parses"), config);
    }
}
