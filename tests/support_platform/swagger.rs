//! A small walker that checks JSON values against the published Swagger 2.0 document
//! (`tests/data/instances-swagger.json`, its source in `tests/data/README.md`): types, properties,
//! `required`, `$ref`, `additionalProperties` maps, arrays. Mismatches are reported with their
//! JSON path.

use std::path::PathBuf;

use serde_json::Value;

/// A deliberate deviation from the Swagger, with the reason it is tolerated.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// Definition name, e.g. `ElementInstance`.
    pub definition: &'static str,
    /// Field name.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

/// What a check tolerates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allowances {
    /// Fields the platform really sends although the Swagger omits them.
    pub extra_fields: &'static [Allowance],
    /// `required` fields that may be absent.
    pub missing_required: &'static [Allowance],
}

pub struct Swagger {
    doc: Value,
}

impl Swagger {
    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("data").join("instances-swagger.json")
    }

    pub fn load() -> Swagger {
        let path = Self::path();
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Swagger { doc: serde_json::from_str(&text).expect("swagger is JSON") }
    }

    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_ascii_lowercase()];
        assert!(op.is_object(), "swagger has no operation {method} {path}");
        op
    }

    /// Schema of the 200 answer, if the Swagger gives one.
    pub fn response_schema(&self, method: &str, path: &str) -> Option<Value> {
        let schema = &self.operation(method, path)["responses"]["200"]["schema"];
        (!schema.is_null()).then(|| schema.clone())
    }

    /// Schema of the body parameter.
    pub fn request_schema(&self, method: &str, path: &str) -> Option<Value> {
        self.operation(method, path)["parameters"]
            .as_array()?
            .iter()
            .find(|p| p["in"] == "body")
            .map(|p| p["schema"].clone())
    }

    /// The names of the query parameters of an operation.
    pub fn query_parameters(&self, method: &str, path: &str) -> Vec<String> {
        self.operation(method, path)["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks `value` against `schema`; returns every mismatch as `<json path>: <problem>`.
    pub fn check(&self, schema: &Value, value: &Value, allow: Allowances) -> Vec<String> {
        let mut errors = Vec::new();
        self.walk(schema, value, "$", None, allow, &mut errors);
        errors
    }

    fn resolve<'a>(&'a self, reference: &str) -> (&'a Value, Option<&'a str>) {
        let name = reference
            .strip_prefix("#/definitions/")
            .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
        let def = &self.doc["definitions"][name];
        assert!(def.is_object(), "unknown definition {name}");
        let name =
            self.doc["definitions"].as_object().and_then(|d| d.get_key_value(name)).map(|(k, _)| k.as_str());
        (def, name)
    }

    fn walk(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        definition: Option<&str>,
        allow: Allowances,
        errors: &mut Vec<String>,
    ) {
        if let Some(reference) = schema["$ref"].as_str() {
            let (resolved, name) = self.resolve(reference);
            return self.walk(resolved, value, at, name, allow, errors);
        }
        let ty = schema["type"].as_str();
        let ty = ty.or_else(|| schema.get("properties").map(|_| "object"));
        let Some(ty) = ty else {
            // `{}`: any value.
            return;
        };
        let ok = match ty {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "number" => value.is_number(),
            "integer" => value.as_i64().is_some() || value.as_u64().is_some(),
            other => {
                errors.push(format!("{at}: schema type `{other}` not supported by the walker"));
                return;
            }
        };
        if !ok {
            errors.push(format!("{at}: expected {ty}, got {}", kind(value)));
            return;
        }
        match ty {
            "array" => {
                if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
                    for (i, v) in values.iter().enumerate() {
                        self.walk(items, v, &format!("{at}[{i}]"), None, allow, errors);
                    }
                }
            }
            "object" => self.walk_object(schema, value, at, definition, allow, errors),
            _ => {}
        }
    }

    fn walk_object(
        &self,
        schema: &Value,
        value: &Value,
        at: &str,
        definition: Option<&str>,
        allow: Allowances,
        errors: &mut Vec<String>,
    ) {
        let Some(obj) = value.as_object() else {
            return;
        };
        let empty = serde_json::Map::new();
        let properties = schema["properties"].as_object().unwrap_or(&empty);
        // The Swagger models free-form maps (ConfigurationPropertyMap, ProviderPropertyMap) as
        // one placeholder property `<replace_your_..._name>`: read that as additionalProperties.
        let placeholder = (properties.len() == 1)
            .then(|| properties.iter().next())
            .flatten()
            .filter(|(k, _)| k.starts_with("<replace_"))
            .map(|(_, v)| v);
        let additional = schema.get("additionalProperties").or(placeholder);
        let allowed = |list: &[Allowance], field: &str| {
            definition.is_some_and(|d| list.iter().any(|a| a.definition == d && a.field == field))
        };
        for (field, v) in obj {
            let child = format!("{at}.{field}");
            if let Some(field_schema) = properties.get(field).filter(|_| placeholder.is_none()) {
                self.walk(field_schema, v, &child, None, allow, errors);
            } else if let Some(additional) = additional {
                if additional.is_object() {
                    self.walk(additional, v, &child, None, allow, errors);
                }
            } else if !allowed(allow.extra_fields, field) {
                errors.push(format!(
                    "{child}: field not in the Swagger definition {}",
                    definition.unwrap_or("(inline)")
                ));
            }
        }
        if let Some(required) = schema["required"].as_array() {
            for field in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(field) && !allowed(allow.missing_required, field) {
                    errors.push(format!("{at}.{field}: required by the Swagger but missing"));
                }
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
