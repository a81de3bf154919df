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
pub mod result;
mod router;
mod schedule;
pub mod session;
mod sink;
pub mod stats;
pub mod store;
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
pub use frame::{Frame, FrameBody, Snapshot, ViewDiff};
pub use identity::{Identity, Scope};
pub use owners::{Broadcast, Claim, Followed, Owners};
pub use params::{ParamSchema, ParamSpec, ParamType, Params};
pub use registry::{
    Change, Factory, FieldShape, GraphDef, MutationDef, MutationHandler, MutationOutput, Registry,
    Route, TableDep,
};
pub use result::{GraphResult, Ref, RowKey};
pub use session::{Outbound, QueueError, Session};
pub use value::{row_id, Fields, Value};
pub use view::Reanchored;
pub use view::{term_of, term_start, SyncMode, View, ViewInfo};
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

/// The result of a subscribe.
#[derive(Debug, Clone)]
pub struct Subscribed {
    /// The view id within the session.
    pub view_id: Arc<str>,
    /// The view's epoch.
    pub epoch: u64,
    /// The version of the snapshot queued on the session.
    pub version: u64,
    /// The canonical params hash.
    pub params_hash: Arc<str>,
}

/// One view in a sync request.
#[derive(Debug, Clone)]
pub struct SyncView {
    /// The graph.
    pub graph: String,
    /// The params as originally given.
    pub params: HashMap<String, Value>,
    /// The epoch the client saw.
    pub epoch: u64,
    /// The last version the client applied.
    pub version: u64,
    /// The window it held, for windowed graphs.
    pub window: Option<Window>,
}

/// The answer for one view of a sync request.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The view id (empty if the view could not be resolved).
    pub view_id: Arc<str>,
    /// What was queued, or why the view failed.
    pub result: Result<(SyncMode, u64, u64), EngineError>,
}

/// Counters and a per-view breakdown.
#[derive(Debug, Clone)]
pub struct EngineStats {
    /// Open sessions.
    pub sessions: usize,
    /// Live views.
    pub views: usize,
    /// Subscriptions across sessions.
    pub subscriptions: usize,
    /// Rows in the normalized store.
    pub store_rows: usize,
    /// Evaluations run (one per view refreshed).
    pub evaluations: u64,
    /// Evaluation rounds (queries, for SQL graphs); a round refreshes one
    /// or more views of a graph.
    pub evaluation_rounds: u64,
    /// View updates made by patching held rows from a change, no query.
    pub patches: u64,
    /// Evaluations that failed.
    pub eval_errors: u64,
    /// Changes received.
    pub changes: u64,
    /// Invalidation rounds.
    pub batches: u64,
    /// Frames queued to sessions.
    pub frames: u64,
    /// Session resyncs after falling behind.
    pub resyncs: u64,
    /// The longest session outbound queue (items).
    pub session_queue_max: usize,
    /// Items queued across the sessions.
    pub session_queue_total: usize,
    /// Each live view.
    pub view_info: Vec<ViewInfo>,
    /// Each open session.
    pub session_info: Vec<SessionInfo>,
}

/// A point-in-time summary of a session, for stats.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The session id.
    pub id: Arc<str>,
    /// Who opened it.
    pub identity: Identity,
    /// Items queued for its stream.
    pub queued: usize,
    /// Times it fell behind and was cut over to snapshots.
    pub resyncs: u64,
    /// Views it is subscribed to.
    pub subscriptions: usize,
}

/// A subscribe or sync in progress. Dropped before it completes (an error,
/// or the future dropped because the client cancelled or its session
/// closed), it gives back the session's reserved slot and closes the view it
/// was attaching to if no one else holds it, so no view lives on, and is
/// evaluated, without a subscriber.
struct Attaching<'a> {
    engine: &'a Engine,
    session: &'a Arc<Session>,
    reserved: bool,
    view: Option<Arc<View>>,
}

impl Attaching<'_> {
    /// Now attaching to `view`; lets go of the previous one.
    fn hold(&mut self, view: Arc<View>) {
        if let Some(old) = self.view.replace(view) {
            self.engine.close_if_unused(&old);
        }
    }
}

impl Drop for Attaching<'_> {
    fn drop(&mut self) {
        if self.reserved {
            self.session.release_reservation();
        }
        if let Some(v) = self.view.take() {
            self.engine.close_if_unused(&v);
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

    /// The checks every graph or mutation call passes: it exists, the caller
    /// holds its permissions, and the params validate against its schema.
    #[allow(clippy::too_many_arguments)]
    fn admit<'a, T>(
        &self,
        identity: &Identity,
        kind: &str,
        name: &str,
        found: Option<&'a Arc<T>>,
        known: impl Iterator<Item = &'a str>,
        rules: impl Fn(&T) -> (&Vec<String>, &ParamSchema),
        raw: HashMap<String, Value>,
    ) -> Result<(Arc<T>, Params), EngineError> {
        let def = found.ok_or_else(|| {
            let known: Vec<&str> = known.collect();
            EngineError::NotFound(format!(
                "unknown {kind} `{name}`; known {kind}s: {}",
                known.join(", ")
            ))
        })?;
        let (permissions, schema) = rules(def);
        if let Some(p) = identity.missing(permissions) {
            return Err(EngineError::PermissionDenied(format!(
                "{kind} `{name}` needs the `{p}` permission"
            )));
        }
        let params = params::validate(
            &format!("{kind} `{name}`"),
            schema,
            raw,
            self.inner.config.strict_params,
        )?;
        Ok((def.clone(), params))
    }

    /// Resolves graph, permission and params into a view key.
    fn resolve(
        &self,
        identity: &Identity,
        graph: &str,
        raw: HashMap<String, Value>,
        window: Option<Window>,
    ) -> Result<(Arc<GraphDef>, Params, ViewKey), EngineError> {
        let found = self.inner.registry.graph(graph);
        let known = self.inner.registry.graphs().map(|g| g.name.as_str());
        let (g, params) = self.admit(
            identity,
            "graph",
            graph,
            found,
            known,
            |g| (&g.permissions, &g.params),
            raw,
        )?;
        let params = match (&g.window, window) {
            (Some(order), w) => {
                let w = w.unwrap_or_else(|| Window::first(order.default_limit));
                params.with_window(w.check(&g.name, order, &g.fields)?)
            }
            (None, Some(_)) => {
                return Err(EngineError::InvalidArgument(format!(
                "graph `{}` declares no window order, so it takes no window; subscribe without one",
                g.name
            )))
            }
            (None, None) => params,
        };
        let key = ViewKey {
            graph: g.name.as_str().into(),
            params: params.canonical(),
            scope: Scope {
                workspace_id: identity.workspace_id.clone(),
                user_id: g.per_user.then(|| identity.user_id.clone()),
                role: None,
            },
        };
        Ok((g, params, key))
    }

    fn view_for(&self, graph: Arc<GraphDef>, params: Params, key: ViewKey) -> Arc<View> {
        let mut views = self.views();
        if let Some(v) = views.get(&key) {
            if !v.is_closed() {
                return v.clone();
            }
        }
        let v = View::new(key, graph, params);
        views.insert(v.clone());
        v
    }

    /// Subscribes `session` to `graph` with `params`. The snapshot is queued on
    /// the session; `reply` (given the snapshot version) may return an encoded
    /// message to queue just before it.
    pub async fn subscribe(
        &self,
        session: &Arc<Session>,
        graph: &str,
        params: HashMap<String, Value>,
        window: Option<Window>,
        reply: impl Fn(&Subscribed) -> Option<Bytes>,
    ) -> Result<Subscribed, EngineError> {
        let (g, params, key) = self.resolve(&session.identity, graph, params, window)?;
        let view_id = format!("{}/{}", g.name, params.hash());
        let limit = self.inner.config.max_subscriptions_per_session;
        let reserved = session
            .reserve(&view_id, limit)
            .map_err(|e| reserve_error(e, &view_id))?
            .is_none();
        let outcome = self.attach_loop(
            session,
            g,
            params,
            key,
            reserved,
            |view, session, reserved| {
                let mut out = None;
                let version = view.attach(session, reserved, |version| {
                    let s = Subscribed {
                        view_id: session.subscription_id(&view.id),
                        epoch: view.epoch(),
                        version,
                        params_hash: view.params_hash.clone(),
                    };
                    let bytes = reply(&s);
                    out = Some(s);
                    bytes
                })?;
                debug_assert!(version > 0);
                out
            },
        );
        outcome.await
    }

    /// Gets a ready view and attaches to it, retrying if it closed between the
    /// lookup and the attach (its last subscriber left meanwhile). Whatever
    /// ends it early, an error or the caller dropping the future (a client
    /// that cancels), leaves nothing behind: see [`Attaching`].
    async fn attach_loop<T>(
        &self,
        session: &Arc<Session>,
        g: Arc<GraphDef>,
        params: Params,
        key: ViewKey,
        reserved: bool,
        mut attach: impl FnMut(&Arc<View>, &Arc<Session>, bool) -> Option<T>,
    ) -> Result<T, EngineError> {
        let mut attaching = Attaching {
            engine: self,
            session,
            reserved,
            view: None,
        };
        loop {
            if session.is_closed() {
                return Err(EngineError::NotFound("the session is closed".into()));
            }
            let view = self.view_for(g.clone(), params.clone(), key.clone());
            attaching.hold(view.clone());
            self.ready(&view).await?;
            if let Some(t) = attach(&view, session, reserved) {
                attaching.view = None;
                attaching.reserved = false;
                self.inner.stats.feed.touch();
                return Ok(t);
            }
        }
    }

    /// Runs a view's first evaluation unless it has had one.
    async fn ready(&self, view: &Arc<View>) -> Result<(), EngineError> {
        let _evaluating = self.inner.in_flight.enter(view);
        // A first evaluation takes an evaluation slot like any other.
        let _slot = match view.refreshable() {
            true => None,
            false => self.inner.evaluations.acquire().await.ok(),
        };
        view.ensure_ready(
            &self.inner.store,
            &self.inner.stats,
            self.inner.config.history_len,
            self.inner.owners.get(),
        )
        .await
    }

    /// Moves the windowed subscription `id` of `session` to `window`: the
    /// session leaves its view for the view of the new window (shared with
    /// any other subscriber of it) and gets one diff from the rows it held
    /// to the new window's, under the same id. Costs one evaluation of the
    /// new window at most, whatever the list's size.
    pub async fn reanchor(
        &self,
        session: &Arc<Session>,
        id: &str,
        window: Window,
    ) -> Result<Reanchored, EngineError> {
        let old = session.subscription(id).ok_or_else(|| {
            EngineError::NotFound(format!("this session is not subscribed to view `{id}`"))
        })?;
        let id: Arc<str> = session.subscription_id(&old.id);
        let g = old.graph.clone();
        let order = g.window.as_ref().ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "view `{id}` is of graph `{}`, which declares no window order; only windowed views re-anchor",
                g.name
            ))
        })?;
        let params = old
            .params
            .with_window(window.check(&g.name, order, &g.fields)?);
        let key = ViewKey {
            graph: old.key.graph.clone(),
            params: params.canonical(),
            scope: old.key.scope.clone(),
        };
        if key == old.key {
            let version = old.version();
            return Ok(Reanchored {
                view_id: id,
                epoch: old.epoch(),
                version,
                prev_epoch: old.epoch(),
                prev_version: version,
            });
        }
        let target = format!("{}/{}", g.name, params.hash());
        if session.holds_view(&target) {
            return Err(EngineError::AlreadyExists(format!(
                "this session already holds that window as view `{}`; use that subscription",
                session.subscription_id(&target.as_str().into())
            )));
        }
        let mut attaching = Attaching {
            engine: self,
            session,
            reserved: false,
            view: None,
        };
        let mut held = None;
        loop {
            if session.is_closed() {
                return Err(EngineError::NotFound("the session is closed".into()));
            }
            let view = self.view_for(g.clone(), params.clone(), key.clone());
            attaching.hold(view.clone());
            if let Err(e) = self.ready(&view).await {
                if held.is_some() {
                    // The old view is gone: the subscription cannot stay.
                    session.remove_subscription(&id);
                }
                return Err(e);
            }
            // Leave the old view only once the new one is ready, so a failed
            // evaluation leaves the subscription where it was.
            let state = match &held {
                Some(h) => h,
                None => {
                    let (h, closed) = old.leave(&**session, &self.inner.store);
                    if closed {
                        self.forget(&old);
                    }
                    held.insert(h)
                }
            };
            if let Some(out) = view.take_over(session, &id, state) {
                attaching.view = None;
                self.inner.stats.feed.touch();
                return Ok(out);
            }
        }
    }

    /// Unsubscribes `session` from a view.
    pub fn unsubscribe(&self, session: &Arc<Session>, view_id: &str) -> Result<(), EngineError> {
        let view = session.remove_subscription(view_id).ok_or_else(|| {
            EngineError::NotFound(format!(
                "this session is not subscribed to view `{view_id}`"
            ))
        })?;
        self.release(&view, &session.id);
        self.inner.stats.feed.touch();
        Ok(())
    }

    /// Resubscribes a new session to views a client held before, queuing for
    /// each the diffs it missed or a snapshot. Views are independent: one
    /// failing does not affect the others.
    pub async fn sync(&self, session: &Arc<Session>, views: Vec<SyncView>) -> Vec<SyncOutcome> {
        let mut out = Vec::with_capacity(views.len());
        for sv in views {
            let resolved = self.resolve(&session.identity, &sv.graph, sv.params, sv.window);
            let (g, params, key) = match resolved {
                Ok(r) => r,
                Err(e) => {
                    out.push(SyncOutcome {
                        view_id: "".into(),
                        result: Err(e),
                    });
                    continue;
                }
            };
            let view_id: Arc<str> = format!("{}/{}", g.name, params.hash()).into();
            let limit = self.inner.config.max_subscriptions_per_session;
            let reserved = match session.reserve(&view_id, limit) {
                Ok(existing) => existing.is_none(),
                Err(e) => {
                    out.push(SyncOutcome {
                        result: Err(reserve_error(e, &view_id)),
                        view_id,
                    });
                    continue;
                }
            };
            let res = self
                .attach_loop(
                    session,
                    g,
                    params,
                    key,
                    reserved,
                    |view, session, reserved| {
                        view.attach_sync(session, reserved, sv.epoch, sv.version)
                            .map(|(m, v)| (m, view.epoch(), v))
                    },
                )
                .await;
            out.push(SyncOutcome {
                view_id: session.subscription_id(&view_id),
                result: res,
            });
        }
        out
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
        })
        .await?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// Counters and a per-view breakdown.
    pub fn stats(&self) -> EngineStats {
        self.stats_of(None)
    }

    /// What one workspace may see of [`Engine::stats`]: its sessions, views,
    /// subscriptions, rows and evaluations. The engine-wide counters
    /// (rounds, patches, changes, batches, frames, resyncs, errors) cannot
    /// be split by workspace and are 0 here.
    pub fn workspace_stats(&self, workspace: &str) -> EngineStats {
        self.stats_of(Some(workspace))
    }

    fn stats_of(&self, workspace: Option<&str>) -> EngineStats {
        let mine = |ws: &str| workspace.is_none_or(|w| w == ws);
        let views: Vec<Arc<View>> = self
            .views()
            .all()
            .filter(|v| mine(&v.key.scope.workspace_id))
            .cloned()
            .collect();
        let mut session_info: Vec<SessionInfo> = self
            .sessions()
            .values()
            .filter(|s| mine(&s.identity.workspace_id))
            .map(|s| SessionInfo {
                id: s.id.clone(),
                identity: s.identity.clone(),
                queued: s.queued(),
                resyncs: s.overflows(),
                subscriptions: s.subscriptions(),
            })
            .collect();
        session_info.sort_by(|a, b| a.id.cmp(&b.id));
        let sessions = session_info.len();
        let subscriptions = session_info.iter().map(|s| s.subscriptions).sum();
        let queued: Vec<usize> = session_info.iter().map(|s| s.queued).collect();
        let mut view_info: Vec<ViewInfo> = views.iter().map(|v| v.info()).collect();
        view_info.sort_by(|a, b| (&a.graph, &a.params_hash).cmp(&(&b.graph, &b.params_hash)));
        let store_rows = {
            let store = self.inner.store.lock().unwrap_or_else(|e| e.into_inner());
            match workspace {
                None => store.len(),
                Some(w) => store.len_in(w),
            }
        };
        let st = &self.inner.stats;
        let global = |n: u64| if workspace.is_none() { n } else { 0 };
        EngineStats {
            sessions,
            views: views.len(),
            subscriptions,
            store_rows,
            evaluations: match workspace {
                None => st.evaluations.get(),
                Some(_) => view_info.iter().map(|v| v.evaluations).sum(),
            },
            evaluation_rounds: global(st.evaluation_rounds.get()),
            patches: global(st.patches.get()),
            eval_errors: global(st.eval_errors.get()),
            changes: global(st.changes.get()),
            batches: global(st.batches.get()),
            frames: global(st.frames.get()),
            resyncs: global(st.resyncs.get()),
            session_queue_max: queued.iter().copied().max().unwrap_or(0),
            session_queue_total: queued.iter().sum(),
            view_info,
            session_info,
        }
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

/// The error for a subscription slot that could not be reserved.
fn reserve_error(e: session::Reserve, view_id: &str) -> EngineError {
    match e {
        session::Reserve::Full(limit) => EngineError::ResourceExhausted(format!(
            "this session already holds {limit} subscriptions, the limit; unsubscribe from a view first"
        )),
        session::Reserve::Taken => EngineError::AlreadyExists(format!(
            "view id `{view_id}` names a window of this session that was re-anchored elsewhere; unsubscribe it or re-anchor it back first"
        )),
    }
}
