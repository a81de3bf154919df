//! Nodes starting together on one database take turns for the startup
//! steps that run DDL or prepare statements (row-level security policies,
//! the registry): DDL on one node beside another node's preparations can
//! deadlock, and PostgreSQL then fails one node's startup.

use tokio::task::JoinHandle;

/// The advisory lock key ("arcana" in ASCII, as a number).
const KEY: i64 = 0x6172_6361_6e61;

/// Held while a node runs its startup steps; dropping it lets the next
/// node go (the session's advisory lock ends with its connection).
pub struct StartupLock {
    _client: tokio_postgres::Client,
    conn: JoinHandle<()>,
}

impl StartupLock {
    /// Waits for the other nodes' startup steps to finish, then takes the lock.
    pub async fn take(url: &str) -> Result<StartupLock, String> {
        let (client, conn) = crate::postgres::tls::connect(url)
            .await
            .map_err(|e| format!("connecting to the database: {e}"))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        client
            .execute("SELECT pg_advisory_lock($1)", &[&KEY])
            .await
            .map_err(|e| format!("waiting for other nodes' startup: {e}"))?;
        Ok(StartupLock {
            _client: client,
            conn,
        })
    }
}

impl Drop for StartupLock {
    fn drop(&mut self) {
        self.conn.abort();
    }
}
