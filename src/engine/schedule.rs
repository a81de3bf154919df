//! The state a view's refreshes are scheduled by (see `invalidation.rs`):
//! whether one runs, whether another is owed, the row values waiting to be
//! patched in, and the batches waiting for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::result::RowKey;
use super::value::Fields;

/// New values of some columns of one row.
#[derive(Clone, Debug)]
pub(crate) struct Patch {
    pub(crate) key: RowKey,
    pub(crate) values: Arc<Fields>,
    /// The transaction that wrote them, when known.
    pub(crate) xid: Option<u32>,
}

/// Completion of one batch: fires `done` when the last view it touched has
/// refreshed. Holds a permit of the outstanding-batch budget until dropped,
/// and the batch's span, which so ends when the batch is done.
pub(crate) struct Ack {
    pub(crate) remaining: AtomicUsize,
    pub(crate) done: Mutex<Option<oneshot::Sender<()>>>,
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) _span: tracing::Span,
}

impl Ack {
    pub(crate) fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(());
            }
        }
    }
}

/// A view's refresh schedule.
#[derive(Default)]
pub(crate) struct Schedule {
    pub(crate) running: bool,
    /// Needs a full evaluation.
    pub(crate) dirty: bool,
    /// Row values to patch in, when no full evaluation is needed.
    pub(crate) patches: Vec<Patch>,
    pub(crate) waiting: Vec<Arc<Ack>>,
    /// Evaluations failed in a row; spaces out the retries.
    pub(crate) failures: u32,
}
