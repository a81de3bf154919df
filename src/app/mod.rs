//! Wiring for the standalone server: config -> pool -> registry -> engine ->
//! gRPC listener. Used by `arcana serve`, `arcana demo` and the tests.

pub mod cluster_demo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::auth::TokenAuthenticator;
use crate::cluster::{Node, SourceStarter};
use crate::config::{ChangeMode, ChangesConfig, Config};
use crate::engine::Engine;
use crate::grpc::{serve, ServeOptions};
use crate::ops::admin::{self, AdminState};
use crate::ops::health::Readiness;
use crate::ops::metrics::Exporter;
use crate::postgres::listen;
use crate::postgres::sink::ChangeSink;
use crate::postgres::wal::{self, Tracking, WalOptions};
use crate::postgres::Listener;

/// The demo's schema and seed data.
pub const DEMO_SCHEMA: &str = include_str!("../../demo/schema.sql");
/// The demo's config.
pub const DEMO_CONFIG: &str = include_str!("../../demo/arcana.toml");

/// A running server.
pub struct App {
    /// The engine behind it.
    pub engine: Engine,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the admin HTTP listener listens (`server.admin_listen`).
    pub admin_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    /// The running change listener, if `changes.mode` has one (and the
    /// server is not a cluster node, whose node runs it while leader).
    source: Option<Listener>,
    /// Membership in a cluster (`[cluster]`).
    node: Option<Node>,
    readiness: Readiness,
    /// The admin listener and the readiness watch.
    background: Vec<JoinHandle<()>>,
    grace: Duration,
    /// Turns true once the gRPC port accepts connections.
    opened: tokio::sync::watch::Receiver<bool>,
}

/// Tables any graph reads, with the columns tracked (`None`: all).
pub fn tracked_tables(engine: &Engine) -> BTreeMap<String, Option<BTreeSet<String>>> {
    engine
        .registry()
        .representation()
        .into_iter()
        .map(|(t, (cols, _))| (t, cols))
        .collect()
}

/// What starting the change source takes, owned, so a cluster node can
/// start it whenever it becomes leader.
struct SourceSpec {
    changes: ChangesConfig,
    table_keys: HashMap<String, Vec<String>>,
    workspace_column: String,
    url: String,
    /// The replication connection's `application_name`.
    application_name: String,
    /// Whether a cluster node runs it (on becoming leader).
    clustered: bool,
}

impl SourceSpec {
    fn new(config: &Config, url: &str) -> Self {
        SourceSpec {
            changes: config.changes.clone(),
            table_keys: config.table_keys(),
            workspace_column: config.rls.workspace_column.clone(),
            url: url.to_owned(),
            application_name: match &config.cluster {
                Some(c) => format!("arcana-{}", c.node_id),
                None => "arcana".into(),
            },
            clustered: config.cluster.is_some(),
        }
    }
}

/// Starts the change source of `changes.mode`, handing batches to `sink`.
async fn start_source(
    spec: &SourceSpec,
    engine: &Engine,
    sink: Arc<dyn ChangeSink>,
) -> Result<Option<Listener>, String> {
    let tables = tracked_tables(engine);
    let c = &spec.changes;
    let url = spec.url.as_str();
    Ok(match c.mode {
        ChangeMode::None => None,
        ChangeMode::Wal => {
            let opts = WalOptions::from_config(c, &spec.application_name);
            let names: Vec<String> = tables.keys().cloned().collect();
            let routes: std::collections::HashMap<_, _> = names
                .iter()
                .map(|t| (t.clone(), engine.registry().route_columns(t)))
                .filter(|(_, cols)| !cols.is_empty())
                .collect();
            let routed: Vec<String> = routes.keys().cloned().collect();
            let mut keys = wal::prepare(url, &opts, &names, &routed).await?;
            keys.extend(spec.table_keys.clone());
            let mut orders: std::collections::HashMap<String, Vec<Vec<String>>> =
                Default::default();
            for g in engine.registry().graphs() {
                if let (Some(table), Some(w)) = (&g.table, &g.window) {
                    let lists = orders.entry(table.clone()).or_default();
                    if !lists.contains(&w.order) {
                        lists.push(w.order.clone());
                    }
                }
            }
            let tracking = Tracking {
                columns: tables.into_iter().collect(),
                keys,
                routes,
                orders,
                workspace_column: Some(spec.workspace_column.clone()),
            };
            Some(wal::spawn(sink, url.to_owned(), opts, tracking)?)
        }
        ChangeMode::Notify => {
            if c.install_triggers {
                crate::postgres::triggers::install(url, &c.channel, &tables, &spec.table_keys)
                    .await?;
            }
            let listener = listen::spawn(sink.clone(), url.to_owned(), c.channel.clone()).await?;
            if spec.clustered {
                // Notifications sent while no node listened (the previous
                // leader died) are gone: every node refreshes its views.
                sink.refresh_all().await?;
            }
            Some(listener)
        }
    })
}

/// Pending connections the kernel queues on a port opened by
/// [`App::start_bound`] (what `TcpListener::bind` uses).
const BACKLOG: u32 = 1024;

/// Longest wait for readiness before [`App::start_bound`] opens the port
/// anyway. A server that is built answers calls; what it may still lack is
/// the change stream (its replication slot held by another instance, say),
/// and such a server must stay reachable: its health service and `/readyz`
/// say it is not ready, as before.
pub const READY_WAIT: Duration = Duration::from_secs(5);

/// The gRPC port: already listening, or bound and opened once ready.
enum Port {
    Listening(TcpListener),
    Bound(TcpSocket),
}

/// Binds `addr` without listening yet: the address is taken (a port in use
/// fails now, before anything slow starts), but connections to it are
/// refused until [`App::start_bound`] opens it. Tries each address a host
/// name resolves to, like `TcpListener::bind`.
pub async fn bind(addr: &str) -> Result<TcpSocket, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot listen on {addr}: {e}");
    let mut last = None;
    for at in tokio::net::lookup_host(addr).await.map_err(|e| fail(&e))? {
        let socket = if at.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            // As `TcpListener::bind` does: a restart need not wait out TIME_WAIT.
            s.set_reuseaddr(true)?;
            s.bind(at)?;
            Ok(s)
        });
        match bound {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => fail(&e),
        None => fail(&"the address resolves to nothing"),
    })
}

impl App {
    /// Builds everything from `config` against `database_url` and starts
    /// serving on `listener`.
    pub async fn start(
        config: &Config,
        database_url: &str,
        listener: TcpListener,
    ) -> Result<App, String> {
        Self::start_on(config, database_url, Port::Listening(listener)).await
    }

    /// Like [`App::start`] on a socket from [`bind`], which starts listening
    /// only once the server is built and ready (the database answers, the
    /// change source streams), or built and still not ready after
    /// [`READY_WAIT`]: a client that waits for the port to accept is
    /// answered from its first call. Returns once the server is built; the
    /// port opens in the background, and [`App::stop`] meanwhile stops it
    /// cleanly (a cluster node hands its leases back). `arcana serve` and
    /// `arcana demo` start this way.
    pub async fn start_bound(
        config: &Config,
        database_url: &str,
        socket: TcpSocket,
    ) -> Result<App, String> {
        Self::start_on(config, database_url, Port::Bound(socket)).await
    }

    async fn start_on(config: &Config, database_url: &str, port: Port) -> Result<App, String> {
        // Cluster nodes started together take turns here (see `startup.rs`).
        let turn = match &config.cluster {
            Some(_) => Some(crate::cluster::startup::StartupLock::take(database_url).await?),
            None => None,
        };
        if config.rls.install {
            let tables = crate::postgres::rls::install(database_url, &config.rls).await?;
            tracing::info!(?tables, "row-level security policies installed");
        }
        let pool = crate::postgres::pool_with_timeout(
            database_url,
            config.database.pool_size,
            config.database.pool_timeout_ms,
        )?;
        let registry = crate::postgres::registry::build(config, &pool).await?;
        drop(turn);
        let engine = Engine::new(registry, config.engine.clone());
        engine.observe_with(Arc::new(crate::ops::metrics::EngineTimings));
        let wal_slot =
            (config.changes.mode == ChangeMode::Wal).then(|| config.changes.slot.clone());
        if let Some(slot) = &wal_slot {
            crate::ops::slot::warn_if_retaining(&pool, slot, config.changes.max_retained_wal_mb)
                .await;
        }
        let spec = SourceSpec::new(config, database_url);
        let (source, node) = match &config.cluster {
            None => {
                let sink: Arc<dyn ChangeSink> = Arc::new(engine.clone());
                (start_source(&spec, &engine, sink).await?, None)
            }
            Some(c) => {
                // The node runs the source only while it holds the lease.
                let spec = Arc::new(spec);
                let e = engine.clone();
                let starter: SourceStarter = Arc::new(
                    move |sink: Arc<dyn ChangeSink>| -> futures_util::future::BoxFuture<
                        'static,
                        Result<Option<Listener>, String>,
                    > {
                        let (spec, e) = (spec.clone(), e.clone());
                        Box::pin(async move { start_source(&spec, &e, sink).await })
                    },
                );
                let node = Node::start(c, engine.clone(), starter).await?;
                engine.broadcast_mutations(config.changes.mode == ChangeMode::None);
                (None, Some(node))
            }
        };
        // Ready means changes flow in: from the local listener, or (in a
        // cluster) from the change stream.
        let streaming = match &node {
            Some(n) => Some(n.consuming()),
            None => source.as_ref().map(|s| s.streaming()),
        };
        let health = tonic_health::server::HealthReporter::new();
        let readiness = Readiness::new(
            pool.clone(),
            streaming,
            Duration::from_millis(config.admin.ready_timeout_ms.max(1)),
            health.clone(),
        );
        // The health service answers from the first call on.
        let _ = readiness.refresh().await;
        let auth = Arc::new(TokenAuthenticator::from_config(&config.auth)?);
        let mut background = Vec::new();
        let admin_addr = match &config.server.admin_listen {
            None => None,
            Some(at) => {
                let l = TcpListener::bind(at)
                    .await
                    .map_err(|e| format!("cannot listen on {at} (server.admin_listen): {e}"))?;
                let addr = l.local_addr().map_err(|e| e.to_string())?;
                let state = Arc::new(AdminState {
                    engine: engine.clone(),
                    readiness: readiness.clone(),
                    exporter: Exporter::new(),
                    slot: wal_slot.clone(),
                    auth: Some(auth.clone()),
                });
                background.push(tokio::spawn(admin::serve(l, state, config.admin.clone())));
                Some(addr)
            }
        };
        background.push(tokio::spawn(readiness.clone().watch(
            Duration::from_millis(config.admin.ready_interval_ms.max(10)),
        )));
        let offline = if config.offline.tables.is_empty() {
            None
        } else {
            // Its own pool: snapshots and pulls never wait on, or hold,
            // the engine's connections.
            let offline_pool = crate::postgres::pool_with_timeout(
                database_url,
                config.offline.pool_size,
                config.database.pool_timeout_ms,
            )?;
            let (o, tasks) = crate::offline::Offline::start(
                &config.offline,
                offline_pool,
                database_url,
                auth.clone(),
                crate::postgres::context::TxContext::from_config(&config.database),
            )
            .await?;
            background.extend(tasks);
            Some(o.mount())
        };
        let opts = ServeOptions {
            max_message_bytes: config.server.max_message_bytes,
            cors_origins: config.server.cors_origins.clone(),
            max_batch_bytes: config.server.max_batch_bytes,
            snapshot_part_bytes: config.server.snapshot_part_bytes,
            limits: crate::grpc::Limits::from_config(&config.server)?,
            health: Some(health),
            tls: config.server.tls.clone(),
            mounts: offline.into_iter().collect(),
        };
        if let Some(tls) = &config.server.tls {
            // A certificate that cannot be loaded stops startup, not just the listener.
            crate::grpc::tls::load(tls)?;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let (open_tx, opened) = tokio::sync::watch::channel(false);
        let (addr, task) = match port {
            Port::Listening(listener) => {
                let _ = open_tx.send(true);
                let addr = listener.local_addr().map_err(|e| e.to_string())?;
                let task = tokio::spawn(serve(engine.clone(), auth, listener, opts, async {
                    let _ = stopped.await;
                }));
                (addr, task)
            }
            Port::Bound(socket) => {
                let addr = socket.local_addr().map_err(|e| e.to_string())?;
                let readiness = readiness.clone();
                let every = Duration::from_millis(config.admin.ready_interval_ms.max(10));
                let engine = engine.clone();
                // The wait runs in the serving task, so the app exists (and
                // a stop, e.g. on SIGTERM, hands its leases back) meanwhile.
                let task = tokio::spawn(async move {
                    let mut stopped = stopped;
                    tokio::select! {
                        () = ready(&readiness, every) => {}
                        _ = &mut stopped => return Ok(()),
                    }
                    // Another process may have bound the port meanwhile too.
                    let listener = socket
                        .listen(BACKLOG)
                        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                    tracing::info!(%addr, "the gRPC port is open");
                    let _ = open_tx.send(true);
                    serve(engine, auth, listener, opts, async {
                        let _ = stopped.await;
                    })
                    .await
                });
                (addr, task)
            }
        };
        Ok(App {
            engine,
            addr,
            admin_addr,
            stop: Some(stop),
            task: Some(task),
            source,
            node,
            readiness,
            background,
            grace: Duration::from_millis(config.server.shutdown_grace_ms),
            opened,
        })
    }

    /// Graceful shutdown: reports not ready (gRPC health NOT_SERVING,
    /// `/readyz` 503), stops accepting connections and calls, ends every
    /// session stream with UNAVAILABLE so clients reconnect elsewhere, and
    /// waits up to `server.shutdown_grace_ms` for calls in flight.
    pub async fn stop(mut self) -> Result<(), String> {
        self.readiness.shutting_down().await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.engine.shutdown();
        let r = match self.task.take() {
            // Calls drain; a client that never lets go does not hold shutdown up.
            Some(mut t) => match tokio::time::timeout(self.grace, &mut t).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => {
                    tracing::warn!(grace = ?self.grace, "calls still open after the grace period; closing them");
                    t.abort();
                    Ok(Ok(()))
                }
            },
            None => Ok(Ok(())),
        };
        // After the drain: batches in flight still confirm their WAL position.
        if let Some(l) = self.source.take() {
            l.stop().await;
        }
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
        for t in self.background.drain(..) {
            t.abort();
        }
        r?
    }

    /// Returns once the gRPC port accepts connections (at once for
    /// [`App::start`]), or when serving ended before it opened.
    pub async fn opened(&self) {
        let mut opened = self.opened.clone();
        let _ = opened.wait_for(|o| *o).await;
    }

    /// This server's membership in a cluster (`[cluster]`).
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    /// The readiness of this server (`/readyz`).
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// Waits until the server stops by itself (an error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match self.task.as_mut() {
            Some(t) => t.await.map_err(|e| e.to_string())?,
            None => Ok(()),
        }
    }
}

/// Returns once `readiness` holds, checking every `every`, or after
/// [`READY_WAIT`].
async fn ready(readiness: &Readiness, every: Duration) {
    let until = tokio::time::Instant::now() + READY_WAIT;
    let mut said = false;
    loop {
        let Err(why) = readiness.refresh().await else {
            return;
        };
        if tokio::time::Instant::now() >= until {
            tracing::warn!(reason = %why, wait = ?READY_WAIT, "still not ready; opening the gRPC port anyway (gRPC health and /readyz report not ready)");
            return;
        }
        if !said {
            tracing::info!(reason = %why, "not ready yet; the gRPC port opens when ready");
            said = true;
        }
        // Checked often while starting: the port should open as soon as it
        // can (the background check keeps its own, slower pace).
        let next = tokio::time::Instant::now() + every.min(Duration::from_millis(50));
        tokio::time::sleep_until(until.min(next)).await;
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for t in self.background.drain(..) {
            t.abort();
        }
    }
}
