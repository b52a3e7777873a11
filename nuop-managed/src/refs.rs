//! Which refs to fetch and how to find the commit a source's `ref` names. Pure: no I/O.
//!
//! A `ref` may be a branch, a tag or a commit (full or abbreviated), and nothing says
//! which. We fetch every branch (as `refs/remotes/origin/*`) and tag, then try the
//! candidates in git's own order of precedence: branch, then tag, then commit id.
//! Without a `ref`, the remote's `HEAD` (its default branch) is used.

/// Where fetched branches are kept in the cache repository.
pub const REMOTE_PREFIX: &str = "refs/remotes/origin/";

/// Where the remote's `HEAD` is kept.
pub const REMOTE_HEAD: &str = "refs/remotes/origin/HEAD";

/// The refspecs a fetch for `git_ref` uses.
pub fn refspecs(git_ref: Option<&str>) -> Vec<String> {
    match git_ref {
        None => vec![format!("+HEAD:{REMOTE_HEAD}")],
        Some(_) => vec![
            format!("+refs/heads/*:{REMOTE_PREFIX}*"),
            "+refs/tags/*:refs/tags/*".to_string(),
        ],
    }
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
        assert_eq!(refspecs(Some("v1")).len(), 2);
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
