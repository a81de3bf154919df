//! The transport-agnostic core: registry, params, results, the normalized
//! store, diffs, live views, invalidation, sessions, sync and mutations.
//!
//! Data flows one way: a change enters [`Engine::notify`] (or a change source
//! calls [`Engine::changes`]), invalidation finds the views it touches, each
//! view re-evaluates and diffs, the diff becomes one shared [`Frame`], and the
//! frame is queued on every subscribed [`Session`], from which the transport
//! streams it. Nothing here knows about gRPC or SQL drivers.

mod batch;
pub mod diff;
pub mod error;
pub mod frame;
pub mod identity;
mod in_flight;
mod index;
mod invalidation;
pub mod observe;
pub mod owners;
pub mod params;
pub mod registry;
mod replies;
mod report;
pub mod result;
mod router;
mod schedule;
pub mod seen;
pub mod session;
mod sink;
pub mod stats;
pub mod store;
mod subscribe;
#[cfg(test)]
mod testing;
pub mod value;
pub mod view;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use observe::SPANS;

pub use batch::ChangeBatch;
pub use diff::{FieldOp, Op, Patch, RefOp};
pub use error::{EngineError, EvalError, EvalErrorKind};
pub use frame::{term_of, term_start};
pub use frame::{Frame, FrameBody, Snapshot, ViewDiff};
pub use identity::{Identity, Scope};
pub use owners::{Broadcast, Claim, Followed, Owners};
pub use params::{ParamSchema, ParamSpec, ParamType, Params};
pub use registry::{
    Change, Factory, FieldShape, GraphDef, MutationDef, MutationHandler, MutationOutput, Registry,
    Route, TableDep,
};
pub use replies::{EngineStats, SessionInfo, Subscribed, SyncOutcome, SyncView};
pub use result::{GraphResult, Ref, RowKey};
pub use seen::Seen;
pub use session::{Outbound, QueueError, Session};
pub use value::{row_id, Fields, Value};
pub use view::Reanchored;
pub use view::{SyncMode, View, ViewInfo};
pub use window::{Direction, Reach, Window, WindowEdges, WindowOrder};

use stats::Stats;
use view::Store;
use view::ViewKey;

/// The wire protocol version reported by Describe.
pub const PROTOCOL_VERSION: u32 = 1;

/// Engine limits and tuning (the config's `[engine]` section). The
/// defaults suit the demo.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Most subscriptions one session may hold.
    pub max_subscriptions_per_session: usize,
    /// Diffs kept per view for catch-up; a client further behind gets a snapshot.
    pub history_len: usize,
    /// Frames queued per session before it is cut over to a resync.
    pub session_queue: usize,
    /// Change batches queued before `notify` waits.
    pub change_queue: usize,
    /// Views re-evaluated at once.
    pub eval_concurrency: usize,
    /// Most views of one graph evaluated in one round (one query for SQL graphs).
    pub eval_batch: usize,
    /// Reject params a graph or mutation does not declare.
    pub strict_params: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_subscriptions_per_session: 100,
            history_len: 50,
            session_queue: 256,
            change_queue: 1024,
            eval_concurrency: 8,
            eval_batch: 64,
            strict_params: true,
        }
    }
}

pub(crate) struct Inner {
    registry: Arc<Registry>,
    config: EngineConfig,
    views: Mutex<index::Views>,
    store: Mutex<Store>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    changes: mpsc::Sender<ChangeBatch>,
    stats: Arc<Stats>,
    /// Evaluations running at once, across views.
    evaluations: Arc<tokio::sync::Semaphore>,
    /// Views waiting for an evaluation round, per graph.
    queues: Mutex<HashMap<Arc<str>, invalidation::GraphQueue>>,
    /// Views whose evaluation is running.
    in_flight: in_flight::InFlight,
    /// Set by [`Engine::shutdown`].
    shutting_down: std::sync::atomic::AtomicBool,
    /// Why this node serves no sessions now (cut off from its cluster).
    away: Mutex<Option<Arc<str>>>,
    /// View ownership across a cluster's nodes; unset on a standalone server.
    owners: std::sync::OnceLock<Arc<dyn Owners<View>>>,
    broadcast: std::sync::OnceLock<Arc<dyn Broadcast>>,
    /// Mutations' changes are broadcast too: no change source reads the
    /// database (`changes.mode = "none"`).
    broadcast_mutations: std::sync::atomic::AtomicBool,
}

impl Inner {
    /// What the router may read.
    fn reach(&self) -> router::Reach<'_> {
        router::Reach {
            registry: &self.registry,
            views: &self.views,
            store: &self.store,
            in_flight: &self.in_flight,
            stats: &self.stats,
        }
    }
}

/// The engine. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A handle on an engine that does not keep it alive.
#[derive(Clone)]
pub struct WeakEngine(std::sync::Weak<Inner>);

impl WeakEngine {
    /// The engine, while it lives.
    pub fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

impl Engine {
    /// Starts an engine with the given graphs and mutations. Must be called
    /// inside a Tokio runtime: it spawns the invalidation task, which ends
    /// once every clone of the engine is dropped.
    pub fn new(registry: Registry, config: EngineConfig) -> Engine {
        let eval_concurrency = config.eval_concurrency.max(1);
        let (tx, rx) = mpsc::channel(config.change_queue.max(1));
        let inner = Arc::new(Inner {
            registry: Arc::new(registry),
            config,
            views: Mutex::new(index::Views::default()),
            store: Mutex::new(Store::default()),
            sessions: Mutex::new(HashMap::new()),
            changes: tx,
            stats: Arc::new(Stats::default()),
            evaluations: Arc::new(tokio::sync::Semaphore::new(eval_concurrency)),
            queues: Mutex::default(),
            in_flight: in_flight::InFlight::default(),
            shutting_down: Default::default(),
            away: Mutex::default(),
            owners: Default::default(),
            broadcast: Default::default(),
            broadcast_mutations: Default::default(),
        });
        tokio::spawn(invalidation::run(Arc::downgrade(&inner), rx));
        Engine { inner }
    }

    /// A handle that does not keep the engine alive.
    pub fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// The graphs and mutations.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    fn views(&self) -> MutexGuard<'_, index::Views> {
        self.inner.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.inner
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for `identity`.
    pub fn open_session(&self, identity: Identity) -> Arc<Session> {
        let id: Arc<str> = format!("{:032x}", rand::random::<u128>()).into();
        let s = Arc::new(Session::new(
            id.clone(),
            identity,
            self.inner.config.session_queue,
            self.inner.stats.clone(),
        ));
        self.sessions().insert(id, s.clone());
        self.inner.stats.feed.touch();
        s
    }

    /// A session by id.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions().get(id).cloned()
    }

    /// Closes a session and releases every view it held.
    pub fn close_session(&self, id: &str) {
        let Some(s) = self.sessions().remove(id) else {
            return;
        };
        for v in s.close() {
            self.release(&v, &s.id);
        }
        self.inner.stats.feed.touch();
    }

    fn release(&self, view: &Arc<View>, session_id: &str) {
        if view.detach(session_id, &self.inner.store) {
            self.forget(view);
        }
    }

    /// Closes `view` if no session holds it.
    fn close_if_unused(&self, view: &Arc<View>) {
        if view.close_if_unused(&self.inner.store) {
            self.forget(view);
        }
    }

    /// Drops a closed view from the index (and tells the cluster).
    fn forget(&self, view: &Arc<View>) {
        self.views().remove(view);
        if let Some(o) = self.inner.owners.get() {
            o.closed(view);
        }
    }

    /// Makes this engine one node of a cluster that evaluates each view on
    /// one node (see [`owners`]). Set once, before serving; false if set
    /// already.
    pub fn set_owners(&self, owners: Arc<dyn Owners<View>>) -> bool {
        self.inner.owners.set(owners).is_ok()
    }

    /// Applies an owner's frame to the follower `view` (see [`View::follow`]).
    pub fn follow(&self, view: &View, frame: Arc<Frame>) -> Followed {
        view.follow(
            frame,
            &self.inner.store,
            &self.inner.stats,
            self.inner.config.history_len,
        )
    }

    /// Loads the owner's snapshot into the follower `view`; its subscribers
    /// get it as a snapshot.
    pub fn reload(&self, view: &View, snapshot: &Arc<Frame>, history: Vec<Arc<Frame>>) {
        view.load(snapshot, history, &self.inner.store);
    }

    /// Makes this node the owner of the follower `view` (the same epoch,
    /// versions in `term`, which the cluster claimed for this node) and has
    /// it evaluated at once.
    pub fn promote(&self, view: &Arc<View>, term: u64) -> bool {
        let Some(o) = self.inner.owners.get() else {
            return false;
        };
        if !view.promote(o.clone(), term) {
            return false;
        }
        invalidation::refresh(&self.inner, view.clone());
        true
    }

    /// Marks an owned `view` as taken again after its lease was lost (some
    /// other node may have owned it meanwhile): its next version starts
    /// `term`, which the cluster claimed for this node.
    pub fn retake(&self, view: &Arc<View>, term: u64) {
        view.retake(term);
    }

    /// Runs a mutation for `identity`, then feeds its changes into
    /// invalidation and waits until the resulting diffs are queued, so the
    /// caller's views already reflect the write when this returns.
    #[tracing::instrument(
        target = SPANS, level = "debug", name = "mutation", skip_all, fields(mutation = name),
    )]
    pub async fn mutate(
        &self,
        identity: &Identity,
        name: &str,
        raw: HashMap<String, Value>,
    ) -> Result<MutationOutput, EngineError> {
        let found = self.inner.registry.mutation(name);
        let known = self.inner.registry.mutations().map(|m| m.name.as_str());
        let (m, params) = self.admit(
            identity,
            "mutation",
            name,
            found,
            known,
            |m| (&m.permissions, &m.params),
            raw,
        )?;
        let scope = Scope {
            workspace_id: identity.workspace_id.clone(),
            user_id: Some(identity.user_id.clone()),
            role: Some(identity.role.as_str().into()),
        };
        let out = m.handler.run(scope, params).await?;
        if !out.changes.is_empty() {
            let everywhere = self
                .inner
                .broadcast_mutations
                .load(std::sync::atomic::Ordering::Relaxed);
            match everywhere {
                true => self.notify_everywhere(out.changes.clone()).await?,
                false => self.notify(out.changes.clone()).await?,
            }
            if let Some(o) = self.inner.owners.get() {
                let followed: Vec<Arc<View>> = self
                    .views()
                    .all()
                    .filter(|v| v.is_follower())
                    .cloned()
                    .collect();
                if !followed.is_empty() {
                    o.written(out.changes.clone(), followed).await;
                }
            }
        }
        Ok(out)
    }

    /// Reports changes and waits until the affected views' diffs are queued.
    pub async fn notify(&self, changes: Vec<Change>) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.changes(ChangeBatch::new(changes, Some(tx))).await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Makes `Notify` calls reach every node of a cluster. Set once.
    pub fn set_broadcast(&self, b: Arc<dyn Broadcast>) -> bool {
        self.inner.broadcast.set(b).is_ok()
    }

    /// Also broadcasts mutations' changes: for a cluster without a change
    /// source, where nothing else tells the other nodes of a write.
    pub fn broadcast_mutations(&self, on: bool) {
        self.inner
            .broadcast_mutations
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// [`Engine::notify`] here, and on every other node of the cluster
    /// when there is one: the call returns once this node applied the
    /// changes and the bus stored them for the others.
    pub async fn notify_everywhere(&self, changes: Vec<Change>) -> Result<(), EngineError> {
        if let Some(b) = self.inner.broadcast.get() {
            b.broadcast(changes.clone()).await.map_err(|e| {
                EngineError::Unavailable(format!(
                    "the change could not be passed to the other nodes ({e}); retry"
                ))
            })?;
        }
        self.notify(changes).await
    }

    /// Queues a batch of changes (waiting while the queue is full). Change
    /// sources use `done` to learn when the batch has been applied.
    pub async fn changes(&self, batch: ChangeBatch) -> Result<(), EngineError> {
        self.inner
            .changes
            .send(batch)
            .await
            .map_err(|_| EngineError::ShuttingDown)
    }

    /// Re-evaluates every live view and waits until their diffs are queued.
    /// Change sources call it after an outage in which changes may have been
    /// lost, so clients converge anyway.
    pub async fn refresh_all(&self) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.changes(ChangeBatch {
            changes: Vec::new(),
            done: Some(tx),
            everything: true,
            xid: None,
        })
        .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Sends this engine's timings to `observer` from now on; false when
    /// it already has one (the first stays).
    pub fn observe_with(&self, observer: Arc<dyn observe::Observer>) -> bool {
        self.inner.stats.timings.install(observer)
    }

    /// The feed of recent change batches and frames (see [`stats::Feed`]).
    pub fn feed(&self) -> &stats::Feed {
        &self.inner.stats.feed
    }

    /// Whether [`Engine::shutdown`] was called: a closed session then
    /// means the server is going away, not that the client left.
    pub fn is_shutting_down(&self) -> bool {
        self.inner
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks this node as unable to serve (`Some(why)`: cut off from its
    /// cluster, so its views fall behind) or able again (`None`). Going
    /// away ends every session, each with `why`, so clients reconnect to
    /// another node and Sync there; new sessions are refused meanwhile.
    pub fn set_away(&self, why: Option<String>) {
        let why: Option<Arc<str>> = why.map(Into::into);
        *self.inner.away.lock().unwrap_or_else(|e| e.into_inner()) = why.clone();
        let Some(why) = why else { return };
        let sessions: Vec<Arc<Session>> = self.sessions().values().cloned().collect();
        for s in sessions {
            s.end_because(why.clone());
            self.close_session(&s.id);
        }
    }

    /// Why this node serves no sessions now, if it does not.
    pub fn away(&self) -> Option<Arc<str>> {
        self.inner
            .away
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Closes every session; their streams end after what is already queued
    /// is dropped. Changes keep being accepted until the engine is dropped.
    pub fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let ids: Vec<Arc<str>> = self.sessions().keys().cloned().collect();
        for id in ids {
            self.close_session(&id);
        }
    }
}
