//! What change sources hand the engine: batches of changes that land in
//! one evaluation, each with an optional signal for when it is applied.

use tokio::sync::oneshot;

use super::registry::Change;

/// Changes that must be applied together, with an optional completion signal.
#[derive(Debug)]
pub struct ChangeBatch {
    /// The changes.
    pub changes: Vec<Change>,
    /// Fired once every affected view's diff is queued.
    pub done: Option<oneshot::Sender<()>>,
    /// Refresh every live view, whatever the changes say. Change sources set
    /// it after an outage in which changes may have been missed.
    pub everything: bool,
    /// The committing transaction, when the source knows it (the WAL
    /// does): a patch it yields is dropped from views whose last
    /// evaluation already read it.
    pub xid: Option<u32>,
}

impl ChangeBatch {
    /// A batch of `changes` that signals `done` once applied.
    pub fn new(changes: Vec<Change>, done: Option<oneshot::Sender<()>>) -> Self {
        ChangeBatch {
            changes,
            done,
            everything: false,
            xid: None,
        }
    }

    /// The same batch, committed by transaction `xid`.
    pub fn committed_by(mut self, xid: u32) -> Self {
        self.xid = Some(xid);
        self
    }
}
