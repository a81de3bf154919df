//! The leader's change sink: each transaction the change source reads is
//! published to the change stream, in commit order, and counts as handed
//! over (so the WAL position may be confirmed) only once JetStream has
//! acknowledged storing it.

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use futures_util::future::BoxFuture;

use super::bus::Bus;
use super::wire;
use crate::engine::ChangeBatch;
use crate::postgres::sink::ChangeSink;

/// Publishes change batches to the stream.
pub struct StreamSink {
    bus: Bus,
}

impl StreamSink {
    /// A sink publishing on `bus`.
    pub fn new(bus: Bus) -> Self {
        StreamSink { bus }
    }

    /// Publishes `payload`; `done` fires once the stream has stored it, and
    /// is dropped (so the source replays) if that fails.
    async fn publish(
        &self,
        payload: Vec<u8>,
        id: Option<String>,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), String> {
        let c = &self.bus.config;
        // NATS refuses messages over its max_payload (unknown, 0, while
        // disconnected); leave room for headers.
        let server = self.bus.client.server_info().max_payload;
        let limit = match server {
            0 => c.max_batch_bytes,
            m => c.max_batch_bytes.min(m.saturating_sub(1024)),
        };
        let payload = if payload.len() > limit {
            tracing::warn!(
                bytes = payload.len(),
                limit,
                "a transaction too large for the change stream is published as a refresh of every view"
            );
            wire::encode_everything()
        } else {
            payload
        };
        let mut headers = HeaderMap::new();
        if let Some(id) = &id {
            // JetStream drops a second message with the same id within the
            // duplicate window: a new leader replaying the WAL from the last
            // confirmed position republishes nothing twice.
            headers.insert(NATS_MESSAGE_ID, id.as_str());
        }
        // Sending happens here, in call order, so the stream stores batches in
        // commit order; only the acknowledgement is awaited apart.
        let ack = self
            .bus
            .js
            .publish_with_headers(c.changes_subject.clone(), headers, payload.into())
            .await
            .map_err(|e| format!("publishing to the change stream: {e}"))?;
        tokio::spawn(async move {
            match ack.await {
                Ok(_) => {
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, id = ?id, "the change stream did not store a batch; it will be read again");
                }
            }
        });
        Ok(())
    }
}

impl crate::engine::Broadcast for StreamSink {
    fn broadcast(
        &self,
        changes: Vec<crate::engine::Change>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let sink = StreamSink {
            bus: self.bus.clone(),
        };
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let payload = wire::encode(&ChangeBatch::new(changes, None));
            sink.publish(payload, None, Some(tx)).await?;
            rx.await
                .map_err(|_| "the change stream did not store the changes".to_owned())
        })
    }
}

impl ChangeSink for StreamSink {
    fn changes(
        &self,
        mut batch: ChangeBatch,
        id: Option<String>,
    ) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let payload = wire::encode(&batch);
            let done = batch.done.take();
            self.publish(payload, id, done).await
        })
    }

    fn refresh_all(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.publish(wire::encode_everything(), None, Some(tx))
                .await?;
            rx.await
                .map_err(|_| "the change stream did not store a refresh".to_owned())
        })
    }
}
