//! Validation of a `NuOperator` beyond its schema. Pure: no I/O.
//!
//! The CRD schema already rejects missing fields, bad numbers, half-given credentials
//! and mapping names that are not DNS labels; what is left needs the whole list
//! (duplicate mapping names) or a parse (source locations, with the same parser the
//! managed pods fetch with, [`nuop_crd::location`]), so that whatever the managed pods
//! would refuse is reported in the status by the manager, naming the field, before any
//! pod runs. Every problem is collected, not just the first, so one status message lists
//! them all.
//!
//! Secrets are not checked: the manager holds no right to read them (a `get` returns
//! their data). A credential the managed pods cannot read is reported by them in
//! `status.sources[].lastError`, which the manager folds into Degraded.

use std::collections::BTreeSet;
use std::fmt;

use nuop_crd::NuOperator;
use nuop_crd::{location, signers};

/// The longest `NuOperator` name: the name goes into label values (63 characters).
pub const MAX_NAME_LENGTH: usize = 63;

/// The longest mapping name: a DNS label.
pub const MAX_MAPPING_NAME_LENGTH: usize = 63;

/// One reason a `NuOperator` cannot be deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Two or more mappings share a name.
    DuplicateMappingName(String),
    /// A mapping name is not a DNS label (the schema says so too; checked again for
    /// CRs stored under an older schema).
    InvalidMappingName {
        /// The mapping's index in `spec.mappings`.
        index: usize,
        /// The name as given.
        name: String,
    },
    /// A source the managed pods would refuse: bad location, ref or path.
    InvalidSource {
        /// The source's index in `spec.sources`.
        index: usize,
        /// The field at fault: `location`, `ref` or `path`.
        field: &'static str,
        /// What is wrong (never holding a password).
        message: String,
    },
    /// A source location carries credentials in its URL (`https://user:pass@…` or a
    /// token as the user name).
    CredentialsInLocation {
        /// The source's index in `spec.sources`.
        index: usize,
    },
    /// A source's `verify.ssh` the managed pods would refuse: an inline allowed signer
    /// that does not parse, or no signer at all.
    InvalidAllowedSigners {
        /// The source's index in `spec.sources`.
        index: usize,
        /// The field at fault, e.g. `allowedSigners[1]`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The name is too long for the label values the children carry.
    NameTooLong(usize),
    /// A ConfigMap or Deployment of the child's name exists and is not controlled by
    /// this NuOperator: the manager does not take it over.
    NameConflict {
        /// `ConfigMap` or `Deployment`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
}

impl Problem {
    /// The CamelCase reason for a status condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DuplicateMappingName(_) => "DuplicateMappingName",
            Self::InvalidMappingName { .. } => "InvalidMappingName",
            Self::InvalidSource { .. } => "InvalidSource",
            Self::CredentialsInLocation { .. } => "CredentialsInLocation",
            Self::InvalidAllowedSigners { .. } => "InvalidAllowedSigners",
            Self::NameTooLong(_) => "NameTooLong",
            Self::NameConflict { .. } => "NameConflict",
        }
    }

    /// Whether the problem can go away without a change to the `NuOperator` (someone
    /// deletes the object in the way), so the manager should look again after a while.
    pub fn may_resolve_itself(&self) -> bool {
        matches!(self, Self::NameConflict { .. })
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateMappingName(name) => {
                write!(f, "more than one mapping is named `{name}`")
            }
            Self::InvalidMappingName { index, name } => write!(
                f,
                "spec.mappings[{index}].name `{name}` is not a DNS label (lowercase letters, digits and `-`, at most {MAX_MAPPING_NAME_LENGTH} characters)"
            ),
            Self::InvalidSource {
                index,
                field,
                message,
            } => write!(f, "spec.sources[{index}].{field}: {message}"),
            // The location itself is not repeated: it holds a secret.
            Self::CredentialsInLocation { index } => write!(
                f,
                "spec.sources[{index}].location carries credentials; use spec.sources[{index}].credentials with a Secret"
            ),
            Self::InvalidAllowedSigners {
                index,
                field,
                message,
            } => write!(f, "spec.sources[{index}].verify.ssh.{field}: {message}"),
            Self::NameTooLong(length) => write!(
                f,
                "the name is {length} characters long; at most {MAX_NAME_LENGTH} fit in a label"
            ),
            Self::NameConflict { kind, name } => write!(
                f,
                "a {kind} named `{name}` already exists and is not controlled by this NuOperator; delete or rename it, the manager does not take it over"
            ),
        }
    }
}

/// Every problem of `operator` the spec alone shows. Empty when it can be deployed.
pub fn validate(operator: &NuOperator) -> Vec<Problem> {
    let mut problems = Vec::new();
    let name_length = operator.metadata.name.as_deref().map_or(0, str::len);
    if name_length > MAX_NAME_LENGTH {
        problems.push(Problem::NameTooLong(name_length));
    }
    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for (index, mapping) in operator.spec.mappings.iter().enumerate() {
        if !is_dns_label(&mapping.name) {
            problems.push(Problem::InvalidMappingName {
                index,
                name: mapping.name.clone(),
            });
        }
        if !seen.insert(mapping.name.as_str()) && reported.insert(mapping.name.as_str()) {
            problems.push(Problem::DuplicateMappingName(mapping.name.clone()));
        }
    }
    for (index, source) in operator.spec.sources.iter().enumerate() {
        if has_userinfo(&source.location) {
            problems.push(Problem::CredentialsInLocation { index });
            continue;
        }
        if let Err(e) = location::parse(
            &source.location,
            source.git_ref.as_deref(),
            source.path.as_deref(),
        ) {
            problems.push(Problem::InvalidSource {
                index,
                field: e.field(),
                message: e.to_string(),
            });
        }
        if let Some(verify) = &source.verify {
            problems.extend(allowed_signer_problems(index, &verify.ssh));
        }
    }
    problems
}

/// What is wrong with a source's inline allowed signers (the ConfigMap's, if any, the
/// managed pods read and report: the manager does not read tenants' ConfigMaps).
fn allowed_signer_problems(index: usize, ssh: &nuop_crd::SshVerify) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut signers = 0;
    for (entry, text) in ssh.allowed_signers.iter().enumerate() {
        match signers::parse_file(text) {
            Ok(parsed) => signers += parsed.len(),
            Err(e) => problems.push(Problem::InvalidAllowedSigners {
                index,
                field: format!("allowedSigners[{entry}]"),
                message: e.to_string(),
            }),
        }
    }
    if problems.is_empty() && signers == 0 && ssh.allowed_signers_config_map.is_none() {
        problems.push(Problem::InvalidAllowedSigners {
            index,
            field: "allowedSigners".into(),
            message: "no allowed signer (every entry is blank or a comment) and no allowedSignersConfigMap: no commit could run".into(),
        });
    }
    problems
}

/// Whether `name` is an RFC 1123 DNS label: what a controller name must be.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_MAPPING_NAME_LENGTH
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether a URL's authority carries user information (`user@`, `user:pass@`): a user
/// name alone is often a token.
fn has_userinfo(location: &str) -> bool {
    location
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default())
        .is_some_and(|authority| authority.contains('@'))
}

#[cfg(test)]
mod tests {
    use nuop_crd::{Mapping, Source};

    use super::*;

    fn operator() -> NuOperator {
        NuOperator::test()
            .named("ops")
            .in_namespace("tenant-a")
            .with_mapping(Mapping::new("a", "v1", "ConfigMap"))
    }

    #[test]
    fn a_plain_operator_is_valid() {
        let op = operator().with_source(Source::new("https://github.com/nuop-dev/nuop.git"));
        assert_eq!(validate(&op), []);
    }

    #[test]
    fn duplicate_mapping_names_are_reported_once_each() {
        let op = operator()
            .with_mapping(Mapping::new("a", "v1", "Secret"))
            .with_mapping(Mapping::new("a", "v1", "Pod"))
            .with_mapping(Mapping::new("b", "v1", "Pod"));
        let problems = validate(&op);
        assert_eq!(problems, [Problem::DuplicateMappingName("a".to_string())]);
        assert_eq!(problems[0].reason(), "DuplicateMappingName");
        assert_eq!(
            problems[0].to_string(),
            "more than one mapping is named `a`"
        );
    }

    #[test]
    fn mapping_names_must_be_dns_labels() {
        let op = operator()
            .with_mapping(Mapping::new("Config_Replicator", "v1", "ConfigMap"))
            .with_mapping(Mapping::new("x".repeat(124), "v1", "ConfigMap"));
        let problems = validate(&op);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].reason(), "InvalidMappingName");
        assert!(
            problems[0]
                .to_string()
                .starts_with("spec.mappings[1].name `Config_Replicator`"),
            "{}",
            problems[0]
        );
        assert!(problems[1].to_string().starts_with("spec.mappings[2].name"));
        for good in ["a", "config-replicator", "x1", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn locations_the_managed_pods_would_refuse_are_reported_with_the_field() {
        let valid = [
            "https://github.com/nuop-dev/nuop.git",
            "http://git.internal:8080/scripts",
            "git://git.internal/scripts.git",
            "file:///srv/git/scripts",
            "/srv/git/scripts",
            "HTTPS://example.com/x",
            "https://[::1]:8443/x.git",
            "https://host/repo.git?ref=main&dir=scripts",
        ];
        for location in valid {
            let op = operator().with_source(Source::new(location));
            assert_eq!(validate(&op), [], "{location} should be valid");
        }
        let invalid = [
            "scripts",
            "./scripts",
            "github.com/nuop-dev/nuop",
            "ftp://example.com/x",
            "https://",
            "https:///x",
            "file://relative/path",
            "https://exa mple.com/x",
            "git@github.com:nuop-dev/nuop.git",
            "ssh://git@github.com/nuop-dev/nuop.git",
            "https://example.com/x.git?depth=1",
        ];
        for location in invalid {
            let op = operator().with_source(Source::new(location));
            let problems = validate(&op);
            assert!(
                matches!(
                    problems.as_slice(),
                    [Problem::InvalidSource {
                        index: 0,
                        field: "location",
                        ..
                    }] | [Problem::CredentialsInLocation { index: 0 }]
                ),
                "{location}: {problems:?}"
            );
        }
    }

    #[test]
    fn an_original_nuop_source_is_valid() {
        let op = operator().with_source(
            Source::new("https://host/repo.git?ref=main&dir=scripts").at_path("/scripts/example"),
        );
        assert_eq!(validate(&op), []);
    }

    #[test]
    fn a_ref_or_path_the_pods_would_refuse_names_its_field() {
        let op = operator()
            .with_source(Source::new("https://example.com/a.git?dir=x").at_path("y"))
            .with_source(Source::new("https://example.com/b.git").at_path("../up"));
        let problems = validate(&op);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].to_string().starts_with("spec.sources[0].path:"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].to_string().starts_with("spec.sources[1].path:"),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn a_location_with_credentials_is_not_echoed() {
        for location in [
            "https://me:hunter2@example.com/x.git",
            "https://hunter2@example.com/x.git",
        ] {
            let op = operator().with_source(Source::new(location));
            let problems = validate(&op);
            assert_eq!(problems, [Problem::CredentialsInLocation { index: 0 }]);
            assert!(!problems[0].to_string().contains("hunter2"));
        }
    }

    #[test]
    fn allowed_signers_that_do_not_parse_name_the_entry() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAYVVbKE1oiMdLmuq4BUanmmDRdN2bIWSQeDMScdpHst a@nuop.dev";
        let good = operator().with_source(Source::new("https://h/r.git").signed_by([key]));
        assert_eq!(validate(&good), []);
        let from_map = operator()
            .with_source(Source::new("https://h/r.git").signed_by_config_map("signers", "keys"));
        assert_eq!(validate(&from_map), []);
        let bad = operator().with_source(Source::new("https://h/r.git").signed_by([
            key,
            "alice ssh-dss AAAA",
            "# none",
        ]));
        let problems = validate(&bad);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].reason(), "InvalidAllowedSigners");
        assert_eq!(
            problems[0].to_string(),
            "spec.sources[0].verify.ssh.allowedSigners[1]: line 1: key type ssh-dss is not supported (supported: ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)"
        );
        let empty = operator().with_source(Source::new("https://h/r.git").signed_by(["# none"]));
        let problems = validate(&empty);
        assert!(
            problems[0].to_string().contains("no allowed signer"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_long_name_is_reported() {
        let op = operator().named("x".repeat(64));
        assert_eq!(validate(&op), [Problem::NameTooLong(64)]);
        assert!(!Problem::NameTooLong(64).may_resolve_itself());
    }

    #[test]
    fn a_name_conflict_may_resolve_itself() {
        let problem = Problem::NameConflict {
            kind: "ConfigMap",
            name: "nuop-ops".to_string(),
        };
        assert_eq!(problem.reason(), "NameConflict");
        assert!(problem.may_resolve_itself());
        assert!(problem.to_string().contains("ConfigMap named `nuop-ops`"));
    }
}
