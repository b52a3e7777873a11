//! Conversion of Nushell values to JSON, for values a script returns in-process.
//!
//! Pure. Durations become seconds (so `timeout: 5sec` in a config record means five
//! seconds), file sizes bytes, dates RFC 3339 text; closures and other engine-only values
//! are rendered as text.

use nu_protocol::{Config, Value};
use serde_json::{Map, Number, Value as Json};

/// Converts a Nushell value into JSON.
pub fn to_json(value: &Value, config: &Config) -> Json {
    match value {
        Value::Nothing { .. } => Json::Null,
        Value::Bool { val, .. } => Json::Bool(*val),
        Value::Int { val, .. } => Json::Number((*val).into()),
        Value::Float { val, .. } => Number::from_f64(*val).map_or(Json::Null, Json::Number),
        Value::String { val, .. } | Value::Glob { val, .. } => Json::String(val.clone()),
        Value::Filesize { val, .. } => Json::Number(val.get().into()),
        Value::Duration { val, .. } => {
            Number::from_f64(*val as f64 / 1e9).map_or(Json::Null, Json::Number)
        }
        Value::Date { val, .. } => Json::String(val.to_rfc3339()),
        Value::Record { val, .. } => Json::Object(
            val.iter()
                .map(|(k, v)| (k.clone(), to_json(v, config)))
                .collect::<Map<_, _>>(),
        ),
        Value::List { vals, .. } => Json::Array(vals.iter().map(|v| to_json(v, config)).collect()),
        other => Json::String(other.to_expanded_string(" ", config)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nu_protocol::{Record, Span};
    use serde_json::json;

    #[test]
    fn records_lists_and_scalars_convert() {
        let s = Span::unknown();
        let mut rec = Record::new();
        rec.push("name", Value::string("x", s));
        rec.push("n", Value::int(3, s));
        rec.push("ok", Value::bool(true, s));
        rec.push("none", Value::nothing(s));
        rec.push("timeout", Value::duration(5_000_000_000, s));
        rec.push("l", Value::list(vec![Value::float(1.5, s)], s));
        let json = to_json(&Value::record(rec, s), &Config::default());
        assert_eq!(
            json,
            json!({"name": "x", "n": 3, "ok": true, "none": null, "timeout": 5.0, "l": [1.5]})
        );
    }
}
