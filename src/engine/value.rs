//! Typed values: row fields, parameters and mutation output.
//!
//! Values keep the precision of their source: integers are 64-bit, numerics
//! and JSON stay text, timestamps are microseconds. Equality is exact and
//! bitwise for floats, so a NaN field never looks changed on every evaluation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// One typed value.
#[derive(Clone, Debug)]
pub enum Value {
    /// SQL NULL, or a parameter left out.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit integer (int2, int4, int8).
    Int(i64),
    /// A double (float4, float8).
    Float(f64),
    /// Text.
    String(String),
    /// Exact decimal text of a numeric.
    Numeric(String),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// JSON text, exactly as stored.
    Json(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A UUID in lower-case canonical form.
    Uuid(String),
    /// A calendar date as `YYYY-MM-DD`.
    Date(String),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Float(a), Float(b)) => a.to_bits() == b.to_bits(),
            (String(a), String(b)) => a == b,
            (Numeric(a), Numeric(b)) => a == b,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Json(a), Json(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (Uuid(a), Uuid(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The name of this value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Numeric(_) => "numeric",
            Value::Timestamp(_) => "timestamp",
            Value::Json(_) => "json",
            Value::Bytes(_) => "bytes",
            Value::Uuid(_) => "uuid",
            Value::Date(_) => "date",
        }
    }

    /// The text a key column contributes to a row id.
    pub fn key_text(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::String(s)
            | Value::Numeric(s)
            | Value::Json(s)
            | Value::Uuid(s)
            | Value::Date(s) => s.clone(),
            Value::Timestamp(t) => t.to_string(),
            Value::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        }
    }

    /// A JSON rendering, tagged where JSON alone would lose the type.
    ///
    /// Used for canonical parameter keys and by tests; not a wire format.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => json!(b),
            Value::Int(i) => json!(i),
            Value::Float(f) => json!({ "float": f.to_bits().to_string() }),
            Value::String(s) => json!(s),
            Value::Numeric(s) => json!({ "numeric": s }),
            Value::Timestamp(t) => json!({ "timestamp": t }),
            Value::Json(s) => json!({ "json": s }),
            Value::Bytes(b) => json!({ "bytes": b }),
            Value::Uuid(s) => json!({ "uuid": s }),
            Value::Date(s) => json!({ "date": s }),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "{s:?}"),
            other => write!(f, "{}", other.key_text()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

/// Stands for a timestamp too far from 1970 to count in 64-bit
/// microseconds (a client sent more than about 292,000 years): no database
/// can store it, so binding refuses it. `i64::MAX` and `i64::MIN` mean
/// `infinity` and `-infinity`.
pub const TIMESTAMP_OUT_OF_RANGE: i64 = i64::MAX - 1;

/// The fields of one row, by column name.
pub type Fields = BTreeMap<String, Value>;

/// A row's fields, shared between the store and the views that hold it.
pub type SharedFields = Arc<Fields>;

/// The id of a row made from its key values: the single key's text, or a
/// JSON array of the keys' texts for a composite key.
pub fn row_id(keys: &[Value]) -> String {
    match keys {
        [one] => one.key_text(),
        many => serde_json::Value::Array(
            many.iter()
                .map(|k| serde_json::Value::String(k.key_text()))
                .collect(),
        )
        .to_string(),
    }
}

/// One field of a graph's rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldShape {
    /// The nested ref it belongs to; empty for the graph's own rows.
    pub nested: String,
    /// The field name.
    pub name: String,
    /// The [`Value`] kind it arrives as (`int`, `string`, ...).
    pub kind: &'static str,
    /// A NOT NULL table column: never null in a row.
    pub not_null: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_equals_itself_so_it_never_diffs() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
    }

    #[test]
    fn composite_ids_are_json_arrays_and_single_ids_plain_text() {
        assert_eq!(row_id(&[Value::Int(7)]), "7");
        assert_eq!(
            row_id(&[Value::Int(7), Value::String("a\"b".into())]),
            r#"["7","a\"b"]"#
        );
    }
}
