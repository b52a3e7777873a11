//! Fetching and checking out real repositories with gix, over file:// and git://.

mod common;

use std::sync::atomic::AtomicBool;

use common::{Daemon, Repo};
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
