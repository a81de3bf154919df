//! Leadership of the change source: the nodes race for one key in the lease
//! bucket. Creating it succeeds only when it is absent; the holder renews it
//! every third of the TTL with a revision check, and the bucket's max age
//! removes it once nobody renews it. Only the holder runs the change source
//! (the WAL listener or the NOTIFY listener). PostgreSQL lets one
//! connection at a time stream from a slot, so even a leader that has not
//! yet noticed its loss cannot read the WAL beside its successor.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::bus::Bus;
use super::publish::StreamSink;
use crate::postgres::sink::ChangeSink;
use crate::postgres::Listener;

/// The key of the change source's lease.
pub const CHANGES_LEASE: &str = "changes";

/// Starts the change source feeding a sink; `None` when the config has no
/// change source.
pub type SourceStarter = Arc<
    dyn Fn(Arc<dyn ChangeSink>) -> BoxFuture<'static, Result<Option<Listener>, String>>
        + Send
        + Sync,
>;

/// How holding the lease ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// The node is stopping.
    Stopped,
    /// Renewal failed or another node holds the lease.
    Lost,
}

/// Competes for the lease until `stopped`; while held, runs the change
/// source publishing to the stream. `leader` tells whether it is held.
pub async fn run(
    bus: Bus,
    start: SourceStarter,
    leader: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(bus.config.lease_ttl_ms) / 3;
    let me = bus.config.node_id.clone();
    loop {
        if *stopped.borrow() {
            return;
        }
        match bus
            .leases
            .create(CHANGES_LEASE, me.clone().into_bytes().into())
            .await
        {
            Ok(rev) => {
                tracing::info!(node = %me, "took the change source lease");
                leader.store(true, Ordering::Relaxed);
                let ended = hold(&bus, &start, rev, &mut stopped).await;
                leader.store(false, Ordering::Relaxed);
                if ended == Ended::Stopped {
                    return;
                }
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => tracing::debug!(error = %e, "cannot reach the lease bucket"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the change source while renewing the lease taken at `rev`.
async fn hold(
    bus: &Bus,
    start: &SourceStarter,
    mut rev: u64,
    stopped: &mut watch::Receiver<bool>,
) -> Ended {
    let ttl = Duration::from_millis(bus.config.lease_ttl_ms);
    let every = ttl / 3;
    let me = bus.config.node_id.clone();
    let sink: Arc<dyn ChangeSink> = Arc::new(StreamSink::new(bus.clone()));
    let source = match start(sink).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the change source; handing the lease back");
            release(bus, rev).await;
            // Another node may fare better; this one tries again later, so a
            // setup error (wal_level, rights) is not retried in a tight loop.
            tokio::select! {
                _ = tokio::time::sleep(ttl.max(Duration::from_secs(5))) => return Ended::Lost,
                _ = stopped.wait_for(|s| *s) => return Ended::Stopped,
            }
        }
    };
    let mut renewed = Instant::now();
    let ended = loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => break Ended::Stopped,
        }
        let attempt = tokio::time::timeout(
            every,
            bus.leases
                .update(CHANGES_LEASE, me.clone().into_bytes().into(), rev),
        )
        .await;
        match attempt {
            Ok(Ok(r)) => {
                rev = r;
                renewed = Instant::now();
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(node = %me, "the change source lease is gone; stopping the change source");
                break Ended::Lost;
            }
            failed => {
                // The lease would expire before the next attempt: give it up
                // now rather than run beside a successor.
                if renewed.elapsed() + every >= ttl {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(node = %me, error = %why, "cannot renew the change source lease; stopping the change source");
                    break Ended::Lost;
                }
            }
        }
    };
    if let Some(l) = source {
        stop_source(l, ttl).await;
    }
    if ended == Ended::Stopped {
        // Hand over at once instead of letting the lease expire.
        release(bus, rev).await;
    }
    ended
}

/// Stops the change source, waiting at most `grace` for the batch in hand.
async fn stop_source(l: Listener, grace: Duration) {
    let _ = l.stop.send(true);
    let mut task = l.task;
    if tokio::time::timeout(grace, &mut task).await.is_err() {
        task.abort();
    }
}

/// Deletes the lease if it is still the one this node holds at `rev`.
async fn release(bus: &Bus, rev: u64) {
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        bus.leases.delete_expect_revision(CHANGES_LEASE, Some(rev)),
    )
    .await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::debug!("the change source lease was not released; it expires by itself");
    }
}
