//! A tool's input and output schemas, generated from its Rust types: the `utoipa::ToSchema`
//! descriptions the OpenAPI document is built from (so a tool's result is described by the same
//! schema as the REST answer it comes from), made into self-contained JSON Schemas (2020-12,
//! MCP's default dialect): the schemas they refer to go under `$defs`.

use std::sync::Arc;

use rmcp::model::JsonObject;
use serde_json::Value;
use utoipa::ToSchema;

/// Where utoipa's references point (an OpenAPI document's components).
const COMPONENTS: &str = "#/components/schemas/";

/// The JSON Schema of `T`, as MCP wants a tool's: an object schema, with every schema it refers
/// to under `$defs`.
pub(super) fn object<T: ToSchema>() -> Arc<JsonObject> {
    let mut referenced = Vec::new();
    T::schemas(&mut referenced);
    let mut root = match serde_json::to_value(T::schema()) {
        Ok(Value::Object(root)) => root,
        _ => JsonObject::new(),
    };
    let definitions: JsonObject = referenced
        .into_iter()
        .filter_map(|(name, schema)| Some((name, serde_json::to_value(schema).ok()?)))
        .collect();
    if !definitions.is_empty() {
        root.insert("$defs".into(), Value::Object(definitions));
    }
    // A union of object schemas (`anyOf`, `allOf`) is an object too; MCP asks for the type.
    root.entry("type")
        .or_insert_with(|| Value::String("object".into()));
    let mut root = Value::Object(root);
    point_references_at_definitions(&mut root);
    match root {
        Value::Object(root) => Arc::new(root),
        _ => Arc::new(JsonObject::new()),
    }
}

/// `#/components/schemas/X` → `#/$defs/X`, everywhere in `value`.
fn point_references_at_definitions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(target) if key == "$ref" => {
                        if let Some(name) = target.strip_prefix(COMPONENTS) {
                            *target = format!("#/$defs/{name}");
                        }
                    }
                    _ => point_references_at_definitions(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(point_references_at_definitions),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        client::{ApiClient, InProcess},
        mcp::tools::table,
    };

    /// Every `$ref` in `value`.
    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match value {
                        Value::String(target) if key == "$ref" => found.push(target.clone()),
                        _ => references(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_tool_schema_is_a_self_contained_object_schema() {
        for entry in table::<ApiClient<InProcess>>() {
            for (which, schema) in [("input", entry.input()), ("output", entry.output())] {
                let name = entry.spec.name;
                assert_eq!(schema["type"], "object", "{name}'s {which}");
                let mut found = Vec::new();
                let schema = Value::Object((*schema).clone());
                references(&schema, &mut found);
                for target in found {
                    let definition = target
                        .strip_prefix("#/$defs/")
                        .unwrap_or_else(|| panic!("{name}'s {which} refers outside: {target}"));
                    assert!(
                        schema["$defs"][definition].is_object(),
                        "{name}'s {which}: {target} is not defined"
                    );
                }
            }
        }
    }

    #[test]
    fn inputs_refuse_unknown_arguments_and_say_what_they_take() {
        let tools = table::<ApiClient<InProcess>>();
        let logs = tools
            .iter()
            .find(|entry| entry.spec.name == "get_deployment_logs")
            .expect("the logs tool");
        let input = logs.input();
        assert_eq!(input["additionalProperties"], false, "{input:?}");
        assert_eq!(input["required"], serde_json::json!(["id"]));
        assert_eq!(input["properties"]["tail"]["maximum"], 1000);
        let trigger = tools
            .iter()
            .find(|entry| entry.spec.name == "trigger_deployment")
            .expect("the trigger tool");
        let input = trigger.input();
        assert!(input["properties"]["strategy"].is_object(), "{input:?}");
        assert!(input["properties"]["wait"].is_object(), "{input:?}");
    }
}
