//! The checked-in CRD YAML (`config/crd/bases/nuop.dev_nuoperators.yaml`) must be what
//! the Rust types generate. Compared as data, so formatting does not matter but every
//! field, default and validation does. `make manifests` regenerates the file.

use std::path::Path;

use kube::CustomResourceExt as _;
use nuop_crd::NuOperator;
use serde_json::Value;

const CHECKED_IN: &str = "../config/crd/bases/nuop.dev_nuoperators.yaml";

fn checked_in() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHECKED_IN);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `make manifests`", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// The first path where two values differ, for a readable failure.
fn first_difference(path: &str, want: &Value, have: &Value) -> Option<String> {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            for key in w.keys().chain(h.keys()) {
                let (a, b) = (
                    w.get(key).unwrap_or(&Value::Null),
                    h.get(key).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(&format!("{path}.{key}"), a, b) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(w), Value::Array(h)) if w.len() == h.len() => w
            .iter()
            .zip(h)
            .enumerate()
            .find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b)),
        // Numbers compare by value: YAML may read `10.0` where JSON wrote `10.0` or `10`.
        (Value::Number(w), Value::Number(h)) if w.as_f64() == h.as_f64() => None,
        _ if want == have => None,
        _ => Some(format!(
            "{path}: the types say {want}, the file says {have}"
        )),
    }
}

#[test]
fn checked_in_crd_matches_the_types() {
    let generated = serde_json::to_value(NuOperator::crd()).expect("the CRD serializes");
    if let Some(difference) = first_difference("", &generated, &checked_in()) {
        panic!("{CHECKED_IN} is out of date (run `make manifests`): {difference}");
    }
}

#[test]
fn the_comparison_notices_a_change() {
    // The drift test must be able to fail: a changed default is a difference.
    let generated = serde_json::to_value(NuOperator::crd()).expect("the CRD serializes");
    let mut changed = generated.clone();
    changed["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["replicas"]["default"] = Value::from(7);
    let difference = first_difference("", &generated, &changed).expect("a difference");
    assert!(difference.contains("replicas.default"), "{difference}");
    assert!(first_difference("", &generated, &generated).is_none());
}

#[test]
fn crdgen_output_is_what_the_library_renders() {
    let yaml = nuop_crd::crd_yaml().expect("renders");
    let parsed: Value = serde_saphyr::from_str(&yaml).expect("crd_yaml is YAML");
    let generated = serde_json::to_value(NuOperator::crd()).expect("the CRD serializes");
    assert_eq!(first_difference("", &generated, &parsed), None);
}
