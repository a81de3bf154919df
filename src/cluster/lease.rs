//! Leases in the cluster's key-value bucket, and the one that decides who
//! runs the change source.
//!
//! A node takes a lease by creating its key, which succeeds only when the
//! key is absent; the holder renews it every third of the TTL with a
//! revision check, and the bucket's max age removes it once nobody renews
//! it. Only the holder of [`CHANGES_LEASE`] runs the change source (the WAL
//! listener or the NOTIFY listener). PostgreSQL lets one connection at a
//! time stream from a slot, so even a leader that has not yet noticed its
//! loss cannot read the WAL beside its successor.

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

/// A lease this node holds.
pub struct Lease {
    bus: Bus,
    key: String,
    revision: u64,
    renewed: Instant,
}

/// What a renewal found.
#[derive(Debug, PartialEq)]
pub enum Renewal {
    /// Still held.
    Held,
    /// Not renewed this time (NATS unreachable), but the lease lives until
    /// the next attempt.
    Unsure,
    /// Gone: another node holds it, or it would expire before the next
    /// attempt. Whatever the lease guarded must stop now.
    Lost(String),
}

impl Lease {
    /// Takes `key` if no node holds it.
    pub async fn try_take(bus: &Bus, key: &str) -> Result<Option<Lease>, String> {
        let me = bus.config.node_id.clone().into_bytes();
        match bus.leases.create(key, me.into()).await {
            Ok(revision) => Ok(Some(Lease {
                bus: bus.clone(),
                key: key.to_owned(),
                revision,
                renewed: Instant::now(),
            })),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The node holding `key`, if any.
    pub async fn holder(bus: &Bus, key: &str) -> Result<Option<String>, String> {
        let v = bus.leases.get(key).await.map_err(|e| e.to_string())?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// How often to renew: a third of the TTL.
    pub fn interval(bus: &Bus) -> Duration {
        Duration::from_millis(bus.config.lease_ttl_ms) / 3
    }

    /// Renews the lease, waiting at most one interval.
    pub async fn renew(&mut self) -> Renewal {
        let ttl = Duration::from_millis(self.bus.config.lease_ttl_ms);
        let every = ttl / 3;
        let me = self.bus.config.node_id.clone().into_bytes();
        let attempt = tokio::time::timeout(
            every,
            self.bus.leases.update(&self.key, me.into(), self.revision),
        )
        .await;
        match attempt {
            Ok(Ok(r)) => {
                self.revision = r;
                self.renewed = Instant::now();
                Renewal::Held
            }
            Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                Renewal::Lost("the lease is gone".into())
            }
            failed => {
                // It would expire before the next attempt: give it up now
                // rather than act beside a successor.
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "renewal timed out".into(),
                };
                if self.renewed.elapsed() + every >= ttl {
                    Renewal::Lost(why)
                } else {
                    Renewal::Unsure
                }
            }
        }
    }

    /// Hands the lease back at once (if still held at this revision), so
    /// another node need not wait for it to expire.
    pub async fn release(self) {
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            self.bus
                .leases
                .delete_expect_revision(&self.key, Some(self.revision)),
        )
        .await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::debug!(key = %self.key, "a lease was not released; it expires by itself");
        }
    }
}

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

/// Competes for the change source lease until `stopped`; while held, runs
/// the change source publishing to the stream. `leader` tells whether it
/// is held.
pub async fn run(
    bus: Bus,
    start: SourceStarter,
    leader: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let every = Lease::interval(&bus);
    let me = bus.config.node_id.clone();
    loop {
        if *stopped.borrow() {
            return;
        }
        match Lease::try_take(&bus, CHANGES_LEASE).await {
            Ok(Some(lease)) => {
                tracing::info!(node = %me, "took the change source lease");
                leader.store(true, Ordering::Relaxed);
                let ended = hold(&bus, &start, lease, &mut stopped).await;
                leader.store(false, Ordering::Relaxed);
                if ended == Ended::Stopped {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "cannot reach the lease bucket"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the change source while renewing `lease`.
async fn hold(
    bus: &Bus,
    start: &SourceStarter,
    mut lease: Lease,
    stopped: &mut watch::Receiver<bool>,
) -> Ended {
    let ttl = Duration::from_millis(bus.config.lease_ttl_ms);
    let me = bus.config.node_id.clone();
    let sink: Arc<dyn ChangeSink> = Arc::new(StreamSink::new(bus.clone()));
    let source = match start(sink).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the change source; handing the lease back");
            lease.release().await;
            // Another node may fare better; this one tries again later, so a
            // setup error (wal_level, rights) is not retried in a tight loop.
            tokio::select! {
                _ = tokio::time::sleep(ttl.max(Duration::from_secs(5))) => return Ended::Lost,
                _ = stopped.wait_for(|s| *s) => return Ended::Stopped,
            }
        }
    };
    let ended = loop {
        tokio::select! {
            _ = tokio::time::sleep(Lease::interval(bus)) => {}
            _ = stopped.wait_for(|s| *s) => break Ended::Stopped,
        }
        match lease.renew().await {
            Renewal::Held | Renewal::Unsure => {}
            Renewal::Lost(why) => {
                tracing::warn!(node = %me, reason = %why, "lost the change source lease; stopping the change source");
                break Ended::Lost;
            }
        }
    };
    if let Some(l) = source {
        stop_source(l, ttl).await;
    }
    if ended == Ended::Stopped {
        lease.release().await;
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
