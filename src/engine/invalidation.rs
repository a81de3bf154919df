//! Invalidation: change batches in, re-evaluated views out.
//!
//! One task drains the bounded change queue. It waits for the first batch,
//! then takes every batch already queued (no fixed delay: an idle engine
//! reacts at once, a busy one coalesces whatever piled up while it worked),
//! finds the views the changes can touch by table and column, and refreshes
//! each once, several at a time. A batch is never split, so a transaction's
//! changes land in one evaluation. Each batch's `done` fires only after its
//! diffs are queued to sessions, which is what lets a change source
//! acknowledge (a WAL position, a mutation reply) safely.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

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

/// Most batches merged into one round.
const MAX_COALESCE: usize = 1024;

/// Runs until the engine is dropped (its sender closes the queue).
pub(crate) async fn run(inner: Weak<Inner>, mut rx: mpsc::Receiver<ChangeBatch>) {
    let mut round = Vec::new();
    while rx.recv_many(&mut round, MAX_COALESCE).await > 0 {
        let Some(inner) = inner.upgrade() else { return };
        let views = affected(&inner, &round);
        tracing::debug!(
            batches = round.len(),
            views = views.len(),
            "invalidation round"
        );
        inner.stats.batches.inc();
        let limit = inner.config.eval_concurrency.max(1);
        futures_util::stream::iter(views)
            .for_each_concurrent(limit, |v| {
                let inner = inner.clone();
                async move {
                    v.refresh(&inner.store, &inner.stats, inner.config.history_len)
                        .await;
                }
            })
            .await;
        for b in round.drain(..) {
            if let Some(done) = b.done {
                let _ = done.send(());
            }
        }
    }
}

/// The live views any change in `batches` can touch, each once.
fn affected(inner: &Inner, batches: &[ChangeBatch]) -> Vec<Arc<View>> {
    let mut graphs: Vec<&Arc<str>> = Vec::new();
    for b in batches {
        inner.stats.changes.add(b.changes.len() as u64);
        for c in &b.changes {
            for g in inner.registry.graphs_for(c) {
                if !graphs.contains(&g) {
                    graphs.push(g);
                }
            }
        }
    }
    let views = inner.views.lock().unwrap_or_else(|e| e.into_inner());
    if batches.iter().any(|b| b.everything) {
        return views.all().cloned().collect();
    }
    let mut out: HashMap<*const View, Arc<View>> = HashMap::new();
    for g in graphs {
        for v in views.by_graph(g) {
            out.entry(Arc::as_ptr(v)).or_insert_with(|| v.clone());
        }
    }
    out.into_values().collect()
}
