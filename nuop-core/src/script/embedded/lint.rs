//! Static analysis of a script for `nuop-standard check`: Nushell's parse and compile
//! errors and warnings (deprecated commands and flags among them) with file, line and
//! column, `^kubectl` calls, and the literal kinds of `k8s get/list/patch/delete`.
//!
//! No I/O beyond what parsing does (a `use`d module file is read by Nushell's parser):
//! the script is parsed with the embedded engine's commands (nuop's `k8s` commands
//! included, so a wrong `k8s` flag is a parse error) and never run.

use nu_parser::parse;
use nu_protocol::ast::{Expr, Traverse};
use nu_protocol::engine::StateWorkingSet;
use nu_protocol::{ParseWarning, Span};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The script cannot run.
    Error,
    /// It runs, but probably not as meant.
    Warning,
}

impl Severity {
    /// As `nu --ide-check` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "Error",
            Self::Warning => "Warning",
        }
    }
}

/// One finding, located in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// The file it is in.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// Byte offsets of the finding in the file.
    pub start: usize,
    /// End byte offset (exclusive).
    pub end: usize,
}

/// A `k8s` command whose kind is a literal: `k8s get configmap x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindUse {
    /// `get`, `list`, `patch` or `delete`.
    pub verb: String,
    /// The kind as written.
    pub kind: String,
    /// Where, as a warning about it would say.
    pub at: Diagnostic,
}

/// What analysing one script found.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
    /// The literal kinds of `k8s` commands.
    pub kinds: Vec<KindUse>,
}

fn locate(
    working_set: &StateWorkingSet,
    span: Span,
    fallback: &str,
    severity: Severity,
    message: String,
) -> Diagnostic {
    let found = working_set
        .files()
        .find(|f| f.covered_span.start <= span.start && span.start <= f.covered_span.end);
    match found {
        Some(f) => {
            let start = (span.start - f.covered_span.start).min(f.content.len());
            let end = span
                .end
                .saturating_sub(f.covered_span.start)
                .clamp(start, f.content.len());
            let before = &f.content[..start];
            let line = before.iter().filter(|b| **b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            Diagnostic {
                severity,
                message,
                file: f.name.to_string(),
                line,
                column,
                start,
                end,
            }
        }
        None => Diagnostic {
            severity,
            message,
            file: fallback.to_string(),
            line: 1,
            column: 1,
            start: 0,
            end: 0,
        },
    }
}

/// Analyses the source of `file_name` (see the module doc).
pub fn analyze(file_name: &str, source: &str) -> Analysis {
    let engine = super::build_base_engine();
    let mut working_set = StateWorkingSet::new(&engine);
    let block = parse(&mut working_set, Some(file_name), source.as_bytes(), false);
    let mut analysis = Analysis::default();
    let errors: Vec<(Span, String)> = working_set
        .parse_errors
        .iter()
        .map(|e| (e.span(), e.to_string()))
        .chain(
            working_set
                .compile_errors
                .iter()
                .map(|e| (super::label_span(e), e.to_string())),
        )
        .collect();
    for (span, message) in errors {
        // Nushell reports some errors once per pass; one line each is enough.
        if analysis
            .diagnostics
            .iter()
            .any(|d| d.message == message && d.start == span.start)
        {
            continue;
        }
        analysis.diagnostics.push(locate(
            &working_set,
            span,
            file_name,
            Severity::Error,
            message,
        ));
    }
    let warnings: Vec<(Span, String)> = working_set
        .parse_warnings
        .iter()
        .map(|w: &ParseWarning| {
            let help = miette::Diagnostic::help(w)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            (w.span(), format!("{w}{help}"))
        })
        .collect();
    for (span, message) in warnings {
        analysis.diagnostics.push(locate(
            &working_set,
            span,
            file_name,
            Severity::Warning,
            message,
        ));
    }
    enum Found {
        Kubectl(Span),
        Kind(String, String, Span),
    }
    let mut found = Vec::new();
    block.flat_map(
        &working_set,
        &|expr| match &expr.expr {
            Expr::ExternalCall(head, _) => {
                let name = String::from_utf8_lossy(working_set.get_span_contents(head.span));
                if name.trim_start_matches('^') == "kubectl" {
                    vec![Found::Kubectl(head.span)]
                } else {
                    vec![]
                }
            }
            Expr::Call(call) => {
                let name = working_set.get_decl(call.decl_id).name();
                match name.strip_prefix("k8s ") {
                    Some(verb @ ("get" | "list" | "patch" | "delete")) => {
                        match call.positional_iter().next().map(|a| &a.expr) {
                            Some(Expr::String(kind)) => vec![Found::Kind(
                                verb.to_string(),
                                kind.clone(),
                                call.positional_iter().next().map_or(call.head, |a| a.span),
                            )],
                            _ => vec![],
                        }
                    }
                    _ => vec![],
                }
            }
            _ => vec![],
        },
        &mut found,
    );
    for f in found {
        match f {
            Found::Kubectl(span) => analysis.diagnostics.push(locate(
                &working_set,
                span,
                file_name,
                Severity::Warning,
                "`kubectl` spawns a process per call; the `k8s` commands read from the \
                 controller's caches and need no kubeconfig"
                    .into(),
            )),
            Found::Kind(verb, kind, span) => {
                let at = locate(
                    &working_set,
                    span,
                    file_name,
                    Severity::Warning,
                    String::new(),
                );
                analysis.kinds.push(KindUse { verb, kind, at });
            }
        }
    }
    analysis
}

/// Whether a kind as a script wrote it (`ConfigMap`, `configmaps`, `deployments.apps`)
/// names the declared `kind` (its Kind, or a plural of it).
pub fn names_kind(written: &str, kind: &str) -> bool {
    let written = written.to_lowercase();
    let base = written.split('.').next().unwrap_or_default();
    let kind = kind.to_lowercase();
    let plural = crate::cluster::builtin_kinds()
        .into_iter()
        .find(|k| k.kind.to_lowercase() == kind)
        .map(|k| k.plural);
    base == kind
        || base == format!("{kind}s")
        || base == format!("{kind}es")
        || kind
            .strip_suffix('y')
            .is_some_and(|stem| base == format!("{stem}ies"))
        || plural.is_some_and(|p| p == base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_carry_line_and_column() {
        let source = "def \"main reconcile\" [] {\n  let x = (k8s get configmap a --nope)\n}\n";
        let a = analyze("/s/mod.nu", source);
        let error = a
            .diagnostics
            .iter()
            .find(|d| d.severity == Severity::Error)
            .expect("an unknown flag is a parse error");
        assert_eq!(
            (error.file.as_str(), error.line, error.column),
            ("/s/mod.nu", 2, 32),
            "{error:?}"
        );

        let source = "def \"main reconcile\" [] {\n  ^kubectl get pods\n  k8s list secrets -A | ignore\n  k8s get ConfigMap x | ignore\n}\n";
        let a = analyze("/s/mod.nu", source);
        let kubectl = a
            .diagnostics
            .iter()
            .find(|d| d.message.contains("kubectl"))
            .expect("kubectl");
        assert_eq!(
            (kubectl.line, kubectl.column),
            (2, 4),
            "the name after ^: {kubectl:?}"
        );
        let kinds: Vec<(&str, &str, usize)> = a
            .kinds
            .iter()
            .map(|k| (k.verb.as_str(), k.kind.as_str(), k.at.line))
            .collect();
        assert_eq!(kinds, vec![("list", "secrets", 3), ("get", "ConfigMap", 4)]);
    }

    #[test]
    fn deprecated_flags_are_warnings() {
        let source = "def \"main reconcile\" [] {\n  {a: 1} | get -i a\n}\n";
        let a = analyze("m.nu", source);
        assert!(
            a.diagnostics
                .iter()
                .any(|d| d.severity == Severity::Warning && d.line == 2),
            "{:?}",
            a.diagnostics
        );
    }

    #[test]
    fn kinds_match_by_kind_or_plural() {
        assert!(names_kind("ConfigMap", "ConfigMap"));
        assert!(names_kind("configmaps", "ConfigMap"));
        assert!(names_kind("ingresses.networking.k8s.io", "Ingress"));
        assert!(names_kind("networkpolicies", "NetworkPolicy"));
        assert!(!names_kind("secrets", "ConfigMap"));
    }
}
