//! `nuop-standard test`: a script's controller logic tested without a cluster.
//!
//! # Layout
//!
//! Every script directory may hold a `tests/` directory of case files, one case per
//! `*.yaml` (or `*.yml`) file, run in file-name order; fixtures they reference with
//! `file:` are resolved against the case file's directory (e.g. `tests/fixtures/`,
//! which is not searched for cases because only files directly in `tests/` are cases):
//!
//! ```text
//! examples/greeting/
//!   mod.nu
//!   tests/
//!     says-hello.yaml
//!     already-greeted.yaml
//!     fixtures/greeting.yaml
//! ```
//!
//! # What a case does
//!
//! A case ([`case`]) gives the input object, the objects a fresh in-memory cluster holds
//! ([`crate::cluster::FakeCluster`], the one `exec --cluster` uses), optionally the phase
//! and a timeout, and expectations ([`expect`]). The runner ([`run`]) loads the script
//! once per executor, puts the input into the cluster (so it has a uid for owner
//! references), and then does what the runtime would: adds the controller's finalizer
//! first when the config declares one (a `FinalizerAdded` Event), runs the phase with the
//! script's `k8s` commands served by that cluster, writes an exit-2 answer back with the
//! merge patches of [`crate::reconcile::write::plan_write`] (status through the status
//! subresource when the kind has one), removes the finalizer after a successful
//! `finalize`, and records the Events and the requeue the runtime would produce. Every
//! case runs on both executors by default, in parallel.
//!
//! A call that does not end within its timeout is stopped by its executor and fails the
//! case with the timeout named; one that does not stop within a grace period after that
//! fails too, without being waited for.
//!
//! Pure parts: [`case`] (parsing), [`expect`] (matching, differences, `--update`),
//! [`junit`] (the XML report), [`replace_expect`]. I/O: [`run`], and [`live`], which
//! runs the same cases against a real API server (`--live`) in fresh namespaces.

pub mod case;
pub mod expect;
pub mod junit;
pub mod live;
pub mod run;

use serde_json::{Map, Value};

pub use case::{Case, CaseError, parse_case};
pub use expect::{Mismatch, check};
pub use run::{CaseRun, Options, Verdict};

/// A case file's text with its top-level `expect:` block replaced by `expect` (or
/// appended when it has none). Everything else (comments, layout) is kept as written;
/// comments inside the old block go with it.
pub fn replace_expect(text: &str, expect: &Map<String, Value>) -> String {
    let mut root = Map::new();
    root.insert("expect".into(), Value::Object(expect.clone()));
    let block = serde_saphyr::to_string(&Value::Object(root))
        .unwrap_or_else(|_| format!("expect: {}\n", Value::Object(expect.clone())));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("expect:") || l.starts_with("\"expect\":"));
    let Some(start) = start else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
        return out;
    };
    let end = (start + 1..lines.len())
        .find(|&i| {
            let l = lines[i];
            !l.is_empty() && !l.starts_with([' ', '\t', '#'])
        })
        .unwrap_or(lines.len());
    // Comment lines just before the next key belong to it, not to the old block.
    let mut keep_from = end;
    while keep_from > start + 1 && lines[keep_from - 1].starts_with('#') {
        keep_from -= 1;
    }
    let mut out = lines[..start].join("\n");
    if start > 0 {
        out.push('\n');
    }
    out.push_str(&block);
    if !block.ends_with('\n') {
        out.push('\n');
    }
    let rest = &lines[keep_from..];
    if !rest.is_empty() {
        out.push_str(&rest.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replacing_expect_keeps_the_rest_of_the_file() {
        let text = "# says hello\nname: a\nexpect:\n  exit: 0 # wrong\n  logs:\n    - x\n# next\ninput: {file: x.yaml}\n";
        let expect = json!({"exit": 2}).as_object().expect("map").clone();
        let out = replace_expect(text, &expect);
        assert_eq!(
            out,
            "# says hello\nname: a\nexpect:\n  exit: 2\n# next\ninput: {file: x.yaml}\n"
        );
        let appended = replace_expect("name: a", &expect);
        assert_eq!(appended, "name: a\nexpect:\n  exit: 2\n");
        let parsed = crate::protocol::parse_document(&replace_expect(
            "expect: {exit: 1}\nname: a\n",
            &json!({"output": {"data": {"k": "true"}}, "requeue": "never"})
                .as_object()
                .expect("map")
                .clone(),
        ))
        .expect("yaml");
        assert_eq!(
            parsed,
            json!({"expect": {"output": {"data": {"k": "true"}}, "requeue": "never"}, "name": "a"})
        );
    }
}
