//! The JSON Schema of the spec format, as `kiln schema` prints it and TOML
//! editors (taplo, Even Better TOML) consume it. schemars describes the serde
//! model, in which an optional field may be `null`; TOML has no null, so the
//! schema is rewritten to say "may be absent" instead, and to require what
//! validation requires (at least one target).

use serde_json::{Map, Value};

use crate::model::Spec;

/// The JSON Schema (draft 2020-12) of a kiln spec.
pub fn json_schema() -> Value {
    let mut schema = schemars::schema_for!(Spec).to_value();
    drop_nulls(&mut schema);
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), "kiln image spec".into());
        if let Some(Value::Array(required)) = root.get_mut("required") {
            required.push("targets".into());
        }
        if let Some(targets) = root
            .get_mut("$defs")
            .and_then(|d| d.get_mut("Targets"))
            .and_then(Value::as_object_mut)
        {
            targets.insert("minProperties".into(), 1.into());
        }
        if let Some(targets) = root
            .get_mut("properties")
            .and_then(|p| p.get_mut("targets"))
            .and_then(Value::as_object_mut)
        {
            targets.remove("default");
        }
    }
    schema
}

/// Rewrites `type: [T, "null"]` to `type: T`, `anyOf: [S, {type: null}]` to
/// S, and removes `default: null` and null members of default objects.
fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            rewrite_schema(map);
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

fn rewrite_schema(map: &mut Map<String, Value>) {
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            map.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(variants)) = map.get("anyOf") {
        let non_null: Vec<&Value> = variants
            .iter()
            .filter(|v| v.get("type").is_none_or(|t| t != "null"))
            .collect();
        if non_null.len() == 1 && variants.len() == 2 {
            if let Some(Value::Object(inner)) = non_null.first().map(|v| (*v).clone()) {
                map.remove("anyOf");
                map.extend(inner);
            }
        }
    }
    match map.get_mut("default") {
        Some(Value::Null) => {
            map.remove("default");
        }
        Some(Value::Object(default)) => default.retain(|_, v| !v.is_null()),
        _ => {}
    }
}
