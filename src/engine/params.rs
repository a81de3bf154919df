//! Parameter schemas, validation and the canonical form views are keyed by.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::error::EngineError;
use super::value::Value;
use super::window::Window;

/// The type of a parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Text.
    String,
    /// 64-bit integer.
    Int,
    /// Double; integers are accepted and widened.
    Float,
    /// Boolean.
    Bool,
    /// UUID, given as a uuid value or a string; normalized to lower case.
    Uuid,
    /// A timestamp value.
    Timestamp,
}

impl ParamType {
    /// The lower-case name used in configs and messages.
    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Int => "int",
            ParamType::Float => "float",
            ParamType::Bool => "bool",
            ParamType::Uuid => "uuid",
            ParamType::Timestamp => "timestamp",
        }
    }
}

/// What one parameter accepts.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    /// The value type.
    pub ty: ParamType,
    /// Whether callers must give it.
    pub required: bool,
    /// Used when the caller leaves it out.
    pub default: Option<Value>,
    /// When not empty, the only accepted values.
    pub one_of: Vec<Value>,
    /// Shown by Describe.
    pub description: String,
}

impl ParamSpec {
    /// An optional parameter of type `ty`.
    pub fn new(ty: ParamType) -> Self {
        ParamSpec {
            ty,
            required: false,
            default: None,
            one_of: Vec::new(),
            description: String::new(),
        }
    }
    /// Marks the parameter required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
    /// Sets the default value.
    pub fn default_value(mut self, v: impl Into<Value>) -> Self {
        self.default = Some(v.into());
        self
    }
    /// Restricts the accepted values.
    pub fn one_of<V: Into<Value>>(mut self, vs: impl IntoIterator<Item = V>) -> Self {
        self.one_of = vs.into_iter().map(Into::into).collect();
        self
    }
}

/// Parameters by name.
pub type ParamSchema = BTreeMap<String, ParamSpec>;

/// Validated parameters with defaults applied, and the window of a
/// windowed graph's view. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Params(Arc<BTreeMap<String, Value>>, Option<Arc<Window>>);

impl Params {
    /// The value of `name`; `Null` when absent.
    pub fn get(&self, name: &str) -> &Value {
        self.0.get(name).unwrap_or(&Value::Null)
    }
    /// The window, for views of a windowed graph.
    pub fn window(&self) -> Option<&Window> {
        self.1.as_deref()
    }
    /// The same params with another window.
    pub fn with_window(&self, window: Window) -> Params {
        Params(self.0.clone(), Some(Arc::new(window)))
    }
    /// An integer parameter, if set.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// A text or uuid parameter, if set.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Value::String(s) | Value::Uuid(s) => Some(s),
            _ => None,
        }
    }
    /// All parameters.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.0.iter()
    }

    /// A canonical text form: same parameters in any order give the same
    /// text. The window, if any, is part of it under `$window` (a name no
    /// param can have).
    pub fn canonical(&self) -> String {
        let mut map: serde_json::Map<String, serde_json::Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        if let Some(w) = &self.1 {
            map.insert("$window".into(), w.canonical());
        }
        serde_json::Value::Object(map).to_string()
    }

    /// A short hash of the canonical form, used in view ids.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical().as_bytes());
        let mut out = String::with_capacity(16);
        for b in &digest[..8] {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// Checks raw input against a schema, applies defaults, and returns the
/// resolved parameters. `strict` rejects keys the schema does not name.
pub fn validate(
    owner: &str,
    schema: &ParamSchema,
    raw: HashMap<String, Value>,
    strict: bool,
) -> Result<Params, EngineError> {
    let invalid = |m: String| EngineError::InvalidArgument(format!("{owner}: {m}"));
    if strict {
        let mut unknown: Vec<&String> = raw.keys().filter(|k| !schema.contains_key(*k)).collect();
        if !unknown.is_empty() {
            unknown.sort();
            let accepted: Vec<&str> = schema.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "unknown param {}; accepted params: {}",
                unknown
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if accepted.is_empty() {
                    "none".to_owned()
                } else {
                    accepted.join(", ")
                }
            )));
        }
    }
    let mut raw = raw;
    let mut out = BTreeMap::new();
    for (name, spec) in schema {
        let given = raw.remove(name).filter(|v| !matches!(v, Value::Null));
        let value = match given {
            Some(v) => coerce(spec.ty, v).map_err(|got| {
                invalid(format!(
                    "param `{name}` must be {}, got {got}",
                    article(spec.ty)
                ))
            })?,
            None => match &spec.default {
                Some(d) => d.clone(),
                None if spec.required => {
                    return Err(invalid(format!(
                        "param `{name}` is required ({})",
                        spec.ty.name()
                    )))
                }
                None => Value::Null,
            },
        };
        if !spec.one_of.is_empty() && !matches!(value, Value::Null) && !spec.one_of.contains(&value)
        {
            let allowed: Vec<String> = spec.one_of.iter().map(ToString::to_string).collect();
            return Err(invalid(format!(
                "param `{name}` is {value}, which is not one of: {}",
                allowed.join(", ")
            )));
        }
        out.insert(name.clone(), value);
    }
    Ok(Params(Arc::new(out), None))
}

fn article(ty: ParamType) -> String {
    match ty {
        ParamType::Int | ParamType::Uuid => format!("an {}", ty.name()),
        _ => format!("a {}", ty.name()),
    }
}

/// Converts a given value to the parameter type, or names what it was.
fn coerce(ty: ParamType, v: Value) -> Result<Value, String> {
    match (ty, v) {
        (ParamType::String, Value::String(s)) => Ok(Value::String(s)),
        (ParamType::Int, Value::Int(i)) => Ok(Value::Int(i)),
        (ParamType::Float, Value::Float(f)) => Ok(Value::Float(f)),
        (ParamType::Float, Value::Int(i)) => Ok(Value::Float(i as f64)),
        (ParamType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (ParamType::Uuid, Value::Uuid(s) | Value::String(s)) => parse_uuid(&s)
            .map(Value::Uuid)
            .ok_or_else(|| format!("{s:?}, which is not a UUID")),
        (ParamType::Timestamp, Value::Timestamp(t)) => Ok(Value::Timestamp(t)),
        (_, other) => Err(other.kind().to_owned()),
    }
}

/// Parses a UUID in any case, with or without hyphens or braces, into the
/// canonical lower-case hyphenated form.
pub fn parse_uuid(s: &str) -> Option<String> {
    let hex: String = s
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> ParamSchema {
        let mut s = ParamSchema::new();
        s.insert(
            "project_id".into(),
            ParamSpec::new(ParamType::Int).required(),
        );
        s.insert(
            "limit".into(),
            ParamSpec::new(ParamType::Int).default_value(50),
        );
        s.insert(
            "status".into(),
            ParamSpec::new(ParamType::String).one_of(["todo", "done"]),
        );
        s
    }

    fn raw(pairs: &[(&str, Value)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn defaults_apply_and_key_order_does_not_change_the_hash() {
        let a = validate(
            "g",
            &schema(),
            raw(&[("project_id", 1.into()), ("status", "todo".into())]),
            true,
        )
        .unwrap();
        let b = validate(
            "g",
            &schema(),
            raw(&[("status", "todo".into()), ("project_id", 1.into())]),
            true,
        )
        .unwrap();
        assert_eq!(a.int("limit"), Some(50));
        assert_eq!(a.hash(), b.hash());
        let c = validate("g", &schema(), raw(&[("project_id", 2.into())]), true).unwrap();
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn errors_name_the_param_and_the_reason() {
        let e = validate("g", &schema(), raw(&[]), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`project_id` is required"), "{e}");
        let e = validate("g", &schema(), raw(&[("project_id", "x".into())]), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`project_id` must be an int, got string"), "{e}");
        let e = validate(
            "g",
            &schema(),
            raw(&[("project_id", 1.into()), ("status", "nope".into())]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not one of"), "{e}");
        let e = validate(
            "g",
            &schema(),
            raw(&[("project_id", 1.into()), ("x", 1.into())]),
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown param `x`"), "{e}");
        assert!(validate(
            "g",
            &schema(),
            raw(&[("project_id", 1.into()), ("x", 1.into())]),
            false
        )
        .is_ok());
    }

    #[test]
    fn uuids_are_normalized() {
        assert_eq!(
            parse_uuid("{550E8400E29B41D4A716446655440000}").unwrap(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        assert!(parse_uuid("550e8400").is_none());
    }
}
