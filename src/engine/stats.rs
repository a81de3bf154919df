//! Engine-wide counters.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters the engine keeps.
#[derive(Debug, Default)]
pub struct Stats {
    /// View evaluations run (first evaluations included).
    pub evaluations: Counter,
    /// Evaluation rounds of refreshes (one query for a SQL graph, however
    /// many views it answers).
    pub evaluation_rounds: Counter,
    /// Rounds that patched held rows from a change's values, without a query.
    pub patches: Counter,
    /// Evaluations that failed.
    pub eval_errors: Counter,
    /// Changes received.
    pub changes: Counter,
    /// Invalidation batches processed.
    pub batches: Counter,
    /// Frames queued to sessions (one per subscriber per diff).
    pub frames: Counter,
    /// Times a session fell behind and was cut over to snapshots.
    pub resyncs: Counter,
}
