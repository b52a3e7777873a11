//! The JUnit XML report of a test run (`nuop-standard test --junit FILE`).
//!
//! Pure: renders results to a string. The document follows the strictest JUnit schema
//! in common use (the Ant XMLJUnitResultFormatter's, as the windyroad `JUnit.xsd`
//! describes it), which the others accept as well: a `testsuites` root without
//! attributes; per script one `testsuite` with `name`, `timestamp` (no time zone),
//! `hostname`, `tests`, `failures`, `errors`, `time`, `package` and `id`, holding
//! `properties`, its `testcase`s and `system-out`/`system-err`, in that order; a
//! `testcase` with `name`, `classname` and `time`, holding at most one `failure` or
//! `error` with `message` and `type`. `nuop-standard/tests/data/junit.xsd` states these rules
//! as an XML Schema; `nuop-standard/tests/test_harness.rs` validates the output against it
//! with xmllint (`the_junit_report_validates_against_the_junit_xsd`).

use std::time::Duration;

/// One test result, as the report shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JunitCase {
    /// The suite: the script's name.
    pub suite: String,
    /// The case's class: `<script>.<case file stem>`.
    pub classname: String,
    /// The case's name with its executor: `says hello [embedded]`.
    pub name: String,
    /// How long it ran.
    pub time: Duration,
    /// What went wrong, if anything.
    pub problem: Option<Problem>,
}

/// A failed expectation or an error running the case.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `failure` (an expectation did not hold) or `error` (the case could not run).
    pub error: bool,
    /// One line.
    pub message: String,
    /// The details: one difference per line.
    pub details: String,
}

/// Escapes text for an attribute value or element content.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            // Not allowed in XML 1.0 at all.
            c if (c as u32) < 0x20 => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// Element content: as [`escape`], but newlines kept.
fn escape_text(text: &str) -> String {
    text.lines().map(escape).collect::<Vec<_>>().join("\n")
}

fn seconds(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// The report of `cases`, grouped into one suite per script in the order of their
/// first case. `timestamp` is `YYYY-MM-DDTHH:MM:SS` (no time zone, as the schema wants).
pub fn render(cases: &[JunitCase], timestamp: &str, hostname: &str) -> String {
    let mut suites: Vec<(&str, Vec<&JunitCase>)> = Vec::new();
    for case in cases {
        match suites.iter_mut().find(|(s, _)| *s == case.suite) {
            Some((_, list)) => list.push(case),
            None => suites.push((&case.suite, vec![case])),
        }
    }
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for (id, (suite, list)) in suites.iter().enumerate() {
        let failures = list
            .iter()
            .filter(|c| c.problem.as_ref().is_some_and(|p| !p.error))
            .count();
        let errors = list
            .iter()
            .filter(|c| c.problem.as_ref().is_some_and(|p| p.error))
            .count();
        let time: Duration = list.iter().map(|c| c.time).sum();
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" timestamp=\"{}\" hostname=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\" time=\"{}\" package=\"nuop\" id=\"{id}\">\n    <properties/>\n",
            escape(suite),
            escape(timestamp),
            escape(hostname),
            list.len(),
            seconds(time),
        ));
        for case in list {
            let open = format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
                escape(&case.name),
                escape(&case.classname),
                seconds(case.time)
            );
            match &case.problem {
                None => xml.push_str(&format!("{open}/>\n")),
                Some(p) => {
                    let (element, kind) = if p.error {
                        ("error", "error")
                    } else {
                        ("failure", "mismatch")
                    };
                    xml.push_str(&format!(
                        "{open}>\n      <{element} message=\"{}\" type=\"{kind}\">{}</{element}>\n    </testcase>\n",
                        escape(&p.message),
                        escape_text(&p.details)
                    ));
                }
            }
        }
        xml.push_str("    <system-out/>\n    <system-err/>\n  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_group_cases_and_count_failures_and_errors() {
        let case = |suite: &str, name: &str, problem: Option<Problem>| JunitCase {
            suite: suite.into(),
            classname: format!("{suite}.a"),
            name: name.into(),
            time: Duration::from_millis(1500),
            problem,
        };
        let xml = render(
            &[
                case("g", "ok [embedded]", None),
                case(
                    "r",
                    "bad <one> [process]",
                    Some(Problem {
                        error: false,
                        message: "2 differences".into(),
                        details: "/exit: expected 0, got \"2\"\n/x: & more".into(),
                    }),
                ),
                case(
                    "g",
                    "broken",
                    Some(Problem {
                        error: true,
                        message: "a\nb".into(),
                        details: String::new(),
                    }),
                ),
            ],
            "2026-01-01T00:00:00",
            "h",
        );
        assert!(xml.contains("<testsuite name=\"g\" timestamp=\"2026-01-01T00:00:00\" hostname=\"h\" tests=\"2\" failures=\"0\" errors=\"1\" time=\"3.000\" package=\"nuop\" id=\"0\">"), "{xml}");
        assert!(
            xml.contains("tests=\"1\" failures=\"1\" errors=\"0\""),
            "{xml}"
        );
        assert!(xml.contains("name=\"bad &lt;one&gt; [process]\""), "{xml}");
        assert!(
            xml.contains("/exit: expected 0, got &quot;2&quot;\n/x: &amp; more</failure>"),
            "{xml}"
        );
        assert!(
            xml.contains("<error message=\"a&#10;b\" type=\"error\"></error>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<testsuite ").count(), 2);
    }
}
