//! Fetching a source with gix, reading what signs a revision, and checking it out.
//! Does I/O (blocking: call from `spawn_blocking`).
//!
//! Each source has a bare cache repository. [`fetch`] updates it from the remote and
//! resolves the source's ref to a commit; [`checkout`] writes that commit's tree (or
//! the `dir` subtree of it) into a fresh directory, never into one in use: hot reload
//! swaps whole directories.
//!
//! The remote is an anonymous one built per fetch, so its URL is never written to the
//! cache's config, and credentials reach gix only through the credentials callback,
//! never in a URL: nothing on disk or in an error message can carry them. The callback
//! answers only for the source's own scheme, host and port ([`same_origin`]): after a
//! redirect to another host gix asks again for the new URL, and gets nothing (test
//! `a_redirect_to_another_host_gets_no_credentials` in `tests/redirect.rs`).

use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix::remote::Direction;

use crate::credentials::Credentials;
use crate::location::Location;
use crate::refs;
use crate::signature::{Material, SignedObject};

/// A git operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct GitError {
    /// What was being done, e.g. "fetching git://host/repo.git".
    pub operation: String,
    /// gix's message (it never holds credentials: none are in URLs).
    pub message: String,
    /// The source's `dir` is not a directory of the commit: the commit's own problem,
    /// not a transient one.
    pub missing_dir: bool,
}

impl GitError {
    /// Whether the commit has no such `dir` (trying again cannot help).
    pub fn is_missing_dir(&self) -> bool {
        self.missing_dir
    }
}

fn failed<E: fmt::Display>(operation: impl Into<String>) -> impl FnOnce(E) -> GitError {
    move |e| GitError {
        operation: operation.into(),
        message: format!("{e:#}"),
        missing_dir: false,
    }
}

/// Opens the bare cache repository at `dir`, creating it when missing and starting
/// over when it is damaged (it is only a cache).
fn open_or_init(dir: &Path) -> Result<gix::Repository, GitError> {
    if dir.exists() {
        match gix::open(dir) {
            Ok(repo) => return Ok(repo),
            Err(e) => {
                tracing::warn!("cache {} is unusable, starting over: {e}", dir.display());
                std::fs::remove_dir_all(dir)
                    .map_err(failed(format!("removing cache {}", dir.display())))?;
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(failed(format!("creating cache {}", dir.display())))?;
    gix::init_bare(dir).map_err(failed(format!("creating cache {}", dir.display())))
}

/// Fetches `location` into the cache repository at `cache` and returns the commit
/// (40 hex digits) its ref names.
///
/// Only the refs the source's `ref` can name are fetched, and every other cached
/// branch or tag is then dropped ([`refs`]); a commit id that no branch or tag is named
/// after is looked for in every branch and tag, unless the cache already has it.
/// Unreferenced objects stay in the cache: gix has no garbage collection.
///
/// `interrupt` stops a fetch that runs too long.
///
/// # Errors
/// [`GitError`] when the remote cannot be reached, refuses the credentials, or has no
/// such ref.
pub fn fetch(
    cache: &Path,
    location: &Location,
    credentials: Option<Credentials>,
    interrupt: &AtomicBool,
) -> Result<String, GitError> {
    let repo = open_or_init(cache)?;
    let git_ref = location.git_ref.as_deref();
    let specs = refs::refspecs(git_ref);
    match fetch_specs(&repo, location, &specs, credentials.clone(), interrupt)? {
        Some(fetched) => prune(&repo, &fetched)?,
        None => {
            // No branch or tag of that name: drop what the cache had under it.
            let named: Vec<String> = specs
                .iter()
                .filter_map(|s| s.rsplit_once(':').map(|(_, local)| local.to_string()))
                .collect();
            let cached = cached_refs(&repo)?;
            delete(
                &repo,
                named.into_iter().filter(|r| cached.contains(r)).collect(),
            )?;
            let commit = git_ref.filter(|r| refs::looks_like_commit(r));
            if commit.is_some() && resolve(&repo, git_ref).is_err() {
                let fetched = fetch_specs(
                    &repo,
                    location,
                    &refs::all_refspecs(),
                    credentials,
                    interrupt,
                )?;
                if let Some(fetched) = fetched {
                    prune(&repo, &fetched)?;
                }
            }
        }
    }
    resolve(&repo, git_ref)
}

/// One fetch with `specs`: the local refs it updated, or `None` when the remote has
/// nothing they match (then nothing is received).
fn fetch_specs(
    repo: &gix::Repository,
    location: &Location,
    specs: &[String],
    credentials: Option<Credentials>,
    interrupt: &AtomicBool,
) -> Result<Option<Vec<String>>, GitError> {
    let operation = format!("fetching {}", location.url);
    let remote = repo
        .remote_at(location.url.as_str())
        .map_err(failed(&operation))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(specs.iter().map(String::as_str), Direction::Fetch)
        .map_err(failed(&operation))?;
    let mut connection = remote
        .connect(Direction::Fetch)
        .map_err(failed(&operation))?;
    // Always answer credential requests ourselves: never ask git's configured helpers
    // (or a terminal) in a pod.
    let origin = location.url.clone();
    connection.set_credentials(move |action| {
        Ok(match (action, &credentials) {
            (gix::credentials::helper::Action::Get(context), Some(c))
                if asked_for(&context).is_some_and(|url| same_origin(&origin, &url)) =>
            {
                Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: c.username().to_string(),
                        password: c.password().to_string(),
                        oauth_refresh_token: None,
                    },
                    next: context.into(),
                })
            }
            _ => None,
        })
    });
    let prepared = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(failed(&operation))?;
    if prepared.ref_map().is_missing_required_mapping() {
        return Ok(None);
    }
    let fetched: Vec<String> = prepared
        .ref_map()
        .mappings
        .iter()
        .filter_map(|m| m.local.as_ref().map(ToString::to_string))
        .collect();
    prepared
        .receive(gix::progress::Discard, interrupt)
        .map_err(failed(&operation))?;
    Ok(Some(fetched))
}

/// The names of every ref in the cache.
fn cached_refs(repo: &gix::Repository) -> Result<Vec<String>, GitError> {
    let operation = "listing the cache's refs";
    let platform = repo.references().map_err(failed(operation))?;
    let mut names = Vec::new();
    for reference in platform.all().map_err(failed(operation))? {
        let reference = reference.map_err(failed(operation))?;
        names.push(reference.name().as_bstr().to_string());
    }
    Ok(names)
}

/// Deletes every cached branch and tag not in `fetched` ([`refs::to_prune`]).
fn prune(repo: &gix::Repository, fetched: &[String]) -> Result<(), GitError> {
    delete(repo, refs::to_prune(&cached_refs(repo)?, fetched))
}

/// Deletes the refs `names` (which exist).
fn delete(repo: &gix::Repository, names: Vec<String>) -> Result<(), GitError> {
    use gix::refs::transaction::{Change, PreviousValue, RefEdit, RefLog};
    let operation = "pruning the cache's refs";
    let mut edits = Vec::new();
    for name in names {
        let name: gix::refs::FullName = name.as_str().try_into().map_err(failed(operation))?;
        edits.push(RefEdit {
            change: Change::Delete {
                expected: PreviousValue::Any,
                log: RefLog::AndReference,
            },
            name,
            deref: false,
        });
    }
    if !edits.is_empty() {
        repo.edit_references(edits).map_err(failed(operation))?;
    }
    Ok(())
}

/// The URL gix asks credentials for: its `url`, else its protocol and host.
fn asked_for(context: &gix::credentials::protocol::Context) -> Option<String> {
    if let Some(url) = &context.url {
        return Some(url.to_string());
    }
    Some(format!(
        "{}://{}/",
        context.protocol.as_deref()?,
        context.host.as_deref()?
    ))
}

/// Whether `asked` has the same scheme, host and port as `configured` (ports defaulted
/// by scheme, case-insensitive, user information ignored): whether the source's
/// credentials may be sent there.
pub fn same_origin(configured: &str, asked: &str) -> bool {
    match (origin(configured), origin(asked)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// `(scheme, host, port)` of a URL.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.chars().all(|c| c.is_ascii_digit())
                && (!host.starts_with('[') || host.ends_with(']')) =>
        {
            (host, port.parse().ok()?)
        }
        _ => (
            host_port,
            match scheme.as_str() {
                "https" => 443,
                "http" => 80,
                "git" => 9418,
                _ => 0,
            },
        ),
    };
    (!host.is_empty()).then(|| (scheme, host.to_ascii_lowercase(), port))
}

/// The commit `git_ref` names in the cache repository after a fetch.
fn resolve(repo: &gix::Repository, git_ref: Option<&str>) -> Result<String, GitError> {
    for candidate in refs::candidates(git_ref) {
        if let Ok(id) = repo.rev_parse_single(format!("{candidate}^{{commit}}").as_str()) {
            return Ok(id.detach().to_string());
        }
    }
    Err(GitError {
        operation: "resolving the ref".into(),
        message: match git_ref {
            Some(r) => format!("no branch, tag or commit `{r}` on the remote"),
            None => "the remote has no default branch (HEAD)".into(),
        },
        missing_dir: false,
    })
}

/// The signatures that vouch for `commit` (what [`fetch`] resolved `git_ref` to) in
/// the cache repository at `cache`: the commit's own `gpgsig` header and the commit
/// without it, and, when the ref names an annotated tag, the tag's trailing signature
/// and the tag without it ([`crate::signature`] decides which counts).
///
/// # Errors
/// [`GitError`] when the objects cannot be read (then nothing is decided).
pub fn signed_material(
    cache: &Path,
    git_ref: Option<&str>,
    commit: &str,
) -> Result<Material, GitError> {
    let operation = format!("reading the signature of {commit}");
    let repo = gix::open(cache).map_err(failed(&operation))?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(failed(&operation))?;
    let object = repo.find_commit(id).map_err(failed(&operation))?;
    let commit_material = match gix::objs::CommitRefIter::signature(&object.data, id.kind())
        .map_err(failed(&operation))?
    {
        Some((signature, signed)) => SignedObject {
            describe: format!("commit {commit}"),
            signature: Some(signature.to_vec()),
            payload: signed.to_bstring().into(),
        },
        None => SignedObject {
            describe: format!("commit {commit}"),
            signature: None,
            payload: object.data.clone(),
        },
    };
    Ok(Material {
        commit: commit_material,
        tag: annotated_tag(&repo, git_ref, id).map_err(failed(&operation))?,
    })
}

/// The annotated tag `git_ref` names, when the first candidate that resolves to
/// `commit` (as [`resolve`] picks it) is a tag object.
fn annotated_tag(
    repo: &gix::Repository,
    git_ref: Option<&str>,
    commit: gix::ObjectId,
) -> Result<Option<SignedObject>, Box<dyn std::error::Error + Send + Sync>> {
    for candidate in refs::candidates(git_ref) {
        let Ok(peeled) = repo.rev_parse_single(format!("{candidate}^{{commit}}").as_str()) else {
            continue;
        };
        if peeled.detach() != commit {
            continue;
        }
        let named = repo.rev_parse_single(candidate.as_str())?;
        let object = repo.find_object(named)?;
        if object.kind != gix::object::Kind::Tag {
            return Ok(None);
        }
        let name = candidate
            .strip_prefix(refs::TAG_PREFIX)
            .unwrap_or(&candidate);
        let describe = format!("tag {name} ({named})");
        return Ok(Some(match gix::objs::TagRefIter::signature(&object.data) {
            Some((signature, signed)) => SignedObject {
                describe,
                signature: Some(signature.data.to_vec()),
                payload: signed.to_bstring().into(),
            },
            None => SignedObject {
                describe,
                signature: None,
                payload: object.data.clone(),
            },
        }));
    }
    Ok(None)
}

/// Writes the tree of `commit` (only its `dir` subtree, when given) from the cache
/// repository at `cache` into `dest`, which must not exist yet.
///
/// # Errors
/// [`GitError`] when the commit or directory does not exist, or writing fails.
pub fn checkout(
    cache: &Path,
    commit: &str,
    dir: Option<&str>,
    dest: &Path,
) -> Result<(), GitError> {
    let operation = format!("checking out {commit}");
    let repo = gix::open(cache).map_err(failed(&operation))?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(failed(&operation))?;
    let tree = repo
        .find_commit(id)
        .map_err(failed(&operation))?
        .tree()
        .map_err(failed(&operation))?;
    let tree_id = match dir {
        None => tree.id,
        Some(d) => {
            let entry = tree
                .lookup_entry_by_path(d)
                .map_err(failed(&operation))?
                .ok_or_else(|| GitError {
                    operation: operation.clone(),
                    message: format!("no directory `{d}` in the repository"),
                    missing_dir: true,
                })?;
            if !entry.mode().is_tree() {
                return Err(GitError {
                    operation,
                    message: format!("`{d}` is not a directory"),
                    missing_dir: true,
                });
            }
            entry.object_id()
        }
    };
    let mut index = repo.index_from_tree(&tree_id).map_err(failed(&operation))?;
    let mut options = repo
        .checkout_options(gix::worktree::stack::state::attributes::Source::IdMapping)
        .map_err(failed(&operation))?;
    options.destination_is_initially_empty = true;
    std::fs::create_dir_all(dest).map_err(failed(&operation))?;
    let objects = repo
        .objects
        .clone()
        .into_arc()
        .map_err(failed(&operation))?;
    let outcome = gix::worktree::state::checkout(
        &mut index,
        dest,
        objects,
        &gix::progress::Discard,
        &gix::progress::Discard,
        &AtomicBool::new(false),
        options,
    )
    .map_err(failed(&operation))?;
    if let Some(problem) = outcome.errors.first() {
        return Err(GitError {
            operation,
            message: format!(
                "{} files failed, first {}: {}",
                outcome.errors.len(),
                problem.path,
                problem.error
            ),
            missing_dir: false,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_only_to_the_same_scheme_host_and_port() {
        let source = "https://git.example.com/team/repo.git";
        for same in [
            "https://git.example.com/team/repo.git/info/refs?service=git-upload-pack",
            "https://GIT.example.com:443/other.git",
            "HTTPS://x-access-token@git.example.com/team/repo.git",
        ] {
            assert!(same_origin(source, same), "{same}");
        }
        for other in [
            "https://evil.example.net/team/repo.git",
            "https://git.example.com.evil.net/team/repo.git",
            "http://git.example.com/team/repo.git",
            "https://git.example.com:8443/team/repo.git",
            "https://evil.example.net/@git.example.com/",
            "not a url",
        ] {
            assert!(!same_origin(source, other), "{other}");
        }
        assert!(same_origin(
            "https://127.0.0.1:8443/r",
            "https://127.0.0.1:8443/r/info/refs"
        ));
        assert!(!same_origin(
            "https://127.0.0.1:8443/r",
            "https://127.0.0.2:8443/r"
        ));
        assert!(same_origin("https://[::1]:8443/r", "https://[::1]:8443/x"));
    }
}
