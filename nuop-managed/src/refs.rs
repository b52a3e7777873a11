//! Which refs to fetch, how a source's `ref` resolves, and which cached refs to drop.
//! Pure: no I/O.
//!
//! A `ref` may be a branch, a tag or a commit (full or abbreviated), and nothing says
//! which. A fetch asks for exactly the branch and the tag of that name
//! ([`refspecs`]); only when the remote has neither (a commit id) are every branch and
//! tag fetched ([`all_refspecs`]), so that a commit reachable from one of them arrives.
//! The candidates are then tried in git's own order of precedence: branch, then tag,
//! then commit id. Without a `ref`, the remote's `HEAD` (its default branch) is used.
//! After each fetch the cache keeps only the refs that fetch updated ([`to_prune`]):
//! a branch deleted on the remote, or one an earlier version of nuop fetched, does not
//! stay (test `the_cache_fetches_only_the_ref_it_needs_and_is_pruned` in
//! `tests/git.rs`).

/// Where fetched branches are kept in the cache repository.
pub const REMOTE_PREFIX: &str = "refs/remotes/origin/";

/// Where the remote's `HEAD` is kept.
pub const REMOTE_HEAD: &str = "refs/remotes/origin/HEAD";

/// Where fetched tags are kept.
pub const TAG_PREFIX: &str = "refs/tags/";

/// The refspecs a fetch for `git_ref` uses: exactly the refs it can name.
pub fn refspecs(git_ref: Option<&str>) -> Vec<String> {
    let Some(r) = git_ref else {
        return vec![format!("+HEAD:{REMOTE_HEAD}")];
    };
    if let Some(branch) = r.strip_prefix("refs/heads/") {
        return vec![format!("+refs/heads/{branch}:{REMOTE_PREFIX}{branch}")];
    }
    if r.starts_with(TAG_PREFIX) {
        return vec![format!("+{r}:{r}")];
    }
    vec![
        format!("+refs/heads/{r}:{REMOTE_PREFIX}{r}"),
        format!("+{TAG_PREFIX}{r}:{TAG_PREFIX}{r}"),
    ]
}

/// The refspecs of a fetch for a `ref` that names no branch or tag on the remote (a
/// commit id): every branch and tag.
pub fn all_refspecs() -> Vec<String> {
    vec![
        format!("+refs/heads/*:{REMOTE_PREFIX}*"),
        format!("+{TAG_PREFIX}*:{TAG_PREFIX}*"),
    ]
}

/// The cached refs (of `existing`) that a fetch which updated `fetched` leaves behind:
/// every remote-tracking branch and tag it did not update.
pub fn to_prune(existing: &[String], fetched: &[String]) -> Vec<String> {
    existing
        .iter()
        .filter(|r| r.starts_with(REMOTE_PREFIX) || r.starts_with(TAG_PREFIX))
        .filter(|r| !fetched.contains(r))
        .cloned()
        .collect()
}

/// Local revision specs to try, in order, for `git_ref` after a fetch with
/// [`refspecs`]; the first that names a commit wins.
pub fn candidates(git_ref: Option<&str>) -> Vec<String> {
    let Some(r) = git_ref else {
        return vec![REMOTE_HEAD.to_string()];
    };
    if let Some(branch) = r.strip_prefix("refs/heads/") {
        return vec![format!("{REMOTE_PREFIX}{branch}")];
    }
    if r.starts_with("refs/tags/") {
        return vec![r.to_string()];
    }
    let mut out = vec![format!("{REMOTE_PREFIX}{r}"), format!("refs/tags/{r}")];
    if looks_like_commit(r) {
        out.push(r.to_string());
    }
    out
}

/// Whether `r` can be an (abbreviated) commit id: 4 to 40 hex digits.
pub fn looks_like_commit(r: &str) -> bool {
    (4..=40).contains(&r.len()) && r.chars().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_branch_comes_from_the_remote_head() {
        assert_eq!(refspecs(None), ["+HEAD:refs/remotes/origin/HEAD"]);
        assert_eq!(candidates(None), ["refs/remotes/origin/HEAD"]);
    }

    #[test]
    fn a_name_is_tried_as_branch_then_tag_then_commit() {
        assert_eq!(
            candidates(Some("main")),
            ["refs/remotes/origin/main", "refs/tags/main"]
        );
        assert_eq!(
            candidates(Some("deadbeef")),
            [
                "refs/remotes/origin/deadbeef",
                "refs/tags/deadbeef",
                "deadbeef"
            ]
        );
        assert_eq!(
            candidates(Some("refs/heads/release/1")),
            ["refs/remotes/origin/release/1"]
        );
        assert_eq!(candidates(Some("refs/tags/v1")), ["refs/tags/v1"]);
    }

    #[test]
    fn a_fetch_asks_for_exactly_the_refs_a_name_can_be() {
        assert_eq!(
            refspecs(Some("v1")),
            [
                "+refs/heads/v1:refs/remotes/origin/v1",
                "+refs/tags/v1:refs/tags/v1"
            ]
        );
        assert_eq!(
            refspecs(Some("refs/heads/release/1")),
            ["+refs/heads/release/1:refs/remotes/origin/release/1"]
        );
        assert_eq!(
            refspecs(Some("refs/tags/v1")),
            ["+refs/tags/v1:refs/tags/v1"]
        );
        assert!(all_refspecs().iter().all(|s| s.contains('*')));
    }

    #[test]
    fn only_refs_the_fetch_did_not_update_are_pruned() {
        let existing: Vec<String> = [
            "refs/remotes/origin/main",
            "refs/remotes/origin/old",
            "refs/remotes/origin/HEAD",
            "refs/tags/v1",
            "refs/heads/local",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            to_prune(&existing, &["refs/remotes/origin/main".to_string()]),
            [
                "refs/remotes/origin/old",
                "refs/remotes/origin/HEAD",
                "refs/tags/v1"
            ]
        );
        assert_eq!(to_prune(&existing, &existing), Vec::<String>::new());
    }

    #[test]
    fn commit_ids_are_hex_of_plausible_length() {
        assert!(looks_like_commit("abcd"));
        assert!(looks_like_commit(&"a".repeat(40)));
        assert!(!looks_like_commit("abc"));
        assert!(!looks_like_commit("main"));
        assert!(!looks_like_commit(&"a".repeat(41)));
    }
}
