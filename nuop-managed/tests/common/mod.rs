//! Test fixtures: real git repositories in temp dirs, served over file:// and by
//! `git daemon` on loopback. A missing `git` binary fails the test loudly.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `git args` in `dir` and returns its trimmed stdout.
///
/// # Panics
/// When git is missing or fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .unwrap_or_else(|e| panic!("these tests need the git binary: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A repository with a work tree on branch `main`.
pub struct Repo {
    /// Holds the repository (`<tmp>/repo`).
    pub tmp: tempfile::TempDir,
}

impl Repo {
    /// An empty repository.
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("repo")).expect("mkdir");
        let repo = Self { tmp };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "test@nuop.dev"]);
        repo.git(&["config", "user.name", "nuop test"]);
        repo
    }

    /// The work tree.
    pub fn path(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    /// `file://` URL of the repository.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// Runs git in the work tree.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path(), args)
    }

    /// Writes a file (creating directories).
    pub fn write(&self, path: &str, content: &str) -> &Self {
        let file = self.path().join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(file, content).expect("write");
        self
    }

    /// Commits everything and returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A `git daemon` serving a directory's repositories on 127.0.0.1; killed on drop.
pub struct Daemon {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Daemon {
    /// Serves every repository under `base` (read-only, all exported).
    pub fn serve(base: &Path) -> Self {
        let port = free_port();
        // `git daemon` would run `git-daemon` as its child, which killing `git` leaves
        // behind: start the daemon itself.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("these tests need `git daemon`: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    /// `git://` URL of the repository `name` under the base path.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
