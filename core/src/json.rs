//! Reading a JSON document field by field, so every type error names its field.
//!
//! The filter parses its config with this instead of serde's derived deserializers: it keeps the
//! field path in every message and keeps the .wasm small (no generic deserializer code, no
//! float formatting).

use serde_json::{Map, Value};

use crate::config::ConfigError;

/// Collects type errors while fields are read.
#[derive(Default)]
pub(crate) struct Reader {
    pub(crate) errors: Vec<ConfigError>,
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Reader {
    pub(crate) fn error(&mut self, field: &str, problem: String) {
        self.errors.push(ConfigError {
            field: field.to_owned(),
            problem,
        });
    }

    fn wrong_type(&mut self, field: &str, want: &str, got: &Value) {
        self.error(field, format!("expected {want}, found {}", kind(got)));
    }

    /// The value as an object.
    pub(crate) fn object<'v>(
        &mut self,
        value: &'v Value,
        field: &str,
    ) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.wrong_type(field, "an object", other);
                None
            }
        }
    }

    /// An optional string field.
    pub(crate) fn string(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Option<String> {
        match object.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(&join(path, key), "a string", other);
                None
            }
        }
    }

    /// An optional whole-number field no larger than `max`.
    pub(crate) fn whole_number(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        key: &str,
        max: u64,
    ) -> Option<u64> {
        let value = object.get(key)?;
        match value.as_u64() {
            Some(n) if n <= max => Some(n),
            _ => {
                self.error(
                    &join(path, key),
                    format!("expected a whole number from 0 to {max}"),
                );
                None
            }
        }
    }

    /// An optional list field, each element read by `item` with its own path.
    pub(crate) fn list<T>(
        &mut self,
        object: &Map<String, Value>,
        path: &str,
        key: &str,
        mut item: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let field = join(path, key);
        match object.get(key)? {
            Value::Array(values) => Some(
                values
                    .iter()
                    .enumerate()
                    .filter_map(|(i, value)| item(self, value, &format!("{field}[{i}]")))
                    .collect(),
            ),
            other => {
                self.wrong_type(&field, "a list", other);
                None
            }
        }
    }

    /// A list element that must be a string.
    pub(crate) fn string_item(&mut self, value: &Value, field: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.wrong_type(field, "a string", other);
                None
            }
        }
    }

    /// A list element that must be a whole number no larger than `max`.
    pub(crate) fn number_item(&mut self, value: &Value, field: &str, max: u64) -> Option<u64> {
        match value.as_u64() {
            Some(n) if n <= max => Some(n),
            _ => {
                self.error(field, format!("expected a whole number from 0 to {max}"));
                None
            }
        }
    }
}
