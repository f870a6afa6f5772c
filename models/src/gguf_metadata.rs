//! Typed access to GGUF metadata values: the one place that reads integers, floats,
//! strings, bools and arrays out of candle's `gguf_file::Value`, for the config, the
//! tokenizer and the special tokens alike.
//!
//! Invariants: any integer type GGUF stores (u8 to i64) is accepted where an integer is
//! expected, and converted only if it fits; a value of the wrong type is an error naming
//! the key and both types, never a silent default. A missing required key is
//! [`ModelError::Missing`] naming the key.

use crate::{ModelError, Result};
use candle_core::quantized::gguf_file::Value;
use std::collections::HashMap;

/// GGUF metadata, as candle parses it.
pub(crate) type Metadata = HashMap<String, Value>;

fn wrong_type(key: &str, expected: &str, found: &Value) -> ModelError {
    ModelError::invalid(
        format!("GGUF metadata {key}"),
        format!("expected {expected}, found {:?}", found.value_type()),
    )
}

fn missing(key: &str) -> ModelError {
    ModelError::Missing(format!("GGUF metadata {key}"))
}

/// The value of any GGUF integer type, if it is one (u64 beyond `i64::MAX` is not).
pub(crate) fn as_int(value: &Value) -> Option<i64> {
    Some(match *value {
        Value::U8(v) => v.into(),
        Value::I8(v) => v.into(),
        Value::U16(v) => v.into(),
        Value::I16(v) => v.into(),
        Value::U32(v) => v.into(),
        Value::I32(v) => v.into(),
        Value::U64(v) => i64::try_from(v).ok()?,
        Value::I64(v) => v,
        _ => return None,
    })
}

/// An optional integer key converted to `T` (e.g. `u32`, `usize`); a value of another
/// type or out of `T`'s range is an error.
pub(crate) fn opt_int<T: TryFrom<i64>>(md: &Metadata, key: &str) -> Result<Option<T>> {
    match md.get(key) {
        None => Ok(None),
        Some(value) => as_int(value)
            .and_then(|v| T::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| {
                let bits = 8 * std::mem::size_of::<T>();
                wrong_type(key, &format!("a non-negative {bits}-bit integer"), value)
            }),
    }
}

/// A required integer key converted to `T`.
pub(crate) fn int<T: TryFrom<i64>>(md: &Metadata, key: &str) -> Result<T> {
    opt_int(md, key)?.ok_or_else(|| missing(key))
}

/// An optional number (any float or integer type) as f64.
pub(crate) fn opt_f64(md: &Metadata, key: &str) -> Result<Option<f64>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::F32(v)) => Ok(Some(f64::from(*v))),
        Some(Value::F64(v)) => Ok(Some(*v)),
        Some(value) => match as_int(value) {
            Some(v) => Ok(Some(v as f64)),
            None => Err(wrong_type(key, "a number", value)),
        },
    }
}

/// An optional string key, borrowed from the metadata.
pub(crate) fn opt_str<'a>(md: &'a Metadata, key: &str) -> Result<Option<&'a str>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(wrong_type(key, "a string", other)),
    }
}

/// A required string key.
pub(crate) fn str<'a>(md: &'a Metadata, key: &str) -> Result<&'a str> {
    opt_str(md, key)?.ok_or_else(|| missing(key))
}

/// An optional bool key.
pub(crate) fn opt_bool(md: &Metadata, key: &str) -> Result<Option<bool>> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(wrong_type(key, "a bool", other)),
    }
}

fn array<'a>(value: &'a Value, key: &str, expected: &str) -> Result<&'a [Value]> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(wrong_type(key, expected, other)),
    }
}

/// A required array of strings, borrowed from the metadata.
pub(crate) fn string_array<'a>(md: &'a Metadata, key: &str) -> Result<Vec<&'a str>> {
    let value = md.get(key).ok_or_else(|| missing(key))?;
    array(value, key, "an array of strings")?
        .iter()
        .map(|item| match item {
            Value::String(s) => Ok(s.as_str()),
            other => Err(wrong_type(key, "an array of strings", other)),
        })
        .collect()
}

/// An optional array of integers (any integer type).
pub(crate) fn opt_int_array(md: &Metadata, key: &str) -> Result<Option<Vec<i64>>> {
    let Some(value) = md.get(key) else {
        return Ok(None);
    };
    array(value, key, "an array of integers")?
        .iter()
        .map(|item| as_int(item).ok_or_else(|| wrong_type(key, "an array of integers", item)))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// An optional array of floats (f32 or f64), as f32.
pub(crate) fn opt_float_array(md: &Metadata, key: &str) -> Result<Option<Vec<f32>>> {
    let Some(value) = md.get(key) else {
        return Ok(None);
    };
    array(value, key, "an array of floats")?
        .iter()
        .map(|item| match *item {
            Value::F32(v) => Ok(v),
            Value::F64(v) => Ok(v as f32),
            _ => Err(wrong_type(key, "an array of floats", item)),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: Vec<(&str, Value)>) -> Metadata {
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn integers_of_every_width_convert_when_they_fit() {
        let m = md(vec![
            ("a", Value::U8(7)),
            ("b", Value::I64(-1)),
            ("c", Value::U64(u64::MAX)),
            ("d", Value::F32(1.5)),
            ("e", Value::U64(1 << 40)),
        ]);
        assert_eq!(int::<usize>(&m, "a").unwrap(), 7);
        assert_eq!(opt_int::<u32>(&m, "a").unwrap(), Some(7));
        assert!(int::<usize>(&m, "b").is_err());
        assert!(int::<usize>(&m, "c").is_err());
        assert!(opt_int::<u32>(&m, "d").is_err());
        assert!(opt_int::<u32>(&m, "e").is_err());
        assert_eq!(opt_int::<usize>(&m, "e").unwrap(), Some(1 << 40));
        assert_eq!(opt_int::<u32>(&m, "nope").unwrap(), None);
        let err = int::<usize>(&m, "nope").unwrap_err().to_string();
        assert!(err.contains("missing GGUF metadata nope"), "{err}");
    }

    #[test]
    fn numbers_strings_and_bools() {
        let m = md(vec![
            ("f", Value::F32(0.5)),
            ("i", Value::U32(3)),
            ("s", Value::String("x".into())),
            ("t", Value::Bool(true)),
        ]);
        assert_eq!(opt_f64(&m, "f").unwrap(), Some(0.5));
        assert_eq!(opt_f64(&m, "i").unwrap(), Some(3.0));
        assert!(opt_f64(&m, "s").is_err());
        assert_eq!(str(&m, "s").unwrap(), "x");
        assert!(str(&m, "f").is_err());
        assert_eq!(opt_bool(&m, "t").unwrap(), Some(true));
        assert!(opt_bool(&m, "i").is_err());
    }

    #[test]
    fn arrays() {
        let m = md(vec![
            ("ints", Value::Array(vec![Value::U8(1), Value::I32(-2)])),
            (
                "floats",
                Value::Array(vec![Value::F32(1.0), Value::F64(2.0)]),
            ),
            ("strs", Value::Array(vec![Value::String("a".into())])),
            ("mixed", Value::Array(vec![Value::U8(1), Value::F32(1.0)])),
        ]);
        assert_eq!(opt_int_array(&m, "ints").unwrap(), Some(vec![1, -2]));
        assert!(opt_int_array(&m, "mixed").is_err());
        assert_eq!(opt_float_array(&m, "floats").unwrap(), Some(vec![1.0, 2.0]));
        assert!(opt_float_array(&m, "mixed").is_err());
        assert_eq!(string_array(&m, "strs").unwrap(), vec!["a"]);
        assert!(string_array(&m, "ints").is_err());
        assert!(string_array(&m, "none").is_err());
    }
}
