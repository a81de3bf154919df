//! Invalidation: change batches in, re-evaluated views out.
//!
//! One task drains the bounded change queue and, for each batch, finds the
//! views its changes can touch by table and column. Each view then refreshes
//! on its own schedule: a view not refreshing starts at once (no fixed delay
//! when idle); a view already refreshing is marked dirty and runs once more
//! when it finishes, covering every batch that arrived meanwhile (bursts
//! coalesce per view). A slow view therefore never holds up the others, and
//! at most `eval_concurrency` evaluations run at a time.
//!
//! A batch is never split, so a transaction's changes land in one evaluation.
//! Its `done` fires once every view it touched has completed an evaluation
//! that started after the batch arrived, i.e. once its diffs are queued to
//! sessions: that is what lets a change source acknowledge safely (a WAL
//! position, a mutation reply). Batches not yet done are bounded
//! (`change_queue`); past that the loop stops reading and writers wait.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::registry::Change;
use super::view::View;
use super::Inner;

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

/// Most batches taken from the queue at once.
const MAX_TAKE: usize = 1024;

/// Completion of one batch: fires `done` when the last view it touched has
/// refreshed. Holds a permit of the outstanding-batch budget until dropped.
struct Ack {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
    _permit: OwnedSemaphorePermit,
}

impl Ack {
    fn release(&self) {
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
    running: bool,
    dirty: bool,
    waiting: Vec<Arc<Ack>>,
}

/// Runs until the engine is dropped (its sender closes the queue).
pub(crate) async fn run(inner: Weak<Inner>, mut rx: mpsc::Receiver<ChangeBatch>) {
    let Some(budget) = inner
        .upgrade()
        .map(|i| Arc::new(Semaphore::new(i.config.change_queue.max(1))))
    else {
        return;
    };
    let mut taken = Vec::new();
    while rx.recv_many(&mut taken, MAX_TAKE).await > 0 {
        for batch in taken.drain(..) {
            let Ok(permit) = budget.clone().acquire_owned().await else {
                return;
            };
            let Some(inner) = inner.upgrade() else { return };
            inner.stats.batches.inc();
            let views = affected(&inner, std::slice::from_ref(&batch));
            tracing::debug!(views = views.len(), "change batch");
            let ack = Arc::new(Ack {
                remaining: AtomicUsize::new(views.len()),
                done: Mutex::new(batch.done),
                _permit: permit,
            });
            if views.is_empty() {
                ack.remaining.store(1, Ordering::Release);
                ack.release();
            }
            for v in views {
                schedule(&inner, v, ack.clone());
            }
        }
    }
}

/// Marks `view` dirty for `ack`'s batch and starts its refresh loop if idle.
fn schedule(inner: &Arc<Inner>, view: Arc<View>, ack: Arc<Ack>) {
    let start = {
        let mut s = view.schedule.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.push(ack);
        s.dirty = true;
        !std::mem::replace(&mut s.running, true)
    };
    if start {
        tokio::spawn(refresh_loop(inner.clone(), view));
    }
}

/// Refreshes `view` until no batch is waiting on it.
async fn refresh_loop(inner: Arc<Inner>, view: Arc<View>) {
    loop {
        let acks = {
            let mut s = view.schedule.lock().unwrap_or_else(|e| e.into_inner());
            if !s.dirty {
                s.running = false;
                return;
            }
            s.dirty = false;
            std::mem::take(&mut s.waiting)
        };
        {
            let _slot = inner.evaluations.acquire().await;
            let r = view
                .refresh(&inner.store, &inner.stats, inner.config.history_len)
                .await;
            tracing::debug!(view = %view.id, result = ?r, "refreshed");
        }
        for a in acks {
            a.release();
        }
    }
}

/// The live views any change in `batches` can touch, each once. A graph
/// with a route on the changed table and known values for its column
/// contributes only the views routed to those values; otherwise all its views.
fn affected(inner: &Inner, batches: &[ChangeBatch]) -> Vec<Arc<View>> {
    for b in batches {
        inner.stats.changes.add(b.changes.len() as u64);
    }
    let views = inner.views.lock().unwrap_or_else(|e| e.into_inner());
    if batches.iter().any(|b| b.everything) {
        return views.all().cloned().collect();
    }
    let mut out: HashMap<*const View, Arc<View>> = HashMap::new();
    let mut whole: HashSet<&Arc<str>> = HashSet::new();
    let mut add = |v: &Arc<View>| {
        out.entry(Arc::as_ptr(v)).or_insert_with(|| v.clone());
    };
    for c in batches.iter().flat_map(|b| &b.changes) {
        for g in inner.registry.graphs_for(c) {
            if whole.contains(g) {
                continue;
            }
            let routed = inner.registry.graph(g).and_then(|def| {
                def.routes
                    .iter()
                    .filter(|r| r.table == c.table)
                    .find_map(|r| c.route_values.get(&r.column).map(|vals| (r, vals)))
            });
            match routed {
                Some((route, values)) => {
                    for value in values {
                        views.by_route(g, &route.param, value).for_each(&mut add);
                    }
                }
                None => {
                    whole.insert(g);
                    views.by_graph(g).for_each(&mut add);
                }
            }
        }
    }
    out.into_values().collect()
}
