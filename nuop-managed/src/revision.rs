//! Loading a checked-out revision's scripts, all or nothing. Does I/O (reads the
//! checkout, runs each script's `config`).
//!
//! Every `<root>/*/mod.nu` is parsed by the executor and its `config` validated; one
//! script that fails rejects the whole revision, so a half-broken commit never replaces
//! a good one. Each script gets a fingerprint: a digest of its directory and of the
//! shared files beside it (helper modules a script may `use` from `..`), so that only
//! controllers whose code changed are restarted. A symlink is fingerprinted by its
//! text and, for a file, by the file it points to; a symlink that leaves the checkout
//! rejects the revision (test `a_symlink_out_of_the_checkout_rejects_the_revision`).
//!
//! Scripts are loaded as standard mode loads them
//! (`nuop_core::root::load_root_within`): on a blocking thread under a load
//! timeout, a `finalizer` without `main finalize` refused
//! (`nuop_core::root::missing_phase`), config warnings logged.
//!
//! A failure says whether it can go away by itself ([`LoadFailure::transient`]): I/O
//! errors and a `config` that timed out or could not be started are retried at the
//! next sync; a parse error, a top level that does not finish within the load timeout,
//! a failing or invalid `config`, a missing phase and duplicate names are the commit's
//! own, so it is rejected until the ref moves ([`is_transient_load`],
//! [`is_transient_config`]; tests `one_broken_script_rejects_the_revision_for_good`,
//! `a_top_level_that_hangs_rejects_the_revision`).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nuop_core::protocol::DEFAULT_TIMEOUT;
use nuop_core::root::{config_warnings, missing_phase};
use nuop_core::script::{
    ConfigCallError, ExecError, ExecutorKind, LoadError, ScriptRunner, discover, process,
};
use nuop_crd::fnv::Fnv;
use tracing::warn;

use crate::plan::Available;

/// A script of a good revision, ready to run.
#[derive(Clone)]
pub struct LoadedScript {
    /// Its name, config and fingerprint.
    pub available: Available,
    /// The loaded script.
    pub runner: ScriptRunner,
}

/// A revision whose scripts all load.
#[derive(Clone)]
pub struct Revision {
    /// The commit.
    pub commit: String,
    /// The checkout (the scripts root).
    pub root: PathBuf,
    /// Its scripts by config name.
    pub scripts: BTreeMap<String, LoadedScript>,
    /// The fingerprint of the key whose signature let it run, for a source that
    /// requires signatures ([`crate::signature`]).
    pub signed_by: Option<String>,
}

/// Why a revision did not load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFailure {
    /// Every script that failed, or why the checkout is unreadable.
    pub message: String,
    /// Whether loading the same commit again may succeed (only I/O errors and timeouts
    /// failed): the commit is not rejected, it is retried.
    pub transient: bool,
}

/// Whether a script that failed to load may load on a later try: only when it could
/// not be read. A top level that outlives the load timeout ([`LoadError::Timeout`])
/// hangs the same way every time: it is the commit's own.
pub fn is_transient_load(error: &LoadError) -> bool {
    matches!(error, LoadError::Read { .. })
}

/// Whether a `config` call that failed may succeed on a later try: a timeout, a process
/// that could not be started, an engine failure. A non-zero exit, a missing `main
/// config` and an invalid answer are the script's own.
pub fn is_transient_config(error: &ConfigCallError) -> bool {
    matches!(
        error,
        ConfigCallError::Exec(
            ExecError::Timeout { .. } | ExecError::Spawn { .. } | ExecError::Engine { .. }
        )
    )
}

/// One failed step, for [`LoadFailure`].
struct Failed {
    message: String,
    transient: bool,
}

fn io_failure(path: &Path, e: &DigestError) -> Failed {
    Failed {
        message: format!("cannot read {}: {e}", path.display()),
        transient: matches!(e, DigestError::Io(_)),
    }
}

/// Loads every script under `root` (a checkout of `commit`), each on a blocking thread
/// and stopped after `load_timeout`
/// ([`nuop_core::script::embedded::DEFAULT_LOAD_TIMEOUT`] in the binary).
///
/// # Errors
/// A [`LoadFailure`] listing every script that failed, or saying the root is unreadable.
pub async fn load(
    commit: &str,
    root: &Path,
    kind: ExecutorKind,
    load_timeout: Duration,
) -> Result<Revision, LoadFailure> {
    let mut failures: Vec<Failed> = Vec::new();
    let found = discover(root).map_err(|e| LoadFailure {
        message: format!("cannot read {}: {e}", root.display()),
        transient: true,
    })?;
    for skipped in &found.skipped {
        warn!("skipping {}: {}", skipped.dir.display(), skipped.reason);
    }
    let script_dirs: Vec<PathBuf> = found.scripts.iter().map(|s| s.dir.clone()).collect();
    let shared = match shared_digest(root, &script_dirs) {
        Ok(digest) => digest,
        Err(e) => {
            failures.push(io_failure(root, &e));
            String::new()
        }
    };
    let mut scripts = BTreeMap::new();
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    for script in found.scripts {
        let fail = |message: String, transient: bool| Failed {
            message: format!("script {}: {message}", script.name),
            transient,
        };
        let loaded =
            ScriptRunner::load_off_runtime(kind, &script, process::nu_binary(), load_timeout).await;
        let runner = match loaded {
            Ok(runner) => runner,
            Err(e) => {
                failures.push(fail(e.to_string(), is_transient_load(&e)));
                continue;
            }
        };
        let config = match runner.config(DEFAULT_TIMEOUT).await {
            Ok(config) => config,
            Err(e) => {
                failures.push(fail(e.to_string(), is_transient_config(&e)));
                continue;
            }
        };
        if let Some(reason) = missing_phase(&config, |phase| runner.has_phase(phase)) {
            failures.push(fail(reason, false));
            continue;
        }
        for warning in config_warnings(&config) {
            warn!(script = %script.name, commit, "{warning}");
        }
        if let Some(first) = names.insert(config.name.clone(), script.name.clone()) {
            failures.push(fail(
                format!(
                    "controller name `{}` is already used by script {first}",
                    config.name
                ),
                false,
            ));
            continue;
        }
        let mut hasher = Fnv::default();
        hasher.feed(shared.as_bytes());
        if let Err(e) = digest_tree(root, &script.dir, &script.dir, &mut hasher) {
            let failed = io_failure(&script.dir, &e);
            failures.push(fail(failed.message, failed.transient));
            continue;
        }
        scripts.insert(
            config.name.clone(),
            LoadedScript {
                available: Available {
                    dir_name: script.name.clone(),
                    config,
                    fingerprint: hasher.hex(),
                },
                runner,
            },
        );
    }
    if !failures.is_empty() {
        return Err(LoadFailure {
            message: failures
                .iter()
                .map(|f| f.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            // One failure of the commit's own is enough for it never to load.
            transient: failures.iter().all(|f| f.transient),
        });
    }
    Ok(Revision {
        commit: commit.to_string(),
        root: root.to_path_buf(),
        scripts,
        signed_by: None,
    })
}

/// A checkout that cannot be fingerprinted.
#[derive(Debug, thiserror::Error)]
enum DigestError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A symlink points outside the checkout.
    #[error("the symlink {link} points outside the checkout (to {target})")]
    Escapes { link: String, target: String },
}

/// A digest of everything under `root` that is not a script directory.
fn shared_digest(root: &Path, scripts: &[PathBuf]) -> Result<String, DigestError> {
    let mut hasher = Fnv::default();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let absolute = std::path::absolute(&entry).unwrap_or_else(|_| entry.clone());
        if scripts.contains(&absolute) || scripts.contains(&entry) {
            continue;
        }
        digest_entry(root, root, &entry, &mut hasher)?;
    }
    Ok(hasher.hex())
}

fn digest_tree(root: &Path, base: &Path, dir: &Path, hasher: &mut Fnv) -> Result<(), DigestError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        digest_entry(root, base, &entry, hasher)?;
    }
    Ok(())
}

fn digest_entry(
    root: &Path,
    base: &Path,
    path: &Path,
    hasher: &mut Fnv,
) -> Result<(), DigestError> {
    let relative = path.strip_prefix(base).unwrap_or(path);
    hasher.feed(relative.to_string_lossy().as_bytes());
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_symlink() {
        let target = std::fs::read_link(path)?;
        if leaves(root, path, &target) {
            return Err(DigestError::Escapes {
                link: path
                    .strip_prefix(root)
                    .unwrap_or(path)
                    .display()
                    .to_string(),
                target: target.display().to_string(),
            });
        }
        hasher.feed(b"link");
        hasher.feed(target.to_string_lossy().as_bytes());
        // What a link to a file points to is part of the script too; a link to a
        // directory is hashed by its text only (it may point at an ancestor).
        if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            hasher.feed(&std::fs::read(path)?);
        }
    } else if meta.is_dir() {
        hasher.feed(b"dir");
        digest_tree(root, base, path, hasher)?;
    } else {
        hasher.feed(b"file");
        hasher.feed(&std::fs::read(path)?);
    }
    Ok(())
}

/// Whether the symlink at `link` (under `root`) with text `target` points outside
/// `root`, resolved lexically: absolute targets always do.
pub fn leaves(root: &Path, link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return true;
    }
    let Ok(relative) = link.parent().unwrap_or(link).strip_prefix(root) else {
        return true;
    };
    let mut depth: Vec<Component<'_>> = relative.components().collect();
    for component in target.components() {
        match component {
            Component::Normal(_) => depth.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return true;
                }
            }
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The load timeout of the tests that expect scripts to load.
    const LOAD: Duration = nuop_core::script::embedded::DEFAULT_LOAD_TIMEOUT;

    const SCRIPT: &str = r#"
def "main config" [] { {name: NAME, version: v1, kind: ConfigMap} }
def "main reconcile" [] { exit 0 }
"#;

    fn write(root: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(root.join(name)).expect("mkdir");
        std::fs::write(root.join(name).join("mod.nu"), body.replace("NAME", name)).expect("write");
    }

    #[tokio::test]
    async fn fingerprints_change_only_with_the_script_or_shared_files() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "a", SCRIPT);
        write(root.path(), "b", SCRIPT);
        let cwd = std::env::current_dir().expect("cwd");
        let first = load("c1", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .map_err(|e| e.message)
            .expect("loads");
        // Loading must not move the process into a checkout that may be removed.
        assert_eq!(std::env::current_dir().expect("cwd"), cwd);
        assert_eq!(first.scripts.keys().collect::<Vec<_>>(), ["a", "b"]);
        let print = |r: &Revision, s: &str| r.scripts[s].available.fingerprint.clone();

        write(root.path(), "b", &format!("{SCRIPT}\n# changed"));
        let second = load("c2", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .map_err(|e| e.message)
            .expect("loads");
        assert_eq!(print(&first, "a"), print(&second, "a"));
        assert_ne!(print(&first, "b"), print(&second, "b"));

        std::fs::write(root.path().join("lib.nu"), "export def x [] { 1 }").expect("write");
        let third = load("c3", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .map_err(|e| e.message)
            .expect("loads");
        assert_ne!(print(&second, "a"), print(&third, "a"));

        // A link inside the checkout is followed: its target's content counts.
        std::os::unix::fs::symlink("../lib.nu", root.path().join("a/lib.nu")).expect("symlink");
        let fourth = load("c4", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .map_err(|e| e.message)
            .expect("loads");
        std::fs::write(root.path().join("lib.nu"), "export def x [] { 2 }").expect("write");
        let fifth = load("c5", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .map_err(|e| e.message)
            .expect("loads");
        assert_ne!(print(&fourth, "a"), print(&fifth, "a"));
    }

    #[tokio::test]
    async fn one_broken_script_rejects_the_revision_for_good() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "good", SCRIPT);
        write(root.path(), "broken", "def \"main config\" [ {");
        let err = load("c1", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .err()
            .expect("rejected");
        assert!(err.message.contains("script broken"), "{err:?}");
        assert!(!err.transient, "a parse error is the commit's own");
        write(
            root.path(),
            "broken",
            "def \"main config\" [] { {name: x} }",
        );
        let err = load("c1", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .err()
            .expect("rejected");
        assert!(err.message.contains("version"), "{err:?}");
        assert!(!err.transient, "an invalid config is the commit's own");
    }

    #[tokio::test]
    async fn a_top_level_that_hangs_rejects_the_revision() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "good", SCRIPT);
        write(
            root.path(),
            "hangs",
            &format!("loop {{ sleep 10ms }}\n{SCRIPT}"),
        );
        let err = load(
            "c1",
            root.path(),
            ExecutorKind::Embedded,
            Duration::from_secs(1),
        )
        .await
        .err()
        .expect("rejected");
        assert!(err.message.contains("script hangs"), "{err:?}");
        assert!(err.message.contains("did not finish"), "{err:?}");
        assert!(!err.transient, "a hanging top level hangs every time");
    }

    #[tokio::test]
    async fn a_finalizer_without_finalize_rejects_the_revision() {
        let root = tempfile::tempdir().expect("tempdir");
        write(
            root.path(),
            "a",
            r#"
def "main config" [] { {name: a, version: v1, kind: ConfigMap, finalizer: nuop.dev/a} }
def "main reconcile" [] { exit 0 }
"#,
        );
        let err = load("c1", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .err()
            .expect("rejected");
        assert!(err.message.contains("main finalize"), "{err:?}");
        assert!(!err.transient);
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_checkout_rejects_the_revision() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("lib.nu"), "export def x [] { 1 }").expect("write");
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "a", SCRIPT);
        std::os::unix::fs::symlink(outside.path().join("lib.nu"), root.path().join("a/lib.nu"))
            .expect("symlink");
        let err = load("c1", root.path(), ExecutorKind::Embedded, LOAD)
            .await
            .err()
            .expect("rejected");
        assert!(
            err.message.contains("points outside the checkout"),
            "{err:?}"
        );
        assert!(!err.transient);
    }

    #[test]
    fn links_are_resolved_against_the_checkout() {
        let root = Path::new("/c");
        assert!(!leaves(
            root,
            Path::new("/c/a/lib.nu"),
            Path::new("../lib.nu")
        ));
        assert!(!leaves(
            root,
            Path::new("/c/a/b/x"),
            Path::new("../../y/./z")
        ));
        assert!(leaves(
            root,
            Path::new("/c/a/lib.nu"),
            Path::new("../../etc/passwd")
        ));
        assert!(leaves(root, Path::new("/c/lib.nu"), Path::new("..")));
        assert!(leaves(root, Path::new("/c/a/x"), Path::new("/c/a/y")));
    }

    #[test]
    fn only_io_errors_and_timeouts_are_transient() {
        let read = LoadError::Read {
            path: PathBuf::from("/c/a/mod.nu"),
            source: std::io::Error::other("EIO"),
        };
        assert!(is_transient_load(&read));
        let syntax = LoadError::Syntax {
            path: PathBuf::from("/c/a/mod.nu"),
            line: 1,
            message: "unexpected".into(),
        };
        assert!(!is_transient_load(&syntax));
        let hangs = LoadError::Timeout {
            path: PathBuf::from("/c/a/mod.nu"),
            after: LOAD,
        };
        assert!(!is_transient_load(&hangs));
        let timeout = ConfigCallError::Exec(ExecError::Timeout {
            script: "a".into(),
            phase: nuop_core::protocol::Phase::Config,
            after: DEFAULT_TIMEOUT,
            stderr: Default::default(),
        });
        assert!(is_transient_config(&timeout));
        let exit = ConfigCallError::Exit {
            script: "a".into(),
            code: 1,
            stderr: String::new(),
        };
        assert!(!is_transient_config(&exit));
        let missing = ConfigCallError::Exec(ExecError::MissingPhase {
            script: "a".into(),
            phase: nuop_core::protocol::Phase::Config,
        });
        assert!(!is_transient_config(&missing));
    }
}
