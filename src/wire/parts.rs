//! Snapshots in parts: a snapshot frame is encoded a part at a time, each
//! part a `ViewFrame` with some of the refs and the rows they newly reach,
//! `more` set on all but the last. A part is built only when the stream is
//! ready to send it, so a 100,000-row snapshot never exists as one protobuf
//! message: the server holds one part's worth of encoding at a time, and the
//! first part leaves as soon as it is full.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::convert::{edges_to_pb, ref_to_pb, row_to_pb};
use crate::engine::{Frame, FrameBody, RowKey};
use crate::proto as pb;

/// A snapshot frame being sent in parts.
pub struct SnapshotParts {
    frame: Arc<Frame>,
    /// The id the client knows the view by, when not the view's own.
    alias: Option<Arc<str>>,
    next_ref: usize,
    sent: HashSet<RowKey>,
    part_bytes: usize,
    done: bool,
}

impl SnapshotParts {
    /// Parts of `frame`, which must be a snapshot, of about `part_bytes`
    /// each (a part always holds at least one ref).
    pub fn new(frame: Arc<Frame>, alias: Option<Arc<str>>, part_bytes: usize) -> Self {
        debug_assert!(matches!(frame.body, FrameBody::Snapshot(_)));
        SnapshotParts {
            frame,
            alias,
            next_ref: 0,
            sent: HashSet::new(),
            part_bytes: part_bytes.max(1),
            done: false,
        }
    }

    /// The next part as an encoded `ServerMessage { frame }`, or `None` once
    /// the last has been given out.
    pub fn next_part(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let FrameBody::Snapshot(s) = &self.frame.body else {
            self.done = true;
            return None;
        };
        let mut refs = Vec::new();
        let mut rows = Vec::new();
        let mut size = 0;
        while let Some(r) = s.refs.get(self.next_ref) {
            self.next_ref += 1;
            let pr = ref_to_pb(r);
            size += pr.encoded_len() + 4;
            refs.push(pr);
            r.visit_keys(&mut |k| {
                if !self.sent.insert(k.clone()) {
                    return;
                }
                // Rows are sorted by key: find each without an index.
                if let Ok(at) = s.rows.binary_search_by(|(rk, _)| rk.cmp(k)) {
                    let (rk, f) = &s.rows[at];
                    let row = row_to_pb(rk, f);
                    size += row.encoded_len() + 4;
                    rows.push(row);
                }
            });
            if size >= self.part_bytes {
                break;
            }
        }
        let more = self.next_ref < s.refs.len();
        self.done = !more;
        let frame = pb::ViewFrame {
            view_id: self
                .alias
                .as_deref()
                .unwrap_or(&self.frame.view_id)
                .to_owned(),
            epoch: self.frame.epoch,
            version: self.frame.version,
            prev_version: 0,
            prev_epoch: 0,
            body: Some(pb::view_frame::Body::Snapshot(pb::Snapshot {
                graph: s.graph.to_string(),
                params_hash: s.params_hash.to_string(),
                refs,
                rows,
                total: s.total,
                window: s.window.as_ref().map(edges_to_pb),
                more,
            })),
        };
        Some(
            pb::ServerMessage {
                kind: Some(pb::server_message::Kind::Frame(frame)),
            }
            .encode_to_vec()
            .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Fields, Ref, Snapshot, Value};

    fn snapshot(n: usize) -> Arc<Frame> {
        let mut refs = Vec::new();
        let mut rows = Vec::new();
        let shared = RowKey::new("users", "u1");
        for i in 0..n {
            let id = format!("{i:05}");
            refs.push(Ref::new("tasks", &id).with_nested("owner", Ref::new("users", "u1")));
            let mut f = Fields::new();
            f.insert("title".into(), Value::String("x".repeat(100)));
            rows.push((RowKey::new("tasks", &id), Arc::new(f)));
        }
        rows.push((shared, Arc::new(Fields::new())));
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Frame::new(
            "g/1".into(),
            3,
            7,
            0,
            FrameBody::Snapshot(Snapshot {
                graph: "g".into(),
                params_hash: "1".into(),
                refs: Arc::new(refs),
                rows,
                total: Some(n as i64),
                window: None,
            }),
        )
    }

    fn decode(b: &Bytes) -> pb::ViewFrame {
        match pb::ServerMessage::decode(b.as_ref()).unwrap().kind {
            Some(pb::server_message::Kind::Frame(f)) => f,
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn parts_add_up_to_the_snapshot_and_only_the_last_has_no_more() {
        let mut parts = SnapshotParts::new(snapshot(1000), None, 8 * 1024);
        let mut refs = Vec::new();
        let mut rows = Vec::new();
        let mut n = 0;
        let mut last_more = true;
        while let Some(b) = parts.next_part() {
            assert!(b.len() < 8 * 1024 + 2048, "a part is about part_bytes");
            let f = decode(&b);
            assert_eq!((f.epoch, f.version), (3, 7));
            let Some(pb::view_frame::Body::Snapshot(s)) = f.body else {
                panic!()
            };
            assert!(last_more, "nothing after the last part");
            last_more = s.more;
            refs.extend(s.refs);
            rows.extend(s.rows);
            n += 1;
        }
        assert!(n > 5, "split into {n} parts");
        assert!(!last_more);
        assert_eq!(refs.len(), 1000);
        assert_eq!(refs[999].id, "00999");
        // Every row once: the shared user is sent with the first part only.
        assert_eq!(rows.len(), 1001);
    }

    #[test]
    fn a_small_snapshot_is_one_ordinary_frame() {
        let frame = snapshot(3);
        let mut parts = SnapshotParts::new(frame.clone(), Some("g/first".into()), 1 << 20);
        let one = decode(&parts.next_part().unwrap());
        assert!(parts.next_part().is_none());
        assert_eq!(one.view_id, "g/first");
        let whole = crate::wire::convert::frame_to_pb(&frame);
        let (Some(pb::view_frame::Body::Snapshot(a)), Some(pb::view_frame::Body::Snapshot(b))) =
            (one.body, whole.body)
        else {
            panic!()
        };
        assert_eq!(a.refs, b.refs);
        assert!(!a.more);
        assert_eq!(a.rows.len(), b.rows.len());
    }
}
