//! Ownership of children: the primary's controller ownerReference and nuop's framework
//! labels, as `k8s owner-ref`, `k8s own` and an `apply` of an owned kind add them.
//!
//! Pure: no I/O.

use serde_json::{Map, Value, json};

/// The label every object nuop creates carries: `app.kubernetes.io/managed-by: nuop`.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY_VALUE: &str = "nuop";
/// The label naming the controller that owns an object; the `owns` informers select on
/// its existence.
pub const CONTROLLER_LABEL: &str = "nuop.dev/controller";

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The primary's ownerReference as a controller: `{apiVersion, kind, name, uid,
/// controller: true, blockOwnerDeletion: true}`.
///
/// # Errors
/// A message naming the field the primary lacks (apiVersion, kind, metadata.name,
/// metadata.uid).
pub fn owner_ref(primary: &Value) -> Result<Value, String> {
    let field = |pointer: &str, name: &str| {
        text(primary, pointer).ok_or_else(|| format!("the primary object has no {name}"))
    };
    Ok(json!({
        "apiVersion": field("/apiVersion", "apiVersion")?,
        "kind": field("/kind", "kind")?,
        "name": field("/metadata/name", "metadata.name")?,
        "uid": field("/metadata/uid", "metadata.uid")?,
        "controller": true,
        "blockOwnerDeletion": true,
    }))
}

/// `object` with the primary as its controller ownerReference (replacing an earlier
/// reference to the same UID, keeping other owners) and the labels
/// `app.kubernetes.io/managed-by: nuop` and `nuop.dev/controller: <controller>`.
///
/// # Errors
/// When the object is not a record, the primary lacks what an owner reference needs, the
/// object lives in another namespace than a namespaced primary (the garbage collector
/// would treat the owner as missing), or another object is already its controller.
pub fn own(object: &Value, primary: &Value, controller: &str) -> Result<Value, String> {
    let reference = owner_ref(primary)?;
    let mut object = object.clone();
    let Some(map) = object.as_object_mut() else {
        return Err(format!("expected an object (a record), not {object}"));
    };
    let primary_ns = text(primary, "/metadata/namespace");
    let child_ns = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    if let (Some(p), Some(c)) = (primary_ns, child_ns)
        && p != c
    {
        return Err(format!(
            "cannot own an object in namespace {c}: the primary lives in {p}, and owner references cannot cross namespaces"
        ));
    }
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return Err("metadata must be a record".into());
    };
    let uid = reference["uid"].clone();
    let refs = meta
        .entry("ownerReferences")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Some(refs) = refs.as_array_mut() else {
        return Err("metadata.ownerReferences must be a list".into());
    };
    refs.retain(|r| r.get("uid") != Some(&uid));
    if let Some(other) = refs
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
    {
        return Err(format!(
            "the object is already controlled by {} {}",
            other.get("kind").and_then(Value::as_str).unwrap_or("?"),
            other.get("name").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    refs.push(reference);
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(labels) = labels.as_object_mut() else {
        return Err("metadata.labels must be a record".into());
    };
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY_VALUE.into());
    labels.insert(CONTROLLER_LABEL.into(), controller.into());
    Ok(object)
}

/// Whether `object` has an ownerReference carrying `uid`.
pub fn is_owned_by(object: &Value, uid: &str) -> bool {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary() -> Value {
        json!({"apiVersion": "nuop.dev/v1", "kind": "Greeting",
               "metadata": {"name": "hello", "namespace": "team-a", "uid": "u-1"}})
    }

    #[test]
    fn owner_ref_is_a_blocking_controller_reference() {
        assert_eq!(
            owner_ref(&primary()).expect("ref"),
            json!({"apiVersion": "nuop.dev/v1", "kind": "Greeting", "name": "hello",
                   "uid": "u-1", "controller": true, "blockOwnerDeletion": true})
        );
        let e = owner_ref(&json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}}))
            .expect_err("no uid");
        assert!(e.contains("metadata.uid"), "{e}");
    }

    #[test]
    fn own_adds_the_reference_and_the_labels_once() {
        let child = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"x": "y"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Other", "name": "o", "uid": "u-2"}]}});
        let owned = own(&child, &primary(), "greeter").expect("own");
        let again = own(&owned, &primary(), "greeter").expect("own twice");
        assert_eq!(owned, again);
        assert_eq!(
            owned["metadata"]["labels"],
            json!({"x": "y", "app.kubernetes.io/managed-by": "nuop", "nuop.dev/controller": "greeter"})
        );
        let refs = owned["metadata"]["ownerReferences"]
            .as_array()
            .expect("refs");
        assert_eq!(refs.len(), 2);
        assert_eq!(refs[1]["uid"], "u-1");
        assert!(is_owned_by(&owned, "u-1"));
        assert!(is_owned_by(&owned, "u-2"));
        assert!(!is_owned_by(&owned, "u-3"));
        assert!(!is_owned_by(&child, "u-1"));
    }

    #[test]
    fn own_refuses_what_the_api_or_the_gc_would_reject() {
        let elsewhere = json!({"metadata": {"name": "c", "namespace": "team-b"}});
        let e = own(&elsewhere, &primary(), "g").expect_err("cross-namespace");
        assert!(e.contains("team-b"), "{e}");
        let controlled = json!({"metadata": {"name": "c", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d", "uid": "u-9", "controller": true}]}});
        let e = own(&controlled, &primary(), "g").expect_err("two controllers");
        assert!(e.contains("Deployment d"), "{e}");
        assert!(own(&json!([1]), &primary(), "g").is_err());
        // A cluster-scoped primary may own namespaced children anywhere.
        let cluster_primary = json!({"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": "ns", "uid": "u-5"}});
        assert!(own(&elsewhere, &cluster_primary, "g").is_ok());
    }
}
