//! Fetching and checking out real repositories with gix, over file:// and git://.

mod common;

use std::sync::atomic::AtomicBool;

use common::{Daemon, HttpGit, Repo};
use nuop_managed::credentials::Credentials;
use nuop_managed::git::{checkout, fetch};
use nuop_managed::location::parse;

fn fetch_url(cache: &std::path::Path, location: &str) -> Result<String, String> {
    let location = parse(location, None, None).map_err(|e| e.to_string())?;
    fetch(cache, &location, None, &AtomicBool::new(false)).map_err(|e| e.to_string())
}

#[test]
fn branch_tag_commit_and_default_branch_resolve_over_file_urls() {
    let repo = Repo::new();
    repo.write("scripts/a/mod.nu", "# v1\n");
    let first = repo.commit("first");
    repo.git(&["tag", "-a", "v1", "-m", "v1"]);
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("scripts/a/mod.nu", "# feature\n");
    let feature = repo.commit("feature");
    repo.git(&["checkout", "-q", "main"]);
    repo.write("scripts/a/mod.nu", "# v2\n");
    let second = repo.commit("second");

    let cache = tempfile::tempdir().expect("tempdir");
    let repo_cache = cache.path().join("repo.git");
    let url = repo.file_url();
    assert_eq!(fetch_url(&repo_cache, &url), Ok(second.clone()));
    assert_eq!(
        fetch_url(&repo_cache, &format!("{url}?ref=main")),
        Ok(second.clone())
    );
    assert_eq!(
        fetch_url(&repo_cache, &format!("{url}?ref=feature")),
        Ok(feature)
    );
    assert_eq!(
        fetch_url(&repo_cache, &format!("{url}?ref=v1")),
        Ok(first.clone())
    );
    assert_eq!(
        fetch_url(&repo_cache, &format!("{url}?ref={}", &first[..10])),
        Ok(first.clone())
    );
    let err = fetch_url(&repo_cache, &format!("{url}?ref=nope")).expect_err("unknown ref");
    assert!(err.contains("no branch, tag or commit `nope`"), "{err}");

    // Check out the subdirectory of two revisions side by side.
    let old = cache.path().join("old");
    checkout(&repo_cache, &first, Some("scripts"), &old).expect("checkout");
    assert_eq!(
        std::fs::read_to_string(old.join("a/mod.nu")).expect("read"),
        "# v1\n"
    );
    let new = cache.path().join("new");
    checkout(&repo_cache, &second, None, &new).expect("checkout");
    assert_eq!(
        std::fs::read_to_string(new.join("scripts/a/mod.nu")).expect("read"),
        "# v2\n"
    );
    let err = checkout(
        &repo_cache,
        &second,
        Some("missing"),
        &cache.path().join("x"),
    )
    .expect_err("no such dir");
    assert!(err.to_string().contains("no directory `missing`"), "{err}");
    // The cache never stores the remote's URL.
    let config = std::fs::read_to_string(repo_cache.join("config")).expect("config");
    assert!(!config.contains("url"), "{config}");
}

#[test]
fn new_commits_arrive_over_git_daemon() {
    let repo = Repo::new();
    repo.write("a/mod.nu", "# one\n");
    let one = repo.commit("one");
    let daemon = Daemon::serve(repo.tmp.path());
    let url = daemon.url("repo");
    let cache = tempfile::tempdir().expect("tempdir");
    let repo_cache = cache.path().join("repo.git");
    assert_eq!(fetch_url(&repo_cache, &url), Ok(one));
    repo.write("a/mod.nu", "# two\n");
    let two = repo.commit("two");
    assert_eq!(fetch_url(&repo_cache, &format!("{url}?ref=main")), Ok(two));
}

#[test]
fn an_unreachable_remote_is_an_error_not_a_hang() {
    let cache = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let err = fetch_url(
        &cache.path().join("repo.git"),
        &format!("git://127.0.0.1:{port}/none"),
    )
    .expect_err("unreachable");
    assert!(err.contains("fetching git://127.0.0.1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn smart_http_anonymously_and_never_credentials_in_clear_text() {
    let repo = Repo::new();
    repo.write("a/mod.nu", "# one\n");
    let one = repo.commit("one");
    let open = HttpGit::serve(repo.tmp.path(), None).await;
    let guarded = HttpGit::serve(repo.tmp.path(), Some("s3cr3t-token")).await;
    let cache = tempfile::tempdir().expect("tempdir");
    let repo_cache = cache.path().join("repo.git");
    let attempt = |url: String, credentials: Option<Credentials>| {
        let repo_cache = repo_cache.clone();
        tokio::task::spawn_blocking(move || {
            let location = parse(&url, None, None).map_err(|e| e.to_string())?;
            fetch(&repo_cache, &location, credentials, &AtomicBool::new(false))
                .map_err(|e| e.to_string())
        })
    };
    assert_eq!(
        attempt(format!("{}/.git?ref=main", open.url("repo")), None)
            .await
            .expect("task"),
        Ok(one)
    );
    assert!(open.served.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // gix sends basic credentials over https only; over http the fetch fails without
    // the token showing up anywhere.
    let refused = attempt(
        format!("{}/.git", guarded.url("repo")),
        Some(Credentials::token("s3cr3t-token")),
    )
    .await
    .expect("task")
    .expect_err("refused");
    assert!(refused.contains("clear text"), "{refused}");
    assert!(!refused.contains("s3cr3t"), "{refused}");
    assert!(guarded.refused.load(std::sync::atomic::Ordering::SeqCst) > 0);
    assert_eq!(guarded.served.load(std::sync::atomic::Ordering::SeqCst), 0);
    for entry in walk(cache.path()) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s3cr3t"),
            "the token is in {}",
            entry.display()
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_damaged_cache_is_rebuilt() {
    let repo = Repo::new();
    repo.write("a/mod.nu", "# one\n");
    let one = repo.commit("one");
    let cache = tempfile::tempdir().expect("tempdir");
    let repo_cache = cache.path().join("repo.git");
    std::fs::create_dir_all(&repo_cache).expect("mkdir");
    std::fs::write(repo_cache.join("HEAD"), "garbage").expect("write");
    assert_eq!(fetch_url(&repo_cache, &repo.file_url()), Ok(one));
}

/// The refs of the bare repository at `repo`, sorted.
fn refs_of(repo: &std::path::Path) -> Vec<String> {
    let listed = common::git(repo, &["for-each-ref", "--format=%(refname)"]);
    let mut refs: Vec<String> = listed.lines().map(str::to_string).collect();
    refs.sort();
    refs
}

/// Whether the repository at `repo` has the object `id`.
fn has_object(repo: &std::path::Path, id: &str) -> bool {
    std::process::Command::new("git")
        .args(["cat-file", "-e", id])
        .current_dir(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        .status()
        .unwrap_or_else(|e| panic!("these tests need the git binary: {e}"))
        .success()
}

#[test]
fn the_cache_fetches_only_the_ref_it_needs_and_is_pruned() {
    let repo = Repo::new();
    repo.write("a/mod.nu", "# main\n");
    let main = repo.commit("main");
    repo.git(&["tag", "v1"]);
    repo.git(&["checkout", "-q", "-b", "feature"]);
    repo.write("a/mod.nu", "# feature\n");
    let feature = repo.commit("feature");
    repo.git(&["checkout", "-q", "main"]);
    let cache = tempfile::tempdir().expect("tempdir");
    let repo_cache = cache.path().join("repo.git");
    let url = repo.file_url();

    assert_eq!(fetch_url(&repo_cache, &format!("{url}?ref=main")), Ok(main));
    assert_eq!(refs_of(&repo_cache), ["refs/remotes/origin/main"]);
    assert!(
        !has_object(&repo_cache, &feature),
        "another branch was fetched although the source names main"
    );

    // What an earlier fetch left (another ref) is pruned by the next one.
    assert_eq!(
        fetch_url(&repo_cache, &format!("{url}?ref=feature")),
        Ok(feature.clone())
    );
    assert_eq!(refs_of(&repo_cache), ["refs/remotes/origin/feature"]);

    // A commit id no branch or tag is named after is looked for in every branch and
    // tag (a fresh cache has nothing yet).
    let fresh = cache.path().join("fresh.git");
    assert_eq!(
        fetch_url(&fresh, &format!("{url}?ref={}", &feature[..12])),
        Ok(feature)
    );

    // A branch deleted on the remote does not stay in the cache.
    repo.git(&["branch", "-D", "feature"]);
    let err = fetch_url(&repo_cache, &format!("{url}?ref=feature")).expect_err("branch gone");
    assert!(err.contains("no branch, tag or commit `feature`"), "{err}");
    assert!(
        !refs_of(&repo_cache).contains(&"refs/remotes/origin/feature".to_string()),
        "{:?}",
        refs_of(&repo_cache)
    );
}
