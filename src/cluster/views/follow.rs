//! Following a view another node owns: its snapshot and kept diffs
//! asked for, its frames applied to the local copy, and the takeover when
//! the lease is gone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::state::*;
use crate::cluster::kept::{pack, unpack};
use crate::engine::{term_of, Followed, Frame, Owners, View};
use crate::wire::convert::frame_from_encoded;

impl ViewOwners {
    /// Starts the task keeping the follower `view` current from `frames`.
    pub(super) fn start_following(
        &self,
        view: &Arc<View>,
        hash: String,
        frames: async_nats::Subscriber,
    ) {
        let released = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(follow(
            self.clone(),
            Arc::downgrade(view),
            hash.clone(),
            frames,
            released.clone(),
        ));
        let f = Following {
            view: Arc::downgrade(view),
            task,
            released,
        };
        if let Some(old) = self.following().insert(hash, f) {
            old.task.abort();
        }
    }

    /// Asks `owner` for the view's snapshot and kept diffs.
    pub(super) async fn ask(
        &self,
        owner: &str,
        hash: &str,
    ) -> Option<(Arc<Frame>, Vec<Arc<Frame>>)> {
        let c = &self.shared.bus.config;
        let subject = format!("{}.{owner}.{hash}", c.snapshot_subject);
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            self.shared.bus.client.request(subject, Bytes::new()),
        )
        .await
        .ok()?
        .ok()?;
        let payload = match reply.headers.as_ref().and_then(|h| h.get(IN_CHECKPOINT)) {
            Some(_) => pack(&self.shared.kept.load(hash).await.ok()??),
            None => reply.payload,
        };
        let mut frames = unpack(payload)?.into_iter();
        let snapshot = frames.next()?;
        Some((snapshot, frames.collect()))
    }
}

/// Keeps a follower current: applies the owner's frames, reloads after a
/// gap (or a new owner's epoch), and takes the view over when its lease is
/// gone.
pub(super) async fn follow(
    owners: ViewOwners,
    view: Weak<View>,
    hash: String,
    mut frames: async_nats::Subscriber,
    released: Arc<tokio::sync::Notify>,
) {
    // The claim that started this task loads the snapshot first.
    if let Some(v) = view.upgrade() {
        drop(v.lock_eval().await);
    }
    let bus = owners.shared.bus.clone();
    let every = crate::cluster::Lease::interval(&bus);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        let Some(engine) = owners.shared.engine.upgrade() else {
            return;
        };
        let Some(v) = view.upgrade() else { return };
        tokio::select! {
            m = frames.next() => {
                let Some(m) = m else { return };
                let frame = match frame_from_encoded(m.payload) {
                    Ok(f) => Arc::new(f),
                    Err(e) => {
                        tracing::warn!(view = %v.id, error = %e, "unreadable view frame; reloading");
                        resync(&owners, &engine, &v, &hash).await;
                        continue;
                    }
                };
                match engine.follow(&v, frame.clone()) {
                    Followed::Applied | Followed::Stale => {}
                    Followed::Gap => {
                        // The frames missed are likely still in the stream.
                        fill(&owners, &engine, &v, &hash).await;
                        if engine.follow(&v, frame) == Followed::Gap {
                            resync(&owners, &engine, &v, &hash).await;
                        }
                    }
                    Followed::Closed => return,
                }
            }
            _ = async { tokio::select! { _ = tick.tick() => {}, _ = released.notified() => {} } } => {
                let holder = bus.leases.get(lease_key(&hash)).await;
                if let Ok(None) = holder {
                    if let Ok(Some(revision)) = owners.take(&hash).await {
                        // Whatever the last owner got out before it left.
                        fill(&owners, &engine, &v, &hash).await;
                        // A term no other node used, or no takeover.
                        let term = match owners.shared.terms.claim(&hash, term_of(v.version())).await {
                            Ok(term) => term,
                            Err(e) => {
                                tracing::debug!(view = %v.id, error = %e, "claiming a term failed; letting the lease go");
                                owners.release(&hash, revision).await;
                                continue;
                            }
                        };
                        owners.owned().insert(hash.clone(), Owned::new(view.clone(), revision));
                        owners.following().remove(&hash);
                        if engine.promote(&v, term) {
                            tracing::info!(view = %v.id, "took over a view whose owner left");
                        } else {
                            // Closed meanwhile: nobody here needs it.
                            owners.closed(&v);
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Applies the view's frames the stream holds after the follower's version.
pub(super) async fn fill(
    owners: &ViewOwners,
    engine: &crate::engine::Engine,
    v: &Arc<View>,
    hash: &str,
) {
    match owners.shared.kept.after(hash, v.epoch(), v.version()).await {
        Ok(frames) => {
            for f in frames {
                if !matches!(engine.follow(v, f), Followed::Applied | Followed::Stale) {
                    break;
                }
            }
        }
        Err(e) => tracing::debug!(view = %v.id, error = %e, "reading a view's kept frames failed"),
    }
}

/// Reloads a follower from its owner's snapshot.
pub(super) async fn resync(
    owners: &ViewOwners,
    engine: &crate::engine::Engine,
    v: &Arc<View>,
    hash: &str,
) {
    let holder = owners
        .shared
        .bus
        .leases
        .get(lease_key(hash))
        .await
        .ok()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let Some(owner) = holder else { return };
    if let Some((snapshot, history)) = owners.ask(&owner, hash).await {
        engine.reload(v, &snapshot, history);
    }
}
