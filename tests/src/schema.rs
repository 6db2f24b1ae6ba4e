//! Validates Kubernetes objects against a CustomResourceDefinition's `openAPIV3Schema`, offline,
//! as closely to the API server as a JSON Schema validator gets.
//!
//! A CRD schema is OpenAPI 3.0 plus Kubernetes extensions. Before validating, [`to_json_schema`]
//! translates what plain JSON Schema would read differently:
//! - `nullable: true` lets a value be `null` too;
//! - `x-kubernetes-int-or-string: true` means integer or string;
//! - objects refuse fields their schema does not declare, unless they declare
//!   `additionalProperties` or `x-kubernetes-preserve-unknown-fields: true`. The API server itself
//!   prunes unknown fields silently, but `kubectl apply` asks it for strict field validation by
//!   default, which refuses them: so a typo such as `matches:` for `match:` is an error here too;
//! - the root also takes `apiVersion`, `kind` and `metadata`, which every object has.
//!
//! Other `x-kubernetes-*` keys are annotations to the validator. CEL rules
//! (`x-kubernetes-validations`) are **not** evaluated: no offline CEL evaluator with Kubernetes'
//! extension functions (`isURL`, `isSorted`, …) is at hand, so what only a CEL rule refuses passes
//! here; cohort's own rules are mirrored by `validate_spec`, which the tests also run.

use std::path::Path;

use serde_json::{Map, Value};

use crate::{Context, Result};

/// One served version of a CRD, ready to validate objects of that `apiVersion` and kind.
#[derive(Debug, Clone)]
pub struct CrdVersion {
    /// `group/version`, as objects write it in `apiVersion`.
    pub api_version: String,
    /// The kind.
    pub kind: String,
    /// The version's `openAPIV3Schema`, as the CRD writes it.
    pub schema: Value,
}

/// Whether an object must be whole, or may be a patch body carrying only some fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// A whole object: required fields must be present.
    Whole,
    /// A server-side-apply or merge patch body: only the fields present are checked (their
    /// types, enums, patterns and names), since the API server validates the merged result.
    Partial,
}

/// Every served version of the CRD(s) in a YAML file (comments and several documents allowed).
pub fn load_crd(path: &Path) -> Result<Vec<CrdVersion>> {
    let text = std::fs::read_to_string(path).context(|| format!("reading {}", path.display()))?;
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).context(|| format!("parsing {}", path.display()))?;
    let mut versions = Vec::new();
    for crd in documents.iter().filter(|doc| !doc.is_null()) {
        if crd["kind"] != "CustomResourceDefinition" {
            return Err(format!(
                "{}: a {} is not a CustomResourceDefinition",
                path.display(),
                crd["kind"]
            )
            .into());
        }
        let spec = &crd["spec"];
        let (group, kind) = match (spec["group"].as_str(), spec["names"]["kind"].as_str()) {
            (Some(group), Some(kind)) => (group, kind),
            _ => {
                return Err(format!("{}: no spec.group or spec.names.kind", path.display()).into())
            }
        };
        for version in spec["versions"].as_array().into_iter().flatten() {
            if version["served"] != Value::Bool(true) {
                continue;
            }
            let name = version["name"].as_str().unwrap_or_default();
            let schema = &version["schema"]["openAPIV3Schema"];
            if !schema.is_object() {
                return Err(
                    format!("{}: version {name} has no openAPIV3Schema", path.display()).into(),
                );
            }
            versions.push(CrdVersion {
                api_version: format!("{group}/{name}"),
                kind: kind.to_owned(),
                schema: schema.clone(),
            });
        }
    }
    Ok(versions)
}

/// Validates a whole object against the served version of the CRD in `crd_path` that its
/// `apiVersion` and `kind` name. Returns every problem, each as `path: what is wrong`.
pub fn validate_against_crd(
    crd_path: &Path,
    object: &Value,
) -> std::result::Result<(), Vec<String>> {
    validate_with(crd_path, object, Completeness::Whole)
}

/// As [`validate_against_crd`], for a patch body (server-side apply or merge patch): required
/// fields may be missing, everything present must fit the schema.
pub fn validate_patch_against_crd(
    crd_path: &Path,
    patch: &Value,
) -> std::result::Result<(), Vec<String>> {
    validate_with(crd_path, patch, Completeness::Partial)
}

fn validate_with(
    crd_path: &Path,
    object: &Value,
    completeness: Completeness,
) -> std::result::Result<(), Vec<String>> {
    let versions = load_crd(crd_path).map_err(|error| vec![error.0])?;
    let version = find_version(&versions, object)?;
    validate_against_schema(&version.schema, object, completeness)
}

/// The version of `versions` serving `object`'s `apiVersion` and `kind`.
pub fn find_version<'v>(
    versions: &'v [CrdVersion],
    object: &Value,
) -> std::result::Result<&'v CrdVersion, Vec<String>> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    versions
        .iter()
        .find(|version| version.api_version == api_version && version.kind == kind)
        .ok_or_else(|| {
            let served: Vec<String> = versions
                .iter()
                .map(|version| format!("{} {}", version.api_version, version.kind))
                .collect();
            vec![format!(
                "no served version for apiVersion {api_version:?} kind {kind:?}; served: {}",
                served.join(", ")
            )]
        })
}

/// Validates `object` against one `openAPIV3Schema` (see the module docs for the semantics).
pub fn validate_against_schema(
    openapi_schema: &Value,
    object: &Value,
    completeness: Completeness,
) -> std::result::Result<(), Vec<String>> {
    let schema = to_json_schema(openapi_schema, completeness);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|error| vec![format!("the schema does not compile: {error}")])?;
    let errors: Vec<String> = validator
        .iter_errors(object)
        .map(|error| {
            let path = error.instance_path().to_string();
            let path = if path.is_empty() { "/" } else { path.as_str() };
            format!("{path}: {error}")
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The JSON Schema (draft 4) that validates what the API server, asked for strict field
/// validation, would accept under this `openAPIV3Schema`.
pub fn to_json_schema(openapi_schema: &Value, completeness: Completeness) -> Value {
    let mut schema = openapi_schema.clone();
    if let Value::Object(root) = &mut schema {
        let properties = root
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(properties) = properties {
            for key in ["apiVersion", "kind"] {
                properties
                    .entry(key)
                    .or_insert_with(|| serde_json::json!({"type": "string"}));
            }
            // The API server checks metadata itself; an object needs at least a name.
            properties.entry("metadata").or_insert_with(|| {
                serde_json::json!({
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "minLength": 1}},
                    "additionalProperties": true
                })
            });
        }
    }
    translate(&mut schema, completeness == Completeness::Partial);
    schema
}

/// Translates one schema node and its children. `drop_required`: a partial object may omit
/// this node's required fields. Never true inside `oneOf`/`anyOf`/`allOf`/`not`, whose branches
/// tell alternatives apart by which fields are present.
fn translate(schema: &mut Value, drop_required: bool) {
    let Value::Object(node) = schema else {
        return;
    };
    // Children first: what is added below is already in JSON Schema's terms.
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        for child in properties.values_mut() {
            translate(child, drop_required);
        }
    }
    for keyword in ["items", "additionalProperties"] {
        if let Some(child) = node.get_mut(keyword) {
            translate(child, drop_required);
        }
    }
    if let Some(child) = node.get_mut("not") {
        translate(child, false);
    }
    for keyword in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(children)) = node.get_mut(keyword) {
            for child in children {
                translate(child, false);
            }
        }
    }
    if drop_required {
        node.remove("required");
    }
    if node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        && !node.contains_key("anyOf")
    {
        node.insert(
            "anyOf".to_owned(),
            serde_json::json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    let preserves_unknown =
        node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if node.contains_key("properties") && !preserves_unknown {
        node.entry("additionalProperties")
            .or_insert(Value::Bool(false));
    }
    if node.remove("nullable") == Some(Value::Bool(true)) {
        allow_null(node);
    }
}

/// Widens a schema node to accept `null` as well.
fn allow_null(node: &mut Map<String, Value>) {
    match node.get_mut("type") {
        Some(Value::String(kind)) => {
            let kind = std::mem::take(kind);
            node.insert("type".to_owned(), serde_json::json!([kind, "null"]));
        }
        Some(Value::Array(kinds)) => {
            if !kinds.contains(&Value::from("null")) {
                kinds.push(Value::from("null"));
            }
        }
        _ => {
            // No type of its own (e.g. int-or-string's anyOf): accept null beside the rest.
            let rest = Value::Object(std::mem::take(node));
            node.insert(
                "anyOf".to_owned(),
                serde_json::json!([{"type": "null"}, rest]),
            );
        }
    }
}

/// The documents of a multi-document YAML text, skipping empty ones.
pub fn yaml_documents(text: &str) -> Result<Vec<Value>> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).context(|| "parsing YAML".to_owned())?;
    Ok(documents.into_iter().filter(|doc| !doc.is_null()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(schema: Value, object: Value) -> std::result::Result<(), Vec<String>> {
        validate_against_schema(&schema, &object, Completeness::Whole)
    }

    #[test]
    fn unknown_fields_are_refused_unless_the_schema_keeps_them() {
        let schema = json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {"a": {"type": "string"}}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "map": {"type": "object", "additionalProperties": {"type": "integer"}}
            }
        });
        let ok = json!({"spec": {"a": "x"}, "free": {"anything": [1]}, "map": {"k": 1}});
        assert_eq!(check(schema.clone(), ok), Ok(()));
        let errors = check(schema.clone(), json!({"spec": {"b": "x"}})).unwrap_err();
        assert!(errors[0].starts_with("/spec:"), "{errors:?}");
        assert!(check(schema, json!({"map": {"k": "one"}})).is_err());
    }

    #[test]
    fn kubernetes_extensions_are_translated() {
        let schema = json!({
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": true},
                "priority": {"type": "integer", "nullable": true, "format": "int32"},
                "generation": {
                    "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "x-kubernetes-int-or-string": true,
                    "nullable": true
                }
            }
        });
        for object in [
            json!({"port": 80, "priority": null, "generation": null}),
            json!({"port": "http", "priority": 3, "generation": "7"}),
        ] {
            assert_eq!(check(schema.clone(), object.clone()), Ok(()), "{object}");
        }
        for object in [json!({"port": 1.5}), json!({"priority": "high"})] {
            assert!(check(schema.clone(), object.clone()).is_err(), "{object}");
        }
    }

    #[test]
    fn partial_objects_skip_required_fields_only() {
        let schema = json!({
            "type": "object",
            "required": ["spec"],
            "properties": {"spec": {
                "type": "object",
                "required": ["url"],
                "properties": {"url": {"type": "string"}, "mode": {"enum": ["A", "B"]}}
            }}
        });
        let patch = json!({"metadata": {"name": "x"}, "spec": {"mode": "A"}});
        assert!(check(schema.clone(), patch.clone()).is_err());
        assert_eq!(
            validate_against_schema(&schema, &patch, Completeness::Partial),
            Ok(())
        );
        let bad = json!({"metadata": {"name": "x"}, "spec": {"mode": "C"}});
        assert!(validate_against_schema(&schema, &bad, Completeness::Partial).is_err());
    }

    #[test]
    fn partial_objects_still_tell_one_of_branches_apart() {
        let schema = json!({
            "type": "object",
            "properties": {"gate": {
                "type": "object",
                "properties": {"a": {"type": "object"}, "b": {"type": "object"}},
                "oneOf": [{"required": ["a"]}, {"required": ["b"]}]
            }}
        });
        let one = json!({"metadata": {"name": "x"}, "gate": {"a": {}}});
        assert_eq!(
            validate_against_schema(&schema, &one, Completeness::Partial),
            Ok(())
        );
        let both = json!({"metadata": {"name": "x"}, "gate": {"a": {}, "b": {}}});
        assert!(validate_against_schema(&schema, &both, Completeness::Partial).is_err());
    }

    #[test]
    fn objects_need_a_name_and_may_carry_type_meta() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object"}}});
        let named =
            json!({"apiVersion": "a/v1", "kind": "K", "metadata": {"name": "n", "labels": {}}});
        assert_eq!(check(schema.clone(), named), Ok(()));
        assert!(check(schema, json!({"metadata": {}})).is_err());
    }
}
