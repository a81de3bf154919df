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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::field::Empty;
use tracing::Instrument;

use super::batch::ChangeBatch;
use super::error::EvalError;
use super::observe::SPANS;
use super::router;
use super::schedule::{Ack, Patch};
use super::stats::{EventKind, FEED_LIST};
use super::view::{Refresh, View};
use super::Inner;

/// Most batches taken from the queue at once.
const MAX_TAKE: usize = 1024;

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
                span.in_scope(|| router::affected(&inner.reach(), std::slice::from_ref(&batch)));
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
