//! Taking, renewing, resuming and handing back view leases: which node
//! owns a view, in which term, and what a node does when it loses one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use futures_util::StreamExt;
use tokio::sync::watch;

use super::state::*;
use crate::engine::{term_of, Claim, EngineError, View};

impl ViewOwners {
    /// Tries to take the view's lease; its revision when taken. A lease this
    /// node already holds (left from an earlier life of the view) is taken
    /// over with a new revision, so that life's pending release fails.
    pub(super) async fn take(&self, hash: &str) -> Result<Option<u64>, String> {
        let bus = &self.shared.bus;
        let me = bus.config.node_id.clone();
        let key = lease_key(hash);
        match bus
            .leases
            .create(&key, me.clone().into_bytes().into())
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                match bus.leases.entry(&key).await.map_err(|e| e.to_string())? {
                    Some(en) if en.value.as_ref() == me.as_bytes() => {
                        match bus.leases.update(&key, en.value, en.revision).await {
                            Ok(r) => Ok(Some(r)),
                            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    _ => Ok(None),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    pub(super) async fn claim_view(&self, view: Arc<View>) -> Result<Claim, EngineError> {
        let bus = self.shared.bus.clone();
        let c = &bus.config;
        let hash = view_hash(&view);
        let unavailable = |e: String| {
            EngineError::Unavailable(format!(
                "the cluster cannot place view `{}` now ({e}); retry",
                view.id
            ))
        };
        let deadline = Instant::now() + Duration::from_millis(c.lease_ttl_ms + c.owner_wait_ms);
        loop {
            if let Some(revision) = self.take(&hash).await.map_err(unavailable)? {
                self.owned()
                    .insert(hash.clone(), Owned::new(Arc::downgrade(&view), revision));
                // Whoever held it last may have left a checkpoint to go on from.
                return Ok(match self.shared.kept.resume(&hash).await {
                    Ok(Some(resume)) => self.resume_in_new_term(&view, &hash, resume).await,
                    Ok(None) => Claim::Own,
                    Err(e) => {
                        tracing::warn!(view = %view.id, error = %e, "reading a view's checkpoint failed; starting it afresh");
                        Claim::Own
                    }
                });
            }
            let holder = bus
                .leases
                .get(lease_key(&hash))
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            if let Some(owner) = holder {
                // Subscribed before asking, so no frame after the snapshot
                // is missed.
                let frames = bus
                    .client
                    .subscribe(format!("{}.{hash}", c.frames_subject))
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                if let Some((snapshot, history)) = self.ask(&owner, &hash).await {
                    self.start_following(&view, hash, frames);
                    return Ok(Claim::Follow { snapshot, history });
                }
            }
            if Instant::now() >= deadline {
                return Err(unavailable("its owner node does not answer".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Claims the term `resume` goes on in; without one (NATS refused) the
    /// view starts a new epoch instead, which is exact too.
    pub(super) async fn resume_in_new_term(&self, view: &View, hash: &str, resume: Claim) -> Claim {
        let Claim::Resume {
            snapshot,
            history,
            after,
            ..
        } = resume
        else {
            return resume;
        };
        let newest = after.last().unwrap_or(&snapshot).version;
        match self.shared.terms.claim(hash, term_of(newest)).await {
            Ok(term) => Claim::Resume {
                snapshot,
                history,
                after,
                term,
            },
            Err(e) => {
                tracing::warn!(view = %view.id, error = %e, "claiming a term failed; starting the view afresh");
                Claim::Own
            }
        }
    }
}

/// View leases renewed concurrently.
pub(super) const RENEWALS_AT_ONCE: usize = 64;

/// Renews the leases of owned views every third of the TTL; on stopping,
/// hands them all back.
pub(super) async fn renew(owners: ViewOwners, mut stopped: watch::Receiver<bool>) {
    let bus = owners.shared.bus.clone();
    let every = crate::cluster::Lease::interval(&bus);
    let me = bus.config.node_id.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        let held: Vec<(String, u64)> = {
            let mut owned = owners.owned();
            for (hash, o) in owned.iter_mut() {
                // A first checkpoint for each view taken (later ones follow
                // its frames), once it has a state.
                let ready = o.view.upgrade().is_some_and(|v| v.version() > 0);
                if !o.kept && ready {
                    o.kept = true;
                    owners.keep(hash.clone(), None);
                }
            }
            owned.iter().map(|(h, o)| (h.clone(), o.revision)).collect()
        };
        // Renewed many at a time: one round trip each, and a node may own
        // thousands of views within a third of the TTL.
        let renewals = futures_util::stream::iter(held)
            .map(|(hash, revision)| {
                let (leases, me) = (bus.leases.clone(), me.clone());
                async move {
                    let r = leases
                        .update(lease_key(&hash), me.into_bytes().into(), revision)
                        .await;
                    (hash, revision, r)
                }
            })
            .buffer_unordered(RENEWALS_AT_ONCE);
        let done: Vec<_> = renewals.collect().await;
        for (hash, revision, r) in done {
            match r {
                Ok(r) => {
                    if let Some(o) = owners.owned().get_mut(&hash) {
                        if o.revision == revision {
                            o.revision = r;
                        }
                    }
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    // Expired while NATS was out of reach: another node may
                    // own the view now, so this copy follows it (or owns
                    // it again if nobody took it).
                    let view = {
                        let mut owned = owners.owned();
                        match owned.get(&hash) {
                            Some(o) if o.revision == revision => owned.remove(&hash),
                            _ => None,
                        }
                    }
                    .and_then(|o| o.view.upgrade());
                    if let Some(v) = view {
                        tracing::warn!(view = %v.id, "lost a view's lease; following its new owner");
                        tokio::spawn(demote(owners.clone(), v, hash));
                    }
                }
                Err(e) => tracing::debug!(view = %hash, error = %e, "renewing a view lease failed"),
            }
        }
    }
    // Each view still held is checkpointed, then handed back.
    let held: Vec<String> = owners.owned().keys().cloned().collect();
    for hash in held {
        owners.keep(hash.clone(), None);
        let revision = owners.owned().remove(&hash).map(|o| o.revision);
        if let Some(r) = revision {
            let _ = owners.shared.jobs.send(Job::Release(hash, r));
        }
    }
    let _ = owners.shared.jobs.send(Job::Done);
}

/// Turns a view whose lease this node lost back into a follower of its
/// new owner, or takes the lease again when nobody holds it.
pub(super) async fn demote(owners: ViewOwners, view: Arc<View>, hash: String) {
    let bus = owners.shared.bus.clone();
    let c = &bus.config;
    let deadline = Instant::now() + Duration::from_millis(c.lease_ttl_ms + c.owner_wait_ms);
    while Instant::now() < deadline && !view.is_closed() {
        if let Ok(Some(revision)) = owners.take(&hash).await {
            // Another node may have owned it meanwhile: a term of its own.
            match owners
                .shared
                .terms
                .claim(&hash, term_of(view.version()))
                .await
            {
                Ok(term) => {
                    if let Some(engine) = owners.shared.engine.upgrade() {
                        engine.retake(&view, term);
                    }
                    owners
                        .owned()
                        .insert(hash, Owned::new(Arc::downgrade(&view), revision));
                    return;
                }
                Err(e) => {
                    tracing::debug!(view = %view.id, error = %e, "claiming a term failed; letting the lease go");
                    owners.release(&hash, revision).await;
                }
            }
        }
        let holder = bus.leases.get(lease_key(&hash)).await.ok().flatten();
        if let Some(owner) = holder.map(|b| String::from_utf8_lossy(&b).into_owned()) {
            let subject = format!("{}.{hash}", c.frames_subject);
            if let Ok(frames) = bus.client.subscribe(subject).await {
                if let Some((snapshot, history)) = owners.ask(&owner, &hash).await {
                    let Some(engine) = owners.shared.engine.upgrade() else {
                        return;
                    };
                    let _eval = view.lock_eval().await;
                    engine.reload(&view, &snapshot, history);
                    drop(_eval);
                    owners.start_following(&view, hash, frames);
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wakes the follower of a view whose lease was handed back (a delete in
/// the lease bucket; an expiry is noticed by the followers' own checks).
pub(super) async fn watch_releases(owners: ViewOwners, mut stopped: watch::Receiver<bool>) {
    let leases = owners.shared.bus.leases.clone();
    loop {
        let w = tokio::select! {
            // Every lease key: a `view-*` pattern is not a subject wildcard.
            w = leases.watch_all() => w,
            _ = stopped.wait_for(|s| *s) => return,
        };
        let mut w = match w {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "watching view leases failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        };
        loop {
            let e = tokio::select! {
                e = w.next() => e,
                _ = stopped.wait_for(|s| *s) => return,
            };
            let Some(Ok(e)) = e else { break };
            if e.operation == async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            let Some(hash) = e.key.strip_prefix("view-") else {
                continue;
            };
            if let Some(f) = owners.following().get(hash) {
                f.released.notify_one();
            }
        }
    }
}
