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
}

impl ChangeBatch {
    /// A batch of `changes` that signals `done` once applied.
    pub fn new(changes: Vec<Change>, done: Option<oneshot::Sender<()>>) -> Self {
        ChangeBatch {
            changes,
            done,
            everything: false,
        }
    }
}
