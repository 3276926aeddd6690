//! The JSON Schema of the topology (`bssctl schema`) and the Kubernetes CustomResourceDefinition
//! generated from the same types (`bssctl crd`, committed as `manifests/crd.yaml`).
//!
//! Kubernetes wants a structural schema: no `$ref`, one `type` per node, no `additionalProperties:
//! false` next to `properties`; this module rewrites schemars' output accordingly.

use schemars::schema_for;
use serde_json::{json, Map, Value};

use crate::topology::status::TopologyStatus;
use crate::topology::types::{Topology, TopologySpec};

/// JSON Schema (draft 7) of a whole topology document.
pub fn schema() -> Value {
    serde_json::to_value(schema_for!(Topology)).unwrap_or(Value::Null)
}

pub fn schema_json() -> String {
    serde_json::to_string_pretty(&schema()).unwrap_or_default() + "\n"
}

fn inline(v: &Value, defs: &Map<String, Value>, depth: usize) -> Value {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("$ref") {
                let name = r.trim_start_matches("#/definitions/");
                let mut target = defs.get(name).cloned().unwrap_or(json!({}));
                if let (Some(desc), Value::Object(t)) = (o.get("description"), &mut target) {
                    t.insert("description".into(), desc.clone());
                }
                return if depth > 40 {
                    json!({"x-kubernetes-preserve-unknown-fields": true})
                } else {
                    inline(&target, defs, depth + 1)
                };
            }
            // allOf with a single $ref (schemars uses it to attach a description).
            if let Some(Value::Array(all)) = o.get("allOf") {
                if all.len() == 1 {
                    let mut inner = inline(&all[0], defs, depth + 1);
                    if let (Some(desc), Value::Object(t)) = (o.get("description"), &mut inner) {
                        t.insert("description".into(), desc.clone());
                    }
                    return inner;
                }
            }
            let mut out = Map::new();
            for (k, val) in o {
                match k.as_str() {
                    "definitions" | "$schema" | "title" => {}
                    "format" => {
                        if matches!(
                            val.as_str(),
                            Some("int32") | Some("int64") | Some("double") | Some("float")
                        ) {
                            out.insert(k.clone(), val.clone());
                        }
                        let max = match val.as_str() {
                            Some("uint8") => Some(255u64),
                            Some("uint16") => Some(65_535),
                            Some("uint32") => Some(4_294_967_295),
                            _ => None,
                        };
                        if let Some(m) = max {
                            out.insert("maximum".into(), json!(m));
                        }
                    }
                    "additionalProperties" if val == &Value::Bool(false) => {}
                    "type" => match val {
                        Value::Array(types) => {
                            let non_null: Vec<&Value> = types
                                .iter()
                                .filter(|t| t.as_str() != Some("null"))
                                .collect();
                            if let Some(t) = non_null.first() {
                                out.insert("type".into(), (*t).clone());
                            }
                            if non_null.len() < types.len() {
                                out.insert("nullable".into(), Value::Bool(true));
                            }
                        }
                        other => {
                            out.insert(k.clone(), other.clone());
                        }
                    },
                    "anyOf" | "oneOf" => {
                        let branches = val.as_array().cloned().unwrap_or_default();
                        let non_null: Vec<&Value> = branches
                            .iter()
                            .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                            .collect();
                        if let [only] = non_null.as_slice() {
                            // `Option<T>`: T's schema, nullable.
                            if let Value::Object(inner) = inline(only, defs, depth + 1) {
                                for (ik, iv) in inner {
                                    out.entry(ik).or_insert(iv);
                                }
                            }
                            out.insert("nullable".into(), Value::Bool(true));
                        } else {
                            // Untagged scalars (bool|int|float|string) are not structural: keep any value.
                            out.insert(
                                "x-kubernetes-preserve-unknown-fields".into(),
                                Value::Bool(true),
                            );
                        }
                    }
                    // Property names are not keywords (a property may be called `type`).
                    "properties" => {
                        let props = val
                            .as_object()
                            .map(|p| {
                                p.iter()
                                    .map(|(pk, pv)| (pk.clone(), inline(pv, defs, depth + 1)))
                                    .collect::<Map<String, Value>>()
                            })
                            .unwrap_or_default();
                        out.insert(k.clone(), Value::Object(props));
                    }
                    "default" if val.is_null() => {}
                    _ => {
                        out.insert(k.clone(), inline(val, defs, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| inline(x, defs, depth + 1)).collect()),
        other => other.clone(),
    }
}

/// The CRD as a YAML document.
pub fn crd_yaml() -> String {
    let root = serde_json::to_value(schema_for!(TopologySpec)).unwrap_or(Value::Null);
    let defs = root
        .get("definitions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut spec = inline(&root, &defs, 0);
    if let Value::Object(o) = &mut spec {
        o.insert("type".into(), json!("object"));
        o.insert("description".into(), json!("The environment: which components exist and how they are set up. Same format as spec in topology.yaml."));
    }
    let status_root = serde_json::to_value(schema_for!(TopologyStatus)).unwrap_or(Value::Null);
    let status_defs = status_root
        .get("definitions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut status = inline(&status_root, &status_defs, 0);
    if let Value::Object(o) = &mut status {
        o.insert("type".into(), json!("object"));
        o.insert(
            "description".into(),
            json!("Written by the bssctl operator through the status subresource."),
        );
    }
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "topologies.bssctl.io",
            "labels": {"app.kubernetes.io/managed-by": "bssctl", "app.kubernetes.io/part-of": "bssctl"}
        },
        "spec": {
            "group": "bssctl.io",
            "names": {"kind": "Topology", "listKind": "TopologyList", "plural": "topologies", "singular": "topology", "shortNames": ["topo"]},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Available\")].status"},
                    {"name": "Primary", "type": "string", "jsonPath": ".status.currentPrimary"},
                    {"name": "Progressing", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Progressing\")].status"},
                    {"name": "Degraded", "type": "string", "priority": 1, "jsonPath": ".status.conditions[?(@.type==\"Degraded\")].status"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status
                    }
                }}
            }]
        }
    });
    let body = serde_yaml::to_string(&crd).unwrap_or_default();
    format!(
        "# Generated by `bssctl crd` from controller/src/topology/types.rs and status.rs. Do not edit.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn walk(v: &Value, f: &mut dyn FnMut(&Map<String, Value>)) {
        match v {
            Value::Object(o) => {
                f(o);
                o.values().for_each(|x| walk(x, f));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, f)),
            _ => {}
        }
    }

    #[test]
    fn crd_is_structural() {
        let doc: Value = serde_yaml::from_str(&crd_yaml()).unwrap();
        walk(&doc, &mut |o| {
            assert!(!o.contains_key("$ref"), "$ref left in CRD");
            assert!(!o.contains_key("anyOf") && !o.contains_key("oneOf"));
            if let Some(t) = o.get("type") {
                // An object here is the schema of a property named `type` (conditions[].type).
                assert!(
                    t.is_string() || t.is_object() || o.contains_key("name"),
                    "type must be a single string: {t}"
                );
            }
            if o.contains_key("properties") {
                assert_ne!(o.get("additionalProperties"), Some(&Value::Bool(false)));
            }
        });
        let spec = &doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["postgres"]["properties"]["replicas"]["type"],
            "integer"
        );
        let status =
            &doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
        let cond = &status["properties"]["conditions"]["items"]["properties"];
        assert_eq!(cond["type"]["type"], "string");
        assert_eq!(
            cond["type"]["enum"],
            json!(["Available", "Progressing", "Degraded"])
        );
        assert_eq!(
            status["properties"]["observedGeneration"]["type"],
            "integer"
        );
    }
}
