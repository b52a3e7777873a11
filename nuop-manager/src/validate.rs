//! Validation of a `NuOperator` beyond its schema. Pure: the caller looks up which of
//! the referenced Secrets exist ([`referenced_secrets`]) and passes their names in.
//!
//! The CRD schema already rejects missing fields, bad numbers and half-given
//! credentials; what is left needs the whole list (duplicate mapping names), a parse
//! (source locations) or the cluster (Secrets). Every problem is collected, not just
//! the first, so one status message lists them all.

use std::collections::BTreeSet;
use std::fmt;

use nuop_crd::NuOperator;

/// The longest `NuOperator` name: the name goes into label values (63 characters).
pub const MAX_NAME_LENGTH: usize = 63;

/// One reason a `NuOperator` cannot be deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Two or more mappings share a name.
    DuplicateMappingName(String),
    /// A source location is neither a git URL (https, http, git, file) nor an absolute path.
    InvalidSourceLocation {
        /// The source's index in `spec.sources`.
        index: usize,
        /// The location as given.
        location: String,
    },
    /// A source location carries credentials in its URL (`https://user:pass@…`).
    CredentialsInLocation {
        /// The source's index in `spec.sources`.
        index: usize,
    },
    /// A credentials reference names a Secret that does not exist in the namespace.
    SecretNotFound(String),
    /// The name is too long for the label values the children carry.
    NameTooLong(usize),
}

impl Problem {
    /// The CamelCase reason for a status condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DuplicateMappingName(_) => "DuplicateMappingName",
            Self::InvalidSourceLocation { .. } => "InvalidSourceLocation",
            Self::CredentialsInLocation { .. } => "CredentialsInLocation",
            Self::SecretNotFound(_) => "SecretNotFound",
            Self::NameTooLong(_) => "NameTooLong",
        }
    }

    /// Whether the problem can go away without a change to the `NuOperator` (a Secret
    /// created later), so the manager should look again after a while.
    pub fn may_resolve_itself(&self) -> bool {
        matches!(self, Self::SecretNotFound(_))
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DuplicateMappingName(name) => {
                write!(f, "more than one mapping is named `{name}`")
            }
            Self::InvalidSourceLocation { index, location } => write!(
                f,
                "spec.sources[{index}].location `{location}` is neither a git URL (https, http, git, file) nor an absolute path"
            ),
            // The location itself is not repeated: it holds a secret.
            Self::CredentialsInLocation { index } => write!(
                f,
                "spec.sources[{index}].location carries credentials; use spec.sources[{index}].credentials with a Secret"
            ),
            Self::SecretNotFound(name) => {
                write!(
                    f,
                    "the Secret `{name}` named in the credentials does not exist"
                )
            }
            Self::NameTooLong(length) => write!(
                f,
                "the name is {length} characters long; at most {MAX_NAME_LENGTH} fit in a label"
            ),
        }
    }
}

/// The names of every Secret the sources' credentials refer to, sorted, each once.
pub fn referenced_secrets(operator: &NuOperator) -> BTreeSet<String> {
    operator
        .spec
        .sources
        .iter()
        .filter_map(|s| s.credentials.as_ref())
        .flat_map(|c| [&c.username, &c.password, &c.token])
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// Every problem of `operator`, given the names of the referenced Secrets that exist.
/// Empty when it can be deployed.
pub fn validate(operator: &NuOperator, existing_secrets: &BTreeSet<String>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let name_length = operator.metadata.name.as_deref().map_or(0, str::len);
    if name_length > MAX_NAME_LENGTH {
        problems.push(Problem::NameTooLong(name_length));
    }
    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for mapping in &operator.spec.mappings {
        if !seen.insert(mapping.name.as_str()) && reported.insert(mapping.name.as_str()) {
            problems.push(Problem::DuplicateMappingName(mapping.name.clone()));
        }
    }
    for (index, source) in operator.spec.sources.iter().enumerate() {
        match check_location(&source.location) {
            Location::Valid => {}
            Location::Invalid => problems.push(Problem::InvalidSourceLocation {
                index,
                location: source.location.clone(),
            }),
            Location::WithCredentials => problems.push(Problem::CredentialsInLocation { index }),
        }
    }
    for name in referenced_secrets(operator) {
        if !existing_secrets.contains(&name) {
            problems.push(Problem::SecretNotFound(name));
        }
    }
    problems
}

enum Location {
    Valid,
    Invalid,
    WithCredentials,
}

/// Accepts `scheme://host[:port]/path` for https, http and git, `file:///abs/path`, and an
/// absolute path: the transports `nuop-managed` fetches over. Anything with whitespace or control characters is invalid.
fn check_location(location: &str) -> Location {
    if location.is_empty()
        || location
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Location::Invalid;
    }
    if location.starts_with('/') {
        return Location::Valid;
    }
    let Some((scheme, rest)) = location.split_once("://") else {
        return Location::Invalid;
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            if rest.starts_with('/') {
                Location::Valid
            } else {
                Location::Invalid
            }
        }
        "https" | "http" | "git" => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let (userinfo, host_port) = match authority.rsplit_once('@') {
                Some((userinfo, host_port)) => (Some(userinfo), host_port),
                None => (None, authority),
            };
            let host = host_port
                .rsplit_once(':')
                .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
                .map_or(host_port, |(host, _)| host);
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
            if !host_ok {
                Location::Invalid
            } else if userinfo.is_some() {
                Location::WithCredentials
            } else {
                Location::Valid
            }
        }
        _ => Location::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use nuop_crd::{Mapping, SecretKeyRef, Source};

    use super::*;

    fn operator() -> NuOperator {
        NuOperator::test()
            .named("ops")
            .in_namespace("tenant-a")
            .with_mapping(Mapping::new("a", "v1", "ConfigMap"))
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    #[test]
    fn a_plain_operator_is_valid() {
        let op = operator().with_source(Source::new("https://github.com/nuop-dev/nuop.git"));
        assert_eq!(validate(&op, &none()), []);
    }

    #[test]
    fn duplicate_mapping_names_are_reported_once_each() {
        let op = operator()
            .with_mapping(Mapping::new("a", "v1", "Secret"))
            .with_mapping(Mapping::new("a", "v1", "Pod"))
            .with_mapping(Mapping::new("b", "v1", "Pod"));
        let problems = validate(&op, &none());
        assert_eq!(problems, [Problem::DuplicateMappingName("a".to_string())]);
        assert_eq!(problems[0].reason(), "DuplicateMappingName");
        assert_eq!(
            problems[0].to_string(),
            "more than one mapping is named `a`"
        );
    }

    #[test]
    fn locations() {
        let valid = [
            "https://github.com/nuop-dev/nuop.git",
            "http://git.internal:8080/scripts",
            "git://git.internal/scripts.git",
            "file:///srv/git/scripts",
            "/srv/git/scripts",
            "HTTPS://example.com/x",
            "https://[::1]:8443/x.git",
        ];
        for location in valid {
            assert!(
                matches!(check_location(location), Location::Valid),
                "{location} should be valid"
            );
        }
        let invalid = [
            "",
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
        ];
        for location in invalid {
            assert!(
                matches!(check_location(location), Location::Invalid),
                "{location} should be invalid"
            );
        }
        for location in [
            "https://user:pass@example.com/x.git",
            "https://token@example.com/x.git",
            "http://user@example.com/x.git",
        ] {
            assert!(
                matches!(check_location(location), Location::WithCredentials),
                "{location} carries credentials"
            );
        }
    }

    #[test]
    fn a_location_with_credentials_is_not_echoed() {
        let op = operator().with_source(Source::new("https://me:hunter2@example.com/x.git"));
        let problems = validate(&op, &none());
        assert_eq!(problems, [Problem::CredentialsInLocation { index: 0 }]);
        assert!(!problems[0].to_string().contains("hunter2"));
    }

    #[test]
    fn an_invalid_location_names_its_index() {
        let op = operator()
            .with_source(Source::new("https://example.com/ok.git"))
            .with_source(Source::new("scripts/"));
        let problems = validate(&op, &none());
        assert_eq!(problems[0].reason(), "InvalidSourceLocation");
        assert!(
            problems[0]
                .to_string()
                .starts_with("spec.sources[1].location `scripts/`")
        );
    }

    #[test]
    fn missing_secrets_are_reported_and_may_resolve() {
        let op = operator()
            .with_source(Source::new("https://example.com/a.git").with_basic_auth(
                SecretKeyRef::new("git", "user"),
                SecretKeyRef::new("git", "pass"),
            ))
            .with_source(
                Source::new("https://example.com/b.git")
                    .with_token(SecretKeyRef::new("token", "t")),
            );
        assert_eq!(
            referenced_secrets(&op).into_iter().collect::<Vec<_>>(),
            ["git", "token"]
        );
        let problems = validate(&op, &BTreeSet::from(["git".to_string()]));
        assert_eq!(problems, [Problem::SecretNotFound("token".to_string())]);
        assert!(problems[0].may_resolve_itself());
        let all: BTreeSet<String> = ["git", "token"].map(String::from).into();
        assert_eq!(validate(&op, &all), []);
    }

    #[test]
    fn a_long_name_is_reported() {
        let op = operator().named("x".repeat(64));
        assert_eq!(validate(&op, &none()), [Problem::NameTooLong(64)]);
        assert!(!Problem::NameTooLong(64).may_resolve_itself());
    }
}
