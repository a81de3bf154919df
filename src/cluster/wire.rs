//! Change batches on the cluster's change stream: JSON, one transaction per
//! message. Everything a change source knows travels (route values,
//! workspace, new values for the update fast path, the order keys windows
//! route by), so a node consuming
//! the stream routes a change exactly as the node that read it would.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::engine::{Change, ChangeBatch, Fields, Value};

/// One published batch.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WireBatch {
    /// Refresh every live view (after an outage of the source, or for a
    /// transaction too large to publish).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub everything: bool,
    /// The transaction's changes.
    #[serde(default)]
    pub changes: Vec<WireChange>,
    /// The committing transaction, when the source knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xid: Option<u32>,
}

/// One [`Change`].
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct WireChange {
    table: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    route_values: BTreeMap<String, BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<BTreeMap<String, WireValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workspace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    order_keys: BTreeMap<String, Vec<Vec<WireValue>>>,
}

/// One [`Value`]; floats travel as their bits so they come back exactly.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum WireValue {
    Null,
    Bool(bool),
    Int(i64),
    FloatBits(u64),
    String(String),
    Numeric(String),
    Timestamp(i64),
    Json(String),
    Bytes(Vec<u8>),
    Uuid(String),
    Date(String),
}

impl From<&Value> for WireValue {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => WireValue::Null,
            Value::Bool(b) => WireValue::Bool(*b),
            Value::Int(i) => WireValue::Int(*i),
            Value::Float(f) => WireValue::FloatBits(f.to_bits()),
            Value::String(s) => WireValue::String(s.clone()),
            Value::Numeric(s) => WireValue::Numeric(s.clone()),
            Value::Timestamp(t) => WireValue::Timestamp(*t),
            Value::Json(s) => WireValue::Json(s.clone()),
            Value::Bytes(b) => WireValue::Bytes(b.clone()),
            Value::Uuid(s) => WireValue::Uuid(s.clone()),
            Value::Date(s) => WireValue::Date(s.clone()),
        }
    }
}

impl From<WireValue> for Value {
    fn from(v: WireValue) -> Self {
        match v {
            WireValue::Null => Value::Null,
            WireValue::Bool(b) => Value::Bool(b),
            WireValue::Int(i) => Value::Int(i),
            WireValue::FloatBits(f) => Value::Float(f64::from_bits(f)),
            WireValue::String(s) => Value::String(s),
            WireValue::Numeric(s) => Value::Numeric(s),
            WireValue::Timestamp(t) => Value::Timestamp(t),
            WireValue::Json(s) => Value::Json(s),
            WireValue::Bytes(b) => Value::Bytes(b),
            WireValue::Uuid(s) => Value::Uuid(s),
            WireValue::Date(s) => Value::Date(s),
        }
    }
}

impl From<&Change> for WireChange {
    fn from(c: &Change) -> Self {
        WireChange {
            table: c.table.clone(),
            id: c.id.clone(),
            columns: c.columns.clone(),
            route_values: c.route_values.clone(),
            values: c
                .values
                .as_ref()
                .map(|f| f.iter().map(|(k, v)| (k.clone(), v.into())).collect()),
            workspace: c.workspace.clone(),
            order_keys: c
                .order_keys
                .iter()
                .map(|(k, keys)| {
                    let keys = keys
                        .iter()
                        .map(|key| key.iter().map(WireValue::from).collect())
                        .collect();
                    (k.clone(), keys)
                })
                .collect(),
        }
    }
}

impl From<WireChange> for Change {
    fn from(c: WireChange) -> Self {
        Change {
            table: c.table,
            id: c.id,
            columns: c.columns,
            route_values: c.route_values,
            values: c.values.map(|f| {
                f.into_iter()
                    .map(|(k, v)| (k, v.into()))
                    .collect::<Fields>()
            }),
            workspace: c.workspace,
            order_keys: c
                .order_keys
                .into_iter()
                .map(|(k, keys)| {
                    let keys = keys
                        .into_iter()
                        .map(|key| key.into_iter().map(Value::from).collect())
                        .collect();
                    (k, keys)
                })
                .collect(),
        }
    }
}

/// The bytes published for `batch`.
pub fn encode(batch: &ChangeBatch) -> Vec<u8> {
    let w = WireBatch {
        everything: batch.everything,
        changes: batch.changes.iter().map(WireChange::from).collect(),
        xid: batch.xid,
    };
    serde_json::to_vec(&w).expect("a batch always serializes")
}

/// The bytes of a batch that refreshes every view.
pub fn encode_everything() -> Vec<u8> {
    serde_json::to_vec(&WireBatch {
        everything: true,
        changes: Vec::new(),
        xid: None,
    })
    .expect("a batch always serializes")
}

/// A published batch back as a [`ChangeBatch`] (without a `done` signal).
pub fn decode(bytes: &[u8]) -> Result<ChangeBatch, String> {
    let w: WireBatch = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut b = ChangeBatch::new(w.changes.into_iter().map(Change::from).collect(), None);
    b.everything = w.everything;
    b.xid = w.xid;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_survives_the_trip() {
        let mut values = Fields::new();
        values.insert("title".into(), Value::String("Venue".into()));
        values.insert("score".into(), Value::Float(f64::NAN));
        values.insert("blob".into(), Value::Bytes(vec![0, 255]));
        let change = Change {
            table: "tasks".into(),
            id: "2".into(),
            columns: vec!["title".into()],
            route_values: [("project_id".to_owned(), ["1".to_owned()].into())].into(),
            values: Some(values),
            workspace: Some("acme".into()),
            order_keys: [(
                "position,id".to_owned(),
                vec![vec![Value::Int(3), Value::Int(2)]],
            )]
            .into(),
        };
        let batch = ChangeBatch::new(vec![change.clone(), Change::table("projects")], None)
            .committed_by(4_000_000_000);
        let back = decode(&encode(&batch)).unwrap();
        assert_eq!(back.changes, vec![change, Change::table("projects")]);
        assert!(!back.everything);
        assert_eq!(back.xid, Some(4_000_000_000));
        assert!(decode(&encode_everything()).unwrap().everything);
        assert!(decode(b"{not json").is_err());
    }
}
