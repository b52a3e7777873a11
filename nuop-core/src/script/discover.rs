//! Finding controller scripts under a scripts root.
//!
//! Reads the directory tree only; never runs a script.

use std::path::{Path, PathBuf};

use super::{ENTRY_POINT, Script};

/// What [`discover`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Directories with a `mod.nu`, sorted by name.
    pub scripts: Vec<Script>,
    /// Directories skipped, with the reason (logged as warnings).
    pub skipped: Vec<Skipped>,
}

/// A directory that is not a controller.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The directory.
    pub dir: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// Lists `<root>/*/mod.nu`. Hidden directories (such as a git checkout's `.git`) are
/// ignored silently; other directories without `mod.nu` are reported as skipped.
///
/// # Errors
/// When `root` itself cannot be read.
pub fn discover(root: &Path) -> std::io::Result<Discovery> {
    let mut found = Discovery::default();
    let mut entries: Vec<_> = std::fs::read_dir(root)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for dir in entries {
        let hidden = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if dir.join(ENTRY_POINT).is_file() {
            found.scripts.push(Script::at(dir));
        } else {
            found.skipped.push(Skipped {
                reason: format!("no {ENTRY_POINT} in {}", dir.display()),
                dir,
            });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_scripts_and_reports_directories_without_entry_point() {
        let root = tempfile::tempdir().expect("tempdir");
        for d in ["b", "a", "empty", ".git"] {
            std::fs::create_dir(root.path().join(d)).expect("mkdir");
        }
        std::fs::write(root.path().join("a/mod.nu"), "").expect("write");
        std::fs::write(root.path().join("b/mod.nu"), "").expect("write");
        std::fs::write(root.path().join("stray.nu"), "").expect("write");
        let found = discover(root.path()).expect("discover");
        let names: Vec<_> = found.scripts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(found.scripts[0].entry, root.path().join("a/mod.nu"));
        assert_eq!(found.skipped.len(), 1);
        assert_eq!(found.skipped[0].dir, root.path().join("empty"));
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(discover(Path::new("/nonexistent/nuop/scripts")).is_err());
    }
}
