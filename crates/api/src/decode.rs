//! Request body decoding the way Consul does it: field names are matched without regard
//! to case or underscores (`ID`, `id`, `Id`; `DeregisterCriticalServiceAfter`,
//! `deregister_critical_service_after`), while user maps such as `Meta` keep their keys.
//! Errors name the offending field.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Object fields whose keys are user data and must not be normalised.
const VERBATIM_MAPS: &[&str] = &[
    "meta",
    "nodemeta",
    "header",
    "taggedaddresses",
    "servicemeta",
];

/// Normalises a field name: lowercase, without underscores.
pub fn normalize_name(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, value) in map {
                let name = normalize_name(&key);
                let value = if VERBATIM_MAPS.contains(&name.as_str()) {
                    value
                } else {
                    normalize(value)
                };
                out.insert(name, value);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// Parses a JSON body into `T`, whose serde names are the normalised Consul names.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "Request body is empty; expected a JSON object",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    let value = normalize(value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("Request decode failed: {inner}"))
        } else {
            ApiError::field(
                &path,
                format!("Request decode failed: field {path}: {inner}"),
            )
        }
    })
}

/// Parses a Go-style duration (`10s`, `1m30s`, `500ms`, `2h`); a bare number is seconds.
/// A duration too long to represent is invalid, like a malformed one.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(seconds).ok();
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn durations_too_long_to_represent_are_invalid_not_a_panic() {
        assert_eq!(parse_duration("9999999999999999999h"), None);
        assert_eq!(parse_duration("1e300"), None);
        assert_eq!(parse_duration("1e20"), None);
        assert_eq!(parse_duration("NaN"), None);
        assert_eq!(parse_duration("inf"), None);
        assert_eq!(parse_duration("-0.5"), None);
        assert_eq!(
            parse_duration("99999h"),
            Some(Duration::from_secs(99_999 * 3600))
        );
    }

    #[test]
    fn names_match_without_case_or_underscores() {
        assert_eq!(
            normalize_name("DeregisterCriticalServiceAfter"),
            "deregistercriticalserviceafter"
        );
        assert_eq!(
            normalize_name("deregister_critical_service_after"),
            "deregistercriticalserviceafter"
        );
        let value = normalize(serde_json::json!({"Meta": {"Key": "v"}, "Check": {"TTL": "1s"}}));
        assert_eq!(
            value,
            serde_json::json!({"meta": {"Key": "v"}, "check": {"ttl": "1s"}})
        );
    }
}
