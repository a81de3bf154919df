//! Live views: one per graph + canonical params + workspace (+ user for
//! per-user graphs), shared by every subscriber with that key.
//!
//! A view owns its last result (refs, the rows it references, the total), its
//! version and a bounded history of diff frames for catch-up. Evaluations of
//! one view are serialized by `eval`; the state lock is held only to compare
//! results and queue frames, never across a database call.

mod follower;
mod subscribers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use bytes::Bytes;

use self::content::Content;
use super::diff::diff_fields;
use super::error::{EngineError, EvalError};
use super::frame::{term_start, Frame, FrameBody, Snapshot, ViewDiff};
use super::identity::Scope;
use super::owners::{Claim, Followed, Owners};
use super::params::Params;
use super::registry::GraphDef;
use super::result::{GraphResult, Ref, RowKey};
use super::schedule::Patch;
use super::seen::Seen;
use super::sink::Sink;
use super::stats::{EventKind, Stats};
use super::store;
use super::value::{Fields, SharedFields, Value};
use super::window::WindowEdges;

/// The rows views hold.
pub(crate) type Store = store::Store<View>;

/// The result of a re-anchor.
#[derive(Debug, Clone)]
pub struct Reanchored {
    /// The subscription's id (unchanged).
    pub view_id: Arc<str>,
    /// The epoch the subscription is at after the re-anchor diff.
    pub epoch: u64,
    /// The version it is at after the re-anchor diff.
    pub version: u64,
    /// The epoch the diff applies on.
    pub prev_epoch: u64,
    /// The version the diff applies on (0 when a snapshot was sent instead).
    pub prev_version: u64,
}

/// What makes two subscriptions share a view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewKey {
    /// The graph.
    pub graph: Arc<str>,
    /// Canonical params text.
    pub params: String,
    /// The scope (workspace, and user for per-user graphs).
    pub scope: Scope,
}

#[derive(Default)]
struct State {
    ready: bool,
    closed: bool,
    version: u64,
    /// Shared with the snapshots built from it, which then cost no copy.
    refs: Arc<Vec<Ref>>,
    rows: HashMap<RowKey, SharedFields>,
    total: Option<i64>,
    window: Option<WindowEdges>,
    reach: Option<super::window::Reach>,
    /// The database snapshot of the evaluation the rows come from (patches
    /// since are newer): a patch of a commit it shows is already in.
    seen: Option<Seen>,
    history: VecDeque<Arc<Frame>>,
    subscribers: HashMap<Arc<str>, Arc<dyn Sink<View>>>,
    evaluations: u64,
    /// Subscribers were sent an error frame and no version since: the next
    /// good evaluation publishes a version even if nothing changed, so
    /// clients learn the view is healthy again.
    failing: bool,
    /// When an evaluation last finished.
    last_evaluated: Option<std::time::SystemTime>,
    /// Why the last evaluation failed; cleared by a good one.
    last_error: Option<String>,
    /// Another node of the cluster evaluates the view; this copy applies
    /// its frames.
    follower: bool,
    /// This node took the view over from another (or from a checkpoint,
    /// or took its lease back) and claimed this term for it: its next
    /// version is the term's first, `term << 32`.
    term: Option<u64>,
}

/// What a re-anchoring subscriber held of the view it left: enough to diff
/// the next view against.
pub(crate) struct Held {
    epoch: u64,
    version: u64,
    refs: Arc<Vec<Ref>>,
    rows: HashMap<RowKey, SharedFields>,
    total: Option<i64>,
    /// The client was owed a snapshot, so holds nothing to diff against.
    stale: bool,
}

/// How a sync request was answered for one view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Missed diffs were queued.
    CatchUp(u32),
    /// A snapshot was queued.
    Snapshot,
    /// The client was current.
    Current,
}

/// A point-in-time summary of a view, for stats.
#[derive(Debug, Clone)]
pub struct ViewInfo {
    /// The graph.
    pub graph: Arc<str>,
    /// The params hash.
    pub params_hash: Arc<str>,
    /// The workspace.
    pub workspace_id: Arc<str>,
    /// The user, for per-user graphs.
    pub user_id: Option<Arc<str>>,
    /// Current version.
    pub version: u64,
    /// Number of subscribed sessions.
    pub subscribers: usize,
    /// Evaluations run so far.
    pub evaluations: u64,
    /// Number of top-level refs.
    pub refs: usize,
    /// The canonical params text.
    pub params: String,
    /// When an evaluation last finished.
    pub last_evaluated: Option<std::time::SystemTime>,
    /// Why the last evaluation failed, while it has not recovered.
    pub last_error: Option<String>,
}

/// One live view.
pub struct View {
    /// The sharing key.
    pub key: ViewKey,
    /// `<graph>/<params_hash>`, the id clients address the view by.
    pub id: Arc<str>,
    /// The canonical params hash.
    pub params_hash: Arc<str>,
    /// Random per life of the view, so versions of an earlier life never
    /// match. A follower takes its owner's, and a new one when the owner
    /// changes (see [`View::epoch`]).
    epoch: AtomicU64,
    /// The graph definition.
    pub graph: Arc<GraphDef>,
    /// Validated params.
    pub params: Params,
    eval: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// When invalidation refreshes this view (see `invalidation.rs`).
    pub(crate) schedule: Mutex<super::schedule::Schedule>,
    /// Itself, as the store records the views holding each row.
    me: Weak<View>,
    /// Where an owned view of a cluster publishes its frames for the other
    /// nodes; unset on a standalone server.
    publisher: OnceLock<Arc<dyn Owners<View>>>,
}

/// Whether an evaluation changed anything.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// A new version was pushed.
    Changed,
    /// The result was identical.
    Unchanged,
    /// The view is closed or not yet initialized; nothing ran.
    Skipped,
    /// The evaluation failed; subscribers got an error frame and the last
    /// good state stands until a retry succeeds.
    Failed,
}

impl View {
    pub(crate) fn new(key: ViewKey, graph: Arc<GraphDef>, params: Params) -> Arc<Self> {
        let params_hash: Arc<str> = params.hash().into();
        Arc::new_cyclic(|me| View {
            me: me.clone(),
            id: format!("{}/{}", graph.name, params_hash).into(),
            params_hash,
            epoch: AtomicU64::new(new_epoch()),
            key,
            graph,
            params,
            eval: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            schedule: Mutex::default(),
            publisher: OnceLock::new(),
        })
    }

    /// The view's current life.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The view's value for a route param (see [`super::registry::Route`]),
    /// as key text.
    pub fn route_value(&self, param: &str) -> String {
        if self.graph.params.contains_key(param) {
            return self.params.get(param).key_text();
        }
        match param {
            super::registry::SCOPE_WORKSPACE => self.key.scope.workspace_id.to_string(),
            super::registry::SCOPE_USER => self
                .key
                .scope
                .user_id
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            _ => String::new(),
        }
    }

    /// Whether a change of rows with these order keys (before and after)
    /// can touch this view: always, unless its last evaluation was a window
    /// whose reach holds none of them.
    pub(crate) fn reached_by(&self, keys: &[Vec<Value>]) -> bool {
        let st = self.lock();
        match &st.reach {
            Some(r) if st.ready => keys.iter().any(|k| r.touches(k)),
            _ => true,
        }
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Whether the view has been closed (its last subscriber left).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Runs the first evaluation if no one has yet.
    pub(crate) async fn ensure_ready(
        &self,
        store: &Mutex<Store>,
        stats: &Stats,
        history: usize,
        owners: Option<&Arc<dyn Owners<View>>>,
    ) -> Result<(), EngineError> {
        let _eval = self.eval.lock().await;
        {
            let st = self.lock();
            if st.ready || st.closed {
                return Ok(());
            }
        }
        if let Some(o) = owners {
            let me = self.me.upgrade().expect("a view in use is alive");
            match o.claim(me).await? {
                Claim::Own => {
                    let _ = self.publisher.set(o.clone());
                    self.run(store, stats, history).await?;
                    self.announce();
                    return Ok(());
                }
                Claim::Follow { snapshot, history } => {
                    self.load(&snapshot, history, store);
                    return Ok(());
                }
                Claim::Resume {
                    snapshot,
                    history: kept,
                    after,
                    term,
                } => {
                    // Rebuilt as a follower of the last owner, then taken
                    // over: the evaluation below is a diff in its epoch.
                    self.load(&snapshot, kept, store);
                    for f in after {
                        if self.follow(f, store, stats, history) != Followed::Applied {
                            break;
                        }
                    }
                    self.promote(o.clone(), term);
                }
            }
        }
        self.run(store, stats, history).await.map(|_| ())
    }

    /// Whether a refresh would do anything: the view has its first result
    /// and is not closed.
    pub(crate) fn refreshable(&self) -> bool {
        let st = self.lock();
        st.ready && !st.closed && !st.follower
    }

    /// Serializes evaluations of this view; held from evaluation to apply.
    pub(crate) async fn lock_eval(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.eval.lock().await
    }

    /// Applies a refresh's result (its caller holds `lock_eval`). A failure
    /// goes to subscribers as an error frame; the last good state stands.
    pub(crate) fn settle(
        &self,
        result: Result<GraphResult, EvalError>,
        store: &Mutex<Store>,
        stats: &Stats,
        history: usize,
    ) -> Refresh {
        match self.apply(result, store, stats, history) {
            Ok(r) => r,
            Err(e) => {
                stats.eval_errors.inc();
                tracing::warn!(view = %self.id, error = %e, "view evaluation failed");
                let mut st = self.lock();
                st.failing = true;
                st.last_error = Some(e.to_string());
                stats.feed.touch();
                let frame = Frame::new(
                    self.id.clone(),
                    self.epoch(),
                    st.version,
                    0,
                    FrameBody::Error(e),
                );
                for s in st.subscribers.values() {
                    s.push_frame(frame.clone());
                }
                if let Some(o) = self.publisher.get() {
                    o.published(self, &frame);
                }
                Refresh::Failed
            }
        }
    }

    /// Evaluates and applies. Must hold `eval`.
    async fn run(
        &self,
        store: &Mutex<Store>,
        stats: &Stats,
        history: usize,
    ) -> Result<Refresh, EngineError> {
        stats.evaluations.inc();
        let started = std::time::Instant::now();
        let result = self
            .graph
            .factory
            .evaluate(self.key.scope.clone(), self.params.clone())
            .await;
        stats.timings.evaluation(started.elapsed());
        let out = self.apply(result, store, stats, history);
        if let Err(e) = &out {
            self.lock().last_error = Some(e.to_string());
        }
        out
    }

    /// Turns a result into the view's next version and queues its diff.
    fn apply(
        &self,
        result: Result<GraphResult, EvalError>,
        store: &Mutex<Store>,
        stats: &Stats,
        history: usize,
    ) -> Result<Refresh, EngineError> {
        let mut st = self.lock();
        st.evaluations += 1;
        st.last_evaluated = Some(std::time::SystemTime::now());
        stats.feed.touch();
        if st.closed {
            return Ok(Refresh::Skipped);
        }
        let mut result = result?;
        let seen = result.seen.take();
        let (refs, rows, total, window, reach) = result.referenced_rows()?;
        st.last_error = None;
        let ws = &self.key.scope.workspace_id;
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let mut next: HashMap<RowKey, SharedFields> = HashMap::with_capacity(rows.len());
        for (k, fields) in rows {
            let shared = match st.rows.get(&k) {
                None => store.acquire(ws, &k, fields, &self.me),
                Some(old) if **old == fields => old.clone(),
                Some(_) => store.update(ws, &k, fields),
            };
            next.insert(k, shared);
        }
        for k in st.rows.keys() {
            if !next.contains_key(k) {
                store.release(ws, k, &self.me);
            }
        }
        drop(store);
        // The first result is sent as snapshots, never as a diff.
        let diff = if st.ready {
            content::diff(
                &Content {
                    refs: &st.refs,
                    rows: &st.rows,
                    total: st.total,
                    window: st.window,
                },
                &Content {
                    refs: &refs,
                    rows: &next,
                    total,
                    window,
                },
            )
        } else {
            ViewDiff::default()
        };
        st.refs = Arc::new(refs);
        st.rows = next;
        st.total = total;
        st.window = window;
        st.reach = reach;
        st.seen = seen;
        if !st.ready {
            st.ready = true;
            st.version = 1;
            return Ok(Refresh::Changed);
        }
        // After a takeover a version goes out even if nothing changed:
        // followers that missed the last owner's final frame learn so.
        let recovered = std::mem::take(&mut st.failing) || st.term.is_some();
        Ok(self.publish(&mut st, diff, recovered, stats, history))
    }

    /// Makes `diff` the next version: history, then every subscriber. An
    /// empty diff makes no version unless `even_if_empty`.
    fn publish(
        &self,
        st: &mut State,
        mut diff: ViewDiff,
        even_if_empty: bool,
        stats: &Stats,
        history: usize,
    ) -> Refresh {
        if diff.is_empty() && !even_if_empty {
            return Refresh::Unchanged;
        }
        diff.rows.sort_by(|a, b| a.0.cmp(&b.0));
        diff.patches.sort_by(|a, b| a.0.cmp(&b.0));
        let prev = st.version;
        st.version = match st.term.take() {
            Some(term) => term_start(term).max(prev + 1),
            None => prev + 1,
        };
        let frame = Frame::new(
            self.id.clone(),
            self.epoch(),
            st.version,
            prev,
            FrameBody::Diff(diff),
        );
        st.history.push_back(frame.clone());
        while st.history.len() > history {
            st.history.pop_front();
        }
        for s in st.subscribers.values() {
            s.push_frame(frame.clone());
        }
        if let Some(o) = self.publisher.get() {
            o.published(self, &frame);
        }
        stats.frames.add(st.subscribers.len() as u64);
        stats.feed.record(|| EventKind::Frame {
            view: self.id.clone(),
            workspace: self.key.scope.workspace_id.clone(),
            version: st.version,
            subscribers: st.subscribers.len(),
        });
        Refresh::Changed
    }

    /// Applies changed column values to the rows the view holds, without
    /// evaluating (the caller holds `lock_eval`): a field named like a
    /// changed column takes its new value. All patches go out as one diff.
    pub(crate) fn apply_patches(
        &self,
        patches: Vec<Patch>,
        store: &Mutex<Store>,
        stats: &Stats,
        history: usize,
    ) -> Refresh {
        let mut st = self.lock();
        if !st.ready || st.closed || st.follower {
            return Refresh::Skipped;
        }
        let mut touched: BTreeMap<RowKey, Fields> = BTreeMap::new();
        for Patch { key, values, xid } in patches {
            // The last evaluation read this commit, and maybe later ones
            // that wrote the row again.
            if xid.is_some_and(|x| st.seen.as_ref().is_some_and(|s| s.shows(x))) {
                continue;
            }
            let Some(old) = st.rows.get(&key) else {
                continue;
            };
            let row = touched.entry(key).or_insert_with(|| (**old).clone());
            for (col, v) in values.iter() {
                if let Some(field) = row.get_mut(col) {
                    *field = v.clone();
                }
            }
        }
        let ws = &self.key.scope.workspace_id;
        let mut diff = ViewDiff::default();
        {
            let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
            for (key, row) in touched {
                let old = &st.rows[&key];
                if **old == row {
                    continue;
                }
                diff.patches.push((key.clone(), diff_fields(old, &row)));
                let shared = store.update(ws, &key, row);
                st.rows.insert(key, shared);
            }
        }
        self.publish(&mut st, diff, false, stats, history)
    }

    fn snapshot_frame(&self, st: &State) -> Arc<Frame> {
        let mut rows: Vec<(RowKey, SharedFields)> = st
            .rows
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Frame::new(
            self.id.clone(),
            self.epoch(),
            st.version,
            0,
            FrameBody::Snapshot(Snapshot {
                graph: self.key.graph.clone(),
                params_hash: self.params_hash.clone(),
                refs: st.refs.clone(),
                rows,
                total: st.total,
                window: st.window,
            }),
        )
    }

    /// Closes the view if nobody subscribed (after a failed first evaluation).
    pub(crate) fn close_if_unused(&self, store: &Mutex<Store>) -> bool {
        let mut st = self.lock();
        if !st.subscribers.is_empty() || st.closed {
            return false;
        }
        self.close_locked(&mut st, store);
        true
    }

    fn close_locked(&self, st: &mut State, store: &Mutex<Store>) {
        st.closed = true;
        if let Some(o) = self.publisher.get() {
            if st.ready && !st.follower {
                // The cluster keeps the last state, so whoever opens the view
                // next goes on from it instead of starting a new life.
                let history = st.history.iter().cloned().collect();
                o.retired(self, self.snapshot_frame(st), history);
            }
        }
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        for k in st.rows.keys() {
            store.release(&self.key.scope.workspace_id, k, &self.me);
        }
        st.rows.clear();
        st.refs = Arc::default();
        st.history.clear();
    }

    /// A summary for stats.
    pub fn info(&self) -> ViewInfo {
        let st = self.lock();
        ViewInfo {
            graph: self.key.graph.clone(),
            params_hash: self.params_hash.clone(),
            workspace_id: self.key.scope.workspace_id.clone(),
            user_id: self.key.scope.user_id.clone(),
            version: st.version,
            subscribers: st.subscribers.len(),
            evaluations: st.evaluations,
            refs: st.refs.len(),
            params: self.key.params.clone(),
            last_evaluated: st.last_evaluated,
            last_error: st.last_error.clone(),
        }
    }
}

/// A random epoch that fits a JavaScript number exactly.
fn new_epoch() -> u64 {
    rand::random::<u64>() >> 11
}

mod content;
#[cfg(test)]
mod tests;
