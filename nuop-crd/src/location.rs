//! Where a source's scripts live: the repository URL, the ref and the subdirectory.
//! Pure: no I/O.
//!
//! A [`Source`](crate::Source) names them in its own fields (`location`, `ref`,
//! `path`), or, as the original nuop did, in the location's query:
//! `https://git.example.com/scripts.git?ref=main&dir=controllers`. Both are accepted;
//! when both name a ref (or a directory) they must agree. A password in the URL is
//! refused without echoing it: credentials belong in Secrets.
//!
//! `path` means two things, told apart by its form:
//! - relative (`controllers`): the subdirectory holding the script directories, like
//!   `dir` in the query;
//! - absolute (`/scripts/example`): where the original nuop placed the checkout in its
//!   pod. nuop places checkouts itself, so such a `path` is accepted and ignored, and
//!   `dir` alone selects the subdirectory (test
//!   `tests::an_original_nuop_source_with_an_absolute_path_is_accepted`).
//!
//! The manager (`nuop-manager`) validates with this same parser, so a location the
//! managed pods would refuse is reported in the NuOperator's status before any pod runs.

use std::fmt;
use std::path::{Component, Path};

/// A parsed, validated source location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The repository URL without query: `https://`, `http://`, `git://` or `file://`
    /// (an absolute path is turned into a `file://` URL).
    pub url: String,
    /// The branch, tag or commit; the remote's default branch when `None`.
    pub git_ref: Option<String>,
    /// The subdirectory holding the script directories; the root when `None`.
    pub dir: Option<String>,
}

/// Why a location is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    /// The scheme is not one we fetch over.
    #[error(
        "unsupported location `{0}`: use https://, http://, git://, file:// or an absolute path"
    )]
    Scheme(String),
    /// The URL carries a password or token.
    #[error(
        "location for host `{0}` carries a password: put credentials in a Secret and reference it under `credentials`"
    )]
    Password(String),
    /// A query parameter other than `ref` and `dir`.
    #[error("unknown parameter `{0}` in location query: only `ref` and `dir` are accepted")]
    Parameter(String),
    /// The query and the source's own field disagree.
    #[error(
        "`{field}` is given twice with different values: `{query}` in the location and `{field_value}` in the source"
    )]
    Conflict {
        /// `ref` or `dir`.
        field: &'static str,
        /// The value in the query.
        query: String,
        /// The value in the source's field.
        field_value: String,
    },
    /// The ref is empty or unsafe.
    #[error("invalid ref `{value}`")]
    Ref {
        /// The ref as given.
        value: String,
        /// Where it was given: `ref` (the source's field) or `location` (the query).
        field: &'static str,
    },
    /// The directory escapes the repository.
    #[error("invalid dir `{value}`: it must be a relative path inside the repository")]
    Dir {
        /// The directory as given.
        value: String,
        /// Where it was given: `path` (the source's field) or `location` (the query).
        field: &'static str,
    },
}

impl LocationError {
    /// The field of a [`Source`](crate::Source) the problem is in: `location`, `ref`
    /// or `path`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Scheme(_) | Self::Password(_) | Self::Parameter(_) => "location",
            Self::Conflict { field: "ref", .. } => "ref",
            Self::Conflict { .. } => "path",
            Self::Ref { field, .. } | Self::Dir { field, .. } => field,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        if let Some(r) = &self.git_ref {
            write!(f, "@{r}")?;
        }
        if let Some(d) = &self.dir {
            write!(f, "//{d}")?;
        }
        Ok(())
    }
}

/// Parses `location` and merges it with the source's `ref` and `path` fields.
///
/// # Errors
/// [`LocationError`] saying what is wrong; never containing a password.
pub fn parse(
    location: &str,
    git_ref: Option<&str>,
    path: Option<&str>,
) -> Result<Location, LocationError> {
    let location = location.trim();
    let (base, query) = match location.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (location, None),
    };
    let url = normalize_url(base)?;
    let (mut query_ref, mut query_dir) = (None, None);
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        match key {
            "ref" => query_ref = Some(value),
            "dir" | "path" => query_dir = Some(value),
            other => return Err(LocationError::Parameter(other.to_string())),
        }
    }
    let field_ref = git_ref.map(str::to_string);
    let ref_field = if field_ref.is_some() {
        "ref"
    } else {
        "location"
    };
    let git_ref = merge("ref", query_ref, field_ref)?
        .map(|r| validate_ref(&r, ref_field))
        .transpose()?;
    // An absolute `path` is the original nuop's placement of the checkout (module docs).
    let field_dir = path
        .filter(|p| !p.trim().starts_with('/'))
        .map(str::to_string);
    let dir_field = if field_dir.is_some() {
        "path"
    } else {
        "location"
    };
    let dir = merge("dir", query_dir, field_dir)?
        .map(|d| validate_dir(&d, dir_field))
        .transpose()?
        .flatten();
    Ok(Location { url, git_ref, dir })
}

fn normalize_url(base: &str) -> Result<String, LocationError> {
    if base.starts_with('/') {
        return Ok(format!("file://{base}"));
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(LocationError::Scheme(redact(base)));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !["https", "http", "git", "file"].contains(&scheme.as_str()) {
        return Err(LocationError::Scheme(redact(base)));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    if let Some((_, host)) = userinfo.filter(|u| u.contains(':')).zip(Some(host_port)) {
        return Err(LocationError::Password(host.to_string()));
    }
    let usable = if scheme == "file" {
        // file:///abs/path only: a host would be read as the first path component.
        authority.is_empty()
    } else {
        valid_host(host_port)
    };
    if !usable || base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LocationError::Scheme(redact(base)));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// `host[:port]` with a DNS name, an IPv4 address or a bracketed IPv6 address.
fn valid_host(host_port: &str) -> bool {
    let host = host_port
        .rsplit_once(':')
        .filter(|(host, port)| {
            port.chars().all(|c| c.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']'))
        })
        .map_or(host_port, |(host, _)| host);
    !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
}

/// The location with any user information replaced by `***`, for messages.
pub fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => location.to_string(),
    }
}

fn merge(
    field: &'static str,
    query: Option<String>,
    own: Option<String>,
) -> Result<Option<String>, LocationError> {
    match (query, own) {
        (Some(q), Some(o)) if q != o => Err(LocationError::Conflict {
            field,
            query: q,
            field_value: o,
        }),
        (q, o) => Ok(o.or(q)),
    }
}

fn validate_ref(r: &str, field: &'static str) -> Result<String, LocationError> {
    let r = r.trim();
    let bad = r.is_empty()
        || r.starts_with('-')
        || r.contains("..")
        || r.chars().any(|c| c.is_whitespace() || c.is_control())
        || r.contains(['~', '^', ':', '?', '*', '[', '\\']);
    if bad {
        Err(LocationError::Ref {
            value: r.to_string(),
            field,
        })
    } else {
        Ok(r.to_string())
    }
}

/// `None` for the repository root (`""`, `.`, `/`).
fn validate_dir(d: &str, field: &'static str) -> Result<Option<String>, LocationError> {
    let invalid = || LocationError::Dir {
        value: d.to_string(),
        field,
    };
    let trimmed = d.trim().trim_end_matches('/');
    if trimmed.starts_with('/') {
        return Err(invalid());
    }
    let mut parts = Vec::new();
    for component in Path::new(trimmed).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return Err(invalid()),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(url: &str, git_ref: Option<&str>, dir: Option<&str>) -> Location {
        Location {
            url: url.to_string(),
            git_ref: git_ref.map(str::to_string),
            dir: dir.map(str::to_string),
        }
    }

    #[test]
    fn the_original_query_syntax_is_accepted() {
        assert_eq!(
            parse(
                "https://github.com/ck3mp3r/nuop.git?ref=main&dir=scripts",
                None,
                None
            ),
            Ok(loc(
                "https://github.com/ck3mp3r/nuop.git",
                Some("main"),
                Some("scripts")
            ))
        );
        assert_eq!(
            parse("git://127.0.0.1:9418/r.git?dir=a%2Fb/", None, None),
            Ok(loc("git://127.0.0.1:9418/r.git", None, Some("a/b")))
        );
    }

    #[test]
    fn an_original_nuop_source_with_an_absolute_path_is_accepted() {
        // In the original nuop, `path` is where the source is placed and `dir` (in the
        // query) selects the subdirectory.
        assert_eq!(
            parse(
                "https://host/repo.git?ref=main&dir=scripts",
                None,
                Some("/scripts/example")
            ),
            Ok(loc("https://host/repo.git", Some("main"), Some("scripts")))
        );
        assert_eq!(
            parse("https://host/repo.git", None, Some("/scripts/example")),
            Ok(loc("https://host/repo.git", None, None))
        );
        // A relative path is still the subdirectory, and must agree with `dir`.
        assert_eq!(
            parse("https://host/repo.git?dir=scripts", None, Some("other"))
                .expect_err("conflict")
                .field(),
            "path"
        );
    }

    #[test]
    fn fields_and_query_merge_and_must_agree() {
        assert_eq!(
            parse("file:///srv/r.git?ref=v1", Some("v1"), Some("ctl")),
            Ok(loc("file:///srv/r.git", Some("v1"), Some("ctl")))
        );
        assert!(matches!(
            parse("file:///srv/r.git?ref=v1", Some("v2"), None),
            Err(LocationError::Conflict { field: "ref", .. })
        ));
        assert_eq!(
            parse("/srv/r.git", None, Some(".")),
            Ok(loc("file:///srv/r.git", None, None))
        );
    }

    #[test]
    fn unsupported_or_unsafe_locations_are_refused() {
        assert!(matches!(
            parse("ssh://git@host/r.git", None, None),
            Err(LocationError::Scheme(_))
        ));
        assert!(matches!(
            parse("git@host:r.git", None, None),
            Err(LocationError::Scheme(_))
        ));
        for bad in [
            "https://",
            "https:///x",
            "file://relative/path",
            "https://exa mple.com/x",
        ] {
            assert!(
                matches!(parse(bad, None, None), Err(LocationError::Scheme(_))),
                "{bad}"
            );
        }
        assert!(parse("https://[::1]:8443/x.git", None, None).is_ok());
        assert!(matches!(
            parse("https://x/r.git?depth=1", None, None),
            Err(LocationError::Parameter(_))
        ));
        let dir = parse("https://x/r.git", None, Some("../etc")).expect_err("escapes");
        assert!(matches!(dir, LocationError::Dir { field: "path", .. }));
        assert_eq!(dir.field(), "path");
        let dir = parse("https://x/r.git?dir=a/../../b", None, None).expect_err("escapes");
        assert_eq!(dir.field(), "location");
        let bad_ref = parse("https://x/r.git", Some("--upload-pack=x"), None).expect_err("ref");
        assert!(matches!(bad_ref, LocationError::Ref { field: "ref", .. }));
        assert_eq!(
            parse("https://x/r.git?ref=a..b", None, None)
                .expect_err("ref")
                .field(),
            "location"
        );
        assert_eq!(
            parse("https://x/r.git?ref=a", Some("b"), None)
                .expect_err("conflict")
                .field(),
            "ref"
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let err =
            parse("https://bob:s3cret@git.example.com/r.git", None, None).expect_err("refused");
        assert_eq!(err, LocationError::Password("git.example.com".into()));
        assert!(!err.to_string().contains("s3cret"));
        // A user name alone is not a secret.
        assert!(parse("https://bob@git.example.com/r.git", None, None).is_ok());
        assert_eq!(redact("https://bob:s3cret@h/r.git"), "https://***@h/r.git");
        assert!(
            !parse("ftp://bob:s3cret@h/r.git", None, None)
                .expect_err("refused")
                .to_string()
                .contains("s3cret")
        );
    }
}
