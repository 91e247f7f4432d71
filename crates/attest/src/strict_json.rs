//! JSON parsing that refuses duplicate object keys. `serde_json` keeps the
//! last of two equal keys, so `{"allow_debug": false, ..., "allow_debug":
//! true}` would silently mean `true`; a security policy must not read one
//! way and act another.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value whose objects had no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(DuplicateKey(k)));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// The message of a duplicate-key error (found again by [`duplicate_key`]).
struct DuplicateKey(String);

const DUPLICATE: &str = "duplicate key ";

impl std::fmt::Display for DuplicateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{DUPLICATE}{:?}", self.0)
    }
}

/// Why strict parsing failed.
#[derive(Debug, PartialEq, Eq)]
pub enum StrictError {
    /// An object repeats this key.
    DuplicateKey { key: String, line: usize },
    /// Not JSON (serde_json's message, with line and column).
    Syntax(String),
}

/// Parses JSON, refusing any object with a repeated key.
pub fn parse(bytes: &[u8]) -> Result<Value, StrictError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict::deserialize(&mut de).map_err(|e| classify(&e))?;
    de.end().map_err(|e| classify(&e))?;
    Ok(v.0)
}

fn classify(e: &serde_json::Error) -> StrictError {
    let msg = e.to_string();
    match msg
        .strip_prefix(DUPLICATE)
        .and_then(|rest| rest.split(" at line ").next())
    {
        Some(quoted) => StrictError::DuplicateKey {
            key: serde_json::from_str::<String>(quoted).unwrap_or_else(|_| quoted.to_string()),
            line: e.line(),
        },
        None => StrictError::Syntax(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_to_serde_json_without_duplicates() {
        let text = br#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": {"d": []}}"#;
        assert_eq!(parse(text).unwrap(), serde_json::from_slice::<Value>(text).unwrap());
    }

    #[test]
    fn duplicate_key_is_named_with_its_line() {
        let e = parse(b"{\"a\": 1,\n \"b\": {\"x\": 1, \"x\": 2}}").unwrap_err();
        assert_eq!(
            e,
            StrictError::DuplicateKey {
                key: "x".into(),
                line: 2
            }
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert!(matches!(parse(b"{} x"), Err(StrictError::Syntax(_))));
    }
}
