//! The console's HTML pages, rendered on the server from [`super::view`] data.
//!
//! Pure: data in, a string out. Every value is escaped ([`escape`],
//! `every_value_is_escaped`); the pages load only `/assets/console.js` and
//! `/assets/console.css` from the binary itself, read fine without JavaScript (the live
//! tail then says it needs it), and lay out for a phone-sized window (tables scroll
//! sideways inside their own box).

use std::fmt::Write as _;
use std::sync::Arc;

use super::journal::Record;
use super::view::{ControllerSummary, Managed, ObjectReport, Overview};
use crate::metrics::ReconcileOutcome;

/// `text` with `&`, `<`, `>`, `"` and `'` escaped, for HTML text and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment with everything but unreserved characters percent-encoded.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `2026-12-01 17:41:24 UTC` for milliseconds since the epoch.
pub fn format_time(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    match k8s_openapi::jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        Err(_) => ms.to_string(),
    }
}

/// The link to an object's page.
pub fn object_href(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("/objects/{}", encode_segment(name))
    } else {
        format!(
            "/objects/{}/{}",
            encode_segment(namespace),
            encode_segment(name)
        )
    }
}

fn layout(title: &str, overview_line: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · nuop console</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\"></head>\
         <body><header><a class=\"brand\" href=\"/\">nuop console</a> {overview_line}</header>\
         <main>{body}</main><script src=\"/assets/console.js\"></script></body></html>\n",
        title = escape(title)
    )
}

fn badge(ok: bool, yes: &str, no: &str) -> String {
    if ok {
        format!("<span class=\"badge ok\">{}</span>", escape(yes))
    } else {
        format!("<span class=\"badge bad\">{}</span>", escape(no))
    }
}

fn status_line(o: &Overview) -> String {
    let mut line = format!(
        "<span class=\"meta\">{} {}</span> {} {}",
        escape(&o.binary),
        escape(&o.version),
        badge(o.leader, "leader", "standby"),
        badge(o.ready, "ready", "not ready"),
    );
    if let Some(reason) = &o.not_ready {
        let _ = write!(line, " <span class=\"meta\">{}</span>", escape(reason));
    }
    line
}

fn outcome_count(c: &ControllerSummary, outcome: ReconcileOutcome) -> u64 {
    c.reconciles.get(outcome.label()).copied().unwrap_or(0)
}

fn selectors(c: &ControllerSummary) -> String {
    let mut parts = Vec::new();
    if let Some(l) = &c.info.label_selector {
        parts.push(format!("labels {l}"));
    }
    if let Some(f) = &c.info.field_selector {
        parts.push(format!("fields {f}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        escape(&parts.join("; "))
    }
}

fn namespaces(list: &[String]) -> String {
    if list.is_empty() {
        "all".into()
    } else {
        escape(&list.join(", "))
    }
}

fn errors_text(c: &ControllerSummary) -> String {
    if c.errors.is_empty() {
        return "-".into();
    }
    c.errors
        .iter()
        .map(|(category, n)| format!("{} {n}", escape(category)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn controllers_table(controllers: &[ControllerSummary]) -> String {
    let mut out = String::from(
        "<div class=\"scroll\"><table id=\"controllers\"><thead><tr><th>controller</th><th>kind</th>\
         <th>namespaces</th><th>selectors</th><th>watches</th><th>synced</th><th>cached</th>\
         <th>in flight</th><th>no change</th><th>changed</th><th>finalized</th><th>errors</th>\
         <th>errors by category</th></tr></thead><tbody>",
    );
    for c in controllers {
        let watches = if c.info.watches.is_empty() {
            "-".to_string()
        } else {
            c.info
                .watches
                .iter()
                .map(|w| format!("{} {}", escape(&w.list), escape(&w.kind)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let synced = match (&c.synced, &c.waiting) {
            (true, _) => badge(true, "synced", ""),
            (false, Some(why)) => format!("{} {}", badge(false, "", "waiting"), escape(why)),
            (false, None) => badge(false, "", "waiting"),
        };
        let _ = write!(
            out,
            "<tr data-controller=\"{name}\"><td><a href=\"/controllers/{href}\">{name}</a></td>\
             <td>{kind} <span class=\"meta\">{api}</span></td><td>{ns}</td><td>{sel}</td>\
             <td>{watches}</td><td>{synced}</td><td class=\"n\">{cached}</td>\
             <td class=\"n\">{in_flight}</td><td class=\"n\">{nc}</td><td class=\"n\">{ch}</td>\
             <td class=\"n\">{fi}</td><td class=\"n\">{er}</td><td>{cats}</td></tr>",
            name = escape(&c.info.name),
            href = encode_segment(&c.info.name),
            kind = escape(&c.info.kind),
            api = escape(&c.info.api_version),
            ns = namespaces(&c.info.namespaces),
            sel = selectors(c),
            cached = c.cached_objects,
            in_flight = c.in_flight,
            nc = outcome_count(c, ReconcileOutcome::NoChange),
            ch = outcome_count(c, ReconcileOutcome::Changed),
            fi = outcome_count(c, ReconcileOutcome::Finalized),
            er = outcome_count(c, ReconcileOutcome::Error),
            cats = errors_text(c),
        );
    }
    if controllers.is_empty() {
        out.push_str("<tr><td colspan=\"13\">no controllers (yet)</td></tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

fn managed_section(m: &Managed) -> String {
    let mut out = String::from(
        "<section id=\"managed\"><h2>Sources</h2><div class=\"scroll\"><table id=\"sources\">\
         <thead><tr><th>location</th><th>revision</th><th>last sync</th><th>last error</th></tr></thead><tbody>",
    );
    for s in &m.sources {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"error\">{}</td></tr>",
            escape(&s.location),
            escape(s.revision.as_deref().unwrap_or("-")),
            escape(s.last_sync.as_deref().unwrap_or("never")),
            escape(s.last_error.as_deref().unwrap_or("")),
        );
    }
    out.push_str(
        "</tbody></table></div><h2>Mappings</h2><div class=\"scroll\"><table id=\"mappings\">\
         <thead><tr><th>mapping</th><th>kind</th><th>running</th><th>note</th></tr></thead><tbody>",
    );
    for mapping in &m.mappings {
        let running = if mapping.restarting {
            "<span class=\"badge\">restarting</span>".to_string()
        } else {
            badge(mapping.running, "running", "not running")
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{} <span class=\"meta\">{}</span></td><td>{}</td><td>{}</td></tr>",
            escape(&mapping.name),
            escape(&mapping.kind),
            escape(&mapping.api_version),
            running,
            escape(mapping.message.as_deref().unwrap_or("")),
        );
    }
    out.push_str("</tbody></table></div></section>");
    out
}

/// One record as a list item; the live tail's script builds the same structure.
pub fn record_item(r: &Record) -> String {
    let mut out = format!(
        "<li class=\"rec outcome-{outcome}\" data-id=\"{id}\"><div class=\"line\">\
         <time>{time}</time> <span class=\"ctl\">{controller}</span> \
         <a href=\"{href}\">{object}</a> <span class=\"trigger\">{trigger}</span> \
         <span class=\"outcome\">{outcome}</span> <span class=\"dur\">{duration:.1} ms</span></div>",
        outcome = escape(&r.outcome),
        id = r.id,
        time = escape(&format_time(r.started_ms)),
        controller = escape(&r.controller),
        href = escape(&object_href(&r.namespace, &r.name)),
        object = escape(&r.object()),
        trigger = escape(&r.trigger.describe()),
        duration = r.duration_ms,
    );
    if let Some(error) = &r.error {
        let category = r.category.as_deref().unwrap_or("error");
        let _ = write!(
            out,
            "<pre class=\"error\">{}: {}</pre>",
            escape(category),
            escape(error)
        );
    }
    if !r.lines.is_empty() {
        let _ = write!(
            out,
            "<pre class=\"lines\">{}</pre>",
            escape(&r.lines.join("\n"))
        );
    }
    out.push_str("</li>");
    out
}

fn tail_section(records: &[Arc<Record>], controller: Option<&str>, title: &str) -> String {
    let newest = records.iter().map(|r| r.id).max().unwrap_or(0);
    let mut out = format!(
        "<section id=\"tail\" data-after=\"{newest}\" data-controller=\"{}\"><h2>{} \
         <span id=\"tail-status\" class=\"meta\">static</span></h2>\
         <noscript><p class=\"meta\">The live tail needs JavaScript; reload for new reconciles.</p></noscript>\
         <ol id=\"tail-list\" class=\"records\">",
        escape(controller.unwrap_or("")),
        escape(title),
    );
    for r in records {
        out.push_str(&record_item(r));
    }
    if records.is_empty() {
        out.push_str("<li class=\"empty\">no reconciles yet</li>");
    }
    out.push_str("</ol></section>");
    out
}

/// The index: every controller, managed mode's sources and mappings, and the live tail
/// starting with `recent` (newest first).
pub fn index(o: &Overview, recent: &[Arc<Record>]) -> String {
    let mut body = format!(
        "<section><h2>Controllers</h2>{}</section>",
        controllers_table(&o.controllers)
    );
    if let Some(managed) = &o.managed {
        body.push_str(&managed_section(managed));
    }
    body.push_str(&tail_section(recent, None, "Live tail"));
    let _ = write!(
        body,
        "<p class=\"meta\">Keeps the last {} reconciles per controller. JSON: \
         <a href=\"/debug/controllers\">/debug/controllers</a>.</p>",
        o.history
    );
    layout("overview", &status_line(o), &body)
}

/// One controller: what it watches, its counts and its recent reconciles.
pub fn controller(c: &ControllerSummary) -> String {
    let info = &c.info;
    let mut body = format!(
        "<h1>{name}</h1><dl class=\"facts\">\
         <dt>kind</dt><dd>{kind} <span class=\"meta\">{api}{scope}</span></dd>\
         <dt>namespaces</dt><dd>{ns}</dd><dt>selectors</dt><dd>{sel}</dd>\
         <dt>finalizer</dt><dd>{fin}</dd><dt>executor</dt><dd>{exec}</dd>\
         <dt>requeue</dt><dd>{rc} s after a change, {rn} s after none</dd>\
         <dt>synced</dt><dd>{synced}</dd><dt>cached objects</dt><dd>{cached}</dd>\
         <dt>in flight</dt><dd>{in_flight}</dd>\
         <dt>reconciles</dt><dd>{counts}</dd><dt>errors by category</dt><dd>{errors}</dd></dl>",
        name = escape(&info.name),
        kind = escape(&info.kind),
        api = escape(&info.api_version),
        scope = if info.namespaced {
            ""
        } else {
            ", cluster-scoped"
        },
        ns = namespaces(&info.namespaces),
        sel = selectors(c),
        fin = escape(info.finalizer.as_deref().unwrap_or("-")),
        exec = escape(&info.executor),
        rc = info.requeue_after_change_s,
        rn = info.requeue_after_noop_s,
        synced = if c.synced {
            badge(true, "synced", "")
        } else {
            format!(
                "{} {}",
                badge(false, "", "waiting"),
                escape(c.waiting.as_deref().unwrap_or(""))
            )
        },
        cached = c.cached_objects,
        in_flight = c.in_flight,
        counts = ReconcileOutcome::ALL
            .iter()
            .map(|o| format!("{} {}", o.label(), outcome_count(c, *o)))
            .collect::<Vec<_>>()
            .join(", "),
        errors = errors_text(c),
    );
    body.push_str(
        "<h2>Watches</h2><div class=\"scroll\"><table id=\"watches\"><thead><tr><th>list</th>\
         <th>kind</th><th>namespaces</th><th>map</th></tr></thead><tbody>",
    );
    for w in &info.watches {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{} <span class=\"meta\">{}</span></td><td>{}</td><td>{}</td></tr>",
            escape(&w.list),
            escape(&w.kind),
            escape(&w.api_version),
            namespaces(&w.namespaces),
            escape(&w.map),
        );
    }
    if info.watches.is_empty() {
        body.push_str("<tr><td colspan=\"4\">only its own kind</td></tr>");
    }
    body.push_str("</tbody></table></div>");
    let recent = c.recent.clone().unwrap_or_default();
    body.push_str(&tail_section(
        &recent,
        Some(&info.name),
        "Recent reconciles",
    ));
    let _ = write!(
        body,
        "<p class=\"meta\">JSON: <a href=\"/debug/controllers/{0}\">/debug/controllers/{0}</a></p>",
        encode_segment(&info.name)
    );
    layout(&info.name, "", &body)
}

/// One object: per controller, whether it is cached, what will wake it next, its recent
/// reconciles and, when asked for, its contents (never a Secret's: test
/// `contents_are_offered_except_for_secrets`).
pub fn object(report: &ObjectReport) -> String {
    let object = super::journal::object_key(&report.namespace, &report.name);
    let mut body = format!("<h1>{}</h1>", escape(&object));
    if report.controllers.is_empty() {
        body.push_str("<p>No controller has this object cached or reconciled it recently.</p>");
    }
    for c in &report.controllers {
        let _ = write!(
            body,
            "<section class=\"object\"><h2>{kind} in <a href=\"/controllers/{href}\">{name}</a></h2>\
             <p>{cached}{next}</p>",
            kind = escape(&c.kind),
            href = encode_segment(&c.controller),
            name = escape(&c.controller),
            cached = if c.cached {
                "cached"
            } else {
                "not cached (gone, or outside the selectors)"
            },
            next = c
                .next
                .as_ref()
                .map(|t| format!("; next reconcile: {}", escape(&t.describe())))
                .unwrap_or_default(),
        );
        body.push_str("<ol class=\"records\">");
        for r in &c.records {
            body.push_str(&record_item(r));
        }
        body.push_str("</ol>");
        match (&c.content, &c.content_note) {
            (Some(content), _) => {
                let text = serde_json::to_string_pretty(content).unwrap_or_default();
                let _ = write!(body, "<pre class=\"content\">{}</pre>", escape(&text));
            }
            (None, Some(note)) => {
                let _ = write!(body, "<p class=\"meta\">{}</p>", escape(note));
            }
            (None, None) if c.cached && super::view::may_show_contents(&c.kind) => {
                let _ = write!(
                    body,
                    "<p><a href=\"{}?content=true\">show the cached object</a></p>",
                    escape(&object_href(&report.namespace, &report.name))
                );
            }
            (None, None) => {}
        }
        body.push_str("</section>");
    }
    layout(&object, "", &body)
}

#[cfg(test)]
mod tests {
    use super::super::journal::Trigger;
    use super::super::view::{ControllerInfo, ObjectInController};
    use super::*;
    use std::collections::BTreeMap;

    fn record(name: &str, lines: &[&str]) -> Arc<Record> {
        Arc::new(Record {
            id: 7,
            controller: "greeting".into(),
            kind: "Greeting".into(),
            namespace: "ns".into(),
            name: name.into(),
            trigger: Trigger::OwnEvent,
            outcome: "changed".into(),
            category: None,
            error: None,
            started_ms: 0,
            duration_ms: 1.25,
            lines: lines.iter().map(|l| l.to_string()).collect(),
        })
    }

    fn summary() -> ControllerSummary {
        ControllerSummary {
            info: ControllerInfo {
                name: "greeting".into(),
                api_version: "examples.nuop.dev/v1alpha1".into(),
                kind: "Greeting".into(),
                namespaced: true,
                namespaces: vec!["ns".into()],
                label_selector: Some("a=b".into()),
                field_selector: None,
                watches: Vec::new(),
                executor: "embedded".into(),
                finalizer: None,
                requeue_after_change_s: 10,
                requeue_after_noop_s: 300,
            },
            cached_objects: 3,
            synced: true,
            waiting: None,
            in_flight: 0,
            reconciles: BTreeMap::from([("changed".to_string(), 4)]),
            errors: BTreeMap::from([("script".to_string(), 1)]),
            recent: Some(vec![record("hello", &["hello: Hello, <b>!"])]),
        }
    }

    #[test]
    fn every_value_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let page = controller(&summary());
        assert!(page.contains("hello: Hello, &lt;b&gt;!"), "{page}");
        assert!(!page.contains("<b>!"), "{page}");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn the_index_lists_controllers_and_the_tail() {
        let mut c = summary();
        c.recent = None;
        let overview = Overview {
            binary: "nuop-standard".into(),
            version: "0.1.0".into(),
            leader: true,
            ready: true,
            not_ready: None,
            history: 100,
            controllers: vec![c],
            managed: Some(Managed::default()),
        };
        let page = index(&overview, &[record("hello", &["line one"])]);
        assert!(
            page.contains("<a href=\"/controllers/greeting\">greeting</a>"),
            "{page}"
        );
        assert!(page.contains("data-after=\"7\""), "{page}");
        assert!(
            page.contains("<span class=\"outcome\">changed</span>"),
            "{page}"
        );
        assert!(page.contains("own event"), "{page}");
        assert!(page.contains("line one"), "{page}");
        assert!(page.contains("id=\"sources\""), "{page}");
        assert!(page.contains("<meta name=\"viewport\""), "{page}");
        assert!(page.contains("script 1"), "{page}");
    }

    #[test]
    fn contents_are_offered_except_for_secrets() {
        let entry = |kind: &str| ObjectInController {
            controller: "c".into(),
            kind: kind.into(),
            cached: true,
            next: Some(Trigger::Requeue),
            records: Vec::new(),
            content: None,
            content_note: None,
        };
        let report = |kind: &str| ObjectReport {
            namespace: "ns".into(),
            name: "x".into(),
            controllers: vec![entry(kind)],
        };
        let page = object(&report("ConfigMap"));
        assert!(page.contains("/objects/ns/x?content=true"), "{page}");
        assert!(page.contains("next reconcile: requeue"), "{page}");
        let page = object(&report("Secret"));
        assert!(!page.contains("content=true"), "{page}");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_764_610_884_000), "2025-12-01 17:41:24 UTC");
    }
}
