//! The error-collecting reader the parse walks a definition with: each read reports a
//! problem with its path and returns a fallback, so the parse goes on to find the others.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Problems found so far; readers report into it and return a fallback so parsing goes on.
#[derive(Default)]
pub(super) struct Reader {
    pub(super) problems: Vec<(String, String)>,
}

/// `null` counts as absent: clients send `"args": null`, `"container": null`.
pub(super) fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

pub(super) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn at(parent: &str, field: &str) -> String {
    format!("{parent}/{field}")
}

pub(super) fn index(parent: &str, i: usize) -> String {
    format!("{parent}({i})")
}

impl Reader {
    pub(super) fn fail(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push((path.to_string(), message.into()));
    }

    pub(super) fn expected(&mut self, path: &str, what: &str, value: &Value) {
        self.fail(path, format!("expected {what}, got {}", describe(value)));
    }

    pub(super) fn number(&mut self, value: Option<&Value>, path: &str) -> Option<f64> {
        let value = present(value)?;
        let number = value.as_f64();
        if number.is_none() {
            self.expected(path, "a number", value);
        }
        number
    }

    /// A number of at least `min`, or `default` when absent or wrong.
    pub(super) fn at_least(
        &mut self,
        value: Option<&Value>,
        path: &str,
        min: f64,
        default: f64,
    ) -> f64 {
        match self.number(value, path) {
            Some(n) if n < min => {
                self.fail(path, format!("got {n}, expected {min} or more"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    /// A number within `min..=max`, or `default` when absent or wrong.
    pub(super) fn between(
        &mut self,
        value: Option<&Value>,
        path: &str,
        min: f64,
        max: f64,
        default: f64,
    ) -> f64 {
        match self.number(value, path) {
            Some(n) if n < min || n > max => {
                self.fail(path, format!("got {n}, expected between {min} and {max}"));
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    pub(super) fn unsigned(&mut self, value: Option<&Value>, path: &str) -> Option<u64> {
        let value = present(value)?;
        if let Some(n) = value.as_u64() {
            return Some(n);
        }
        match value.as_f64() {
            Some(n) if n < 0.0 => self.fail(path, format!("got {n}, expected 0 or more")),
            // Whole floats (`3.0`) are what some clients send for integers.
            Some(n) if n.fract() == 0.0 && n < 9.0e15 => return Some(n as u64),
            Some(n) => self.fail(path, format!("got {n}, expected a whole number")),
            None => self.expected(path, "a whole number", value),
        }
        None
    }

    pub(super) fn unsigned_or(&mut self, value: Option<&Value>, path: &str, default: u64) -> u64 {
        self.unsigned(value, path).unwrap_or(default)
    }

    /// A whole number that fits in `u32`, or `default`.
    pub(super) fn small_unsigned(
        &mut self,
        value: Option<&Value>,
        path: &str,
        default: u32,
    ) -> u32 {
        match self.unsigned(value, path) {
            Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                self.fail(path, format!("got {n}, expected at most {}", u32::MAX));
                default
            }),
            None => default,
        }
    }

    pub(super) fn string<'v>(&mut self, value: Option<&'v Value>, path: &str) -> Option<&'v str> {
        let value = present(value)?;
        let text = value.as_str();
        if text.is_none() {
            self.expected(path, "a string", value);
        }
        text
    }

    pub(super) fn boolean(&mut self, value: Option<&Value>, path: &str) -> Option<bool> {
        let value = present(value)?;
        let flag = value.as_bool();
        if flag.is_none() {
            self.expected(path, "a boolean", value);
        }
        flag
    }

    pub(super) fn array<'v>(
        &mut self,
        value: Option<&'v Value>,
        path: &str,
    ) -> Option<&'v Vec<Value>> {
        let value = present(value)?;
        let list = value.as_array();
        if list.is_none() {
            self.expected(path, "an array", value);
        }
        list
    }

    pub(super) fn object<'v>(
        &mut self,
        value: Option<&'v Value>,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        let value = present(value)?;
        let object = value.as_object();
        if object.is_none() {
            self.expected(path, "an object", value);
        }
        object
    }

    pub(super) fn strings(&mut self, value: Option<&Value>, path: &str) -> Option<Vec<String>> {
        let list = self.array(value, path)?;
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item.as_str() {
                Some(text) => out.push(text.to_string()),
                None => self.expected(&index(path, i), "a string", item),
            }
        }
        Some(out)
    }

    /// An object of strings (`env`, `labels`).
    pub(super) fn string_map(
        &mut self,
        value: Option<&Value>,
        path: &str,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(object) = self.object(value, path) else {
            return out;
        };
        for (key, item) in object {
            let item_path = at(path, key);
            match item {
                Value::String(text) => {
                    out.insert(key.clone(), text.clone());
                }
                Value::Object(reference) if reference.contains_key("secret") => self.fail(
                    &item_path,
                    "secret references are not supported; give the value as a string",
                ),
                other => self.expected(&item_path, "a string", other),
            }
        }
        out
    }
}
