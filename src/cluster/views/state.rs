//! The state of this node's view ownership: what it owns and follows,
//! the queues to its publisher and keeper, and the names views go by.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::cluster::bus::Bus;
use crate::cluster::kept::Kept;
use crate::cluster::terms::Terms;
use crate::engine::{Frame, View, WeakEngine};

/// The header of a snapshot reply too big for one NATS message: the owner
/// wrote it as the view's checkpoint instead, to be read from there.
pub(super) const IN_CHECKPOINT: &str = "Arcana-Checkpoint";

/// The hash naming a view across the cluster: of its graph, canonical
/// params, workspace and (per-user graphs) user.
pub fn view_hash(view: &View) -> String {
    let k = &view.key;
    let mut h = Sha256::new();
    for part in [
        &*k.graph,
        k.params.as_str(),
        &*k.scope.workspace_id,
        k.scope.user_id.as_deref().unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) fn lease_key(hash: &str) -> String {
    format!("view-{hash}")
}

/// A view this node owns.
pub(super) struct Owned {
    pub(super) view: Weak<View>,
    pub(super) revision: u64,
    /// A checkpoint of it was asked for since this node took it.
    pub(super) kept: bool,
}

impl Owned {
    pub(super) fn new(view: Weak<View>, revision: u64) -> Owned {
        Owned {
            view,
            revision,
            kept: false,
        }
    }
}

/// Work for the keeper task, done in order.
pub(super) enum Job {
    /// Checkpoint an owned view's current state.
    Save(String),
    /// Checkpoint a closing view's last state.
    Keep(String, Vec<Arc<Frame>>),
    /// Hand a lease back (after the jobs before it).
    Release(String, u64),
    /// No job comes after this one: the node is stopping.
    Done,
}

/// A view this node follows.
pub(super) struct Following {
    pub(super) view: Weak<View>,
    pub(super) task: JoinHandle<()>,
    /// Woken when the view's lease is handed back, so the follower takes
    /// over at once rather than at its next check.
    pub(super) released: Arc<tokio::sync::Notify>,
}

pub(super) struct Shared {
    pub(super) bus: Bus,
    pub(super) engine: WeakEngine,
    pub(super) owned: Mutex<HashMap<String, Owned>>,
    pub(super) following: Mutex<HashMap<String, Following>>,
    /// Frames to publish; bounded by `publishing`'s permits.
    pub(super) frames: mpsc::UnboundedSender<Publish>,
    /// One permit per frame queued or awaiting the stream's ack
    /// (`cluster.publish_queue`).
    pub(super) publishing: Arc<tokio::sync::Semaphore>,
    /// When a frame was last left unpublished, for rate-limited warnings.
    pub(super) last_drop: Mutex<Option<std::time::Instant>>,
    /// Owned views whose newest frame was left unpublished: their newest
    /// frame goes out again once the queue has room, so a follower that
    /// got no later frame learns of the gap (at most one per owned view).
    pub(super) unpublished: Mutex<std::collections::HashSet<String>>,
    pub(super) kept: Kept,
    pub(super) terms: Terms,
    pub(super) jobs: mpsc::UnboundedSender<Job>,
    /// Frames each owned view made since its last checkpoint.
    pub(super) unkept: Mutex<HashMap<String, usize>>,
    /// Views with a checkpoint queued: one at a time each, and at most
    /// `checkpoint_queue` in all (a slow NATS must not pile up snapshots).
    pub(super) queued: Mutex<std::collections::HashSet<String>>,
    pub(super) history_len: usize,
}

/// A frame to publish, holding its place in the publish queue until the
/// stream has acknowledged it.
pub(super) struct Publish {
    pub(super) hash: String,
    pub(super) frame: Arc<Frame>,
    pub(super) place: tokio::sync::OwnedSemaphorePermit,
}

/// This node's side of view ownership; the engine's [`Owners`].
#[derive(Clone)]
pub struct ViewOwners {
    pub(super) shared: Arc<Shared>,
}

impl ViewOwners {
    pub(super) fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        self.shared.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a checkpoint of `hash` (`frames` when the view is closing,
    /// else its state when written), unless one is queued already or the
    /// queue is full; false then. A view without a checkpoint only starts
    /// a new epoch where it could have gone on.
    pub(super) fn keep(&self, hash: String, frames: Option<Vec<Arc<Frame>>>) -> bool {
        let mut queued = self.shared.queued.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = !queued.contains(&hash);
        if fresh && queued.len() >= self.shared.bus.config.checkpoint_queue {
            return false;
        }
        // A closing view's last state goes in even behind a queued save of
        // its live state, which then finds the view gone and writes nothing.
        if !fresh && frames.is_none() {
            return false;
        }
        queued.insert(hash.clone());
        let job = match frames {
            Some(f) => Job::Keep(hash, f),
            None => Job::Save(hash),
        };
        self.shared.jobs.send(job).is_ok()
    }

    /// A frame of `view` found the publish queue full and is not
    /// published. That is safe, only slower: a follower missing it sees a
    /// gap and reloads from this node, and a node taking the view over
    /// finds no chain of frames after the checkpoint and goes on from the
    /// checkpoint in a new term. Warned about at most once a minute.
    pub(super) fn left_unpublished(&self, view: &View, hash: String) {
        crate::ops::metrics::hooks().frames_unpublished.inc();
        self.shared
            .unpublished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash);
        let mut last = self
            .shared
            .last_drop
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(60)) {
            *last = Some(now);
            tracing::warn!(
                view = %view.id,
                limit = self.shared.bus.config.publish_queue,
                "the frames stream is not keeping up (cluster.publish_queue frames waiting): frames go unpublished and followers reload"
            );
        }
    }

    /// Queues the newest frame of each owned view left unpublished, as far
    /// as the queue has room; the rest wait for the next call.
    pub(super) fn republish(&self) {
        let hashes: Vec<String> = {
            let mut set = self
                .shared
                .unpublished
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if set.is_empty() {
                return;
            }
            set.drain().collect()
        };
        let mut left = Vec::new();
        for hash in hashes {
            let view = self.owned().get(&hash).and_then(|o| o.view.upgrade());
            let Some(frame) = view.and_then(|v| v.newest_frame()) else {
                continue;
            };
            match self.shared.publishing.clone().try_acquire_owned() {
                Ok(place) => {
                    let _ = self.shared.frames.send(Publish { hash, frame, place });
                }
                Err(_) => left.push(hash),
            }
        }
        self.shared
            .unpublished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(left);
    }

    /// Hands a view's lease back. A renewal in flight when the view closed
    /// may have moved the lease past `revision`: while the lease still names
    /// this node and no new life of the view here owns it, it goes anyway.
    pub(super) async fn release(&self, hash: &str, revision: u64) {
        let leases = &self.shared.bus.leases;
        let key = lease_key(hash);
        let mut revision = revision;
        for _ in 0..3 {
            if leases
                .delete_expect_revision(&key, Some(revision))
                .await
                .is_ok()
            {
                return;
            }
            let Ok(Some(en)) = leases.entry(&key).await else {
                return;
            };
            let me = self.shared.bus.config.node_id.as_bytes();
            if en.value.as_ref() != me
                || en.operation != async_nats::jetstream::kv::Operation::Put
                || self.owned().contains_key(hash)
            {
                return;
            }
            revision = en.revision;
        }
    }

    /// An owned view's state to keep or send: its snapshot, then its kept
    /// diffs; `None` while it has none here.
    pub(super) fn state_of(&self, hash: &str) -> Option<Vec<Arc<Frame>>> {
        let view = self.owned().get(hash).and_then(|o| o.view.upgrade())?;
        let (snapshot, history) = view.snapshot_with_history()?;
        let mut frames = vec![snapshot];
        frames.extend(history);
        Some(frames)
    }

    pub(super) fn following(&self) -> std::sync::MutexGuard<'_, HashMap<String, Following>> {
        self.shared
            .following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}
