//! Fetching a source with gix and checking a revision out. Does I/O (blocking: call
//! from `spawn_blocking`).
//!
//! Each source has a bare cache repository. [`fetch`] updates it from the remote and
//! resolves the source's ref to a commit; [`checkout`] writes that commit's tree (or
//! the `dir` subtree of it) into a fresh directory, never into one in use: hot reload
//! swaps whole directories.
//!
//! The remote is an anonymous one built per fetch, so its URL is never written to the
//! cache's config, and credentials reach gix only through the credentials callback,
//! never in a URL: nothing on disk or in an error message can carry them.

use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use gix::remote::Direction;

use crate::credentials::Credentials;
use crate::location::Location;
use crate::refs;

/// A git operation that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {message}")]
pub struct GitError {
    /// What was being done, e.g. "fetching git://host/repo.git".
    pub operation: String,
    /// gix's message (it never holds credentials: none are in URLs).
    pub message: String,
}

fn failed<E: fmt::Display>(operation: impl Into<String>) -> impl FnOnce(E) -> GitError {
    move |e| GitError {
        operation: operation.into(),
        message: format!("{e:#}"),
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
    let operation = format!("fetching {}", location.url);
    let specs = refs::refspecs(location.git_ref.as_deref());
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
    connection.set_credentials(move |action| {
        Ok(match (action, &credentials) {
            (gix::credentials::helper::Action::Get(context), Some(c)) => {
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
    connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(failed(&operation))?
        .receive(gix::progress::Discard, interrupt)
        .map_err(failed(&operation))?;
    resolve(&repo, location.git_ref.as_deref())
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
    })
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
                })?;
            if !entry.mode().is_tree() {
                return Err(GitError {
                    operation,
                    message: format!("`{d}` is not a directory"),
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
        });
    }
    Ok(())
}
