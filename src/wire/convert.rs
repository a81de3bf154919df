//! Conversions between engine types and protobuf messages, both ways.

use std::collections::HashMap;

use prost::Message;

use crate::engine::{self, Frame, FrameBody, Op, Patch};
use crate::proto::{self as pb, value::Kind};

/// Engine value to protobuf.
pub fn value_to_pb(v: &engine::Value) -> pb::Value {
    let kind = match v {
        engine::Value::Null => Kind::Null(0),
        engine::Value::Bool(b) => Kind::Bool(*b),
        engine::Value::Int(i) => Kind::Int(*i),
        engine::Value::Float(f) => Kind::Float(*f),
        engine::Value::String(s) => Kind::String(s.clone()),
        engine::Value::Numeric(s) => Kind::Numeric(s.clone()),
        engine::Value::Timestamp(t) => Kind::Timestamp(prost_types::Timestamp {
            seconds: t.div_euclid(1_000_000),
            nanos: (t.rem_euclid(1_000_000) * 1000) as i32,
        }),
        engine::Value::Json(s) => Kind::Json(s.clone()),
        engine::Value::Bytes(b) => Kind::Bytes(b.clone().into()),
        engine::Value::Uuid(s) => Kind::Uuid(s.clone()),
        engine::Value::Date(s) => Kind::Date(s.clone()),
    };
    pb::Value { kind: Some(kind) }
}

/// Protobuf value to engine; an unset value reads as null.
pub fn value_from_pb(v: pb::Value) -> engine::Value {
    match v.kind {
        None | Some(Kind::Null(_)) => engine::Value::Null,
        Some(Kind::Bool(b)) => engine::Value::Bool(b),
        Some(Kind::Int(i)) => engine::Value::Int(i),
        Some(Kind::Float(f)) => engine::Value::Float(f),
        Some(Kind::String(s)) => engine::Value::String(s),
        Some(Kind::Numeric(s)) => engine::Value::Numeric(s),
        Some(Kind::Timestamp(t)) => engine::Value::Timestamp(
            t.seconds
                .checked_mul(1_000_000)
                .and_then(|us| us.checked_add(i64::from(t.nanos) / 1000))
                // Too far out for 64 bits: a time PostgreSQL cannot store, so
                // binding refuses it; never i64::MAX/MIN, which mean ±infinity.
                .unwrap_or(if t.seconds < 0 {
                    i64::MIN + 1
                } else {
                    i64::MAX - 1
                }),
        ),
        Some(Kind::Json(s)) => engine::Value::Json(s),
        Some(Kind::Bytes(b)) => engine::Value::Bytes(b.to_vec()),
        Some(Kind::Uuid(s)) => engine::Value::Uuid(s),
        Some(Kind::Date(s)) => engine::Value::Date(s),
    }
}

/// A value a client sent, checked: a timestamp's `nanos` must lie in
/// 0..=999,999,999 (as google.protobuf.Timestamp requires); the error says
/// what is wrong, for the caller to prefix with where.
pub fn checked_value_from_pb(v: pb::Value) -> Result<engine::Value, String> {
    if let Some(Kind::Timestamp(t)) = &v.kind {
        if !(0..=999_999_999).contains(&t.nanos) {
            return Err(format!(
                "timestamp nanos {} is outside 0 to 999,999,999: carry whole seconds in `seconds`",
                t.nanos
            ));
        }
    }
    Ok(value_from_pb(v))
}

/// A protobuf params map to engine values; INVALID_ARGUMENT names a param
/// whose value is malformed.
pub fn params_from_pb(
    m: HashMap<String, pb::Value>,
) -> Result<HashMap<String, engine::Value>, tonic::Status> {
    m.into_iter()
        .map(|(k, v)| match checked_value_from_pb(v) {
            Ok(v) => Ok((k, v)),
            Err(e) => Err(tonic::Status::invalid_argument(crate::wire::status::tidy(
                &format!("param `{k}`: {e}"),
            ))),
        })
        .collect()
}

/// A protobuf window to the engine's; `None` when unset. A direction this
/// server does not know is INVALID_ARGUMENT (unset reads as `AFTER`).
pub fn window_from_pb(w: Option<pb::Window>) -> Result<Option<engine::Window>, tonic::Status> {
    let Some(w) = w else {
        return Ok(None);
    };
    let direction = match pb::WindowDirection::try_from(w.direction) {
        Ok(pb::WindowDirection::Unspecified | pb::WindowDirection::After) => {
            engine::Direction::After
        }
        Ok(pb::WindowDirection::Before) => engine::Direction::Before,
        Ok(pb::WindowDirection::Around) => engine::Direction::Around,
        Err(_) => {
            return Err(tonic::Status::invalid_argument(format!(
            "window.direction {} is not a WindowDirection: use AFTER (1), BEFORE (2) or AROUND (3)",
            w.direction
        )))
        }
    };
    Ok(Some(engine::Window {
        limit: w.limit,
        cursor: w
            .cursor
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                checked_value_from_pb(v).map_err(|e| {
                    tonic::Status::invalid_argument(format!("window.cursor[{i}]: {e}"))
                })
            })
            .collect::<Result<_, _>>()?,
        direction,
        inclusive: w.inclusive,
    }))
}

/// A window's edges to protobuf.
pub fn edges_to_pb(e: &engine::WindowEdges) -> pb::WindowEdges {
    pb::WindowEdges {
        has_before: e.has_before,
        has_after: e.has_after,
    }
}

/// Engine fields to a protobuf map.
pub fn fields_to_pb(f: &engine::Fields) -> HashMap<String, pb::Value> {
    f.iter().map(|(k, v)| (k.clone(), value_to_pb(v))).collect()
}

/// Protobuf fields to engine fields.
pub fn fields_from_pb(m: HashMap<String, pb::Value>) -> engine::Fields {
    m.into_iter().map(|(k, v)| (k, value_from_pb(v))).collect()
}

/// Engine ref to protobuf.
pub fn ref_to_pb(r: &engine::Ref) -> pb::Ref {
    pb::Ref {
        table: r.key.table.to_string(),
        id: r.key.id.to_string(),
        fields: r.fields.to_vec(),
        nested: r
            .nested
            .iter()
            .map(|(k, n)| (k.clone(), ref_to_pb(n)))
            .collect(),
    }
}

/// Protobuf ref to engine.
pub fn ref_from_pb(r: pb::Ref) -> engine::Ref {
    let mut out = engine::Ref::new(&r.table, &r.id);
    out.fields = r.fields.into();
    out.nested = r
        .nested
        .into_iter()
        .map(|(k, n)| (k, ref_from_pb(n)))
        .collect();
    out
}

fn op_to_pb(op: Op) -> i32 {
    (match op {
        Op::Add => pb::PatchOp::Add,
        Op::Remove => pb::PatchOp::Remove,
        Op::Replace => pb::PatchOp::Replace,
        Op::Move => pb::PatchOp::Move,
    }) as i32
}

/// Protobuf patch op to engine.
pub fn op_from_pb(op: i32) -> Result<Op, String> {
    match pb::PatchOp::try_from(op) {
        Ok(pb::PatchOp::Add) => Ok(Op::Add),
        Ok(pb::PatchOp::Remove) => Ok(Op::Remove),
        Ok(pb::PatchOp::Replace) => Ok(Op::Replace),
        Ok(pb::PatchOp::Move) => Ok(Op::Move),
        _ => Err(format!("unknown patch op {op}")),
    }
}

/// An engine row as protobuf.
pub fn row_to_pb(k: &engine::RowKey, f: &engine::Fields) -> pb::Row {
    pb::Row {
        table: k.table.to_string(),
        id: k.id.to_string(),
        fields: fields_to_pb(f),
    }
}

/// An engine frame as a protobuf message.
pub fn frame_to_pb(f: &Frame) -> pb::ViewFrame {
    use pb::view_frame::Body;
    let body = match &f.body {
        FrameBody::Snapshot(s) => Body::Snapshot(pb::Snapshot {
            graph: s.graph.to_string(),
            params_hash: s.params_hash.to_string(),
            refs: s.refs.iter().map(ref_to_pb).collect(),
            rows: s.rows.iter().map(|(k, f)| row_to_pb(k, f)).collect(),
            total: s.total,
            window: s.window.as_ref().map(edges_to_pb),
            more: false,
        }),
        FrameBody::Diff(d) => Body::Diff(pb::ViewDiff {
            refs: d
                .refs
                .iter()
                .map(|p: &Patch<engine::Ref>| pb::RefOp {
                    op: op_to_pb(p.op),
                    path: p.path.clone(),
                    from: p.from.clone().unwrap_or_default(),
                    value: p.value.as_ref().map(ref_to_pb),
                })
                .collect(),
            rows: d.rows.iter().map(|(k, f)| row_to_pb(k, f)).collect(),
            patches: d
                .patches
                .iter()
                .map(|(k, ops)| pb::RowPatch {
                    table: k.table.to_string(),
                    id: k.id.to_string(),
                    ops: ops
                        .iter()
                        .map(|p| pb::FieldOp {
                            op: op_to_pb(p.op),
                            path: p.path.clone(),
                            value: p.value.as_ref().map(value_to_pb),
                        })
                        .collect(),
                })
                .collect(),
            total: d.total,
            window: d.window.as_ref().map(edges_to_pb),
        }),
        FrameBody::Error(e) => Body::Error(pb::ViewError {
            code: super::status::to_status(e.clone()).code() as i32,
            message: e.to_string(),
        }),
    };
    pb::ViewFrame {
        view_id: f.view_id.to_string(),
        epoch: f.epoch,
        version: f.version,
        prev_version: f.prev_version,
        body: Some(body),
        prev_epoch: f.prev_epoch,
    }
}

/// The frame's encoding as a whole `ServerMessage`, computed once per frame
/// and shared by every session it goes to.
pub fn encoded_frame(f: &Frame) -> bytes::Bytes {
    f.encoded
        .get_or_init(|| {
            pb::ServerMessage {
                kind: Some(pb::server_message::Kind::Frame(frame_to_pb(f))),
            }
            .encode_to_vec()
            .into()
        })
        .clone()
}

/// An encoded `ServerMessage` carrying a frame (as [`encoded_frame`] makes
/// it) back to the engine's frame, keeping `bytes` as its encoding: a
/// cluster node fans out the bytes its owner published.
pub fn frame_from_encoded(bytes: bytes::Bytes) -> Result<Frame, String> {
    use pb::view_frame::Body;
    let msg = pb::ServerMessage::decode(bytes.clone()).map_err(|e| e.to_string())?;
    let Some(pb::server_message::Kind::Frame(f)) = msg.kind else {
        return Err("not a frame".into());
    };
    let row = |r: pb::Row| {
        (
            engine::RowKey::new(&r.table, &r.id),
            std::sync::Arc::new(fields_from_pb(r.fields)),
        )
    };
    let edges = |w: pb::WindowEdges| engine::WindowEdges {
        has_before: w.has_before,
        has_after: w.has_after,
    };
    let body = match f.body.ok_or("a frame without a body")? {
        Body::Snapshot(s) => FrameBody::Snapshot(engine::Snapshot {
            graph: s.graph.into(),
            params_hash: s.params_hash.into(),
            refs: std::sync::Arc::new(s.refs.into_iter().map(ref_from_pb).collect()),
            rows: s.rows.into_iter().map(row).collect(),
            total: s.total,
            window: s.window.map(edges),
        }),
        Body::Diff(d) => FrameBody::Diff(engine::ViewDiff {
            refs: d
                .refs
                .into_iter()
                .map(|p| {
                    Ok(Patch {
                        op: op_from_pb(p.op)?,
                        path: p.path,
                        from: (!p.from.is_empty()).then_some(p.from),
                        value: p.value.map(ref_from_pb),
                    })
                })
                .collect::<Result<_, String>>()?,
            rows: d.rows.into_iter().map(row).collect(),
            patches: d
                .patches
                .into_iter()
                .map(|p| {
                    let ops = p
                        .ops
                        .into_iter()
                        .map(|o| {
                            Ok(Patch {
                                op: op_from_pb(o.op)?,
                                path: o.path,
                                from: None,
                                value: o.value.map(value_from_pb),
                            })
                        })
                        .collect::<Result<_, String>>()?;
                    Ok((engine::RowKey::new(&p.table, &p.id), ops))
                })
                .collect::<Result<_, String>>()?,
            total: d.total,
            window: d.window.map(edges),
        }),
        Body::Error(e) => FrameBody::Error(error_from_pb(e.code, e.message)),
    };
    let out = Frame {
        view_id: f.view_id.into(),
        epoch: f.epoch,
        version: f.version,
        prev_version: f.prev_version,
        prev_epoch: f.prev_epoch,
        body,
        encoded: std::sync::OnceLock::new(),
    };
    let _ = out.encoded.set(bytes);
    Ok(out)
}

/// A view error frame's status back to the engine's error.
fn error_from_pb(code: i32, message: String) -> engine::EngineError {
    use engine::EngineError as E;
    use tonic::Code;
    match Code::from_i32(code) {
        Code::InvalidArgument => E::InvalidArgument(message),
        Code::NotFound => E::NotFound(message),
        Code::PermissionDenied => E::PermissionDenied(message),
        Code::ResourceExhausted => E::ResourceExhausted(message),
        Code::AlreadyExists => E::AlreadyExists(message),
        Code::FailedPrecondition => E::FailedPrecondition(message),
        Code::Unavailable => E::Unavailable(message),
        Code::DeadlineExceeded => E::DeadlineExceeded(message),
        _ => E::Internal(message),
    }
}

/// Encodes any `ServerMessage` kind.
pub fn encode_message(kind: pb::server_message::Kind) -> bytes::Bytes {
    pb::ServerMessage { kind: Some(kind) }
        .encode_to_vec()
        .into()
}

fn field_info(f: &engine::FieldShape) -> pb::FieldInfo {
    pb::FieldInfo {
        nested: f.nested.clone(),
        name: f.name.clone(),
        kind: f.kind.to_owned(),
        not_null: f.not_null,
    }
}

/// The registry as a Describe response.
pub fn describe(reg: &engine::Registry) -> pb::DescribeResponse {
    let params = |s: &engine::ParamSchema| -> Vec<pb::ParamInfo> {
        s.iter()
            .map(|(name, p)| pb::ParamInfo {
                name: name.clone(),
                r#type: (match p.ty {
                    engine::ParamType::String => pb::ParamType::String,
                    engine::ParamType::Int => pb::ParamType::Int,
                    engine::ParamType::Float => pb::ParamType::Float,
                    engine::ParamType::Bool => pb::ParamType::Bool,
                    engine::ParamType::Uuid => pb::ParamType::Uuid,
                    engine::ParamType::Timestamp => pb::ParamType::Timestamp,
                }) as i32,
                required: p.required,
                default: p.default.as_ref().map(value_to_pb),
                one_of: p.one_of.iter().map(value_to_pb).collect(),
                description: p.description.clone(),
            })
            .collect()
    };
    let deps = |d: &[engine::TableDep]| -> Vec<pb::TableDep> {
        d.iter()
            .map(|t| pb::TableDep {
                table: t.table.clone(),
                columns: t.columns.iter().flatten().cloned().collect(),
            })
            .collect()
    };
    pb::DescribeResponse {
        protocol_version: engine::PROTOCOL_VERSION,
        graphs: reg
            .graphs()
            .map(|g| pb::GraphInfo {
                name: g.name.clone(),
                description: g.description.clone(),
                params: params(&g.params),
                deps: deps(&g.deps),
                permissions: g.permissions.clone(),
                per_user: g.per_user,
                nested: g
                    .nested
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                table: g.table.clone().unwrap_or_default(),
                fields: g.fields.iter().map(field_info).collect(),
                window: g.window.as_ref().map(|w| pb::WindowOrder {
                    order: w.order.clone(),
                    descending: w.descending,
                    default_limit: w.default_limit,
                    max_limit: w.max_limit,
                }),
            })
            .collect(),
        mutations: reg
            .mutations()
            .map(|m| pb::MutationInfo {
                name: m.name.clone(),
                description: m.description.clone(),
                params: params(&m.params),
                permissions: m.permissions.clone(),
                changes: deps(&m.changes),
                fields: m.fields.iter().map(field_info).collect(),
            })
            .collect(),
        tables: reg
            .representation()
            .into_iter()
            .map(|(name, (cols, graphs))| pb::TableInfo {
                name,
                columns: cols
                    .map(|c| c.into_iter().collect())
                    .unwrap_or_else(|| vec!["*".into()]),
                graphs,
            })
            .collect(),
    }
}

/// Engine stats as a protobuf response.
pub fn stats_to_pb(s: engine::EngineStats) -> pb::StatsResponse {
    pb::StatsResponse {
        sessions: s.sessions as u32,
        views: s.views as u32,
        subscriptions: s.subscriptions as u32,
        store_rows: s.store_rows as u64,
        evaluations: s.evaluations,
        evaluation_rounds: s.evaluation_rounds,
        patches: s.patches,
        changes: s.changes,
        batches: s.batches,
        frames_sent: s.frames,
        resyncs: s.resyncs,
        evaluation_errors: s.eval_errors,
        view_stats: s
            .view_info
            .into_iter()
            .map(|v| pb::ViewStats {
                graph: v.graph.to_string(),
                params_hash: v.params_hash.to_string(),
                workspace_id: v.workspace_id.to_string(),
                version: v.version,
                subscribers: v.subscribers as u32,
                evaluations: v.evaluations,
                refs: v.refs as u32,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{Ref, RowKey, Snapshot, Value, ViewDiff, WindowEdges};

    fn round_trip(f: Arc<Frame>) {
        let bytes = encoded_frame(&f);
        let back = frame_from_encoded(bytes.clone()).unwrap();
        assert_eq!(frame_to_pb(&back), frame_to_pb(&f));
        assert_eq!(back.encoded.get(), Some(&bytes), "the bytes are kept");
    }

    #[test]
    fn frames_read_back_as_they_were_encoded() {
        let row = |t: &str| {
            let mut f = engine::Fields::new();
            f.insert("title".into(), Value::String(t.into()));
            f.insert("n".into(), Value::Int(3));
            Arc::new(f)
        };
        round_trip(Frame::new(
            "g/abc".into(),
            7,
            4,
            3,
            FrameBody::Diff(ViewDiff {
                refs: vec![
                    Patch {
                        op: Op::Add,
                        path: "/0".into(),
                        from: None,
                        value: Some(Ref::new("tasks", "1").with_nested("p", Ref::new("p", "2"))),
                    },
                    Patch {
                        op: Op::Move,
                        path: "/2".into(),
                        from: Some("/1".into()),
                        value: None,
                    },
                ],
                rows: vec![(RowKey::new("tasks", "1"), row("a"))],
                patches: vec![(
                    RowKey::new("tasks", "2"),
                    vec![Patch {
                        op: Op::Replace,
                        path: "/title".into(),
                        from: None,
                        value: Some(Value::String("b".into())),
                    }],
                )],
                total: Some(9),
                window: Some(WindowEdges {
                    has_before: true,
                    has_after: false,
                }),
            }),
        ));
        round_trip(Frame::new(
            "g/abc".into(),
            7,
            4,
            0,
            FrameBody::Snapshot(Snapshot {
                graph: "g".into(),
                params_hash: "abc".into(),
                refs: Arc::new(vec![Ref::new("tasks", "1")]),
                rows: vec![(RowKey::new("tasks", "1"), row("a"))],
                total: None,
                window: None,
            }),
        ));
        round_trip(Frame::new(
            "g/abc".into(),
            7,
            4,
            0,
            FrameBody::Error(engine::EngineError::Unavailable("down".into())),
        ));
    }
}
