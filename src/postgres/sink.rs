//! Where a change source hands its transactions: straight to the local
//! engine (a standalone server), or to the cluster's change stream, from
//! which every node's engine takes them.

use futures_util::future::BoxFuture;

use crate::engine::{ChangeBatch, Engine};

/// The receiver of a change source's batches.
pub trait ChangeSink: Send + Sync + 'static {
    /// Hands over one transaction as a batch, in commit order. `id` names
    /// the transaction in its source (the WAL position of its commit), so
    /// a copy handed over again after a replay can be recognized. The
    /// batch's `done` fires once the transaction is safe: its frames are
    /// queued (engine), or the stream has stored it (cluster). Until then
    /// the source must not confirm it to PostgreSQL.
    fn changes(&self, batch: ChangeBatch, id: Option<String>) -> BoxFuture<'_, Result<(), String>>;

    /// Refreshes every live view, after an outage in which changes may
    /// have been missed.
    fn refresh_all(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl ChangeSink for Engine {
    fn changes(
        &self,
        batch: ChangeBatch,
        _id: Option<String>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            Engine::changes(self, batch)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn refresh_all(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { Engine::refresh_all(self).await.map_err(|e| e.to_string()) })
    }
}
