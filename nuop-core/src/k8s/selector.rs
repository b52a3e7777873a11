//! Label and field selectors as the `k8s` commands take them: parsing the API's string
//! form (`a=b,c!=d,e,!f,g in (x,y),h notin (z)`) or a record (`{a: b}`), matching an
//! object, and deciding whether one selector implies another (whether a cache narrowed
//! by one can answer a read narrowed by the other).
//!
//! Pure: no I/O. `kube::core::Selector` has no string parser, hence this one.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value`: the label is absent or has another value.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, BTreeSet<String>),
    /// `key notin (a,b)`: the label is absent or has none of the values.
    NotIn(String, BTreeSet<String>),
    /// `key`: the label exists.
    Exists(String),
    /// `!key`: the label does not exist.
    DoesNotExist(String),
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Self::Equals(k, _)
            | Self::NotEquals(k, _)
            | Self::In(k, _)
            | Self::NotIn(k, _)
            | Self::Exists(k)
            | Self::DoesNotExist(k) => k,
        }
    }

    fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (Self::Equals(_, v), Some(x)) => v == x,
            (Self::NotEquals(_, v), x) => x != Some(v.as_str()),
            (Self::In(_, set), Some(x)) => set.contains(x),
            (Self::NotIn(_, set), x) => x.is_none_or(|x| !set.contains(x)),
            (Self::Exists(_), x) => x.is_some(),
            (Self::DoesNotExist(_), x) => x.is_none(),
            (Self::Equals(..) | Self::In(..), None) => false,
        }
    }

    /// The values this requirement allows, when it allows only some (`=`, `in`).
    fn allowed(&self) -> Option<BTreeSet<&str>> {
        match self {
            Self::Equals(_, v) => Some(std::iter::once(v.as_str()).collect()),
            Self::In(_, set) => Some(set.iter().map(String::as_str).collect()),
            _ => None,
        }
    }

    /// The values this requirement forbids while also allowing absence (`!=`, `notin`).
    fn forbidden(&self) -> Option<BTreeSet<&str>> {
        match self {
            Self::NotEquals(_, v) => Some(std::iter::once(v.as_str()).collect()),
            Self::NotIn(_, set) => Some(set.iter().map(String::as_str).collect()),
            _ => None,
        }
    }

    /// Whether every label value (or absence) `self` accepts, `other` accepts too
    /// (both on the same key). Sound, not complete: `false` may be a missed implication.
    fn implies(&self, other: &Self) -> bool {
        if self.key() != other.key() {
            return false;
        }
        if self == other {
            return true;
        }
        match (self.allowed(), other) {
            // self pins the label to some values: other must accept each of them.
            (Some(values), _) => values.iter().all(|v| other.matches(Some(v))),
            (None, Self::Exists(_)) => false,
            (None, Self::DoesNotExist(_)) => matches!(self, Self::DoesNotExist(_)),
            (None, Self::NotEquals(..) | Self::NotIn(..)) => match self {
                Self::DoesNotExist(_) => true,
                _ => match (self.forbidden(), other.forbidden()) {
                    (Some(mine), Some(theirs)) => theirs.is_subset(&mine),
                    _ => false,
                },
            },
            (None, Self::Equals(..) | Self::In(..)) => false,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Self::Equals(k, v) => write!(f, "{k}={v}"),
            Self::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Self::In(k, set) => write!(f, "{k} in ({})", join(set)),
            Self::NotIn(k, set) => write!(f, "{k} notin ({})", join(set)),
            Self::Exists(k) => write!(f, "{k}"),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// A label selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    /// Parses the API's string form: comma-separated `k=v`, `k==v`, `k!=v`, `k`, `!k`,
    /// `k in (a,b)`, `k notin (a,b)`.
    ///
    /// # Errors
    /// A message naming the term that is not a requirement or holds an invalid key/value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self(requirements))
    }

    /// A selector from a record `{key: value}` (each an equality); values may be strings,
    /// numbers or booleans.
    ///
    /// # Errors
    /// A message naming the key whose value is not a scalar, or an invalid key/value.
    pub fn from_record(record: &Map<String, Value>) -> Result<Self, String> {
        let mut requirements = Vec::new();
        for (key, value) in record {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return Err(format!("label `{key}` must be a string, not {other}")),
            };
            check_key(key)?;
            check_value(&value)?;
            requirements.push(Requirement::Equals(key.clone(), value));
        }
        Ok(Self(requirements))
    }

    /// A selector from either form: a string (API form) or a record.
    ///
    /// # Errors
    /// As [`LabelSelector::parse`] / [`LabelSelector::from_record`]; other JSON types.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Self::parse(s),
            Value::Object(map) => Self::from_record(map),
            other => Err(format!("expected a string or a record, not {other}")),
        }
    }

    /// Whether an object with these labels matches.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        self.0.iter().all(|r| {
            let value = labels.and_then(|l| l.get(r.key())).and_then(Value::as_str);
            r.matches(value)
        })
    }

    /// Whether an object's labels (`metadata.labels`) match.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.matches(
            object
                .pointer("/metadata/labels")
                .and_then(Value::as_object),
        )
    }

    /// Whether every object this selector matches, `other` matches too: then a cache
    /// narrowed by `other` holds every object a read narrowed by `self` wants. Sound, not
    /// complete (a `false` may be an implication this check does not see).
    pub fn implies(&self, other: &LabelSelector) -> bool {
        other
            .0
            .iter()
            .all(|theirs| self.0.iter().any(|mine| mine.implies(theirs)))
    }

    /// Whether there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        check_key(key).map_err(|e| format!("`{term}`: {e}"))?;
        return Ok(Requirement::DoesNotExist(key.to_string()));
    }
    if let Some(open) = term.find('(') {
        let close = term
            .rfind(')')
            .filter(|c| *c == term.len() - 1)
            .ok_or_else(|| format!("`{term}`: missing `)` at the end"))?;
        let head: Vec<&str> = term[..open].split_whitespace().collect();
        let values: BTreeSet<String> = term[open + 1..close]
            .split(',')
            .map(|v| v.trim().to_string())
            .collect();
        for v in &values {
            check_value(v).map_err(|e| format!("`{term}`: {e}"))?;
        }
        return match head.as_slice() {
            [key, "in"] => {
                check_key(key).map_err(|e| format!("`{term}`: {e}"))?;
                Ok(Requirement::In((*key).to_string(), values))
            }
            [key, "notin"] => {
                check_key(key).map_err(|e| format!("`{term}`: {e}"))?;
                Ok(Requirement::NotIn((*key).to_string(), values))
            }
            _ => Err(format!(
                "`{term}`: expected `key in (a,b)` or `key notin (a,b)`"
            )),
        };
    }
    let (key, value, equal) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, true)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, v, true)
    } else {
        let key = term.trim();
        check_key(key).map_err(|e| format!("`{term}`: {e}"))?;
        return Ok(Requirement::Exists(key.to_string()));
    };
    let (key, value) = (key.trim(), value.trim());
    check_key(key).map_err(|e| format!("`{term}`: {e}"))?;
    check_value(value).map_err(|e| format!("`{term}`: {e}"))?;
    Ok(if equal {
        Requirement::Equals(key.into(), value.into())
    } else {
        Requirement::NotEquals(key.into(), value.into())
    })
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of alphanumerics,
/// `-`, `_`, `.`.
fn check_key(key: &str) -> Result<(), String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let valid = !name.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && key.matches('/').count() <= 1;
    if valid {
        Ok(())
    } else {
        Err(format!("`{key}` is not a valid label key"))
    }
}

fn check_value(value: &str) -> Result<(), String> {
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!("`{value}` is not a valid label value"))
    }
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    /// The field path (`metadata.name`, `status.phase`).
    pub path: String,
    /// The value compared with.
    pub value: String,
    /// `=`/`==` (true) or `!=` (false).
    pub equal: bool,
}

/// A field selector: comma-separated `path=value`, `path==value`, `path!=value`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(pub Vec<FieldTerm>);

impl FieldSelector {
    /// Parses the API's string form.
    ///
    /// # Errors
    /// A message naming the term without an operator or a path.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
                (p, v, false)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, v, true)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, v, true)
            } else {
                return Err(format!(
                    "`{term}`: expected `field=value` or `field!=value`"
                ));
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(format!("`{term}`: the field is missing"));
            }
            terms.push(FieldTerm {
                path: path.to_string(),
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(Self(terms))
    }

    /// Whether an object matches: each path is looked up as dotted keys (a missing field
    /// compares as the empty string, as the API server does for optional fields).
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|t| {
            let found = t
                .path
                .split('.')
                .try_fold(object, |v, key| v.get(key))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                })
                .unwrap_or_default();
            (found == t.value) == t.equal
        })
    }

    /// Whether every term is on `metadata.name` or `metadata.namespace` (what cached
    /// reads can answer).
    pub fn only_metadata(&self) -> bool {
        self.0
            .iter()
            .all(|t| matches!(t.path.as_str(), "metadata.name" | "metadata.namespace"))
    }

    /// Whether every term of `other` is also a term of `self` (so a cache narrowed by
    /// `other` holds what a read narrowed by `self` wants).
    pub fn implies(&self, other: &FieldSelector) -> bool {
        other.0.iter().all(|t| self.0.contains(t))
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|t| format!("{}{}{}", t.path, if t.equal { "=" } else { "!=" }, t.value))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).expect(s)
    }

    fn labels(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn every_form_parses_and_prints_back() {
        let s = sel("a=b, c==d,e!=f,g,!h,i in (x, y),j notin (z)");
        assert_eq!(
            s.0,
            vec![
                Requirement::Equals("a".into(), "b".into()),
                Requirement::Equals("c".into(), "d".into()),
                Requirement::NotEquals("e".into(), "f".into()),
                Requirement::Exists("g".into()),
                Requirement::DoesNotExist("h".into()),
                Requirement::In("i".into(), ["x".into(), "y".into()].into()),
                Requirement::NotIn("j".into(), ["z".into()].into()),
            ]
        );
        assert_eq!(s.to_string(), "a=b,c=d,e!=f,g,!h,i in (x,y),j notin (z)");
        assert_eq!(
            sel("nuop.dev/controller").to_string(),
            "nuop.dev/controller"
        );
        assert!(sel("").is_empty());
    }

    #[test]
    fn bad_terms_are_named() {
        for bad in [
            "a=b c",
            "a in x,y)",
            "a in (x",
            "a oops (x)",
            "=b",
            "a/b/c=d",
            "!",
        ] {
            let e = LabelSelector::parse(bad).expect_err(bad);
            assert!(e.contains('`'), "{bad}: {e}");
        }
        let e = LabelSelector::from_json(&json!({"a": [1]})).expect_err("list value");
        assert!(e.contains("`a`"), "{e}");
        assert!(LabelSelector::from_json(&json!(3)).is_err());
    }

    #[test]
    fn records_are_equalities() {
        let s = LabelSelector::from_json(&json!({"app": "web", "n": 3})).expect("record");
        assert_eq!(s.to_string(), "app=web,n=3");
    }

    #[test]
    fn matching_follows_the_api_semantics() {
        let l = labels(json!({"a": "b", "i": "x"}));
        assert!(sel("a=b,i in (x,y),!h,e!=f,j notin (z)").matches(Some(&l)));
        assert!(sel("a").matches(Some(&l)));
        assert!(!sel("a=c").matches(Some(&l)));
        assert!(!sel("a!=b").matches(Some(&l)));
        assert!(!sel("!a").matches(Some(&l)));
        assert!(!sel("i notin (x)").matches(Some(&l)));
        assert!(!sel("h in (x)").matches(Some(&l)));
        assert!(sel("").matches(None));
        assert!(sel("a!=b").matches(None));
        assert!(!sel("a").matches(None));
        assert!(sel("a=b").matches_object(&json!({"metadata": {"labels": {"a": "b"}}})));
    }

    #[test]
    fn implication_is_what_a_cache_can_cover() {
        let cases = [
            ("a=b", "a", true),
            ("a in (x,y)", "a", true),
            ("a=b,c=d", "a=b", true),
            ("a=b", "a in (b,c)", true),
            ("a in (b)", "a=b", true),
            ("a in (b,c)", "a=b", false),
            ("a=b", "a!=c", true),
            ("a=b", "a!=b", false),
            ("!a", "a!=b", true),
            ("!a", "a notin (b)", true),
            ("a notin (x,y)", "a!=x", true),
            ("a!=x", "a notin (x,y)", false),
            ("a=c", "a notin (x,y)", true),
            ("a", "a=b", false),
            ("a", "!a", false),
            ("!a", "!a", true),
            ("", "a", false),
            ("a=b", "", true),
            ("", "", true),
            ("x=y", "a", false),
        ];
        for (read, cache, expected) in cases {
            assert_eq!(
                sel(read).implies(&sel(cache)),
                expected,
                "{read:?} implies {cache:?}"
            );
        }
    }

    #[test]
    fn field_selectors_match_paths_and_know_their_cacheable_part() {
        let obj =
            json!({"metadata": {"name": "a", "namespace": "n"}, "status": {"phase": "Active"}});
        let f = FieldSelector::parse("metadata.name=a,metadata.namespace!=m").expect("parse");
        assert!(f.matches(&obj));
        assert!(f.only_metadata());
        let p = FieldSelector::parse("status.phase==Active").expect("parse");
        assert!(p.matches(&obj));
        assert!(!p.only_metadata());
        assert!(
            !FieldSelector::parse("spec.x=1")
                .expect("parse")
                .matches(&obj)
        );
        assert!(
            FieldSelector::parse("spec.x=")
                .expect("parse")
                .matches(&obj)
        );
        assert!(FieldSelector::parse("metadata.name").is_err());
        assert_eq!(f.to_string(), "metadata.name=a,metadata.namespace!=m");
        assert!(f.implies(&FieldSelector::parse("metadata.name=a").expect("parse")));
        assert!(!FieldSelector::parse("").expect("parse").implies(&f));
    }
}
