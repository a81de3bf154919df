//! Client-side view state: applies the frames of one view in order and
//! checks continuity, the way every Arcana client does. Used by Rust
//! services that subscribe to Arcana and by the tests.

use std::collections::{BTreeMap, HashSet};

use crate::engine::diff::{apply_fields, apply_refs};
use crate::engine::{Fields, Patch, Ref, RowKey, WindowEdges};
use crate::proto::{view_frame::Body, ViewFrame};
use crate::wire::convert::{fields_from_pb, op_from_pb, ref_from_pb, value_from_pb};

/// What a client holds for one view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewState {
    /// The view's epoch.
    pub epoch: u64,
    /// The last applied version (0 before the snapshot).
    pub version: u64,
    /// The refs, in order.
    pub refs: Vec<Ref>,
    /// Every row the refs reach.
    pub rows: BTreeMap<RowKey, Fields>,
    /// The total, when the graph sets one.
    pub total: Option<i64>,
    /// The last error frame's message, cleared by the next diff.
    pub error: Option<String>,
    /// A windowed view's edges.
    pub window: Option<WindowEdges>,
    /// Parts of a snapshot received so far; applied when the last arrives.
    pub pending: Option<Box<ViewState>>,
}

impl ViewState {
    /// Applies one frame. Fails on a gap (a diff not on top of our version).
    pub fn apply(&mut self, f: &ViewFrame) -> Result<(), String> {
        match f.body.as_ref().ok_or("frame without a body")? {
            Body::Snapshot(s) => {
                // Parts of one snapshot add up; a part of another version
                // starts over.
                let mut next = match self.pending.take() {
                    Some(p) if p.epoch == f.epoch && p.version == f.version => *p,
                    _ => ViewState {
                        epoch: f.epoch,
                        version: f.version,
                        ..ViewState::default()
                    },
                };
                next.refs.extend(s.refs.iter().cloned().map(ref_from_pb));
                next.rows.extend(s.rows.iter().map(|r| {
                    (
                        RowKey::new(&r.table, &r.id),
                        fields_from_pb(r.fields.clone()),
                    )
                }));
                next.total = s.total;
                next.window = s.window.as_ref().map(edges_from_pb);
                if s.more {
                    self.pending = Some(Box::new(next));
                } else {
                    *self = next;
                }
            }
            Body::Diff(d) => {
                // A re-anchor diff applies on a version of another epoch.
                let base = if f.prev_epoch != 0 {
                    f.prev_epoch
                } else {
                    f.epoch
                };
                if base != self.epoch || f.prev_version != self.version {
                    return Err(format!(
                        "gap: diff {}->{} (epoch {base}->{}) on version {} (epoch {})",
                        f.prev_version, f.version, f.epoch, self.version, self.epoch
                    ));
                }
                self.pending = None;
                let ops: Vec<Patch<Ref>> = d
                    .refs
                    .iter()
                    .map(|o| {
                        Ok(Patch {
                            op: op_from_pb(o.op)?,
                            path: o.path.clone(),
                            from: (!o.from.is_empty()).then(|| o.from.clone()),
                            value: o.value.clone().map(ref_from_pb),
                        })
                    })
                    .collect::<Result<_, String>>()?;
                apply_refs(&mut self.refs, &ops)?;
                for r in &d.rows {
                    self.rows.insert(
                        RowKey::new(&r.table, &r.id),
                        fields_from_pb(r.fields.clone()),
                    );
                }
                for p in &d.patches {
                    let key = RowKey::new(&p.table, &p.id);
                    let row = self
                        .rows
                        .get_mut(&key)
                        .ok_or_else(|| format!("patch for unknown row {}/{}", p.table, p.id))?;
                    let ops: Vec<Patch<crate::engine::Value>> = p
                        .ops
                        .iter()
                        .map(|o| {
                            Ok(Patch {
                                op: op_from_pb(o.op)?,
                                path: o.path.clone(),
                                from: None,
                                value: o.value.clone().map(value_from_pb),
                            })
                        })
                        .collect::<Result<_, String>>()?;
                    apply_fields(row, &ops)?;
                }
                if d.total.is_some() {
                    self.total = d.total;
                }
                if let Some(w) = &d.window {
                    self.window = Some(edges_from_pb(w));
                }
                // Rows no ref reaches any more leave the view.
                let mut live: HashSet<RowKey> = HashSet::new();
                for r in &self.refs {
                    r.visit_keys(&mut |k| {
                        live.insert(k.clone());
                    });
                }
                self.rows.retain(|k, _| live.contains(k));
                self.version = f.version;
                self.epoch = f.epoch;
                self.error = None;
            }
            Body::Error(e) => self.error = Some(e.message.clone()),
        }
        Ok(())
    }

    /// The same content, ignoring version bookkeeping: what a comparison
    /// with a fresh snapshot should look at.
    pub fn content(
        &self,
    ) -> (
        &Vec<Ref>,
        &BTreeMap<RowKey, Fields>,
        Option<i64>,
        Option<WindowEdges>,
    ) {
        (&self.refs, &self.rows, self.total, self.window)
    }
}

fn edges_from_pb(w: &crate::proto::WindowEdges) -> WindowEdges {
    WindowEdges {
        has_before: w.has_before,
        has_after: w.has_after,
    }
}
