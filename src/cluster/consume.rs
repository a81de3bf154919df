//! Every node's consumer of the change stream: batches go into the local
//! engine's invalidation, exactly where a standalone server's change source
//! puts them. The consumer resumes after the last batch it took, whatever
//! happens to the connection or to NATS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::bus::Bus;
use super::wire;
use crate::engine::Engine;

/// Consumes the stream from sequence `next` on until `stopped` is set.
/// `consuming` is true while a consumer is in place.
pub async fn run(
    bus: Bus,
    engine: Engine,
    mut next: u64,
    consuming: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    // The highest WAL position taken, to spot a batch arriving late.
    let mut last_wal: u64 = 0;
    let mut connections = bus.connections.clone();
    loop {
        connections.mark_unchanged();
        let r = tokio::select! {
            r = consume(&bus, &engine, &mut next, &mut last_wal, &consuming, &mut backoff) => r,
            // After a reconnect the server may have lost this node's
            // consumer (a restart); a new one resumes at once instead of
            // waiting for missed heartbeats to tell.
            _ = connections.changed() => Err(Interrupted::Reconnected),
            _ = stopped.wait_for(|s| *s) => return,
        };
        consuming.store(false, Ordering::Relaxed);
        match r {
            Ok(()) => return,
            Err(Interrupted::Reconnected) => {
                tracing::info!(
                    from = next,
                    "reconnected to NATS; resuming the change stream"
                );
            }
            Err(Interrupted::Failed(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "change stream consumer interrupted");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Why a consumer stopped.
enum Interrupted {
    /// The client reconnected to NATS.
    Reconnected,
    /// An error.
    Failed(String),
}

impl From<String> for Interrupted {
    fn from(e: String) -> Self {
        Interrupted::Failed(e)
    }
}

/// One consumer's life: returns `Ok` when the engine has stopped.
async fn consume(
    bus: &Bus,
    engine: &Engine,
    next: &mut u64,
    last_wal: &mut u64,
    consuming: &AtomicBool,
    backoff: &mut Duration,
) -> Result<(), Interrupted> {
    let stream = bus
        .js
        .get_stream(bus.config.changes_stream.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: bus.config.changes_subject.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: (*next).max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    consuming.store(true, Ordering::Relaxed);
    *backoff = Duration::from_millis(100);
    tracing::info!(from = *next, "consuming the change stream");
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let seq = m.info().map_err(|e| e.to_string())?.stream_sequence;
        if seq < *next {
            continue;
        }
        let mut batch = if seq > *next && *next > 0 {
            // Batches this node never saw were dropped by the stream's
            // limits while it was away: refresh everything instead.
            tracing::warn!(
                expected = *next,
                got = seq,
                "change stream batches expired before this node read them; refreshing every view"
            );
            let mut b = crate::engine::ChangeBatch::new(Vec::new(), None);
            b.everything = true;
            b
        } else {
            match wire::decode(&m.payload) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, seq, "unreadable change batch; refreshing every view");
                    let mut b = crate::engine::ChangeBatch::new(Vec::new(), None);
                    b.everything = true;
                    b
                }
            }
        };
        // A batch republished after a failed publish can land behind later
        // ones. Its new values may then be older than what views already
        // show, so it re-evaluates instead of patching.
        if let Some(lsn) = wal_position(&m) {
            if lsn < *last_wal {
                for c in &mut batch.changes {
                    c.values = None;
                }
            }
            *last_wal = (*last_wal).max(lsn);
        }
        if engine.changes(batch).await.is_err() {
            return Ok(());
        }
        *next = seq + 1;
    }
    Err(Interrupted::Failed("the consumer ended".into()))
}

/// The WAL position in a batch's message id (`wal-<lsn>`), if it has one.
fn wal_position(m: &async_nats::jetstream::Message) -> Option<u64> {
    let id = m
        .headers
        .as_ref()?
        .get(async_nats::header::NATS_MESSAGE_ID)?;
    id.as_str().strip_prefix("wal-")?.parse().ok()
}
