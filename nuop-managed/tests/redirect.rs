//! Credentials go only to the source's own scheme, host and port: an https source that
//! redirects to another host (another loopback address, with a certificate the client
//! trusts) never hands that host the token, even when it asks for one.

// The one test of this binary sets SSL_CERT_FILE before any other thread exists.
#![allow(unsafe_code)]

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;

use common::{HttpGit, Repo, Tls};
use nuop_managed::credentials::Credentials;
use nuop_managed::git::fetch;
use nuop_managed::location::parse;

const TOKEN: &str = "redirect-s3cr3t-token";

#[test]
fn a_redirect_to_another_host_gets_no_credentials() {
    let tls = Tls::new();
    // SAFETY: no other thread runs yet (this binary has one test, and the runtime is
    // built below); gix's https client reads the variable for its trust roots.
    unsafe { std::env::set_var("SSL_CERT_FILE", tls.ca_file()) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let repo = Repo::new();
        repo.write("a/mod.nu", "# one\n");
        let one = repo.commit("one");
        // The other host serves the repository and asks for the token.
        let other = HttpGit::serve_tls_on("127.0.0.2", repo.tmp.path(), Some(TOKEN), &tls).await;
        let redirector =
            HttpGit::redirect_tls(&format!("https://127.0.0.2:{}", other.port), &tls).await;
        let cache = tempfile::tempdir().expect("tempdir");
        let attempt = |url: String| {
            let repo_cache = cache.path().join("repo.git");
            tokio::task::spawn_blocking(move || {
                let location = parse(&url, None, None).map_err(|e| e.to_string())?;
                fetch(
                    &repo_cache,
                    &location,
                    Some(Credentials::token(TOKEN)),
                    &AtomicBool::new(false),
                )
                .map_err(|e| e.to_string())
            })
        };

        let redirected = attempt(format!("{}/.git", redirector.https_url("repo")))
            .await
            .expect("task");
        assert!(redirector.served.load(SeqCst) > 0, "the source was asked");
        assert!(
            other.refused.load(SeqCst) > 0,
            "the redirect reached the other host, which asked for credentials ({redirected:?})"
        );
        assert_eq!(
            other.served.load(SeqCst),
            0,
            "the other host got the token: {redirected:?}"
        );
        let error = redirected.expect_err("no credentials for the other host");
        assert!(!error.contains(TOKEN), "{error}");

        // The same token still goes to the host it belongs to.
        assert_eq!(
            attempt(format!("{}/.git", other.https_url("repo")))
                .await
                .expect("task"),
            Ok(one)
        );
        assert!(other.served.load(SeqCst) > 0);
    });
}
