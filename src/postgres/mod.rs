//! PostgreSQL: connection pools, SQL graphs and mutations, value
//! conversion, and the throwaway cluster used by the demo and tests.

pub mod catalog;
pub mod context;
pub mod embedded;
pub mod listen;
pub mod named;
pub mod pgoutput;
pub mod registry;
pub mod rls;
mod row_change;
pub mod sink;
pub mod sql;
pub mod sql_graph;
pub mod sql_mutation;
pub mod tls;
pub mod triggers;
pub mod values;
pub mod wal;
pub mod window_sql;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running change listener (WAL or NOTIFY).
pub struct Listener {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<()>,
    /// True while connected and receiving changes.
    pub(crate) streaming: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Listener {
    /// A flag that is true while the listener is connected and receiving
    /// changes (false while it reconnects).
    pub fn streaming(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.streaming.clone()
    }

    /// Stops the listener after the batch in hand and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Builds a pool for `url` with at most `size` connections, whose callers
/// wait for a free connection as long as it takes. Connections are opened
/// lazily; an unreachable database surfaces on first use.
pub fn pool(url: &str, size: usize) -> Result<Pool, String> {
    pool_with_timeout(url, size, 0)
}

/// Like [`pool`], but a caller waits at most `wait_ms` milliseconds for a
/// free connection (0: no limit) and then gets a timeout error.
pub fn pool_with_timeout(url: &str, size: usize, wait_ms: u64) -> Result<Pool, String> {
    let (cfg, tls) = tls::parse(url)?;
    let mgr = Manager::from_config(
        cfg,
        tls::MakeRustls::new(&tls)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout((wait_ms > 0).then(|| std::time::Duration::from_millis(wait_ms)))
        .build()
        .map_err(|e| e.to_string())
}

/// Runs a script of several statements (schema, seed data).
pub async fn execute_script(url: &str, script: &str) -> Result<(), String> {
    let (client, conn) = tls::connect(url)
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let task = tokio::spawn(conn);
    let r = client
        .batch_execute(script)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        });
    drop(client);
    let _ = task.await;
    r
}
