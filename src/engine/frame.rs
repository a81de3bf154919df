//! Frames: what a view pushes to its subscribers. A frame is built once per
//! view version and shared (`Arc`) by every subscriber and by the view's
//! history; the transport encodes it once into `encoded` and reuses the bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use super::diff::{FieldOp, RefOp};
use super::error::EngineError;
use super::result::{Ref, RowKey};
use super::value::SharedFields;
use super::window::WindowEdges;

/// One push for one view.
#[derive(Debug)]
pub struct Frame {
    /// `<graph>/<params_hash>`.
    pub view_id: Arc<str>,
    /// The view's life.
    pub epoch: u64,
    /// The version this frame brings the view to.
    pub version: u64,
    /// The version a diff applies on (0 otherwise).
    pub prev_version: u64,
    /// The epoch `prev_version` belongs to, on a re-anchor diff that moves a
    /// window onto another view; 0 when it is `epoch`.
    pub prev_epoch: u64,
    /// What the frame carries.
    pub body: FrameBody,
    /// The transport's encoding, filled by the first sender.
    pub encoded: OnceLock<Bytes>,
}

/// The content of a frame.
#[derive(Debug)]
pub enum FrameBody {
    /// The whole view.
    Snapshot(Snapshot),
    /// The change from `prev_version`.
    Diff(ViewDiff),
    /// The view could not be refreshed; the last good state stands.
    Error(EngineError),
}

/// A full view state.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The graph.
    pub graph: Arc<str>,
    /// The canonical params hash.
    pub params_hash: Arc<str>,
    /// The refs, in order (shared with the view's state).
    pub refs: Arc<Vec<Ref>>,
    /// Every row the refs reach.
    pub rows: Vec<(RowKey, SharedFields)>,
    /// The total, when the graph sets one.
    pub total: Option<i64>,
    /// A windowed view's edges.
    pub window: Option<WindowEdges>,
}

/// The change between two consecutive versions.
#[derive(Debug, Clone, Default)]
pub struct ViewDiff {
    /// Sequential patch of the refs array.
    pub refs: Vec<RefOp>,
    /// Rows newly referenced.
    pub rows: Vec<(RowKey, SharedFields)>,
    /// Field patches of rows still referenced.
    pub patches: Vec<(RowKey, Vec<FieldOp>)>,
    /// The new total, when it changed.
    pub total: Option<i64>,
    /// A windowed view's edges, when they changed.
    pub window: Option<WindowEdges>,
}

impl ViewDiff {
    /// Whether the diff changes nothing.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
            && self.rows.is_empty()
            && self.patches.is_empty()
            && self.total.is_none()
            && self.window.is_none()
    }
}

impl Frame {
    /// A new, not yet encoded frame.
    pub fn new(
        view_id: Arc<str>,
        epoch: u64,
        version: u64,
        prev_version: u64,
        body: FrameBody,
    ) -> Arc<Frame> {
        Arc::new(Frame {
            view_id,
            epoch,
            version,
            prev_version,
            prev_epoch: 0,
            body,
            encoded: OnceLock::new(),
        })
    }
}

/// The first version of `term`: a view's versions count up within a term
/// of 2^32, and each new owner starts a new term. 2^21 terms of 2^32
/// versions still fit a JavaScript number exactly.
pub fn term_start(term: u64) -> u64 {
    term << 32
}

/// The term a version belongs to.
pub fn term_of(version: u64) -> u64 {
    version >> 32
}
