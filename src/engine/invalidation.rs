//! Invalidation: change batches in, re-evaluated views out.
//!
//! One task drains the bounded change queue and, for each batch, asks the
//! router (`router.rs`) which views its changes can touch. Each view then
//! refreshes on its own schedule: a view not refreshing is queued at once
//! (no fixed delay when idle); a view already queued or refreshing is marked
//! dirty and runs once more when it finishes, covering every batch that
//! arrived meanwhile (bursts coalesce per view). Queued views of one graph
//! are evaluated together in rounds: whenever one of the `eval_concurrency`
//! slots is free, every waiting view of the graph (up to `eval_batch`) goes
//! into one round, which a SQL graph answers with one query. A slow view
//! holds up only the views in its own round, never the others.
//!
//! A batch is never split, so a transaction's changes land in one evaluation.
//! Its `done` fires once every view it touched has completed an evaluation
//! that started after the batch arrived, i.e. once its diffs are queued to
//! sessions: that is what lets a change source acknowledge safely (a WAL
//! position, a mutation reply). Batches not yet done are bounded
//! (`change_queue`); past that the loop stops reading and writers wait.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::field::Empty;
use tracing::Instrument;

use super::error::EvalError;
use super::observe::SPANS;
use super::registry::Change;
use super::router::{self, Patch};
use super::stats::{EventKind, FEED_LIST};
use super::view::{Refresh, View};
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
/// refreshed. Holds a permit of the outstanding-batch budget until dropped,
/// and the batch's span, which so ends when the batch is done.
struct Ack {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
    _permit: OwnedSemaphorePermit,
    _span: tracing::Span,
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
    /// Needs a full evaluation.
    dirty: bool,
    /// Row values to patch in, when no full evaluation is needed.
    patches: Vec<Patch>,
    waiting: Vec<Arc<Ack>>,
    /// Evaluations failed in a row; spaces out the retries.
    failures: u32,
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
            let span = tracing::debug_span!(
                target: SPANS,
                "change_batch",
                changes = batch.changes.len() as i64,
                everything = batch.everything,
                views = Empty,
            );
            let (full, patched) =
                span.in_scope(|| router::affected(&inner, std::slice::from_ref(&batch)));
            span.record("views", (full.len() + patched.len()) as i64);
            tracing::debug!(full = full.len(), patched = patched.len(), "change batch");
            inner
                .stats
                .feed
                .record(|| batch_event(&batch, full.len() + patched.len()));
            let ack = Arc::new(Ack {
                remaining: AtomicUsize::new(full.len() + patched.len()),
                done: Mutex::new(batch.done),
                _permit: permit,
                _span: span,
            });
            if full.is_empty() && patched.is_empty() {
                ack.remaining.store(1, Ordering::Release);
                ack.release();
            }
            for v in full {
                schedule(&inner, v, Some(ack.clone()), None);
            }
            for (v, p) in patched {
                schedule(&inner, v, Some(ack.clone()), Some(p));
            }
        }
    }
}

/// The feed entry for a batch that scheduled `views` refreshes.
fn batch_event(batch: &ChangeBatch, views: usize) -> EventKind {
    let mut tables: Vec<String> = Vec::new();
    let mut workspaces: Vec<String> = Vec::new();
    let mut any_workspace = false;
    for c in &batch.changes {
        if tables.len() < FEED_LIST && !tables.contains(&c.table) {
            tables.push(c.table.clone());
        }
        match &c.workspace {
            None => any_workspace = true,
            Some(w) if workspaces.len() < FEED_LIST && !workspaces.contains(w) => {
                workspaces.push(w.clone())
            }
            Some(_) => {}
        }
    }
    if any_workspace || batch.everything {
        // Not known to stay within the listed workspaces.
        workspaces.clear();
    }
    EventKind::Batch {
        changes: batch.changes.len(),
        tables,
        workspaces,
        views,
    }
}

/// Marks `view` for `ack`'s batch (if any), dirty or with rows to patch, and
/// queues it for a round if it is not queued or in one already.
fn schedule(
    inner: &Arc<Inner>,
    view: Arc<View>,
    ack: Option<Arc<Ack>>,
    patches: Option<Vec<Patch>>,
) {
    let start = {
        let mut s = view.schedule.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.extend(ack);
        match patches {
            None => s.dirty = true,
            Some(p) => s.patches.extend(p),
        }
        !std::mem::replace(&mut s.running, true)
    };
    if start {
        enqueue(inner, view);
    }
}

/// Has `view` evaluated in the next round, whatever changed.
pub(crate) fn refresh(inner: &Arc<Inner>, view: Arc<View>) {
    schedule(inner, view, None, None);
}

/// Views whose evaluation is running, per graph. An evaluation that read
/// the database before a patchable change became visible may bring in the
/// changed row with its old values; such views get the patch too, applied
/// after their evaluation. A window evaluating now may read past the reach
/// of its last evaluation, so changes reach it whatever their order keys.
/// A view can be marked by several holders at once (a round, and a
/// subscribe waiting for its first result), so each mark is counted: one
/// holder letting go must not unmark a view another still evaluates.
#[derive(Default)]
pub(crate) struct InFlight(Mutex<ByGraph>);

/// Graph -> (view address -> (view, marks)).
type ByGraph = HashMap<Arc<str>, HashMap<usize, (Arc<View>, usize)>>;

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByGraph> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `view` as evaluating until the guard drops (its result
    /// applied, or the evaluation abandoned).
    pub(crate) fn enter<'a>(&'a self, view: &'a Arc<View>) -> Evaluating<'a> {
        self.lock()
            .entry(view.key.graph.clone())
            .or_default()
            .entry(Arc::as_ptr(view) as usize)
            .or_insert_with(|| (view.clone(), 0))
            .1 += 1;
        Evaluating { set: self, view }
    }

    fn leave(&self, view: &Arc<View>) {
        let mut map = self.lock();
        if let Some(views) = map.get_mut(&view.key.graph) {
            let at = Arc::as_ptr(view) as usize;
            if let Some(entry) = views.get_mut(&at) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    views.remove(&at);
                }
            }
            if views.is_empty() {
                map.remove(&view.key.graph);
            }
        }
    }

    /// The views of `graph` evaluating now.
    pub(crate) fn of(&self, graph: &str) -> Vec<Arc<View>> {
        self.lock()
            .get(graph)
            .map(|v| v.values().map(|(view, _)| view.clone()).collect())
            .unwrap_or_default()
    }
}

/// A view marked as evaluating; unmarks it when dropped.
pub(crate) struct Evaluating<'a> {
    set: &'a InFlight,
    view: &'a Arc<View>,
}

impl Drop for Evaluating<'_> {
    fn drop(&mut self) {
        self.set.leave(self.view);
    }
}

/// Views of one graph waiting for an evaluation slot.
#[derive(Default)]
pub(crate) struct GraphQueue {
    views: VecDeque<Arc<View>>,
    dispatching: bool,
}

/// Puts `view` in its graph's queue and starts the graph's dispatcher.
fn enqueue(inner: &Arc<Inner>, view: Arc<View>) {
    let graph = view.key.graph.clone();
    let start = {
        let mut queues = inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        let q = queues.entry(graph.clone()).or_default();
        q.views.push_back(view);
        !std::mem::replace(&mut q.dispatching, true)
    };
    if start {
        tokio::spawn(dispatch(inner.clone(), graph));
    }
}

/// Hands the graph's queued views to evaluation rounds, as many views per
/// round as are waiting (up to `eval_batch`) whenever a slot is free. Idle,
/// a view gets a round of its own at once; under load, rounds grow, and
/// each answers many views with one query.
async fn dispatch(inner: Arc<Inner>, graph: Arc<str>) {
    loop {
        let Ok(permit) = inner.evaluations.clone().acquire_owned().await else {
            return;
        };
        let views: Vec<Arc<View>> = {
            let mut queues = inner.queues.lock().unwrap_or_else(|e| e.into_inner());
            let Some(q) = queues.get_mut(&graph) else {
                return;
            };
            if q.views.is_empty() {
                q.dispatching = false;
                return;
            }
            let n = q.views.len().min(inner.config.eval_batch.max(1));
            q.views.drain(..n).collect()
        };
        let span = tracing::debug_span!(
            target: SPANS,
            "evaluation_round",
            graph = &*graph,
            views = views.len() as i64,
            evaluated = Empty,
            lateral = false,
        );
        tokio::spawn(round(inner.clone(), views, permit, span.clone()).instrument(span));
    }
}

/// One evaluation round: refreshes `views` (all of one graph) together,
/// then releases the batches that waited on them and requeues views that
/// became dirty meanwhile. Views due only for patches get them applied
/// without a query; a full evaluation makes pending patches moot. `span`
/// is the round's (the graph's factory records `lateral` in it).
async fn round(
    inner: Arc<Inner>,
    views: Vec<Arc<View>>,
    permit: OwnedSemaphorePermit,
    span: tracing::Span,
) {
    let mut acks: Vec<Arc<Ack>> = Vec::new();
    let mut due: Vec<(bool, Vec<Patch>)> = Vec::with_capacity(views.len());
    for v in &views {
        let mut s = v.schedule.lock().unwrap_or_else(|e| e.into_inner());
        acks.append(&mut s.waiting);
        due.push((std::mem::take(&mut s.dirty), std::mem::take(&mut s.patches)));
    }
    {
        let mut guards = Vec::with_capacity(views.len());
        for v in &views {
            guards.push(v.lock_eval().await);
        }
        for (v, (full, patches)) in views.iter().zip(&mut due) {
            if !*full && !patches.is_empty() {
                inner.stats.patches.inc();
                let r = v.apply_patches(
                    std::mem::take(patches),
                    &inner.store,
                    &inner.stats,
                    inner.config.history_len,
                );
                tracing::debug!(view = %v.id, result = ?r, "patched");
            }
        }
        let live: Vec<&Arc<View>> = views
            .iter()
            .zip(&due)
            .filter(|(v, (full, _))| *full && v.refreshable())
            .map(|(v, _)| v)
            .collect();
        span.record("evaluated", live.len() as i64);
        let _evaluating: Vec<_> = live.iter().map(|v| inner.in_flight.enter(v)).collect();
        if let Some(first) = live.first() {
            let factory = &first.graph.factory;
            inner.stats.evaluations.add(live.len() as u64);
            inner.stats.evaluation_rounds.inc();
            let started = std::time::Instant::now();
            let mut results = if live.len() == 1 {
                vec![
                    factory
                        .evaluate(first.key.scope.clone(), first.params.clone())
                        .await,
                ]
            } else {
                let items = live
                    .iter()
                    .map(|v| (v.key.scope.clone(), v.params.clone()))
                    .collect();
                factory.evaluate_many(items).await
            };
            inner.stats.timings.round(started.elapsed());
            results.resize_with(live.len(), || {
                Err(EvalError::internal(
                    "the graph's factory returned fewer results than views",
                ))
            });
            for (v, r) in live.iter().zip(results) {
                let r = v.settle(r, &inner.store, &inner.stats, inner.config.history_len);
                tracing::debug!(view = %v.id, result = ?r, "refreshed");
                let failures = {
                    let mut s = v.schedule.lock().unwrap_or_else(|e| e.into_inner());
                    s.failures = if r == Refresh::Failed {
                        s.failures + 1
                    } else {
                        0
                    };
                    s.failures
                };
                if failures > 0 {
                    retry_later(&inner, v, failures);
                }
            }
        }
    }
    drop(permit);
    for a in acks {
        a.release();
    }
    for v in views {
        let again = {
            let mut s = v.schedule.lock().unwrap_or_else(|e| e.into_inner());
            let again = s.dirty || !s.patches.is_empty();
            if !again {
                s.running = false;
            }
            again
        };
        if again {
            enqueue(&inner, v);
        }
    }
}

/// First wait before re-evaluating a view whose evaluation failed.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Re-evaluates a view whose evaluation failed after a backoff (doubling
/// from `RETRY_FIRST` to `RETRY_MAX`), so its subscribers converge without
/// waiting for another change to touch it. The batch that caused the
/// evaluation is released at once: the retry is the engine's to finish.
fn retry_later(inner: &Arc<Inner>, view: &Arc<View>, failures: u32) {
    let delay = RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(RETRY_MAX);
    let (inner, view) = (Arc::downgrade(inner), Arc::downgrade(view));
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if let (Some(inner), Some(view)) = (inner.upgrade(), view.upgrade()) {
            if view.refreshable() {
                schedule(&inner, view, None, None);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::identity::Scope;
    use crate::engine::params::Params;
    use crate::engine::registry::GraphDef;
    use crate::engine::result::GraphResult;
    use crate::engine::view::ViewKey;

    fn view(graph: &str) -> Arc<View> {
        let g = GraphDef::new(graph, |_s: Scope, _p: Params| async {
            Ok(GraphResult::new())
        });
        let key = ViewKey {
            graph: graph.into(),
            params: String::new(),
            scope: Scope {
                workspace_id: "w".into(),
                user_id: None,
                role: None,
            },
        };
        View::new(key, Arc::new(g), Params::default())
    }

    #[test]
    fn a_view_stays_in_flight_until_every_holder_lets_go() {
        let set = InFlight::default();
        let v = view("g");
        let round = set.enter(&v);
        let subscribe = set.enter(&v);
        assert_eq!(set.of("g").len(), 1, "one view, however many holders");
        drop(subscribe);
        assert_eq!(
            set.of("g").len(),
            1,
            "the round still evaluates it after the subscribe let go"
        );
        drop(round);
        assert!(set.of("g").is_empty());
    }

    #[test]
    fn views_in_flight_are_told_apart_by_graph() {
        let set = InFlight::default();
        let (a, b) = (view("a"), view("b"));
        let _a = set.enter(&a);
        let _b = set.enter(&b);
        assert!(Arc::ptr_eq(&set.of("a")[0], &a));
        assert!(Arc::ptr_eq(&set.of("b")[0], &b));
        assert!(set.of("c").is_empty());
    }
}
