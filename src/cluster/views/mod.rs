//! One owner per view (`cluster.view_owners`): the node that takes a view's
//! lease (`view-<hash>` in the lease bucket) evaluates it and publishes each
//! frame, encoded as sessions get it, to `<frames_subject>.<hash>` in the
//! frames stream. Any other node with subscribers of the view follows it:
//! it subscribes to that subject, asks the owner for its snapshot and kept
//! diffs (`<snapshot_subject>.<owner>.<hash>`), and from then on applies the
//! owner's frames to its copy and fans them out, so its clients see the
//! owner's epoch and versions and can Sync on any node. A follower that
//! finds the lease gone (the owner died or let go) takes it, reads the
//! frames it missed from the stream, and goes on in the same epoch; a node
//! that takes a view nobody holds goes on from its checkpoint (`kept.rs`).

mod follow;
mod forward;
mod leases;
mod publish;
mod state;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::stream;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cluster::bus::Bus;
use crate::cluster::kept::Kept;
use crate::cluster::terms::Terms;
use crate::engine::{Change, Claim, EngineError, Frame, Owners, View, WeakEngine};

use leases::*;
use publish::*;
use state::*;
pub use state::{view_hash, ViewOwners};

impl ViewOwners {
    /// Creates the frames stream when missing and starts the tasks that
    /// publish frames, answer snapshot requests and renew leases, until
    /// `stopped`; then hands every view lease back.
    pub async fn start(
        bus: Bus,
        engine: WeakEngine,
        history_len: usize,
        stopped: watch::Receiver<bool>,
    ) -> Result<(ViewOwners, Vec<JoinHandle<()>>), String> {
        let c = &bus.config;
        crate::cluster::bus::ensure_stream(
            &bus.js,
            stream::Config {
                name: c.frames_stream.clone(),
                subjects: vec![format!("{}.>", c.frames_subject)],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                max_messages_per_subject: history_len.max(1) as i64,
                max_age: Duration::from_secs(c.frames_max_age_s.max(1)),
                duplicate_window: Duration::from_millis(c.duplicate_window_ms),
                // A node taking a view over reads its frames back by subject.
                allow_direct: true,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("creating the JetStream stream {}: {e}", c.frames_stream))?;
        let requests = bus
            .client
            .subscribe(format!("{}.{}.*", c.snapshot_subject, c.node_id))
            .await
            .map_err(|e| format!("subscribing to snapshot requests: {e}"))?;
        let kept = Kept::open(&bus, history_len).await?;
        let terms = Terms::open(&bus).await?;
        // Unbounded in type only: a frame is sent only with one of
        // `publishing`'s permits (`cluster.publish_queue`).
        let (tx, rx) = mpsc::unbounded_channel();
        let publishing = Arc::new(tokio::sync::Semaphore::new(c.publish_queue.max(1)));
        // Bounded by what is sent on it: checkpoints pass `keep`'s
        // `cluster.checkpoint_queue` check (two per view at most), and each
        // owned view releases its lease once.
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let owners = ViewOwners {
            shared: Arc::new(Shared {
                bus: bus.clone(),
                engine,
                owned: Mutex::default(),
                following: Mutex::default(),
                frames: tx,
                publishing,
                last_drop: Mutex::default(),
                unpublished: Mutex::default(),
                kept,
                terms,
                jobs,
                unkept: Mutex::default(),
                queued: Mutex::default(),
                history_len: history_len.max(1),
            }),
        };
        let tasks = vec![
            tokio::spawn(watch_releases(owners.clone(), stopped.clone())),
            tokio::spawn(publish(owners.clone(), rx, stopped.clone())),
            tokio::spawn(answer(owners.clone(), requests, stopped.clone())),
            tokio::spawn(keeper(owners.clone(), jobs_rx, stopped.clone())),
            tokio::spawn(renew(owners.clone(), stopped)),
        ];
        Ok((owners, tasks))
    }
}

impl Owners<View> for ViewOwners {
    fn claim(&self, view: Arc<View>) -> BoxFuture<'static, Result<Claim, EngineError>> {
        let me = self.clone();
        Box::pin(async move { me.claim_view(view).await })
    }

    fn published(&self, view: &View, frame: &Arc<Frame>) {
        let hash = view_hash(view);
        {
            // Checkpointed before the stream lets go of the frames after the
            // last checkpoint, so a node taking over can always rebuild it.
            let mut unkept = self.shared.unkept.lock().unwrap_or_else(|e| e.into_inner());
            let n = unkept.entry(hash.clone()).or_default();
            *n += 1;
            if *n * 2 >= self.shared.history_len {
                *n = 0;
                self.keep(hash.clone(), None);
            }
        }
        match self.shared.publishing.clone().try_acquire_owned() {
            Ok(place) => {
                let _ = self.shared.frames.send(Publish {
                    hash,
                    frame: frame.clone(),
                    place,
                });
            }
            Err(_) => self.left_unpublished(view, view_hash(view)),
        }
    }

    fn retired(&self, view: &View, snapshot: Arc<Frame>, mut history: Vec<Arc<Frame>>) {
        history.insert(0, snapshot);
        self.keep(view_hash(view), Some(history));
    }

    fn written(&self, changes: Vec<Change>, followed: Vec<Arc<View>>) -> BoxFuture<'static, ()> {
        let me = self.clone();
        Box::pin(async move { me.forward(changes, followed).await })
    }

    fn closed(&self, view: &Arc<View>) {
        let hash = view_hash(view);
        let me = Arc::downgrade(view);
        let owned = {
            let mut owned = self.owned();
            match owned.get(&hash) {
                Some(o) if Weak::ptr_eq(&o.view, &me) => owned.remove(&hash),
                _ => None,
            }
        };
        if let Some(o) = owned {
            // Handed back once its checkpoint is written, without waiting
            // for it to expire: a follower with subscribers takes over, or
            // whoever opens the view next goes on from the checkpoint.
            self.shared
                .unkept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hash);
            let _ = self.shared.jobs.send(Job::Release(hash, o.revision));
            return;
        }
        let mut following = self.following();
        if following
            .get(&hash)
            .is_some_and(|f| Weak::ptr_eq(&f.view, &me))
        {
            if let Some(f) = following.remove(&hash) {
                f.task.abort();
            }
        }
    }
}
