//! Wiring for the standalone server: config -> pool -> registry -> engine ->
//! gRPC listener. Used by `arcana serve`, `arcana demo` and the tests.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::engine::Engine;
use crate::grpc::{serve, ServeOptions, TokenAuthenticator};

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
}

impl App {
    /// Builds everything from `config` against `database_url` and starts
    /// serving on `listener`.
    pub async fn start(
        config: &Config,
        database_url: &str,
        listener: TcpListener,
    ) -> Result<App, String> {
        let pool = crate::postgres::pool(database_url, config.database.pool_size)?;
        let registry = config.registry(&pool)?;
        let engine = Engine::new(registry, config.engine.to_engine());
        let auth = Arc::new(TokenAuthenticator::from_config(&config.auth)?);
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let opts = ServeOptions {
            max_message_bytes: config.server.max_message_bytes,
            cors_origins: config.server.cors_origins.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(engine.clone(), auth, listener, opts, async {
            let _ = stopped.await;
        }));
        Ok(App {
            engine,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops accepting calls, ends every session and waits for the listener
    /// to drain.
    pub async fn stop(mut self) -> Result<(), String> {
        self.engine.shutdown();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.task.take() {
            Some(t) => t.await.map_err(|e| e.to_string())?,
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
