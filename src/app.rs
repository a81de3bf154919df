//! Wiring for the standalone server: config -> pool -> registry -> engine ->
//! gRPC listener. Used by `arcana serve`, `arcana demo` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{ChangeMode, Config};
use crate::engine::Engine;
use crate::grpc::{serve, ServeOptions, TokenAuthenticator};
use crate::postgres::listen;
use crate::postgres::wal::{self, Tracking, WalOptions};
use crate::postgres::Listener;

/// The demo's schema and seed data.
pub const DEMO_SCHEMA: &str = include_str!("../demo/schema.sql");
/// The demo's config.
pub const DEMO_CONFIG: &str = include_str!("../demo/arcana.toml");

/// A running server.
pub struct App {
    /// The engine behind it.
    pub engine: Engine,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
    /// The running change listener, if `changes.mode` has one.
    source: Option<Listener>,
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

async fn start_source(
    config: &Config,
    engine: &Engine,
    url: &str,
) -> Result<Option<Listener>, String> {
    let tables = tracked_tables(engine);
    let c = &config.changes;
    Ok(match c.mode {
        ChangeMode::None => None,
        ChangeMode::Wal => {
            let opts = WalOptions {
                slot: c.slot.clone(),
                publication: c.publication.clone(),
                create: c.create,
                ..WalOptions::default()
            };
            let names: Vec<String> = tables.keys().cloned().collect();
            let routes: std::collections::HashMap<_, _> = names
                .iter()
                .map(|t| (t.clone(), engine.registry().route_columns(t)))
                .filter(|(_, cols)| !cols.is_empty())
                .collect();
            let routed: Vec<String> = routes.keys().cloned().collect();
            let mut keys = wal::prepare(url, &opts, &names, &routed).await?;
            keys.extend(config.table_keys());
            let tracking = Tracking {
                columns: tables.into_iter().collect(),
                keys,
                routes,
                workspace_column: Some(config.rls.workspace_column.clone()),
            };
            Some(wal::spawn(engine.clone(), url.to_owned(), opts, tracking)?)
        }
        ChangeMode::Notify => {
            if c.install_triggers {
                crate::postgres::triggers::install(url, &c.channel, &tables, &config.table_keys())
                    .await?;
            }
            Some(listen::spawn(engine.clone(), url.to_owned(), c.channel.clone()).await?)
        }
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
        if config.rls.install {
            let tables = crate::postgres::rls::install(database_url, &config.rls).await?;
            tracing::info!(?tables, "row-level security policies installed");
        }
        let pool = crate::postgres::pool_with_timeout(
            database_url,
            config.database.pool_size,
            config.database.pool_timeout_ms,
        )?;
        let registry = config.registry(&pool).await?;
        let engine = Engine::new(registry, config.engine.clone());
        let source = start_source(config, &engine, database_url).await?;
        let auth = Arc::new(TokenAuthenticator::from_config(&config.auth)?);
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let opts = ServeOptions {
            max_message_bytes: config.server.max_message_bytes,
            cors_origins: config.server.cors_origins.clone(),
            max_batch_bytes: config.server.max_batch_bytes,
            limits: config.server.limits(),
            tls: config.server.tls.clone(),
        };
        if let Some(tls) = &config.server.tls {
            // A certificate that cannot be loaded stops startup, not just the listener.
            crate::grpc::tls::load(tls)?;
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(engine.clone(), auth, listener, opts, async {
            let _ = stopped.await;
        }));
        Ok(App {
            engine,
            addr,
            stop: Some(stop),
            task: Some(task),
            source,
        })
    }

    /// Stops accepting calls, ends every session and waits for the listener
    /// to drain.
    pub async fn stop(mut self) -> Result<(), String> {
        if let Some(l) = self.source.take() {
            l.stop().await;
        }
        self.engine.shutdown();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            // Calls drain; a client that never lets go does not hold shutdown up.
            Some(mut t) => {
                match tokio::time::timeout(std::time::Duration::from_secs(10), &mut t).await {
                    Ok(r) => r.map_err(|e| e.to_string())?,
                    Err(_) => {
                        tracing::warn!("calls still open after 10s; closing them");
                        t.abort();
                        Ok(())
                    }
                }
            }
            None => Ok(()),
        }
    }

    /// Waits until the server stops by itself (an error).
    pub async fn wait(&mut self) -> Result<(), String> {
        match self.task.as_mut() {
            Some(t) => t.await.map_err(|e| e.to_string())?,
            None => Ok(()),
        }
    }
}
