//! What the engine's calls answer: a subscribe's and a sync's outcome, and
//! the stats.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::EngineError;
use super::identity::Identity;
use super::value::Value;
use super::view::{SyncMode, ViewInfo};
use super::window::Window;

/// The result of a subscribe.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// The view id within the session.
    pub view_id: Arc<str>,
    /// The view's epoch.
    pub epoch: u64,
    /// The version of the snapshot queued on the session.
    pub version: u64,
    /// The canonical params hash.
    pub params_hash: Arc<str>,
}

/// One view in a sync request.
#[derive(Debug, Clone)]
pub struct SyncView {
    /// The graph.
    pub graph: String,
    /// The params as originally given.
    pub params: HashMap<String, Value>,
    /// The epoch the client saw.
    pub epoch: u64,
    /// The last version the client applied.
    pub version: u64,
    /// The window it held, for windowed graphs.
    pub window: Option<Window>,
}

/// The answer for one view of a sync request.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The view id (empty if the view could not be resolved).
    pub view_id: Arc<str>,
    /// What was queued, or why the view failed.
    pub result: Result<(SyncMode, u64, u64), EngineError>,
}

/// Counters and a per-view breakdown.
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Open sessions.
    pub sessions: usize,
    /// Live views.
    pub views: usize,
    /// Subscriptions across sessions.
    pub subscriptions: usize,
    /// Rows in the normalized store.
    pub store_rows: usize,
    /// Evaluations run (one per view refreshed).
    pub evaluations: u64,
    /// Evaluation rounds (queries, for SQL graphs); a round refreshes one
    /// or more views of a graph.
    pub evaluation_rounds: u64,
    /// View updates made by patching held rows from a change, no query.
    pub patches: u64,
    /// Evaluations that failed.
    pub eval_errors: u64,
    /// Changes received.
    pub changes: u64,
    /// Invalidation rounds.
    pub batches: u64,
    /// Frames queued to sessions.
    pub frames: u64,
    /// Session resyncs after falling behind.
    pub resyncs: u64,
    /// The longest session outbound queue (items).
    pub session_queue_max: usize,
    /// Items queued across the sessions.
    pub session_queue_total: usize,
    /// Each live view.
    pub view_info: Vec<ViewInfo>,
    /// Each open session.
    pub session_info: Vec<SessionInfo>,
}

/// A point-in-time summary of a session, for stats.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session id.
    pub id: Arc<str>,
    /// Who opened it.
    pub identity: Identity,
    /// Items queued for its stream.
    pub queued: usize,
    /// Times it fell behind and was cut over to snapshots.
    pub resyncs: u64,
    /// Views it is subscribed to.
    pub subscriptions: usize,
}
