//! Loading a checked-out revision's scripts, all or nothing. Does I/O (reads the
//! checkout, runs each script's `config`).
//!
//! Every `<root>/*/mod.nu` is parsed by the executor and its `config` validated; one
//! script that fails rejects the whole revision, so a half-broken commit never replaces
//! a good one. Each script gets a fingerprint: a digest of its directory and of the
//! shared files beside it (helper modules a script may `use` from `..`), so that only
//! controllers whose code changed are restarted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nuop_core::script::{ExecutorKind, ScriptRunner, discover};
use nuop_core::standard::load_scripts;

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
}

/// Loads every script under `root` (a checkout of `commit`).
///
/// # Errors
/// A message listing every script that failed, or saying the root is unreadable.
pub async fn load(commit: &str, root: &Path, kind: ExecutorKind) -> Result<Revision, String> {
    let (loaded, rejected) = load_scripts(root, kind)
        .await
        .map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    if !rejected.is_empty() {
        return Err(rejected
            .iter()
            .map(|r| format!("script {}: {}", r.script, r.reason))
            .collect::<Vec<_>>()
            .join("; "));
    }
    let shared = shared_digest(root).map_err(|e| format!("cannot read {}: {e}", root.display()))?;
    let mut scripts = BTreeMap::new();
    for script in loaded {
        let dir = &script.runner.script().dir;
        let mut hasher = Fnv::default();
        hasher.feed(shared.as_bytes());
        digest_tree(dir, dir, &mut hasher)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let dir_name = script.runner.script().name.clone();
        scripts.insert(
            script.config.name.clone(),
            LoadedScript {
                available: Available {
                    dir_name,
                    config: script.config,
                    fingerprint: hasher.hex(),
                },
                runner: script.runner,
            },
        );
    }
    Ok(Revision {
        commit: commit.to_string(),
        root: root.to_path_buf(),
        scripts,
    })
}

/// A digest of everything under `root` that is not a script directory.
fn shared_digest(root: &Path) -> std::io::Result<String> {
    let scripts: Vec<PathBuf> = discover(root)?.scripts.into_iter().map(|s| s.dir).collect();
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
        digest_entry(root, &entry, &mut hasher)?;
    }
    Ok(hasher.hex())
}

fn digest_tree(base: &Path, dir: &Path, hasher: &mut Fnv) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        digest_entry(base, &entry, hasher)?;
    }
    Ok(())
}

fn digest_entry(base: &Path, path: &Path, hasher: &mut Fnv) -> std::io::Result<()> {
    let relative = path.strip_prefix(base).unwrap_or(path);
    hasher.feed(relative.to_string_lossy().as_bytes());
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_symlink() {
        hasher.feed(b"link");
        hasher.feed(std::fs::read_link(path)?.to_string_lossy().as_bytes());
    } else if meta.is_dir() {
        hasher.feed(b"dir");
        digest_tree(base, path, hasher)?;
    } else {
        hasher.feed(b"file");
        hasher.feed(&std::fs::read(path)?);
    }
    Ok(())
}

/// 64-bit FNV-1a with length-prefixed fields: stable across processes and builds.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn feed(&mut self, bytes: &[u8]) {
        for byte in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let first = load("c1", root.path(), ExecutorKind::Embedded)
            .await
            .expect("loads");
        // Loading must not move the process into a checkout that may be removed.
        assert_eq!(std::env::current_dir().expect("cwd"), cwd);
        assert_eq!(first.scripts.keys().collect::<Vec<_>>(), ["a", "b"]);
        let print = |r: &Revision, s: &str| r.scripts[s].available.fingerprint.clone();

        write(root.path(), "b", &format!("{SCRIPT}\n# changed"));
        let second = load("c2", root.path(), ExecutorKind::Embedded)
            .await
            .expect("loads");
        assert_eq!(print(&first, "a"), print(&second, "a"));
        assert_ne!(print(&first, "b"), print(&second, "b"));

        std::fs::write(root.path().join("lib.nu"), "export def x [] { 1 }").expect("write");
        let third = load("c3", root.path(), ExecutorKind::Embedded)
            .await
            .expect("loads");
        assert_ne!(print(&second, "a"), print(&third, "a"));
    }

    #[tokio::test]
    async fn one_broken_script_rejects_the_revision() {
        let root = tempfile::tempdir().expect("tempdir");
        write(root.path(), "good", SCRIPT);
        write(root.path(), "broken", "def \"main config\" [ {");
        let err = load("c1", root.path(), ExecutorKind::Embedded)
            .await
            .err()
            .expect("rejected");
        assert!(err.contains("script broken"), "{err}");
        write(
            root.path(),
            "broken",
            "def \"main config\" [] { {name: x} }",
        );
        let err = load("c1", root.path(), ExecutorKind::Embedded)
            .await
            .err()
            .expect("rejected");
        assert!(err.contains("version"), "{err}");
    }
}
