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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::bus::Bus;
use super::kept::{pack, unpack, Kept};
use super::terms::Terms;
use crate::engine::{
    term_of, term_start, Change, Claim, EngineError, Followed, Frame, Owners, View, WeakEngine,
};
use crate::wire::convert::{encoded_frame, frame_from_encoded};

/// The header of a snapshot reply too big for one NATS message: the owner
/// wrote it as the view's checkpoint instead, to be read from there.
const IN_CHECKPOINT: &str = "Arcana-Checkpoint";

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

fn lease_key(hash: &str) -> String {
    format!("view-{hash}")
}

/// A view this node owns.
struct Owned {
    view: Weak<View>,
    revision: u64,
    /// A checkpoint of it was asked for since this node took it.
    kept: bool,
}

impl Owned {
    fn new(view: Weak<View>, revision: u64) -> Owned {
        Owned {
            view,
            revision,
            kept: false,
        }
    }
}

/// Work for the keeper task, done in order.
enum Job {
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
struct Following {
    view: Weak<View>,
    task: JoinHandle<()>,
    /// Woken when the view's lease is handed back, so the follower takes
    /// over at once rather than at its next check.
    released: Arc<tokio::sync::Notify>,
}

struct Shared {
    bus: Bus,
    engine: WeakEngine,
    owned: Mutex<HashMap<String, Owned>>,
    following: Mutex<HashMap<String, Following>>,
    frames: mpsc::UnboundedSender<(String, Arc<Frame>)>,
    kept: Kept,
    terms: Terms,
    jobs: mpsc::UnboundedSender<Job>,
    /// Frames each owned view made since its last checkpoint.
    unkept: Mutex<HashMap<String, usize>>,
    /// Views with a checkpoint queued: one at a time each, and at most
    /// `checkpoint_queue` in all (a slow NATS must not pile up snapshots).
    queued: Mutex<std::collections::HashSet<String>>,
    history_len: usize,
}

/// This node's side of view ownership; the engine's [`Owners`].
#[derive(Clone)]
pub struct ViewOwners {
    shared: Arc<Shared>,
}

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
        super::bus::ensure_stream(
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
        let (tx, rx) = mpsc::unbounded_channel();
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let owners = ViewOwners {
            shared: Arc::new(Shared {
                bus: bus.clone(),
                engine,
                owned: Mutex::default(),
                following: Mutex::default(),
                frames: tx,
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
            tokio::spawn(publish(bus.clone(), rx, stopped.clone())),
            tokio::spawn(answer(owners.clone(), requests, stopped.clone())),
            tokio::spawn(keeper(owners.clone(), jobs_rx, stopped.clone())),
            tokio::spawn(renew(owners.clone(), stopped)),
        ];
        Ok((owners, tasks))
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        self.shared.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a checkpoint of `hash` (`frames` when the view is closing,
    /// else its state when written), unless one is queued already or the
    /// queue is full; false then. A view without a checkpoint only starts
    /// a new epoch where it could have gone on.
    fn keep(&self, hash: String, frames: Option<Vec<Arc<Frame>>>) -> bool {
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

    /// Hands a view's lease back. A renewal in flight when the view closed
    /// may have moved the lease past `revision`: while the lease still names
    /// this node and no new life of the view here owns it, it goes anyway.
    async fn release(&self, hash: &str, revision: u64) {
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

    /// Starts the task keeping the follower `view` current from `frames`.
    fn start_following(&self, view: &Arc<View>, hash: String, frames: async_nats::Subscriber) {
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

    /// An owned view's state to keep or send: its snapshot, then its kept
    /// diffs; `None` while it has none here.
    fn state_of(&self, hash: &str) -> Option<Vec<Arc<Frame>>> {
        let view = self.owned().get(hash).and_then(|o| o.view.upgrade())?;
        let (snapshot, history) = view.snapshot_with_history()?;
        let mut frames = vec![snapshot];
        frames.extend(history);
        Some(frames)
    }

    fn following(&self) -> std::sync::MutexGuard<'_, HashMap<String, Following>> {
        self.shared
            .following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Tries to take the view's lease; its revision when taken. A lease this
    /// node already holds (left from an earlier life of the view) is taken
    /// over with a new revision, so that life's pending release fails.
    async fn take(&self, hash: &str) -> Result<Option<u64>, String> {
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

    async fn claim_view(&self, view: Arc<View>) -> Result<Claim, EngineError> {
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
    async fn resume_in_new_term(&self, view: &View, hash: &str, resume: Claim) -> Claim {
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

    /// Asks `owner` for the view's snapshot and kept diffs.
    async fn ask(&self, owner: &str, hash: &str) -> Option<(Arc<Frame>, Vec<Arc<Frame>>)> {
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
        let _ = self.shared.frames.send((hash, frame.clone()));
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

/// View leases renewed concurrently.
const RENEWALS_AT_ONCE: usize = 64;

/// The last token of a request subject naming a write rather than a view.
const WRITE: &str = "write";

impl ViewOwners {
    /// Sends a mutation's changes to the owners of the `followed` views and
    /// waits (at most `owner_wait_ms`) until each copy reaches the version
    /// its owner reports once it applied them.
    async fn forward(&self, changes: Vec<Change>, followed: Vec<Arc<View>>) {
        let bus = &self.shared.bus;
        let mut by_owner: HashMap<String, Vec<(String, Arc<View>)>> = HashMap::new();
        for v in followed {
            let hash = view_hash(&v);
            let holder = bus.leases.get(lease_key(&hash)).await.ok().flatten();
            if let Some(owner) = holder.map(|b| String::from_utf8_lossy(&b).into_owned()) {
                by_owner.entry(owner).or_default().push((hash, v));
            }
        }
        let batch = Bytes::from(super::wire::encode(&crate::engine::ChangeBatch::new(
            changes, None,
        )));
        let wait = Duration::from_millis(bus.config.owner_wait_ms);
        let deadline = Instant::now() + wait;
        for (owner, views) in by_owner {
            let subject = format!("{}.{owner}.{WRITE}", bus.config.snapshot_subject);
            let reply =
                tokio::time::timeout(wait, bus.client.request(subject, batch.clone())).await;
            let Ok(Ok(reply)) = reply else { continue };
            let versions: HashMap<String, (u64, u64)> = String::from_utf8_lossy(&reply.payload)
                .lines()
                .filter_map(|l| {
                    let mut p = l.split(' ');
                    Some((
                        p.next()?.to_owned(),
                        (p.next()?.parse().ok()?, p.next()?.parse().ok()?),
                    ))
                })
                .collect();
            for (hash, v) in views {
                let Some(&(epoch, version)) = versions.get(&hash) else {
                    continue;
                };
                while v.epoch() == epoch
                    && v.version() < version
                    && v.is_follower()
                    && !v.is_closed()
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }
}

/// Applies a write another node forwarded, then answers with the epoch and
/// version of each view this node owns (`<hash> <epoch> <version>` lines).
async fn apply_write(owners: ViewOwners, payload: Bytes) -> Bytes {
    let Some(engine) = owners.shared.engine.upgrade() else {
        return Bytes::new();
    };
    if let Ok(batch) = super::wire::decode(&payload) {
        if let Err(e) = engine.notify(batch.changes).await {
            tracing::debug!(error = %e, "a forwarded write was not applied");
        }
    }
    let owned: Vec<(String, Arc<View>)> = owners
        .owned()
        .iter()
        .filter_map(|(h, o)| Some((h.clone(), o.view.upgrade()?)))
        .collect();
    let mut out = String::new();
    for (h, v) in owned {
        out.push_str(&format!("{h} {} {}\n", v.epoch(), v.version()));
    }
    out.into()
}

/// Publishes owned views' frames to the frames stream, in the order made,
/// until `stopped` (the engine, which holds the sender, outlives the node).
async fn publish(
    bus: Bus,
    mut rx: mpsc::UnboundedReceiver<(String, Arc<Frame>)>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let (hash, frame) = tokio::select! {
            biased;
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = stopped.wait_for(|s| *s) => return,
        };
        if loses_term_starts()
            && frame.version > 0
            && frame.version == term_start(term_of(frame.version))
        {
            tracing::warn!(
                version = frame.version,
                "fault injection: a term's first frame is not published"
            );
            continue;
        }
        let mut headers = HeaderMap::new();
        if matches!(frame.body, crate::engine::FrameBody::Diff(_)) {
            // A frame published twice (a retry) is stored once.
            headers.insert(
                NATS_MESSAGE_ID,
                format!("{}-{}", frame.epoch, frame.version).as_str(),
            );
        }
        headers.insert("Arcana-Epoch", frame.epoch.to_string().as_str());
        headers.insert("Arcana-Version", frame.version.to_string().as_str());
        let subject = format!("{}.{hash}", bus.config.frames_subject);
        match bus
            .js
            .publish_with_headers(subject, headers, encoded_frame(&frame))
            .await
        {
            Ok(ack) => {
                tokio::spawn(async move {
                    if let Err(e) = ack.await {
                        tracing::debug!(error = %e, "the frames stream did not store a frame");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "publishing a view frame failed"),
        }
    }
}

/// Fault injection for tests (`ARCANA_FAULT_LOSE_TERM_STARTS=1`): the first
/// frame of each term reaches this node's sessions but not the frames
/// stream, as when NATS goes away at that very moment.
fn loses_term_starts() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ARCANA_FAULT_LOSE_TERM_STARTS").is_ok_and(|v| v == "1"))
}

/// Answers other nodes' requests for the snapshot of a view this node owns;
/// an empty reply means "not here (yet)", and the asker retries.
async fn answer(
    owners: ViewOwners,
    mut requests: async_nats::Subscriber,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let m = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return },
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Some(reply) = m.reply else { continue };
        let hash = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
        if hash == WRITE {
            let (o, client) = (owners.clone(), owners.shared.bus.client.clone());
            tokio::spawn(async move {
                let answer = apply_write(o, m.payload).await;
                let _ = client.publish(reply, answer).await;
            });
            continue;
        }
        let Some(frames) = owners.state_of(&hash) else {
            let _ = owners.shared.bus.client.publish(reply, Bytes::new()).await;
            continue;
        };
        let payload = pack(&frames);
        let client = owners.shared.bus.client.clone();
        // Room for the headers NATS adds.
        let limit = client.server_info().max_payload.saturating_sub(4096);
        if payload.len() <= limit {
            let _ = client.publish(reply, payload).await;
            continue;
        }
        // Too big for one message: written as the view's checkpoint (object
        // store chunks), which the asker reads.
        let kept = owners.shared.kept.clone();
        tokio::spawn(async move {
            match kept.save(&hash, &frames).await {
                Ok(()) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(IN_CHECKPOINT, "1");
                    let _ = client
                        .publish_with_headers(reply, headers, Bytes::new())
                        .await;
                }
                Err(e) => {
                    tracing::warn!(view = %hash, error = %e, "writing a view's checkpoint failed")
                }
            }
        });
    }
}

/// Checkpoint writes and lease hand-backs at once, at most.
const KEEPERS_AT_ONCE: usize = 32;

/// Does the checkpoint and lease jobs: those of one view in order, those of
/// different views side by side. Once the node stops, it finishes what is
/// queued (until [`Job::Done`], at most 10 s) so the next owner finds every
/// closed view's last state.
async fn keeper(
    owners: ViewOwners,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(KEEPERS_AT_ONCE));
    let mut last: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let job = match deadline {
            None => tokio::select! {
                j = jobs.recv() => j,
                _ = stopped.wait_for(|s| *s) => {
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    continue;
                }
            },
            Some(d) => tokio::time::timeout_at(d, jobs.recv()).await.ok().flatten(),
        };
        let hash = match &job {
            Some(Job::Save(h) | Job::Keep(h, _) | Job::Release(h, _)) => h.clone(),
            Some(Job::Done) | None => break,
        };
        let Some(job) = job else { break };
        if last.len() >= KEEPERS_AT_ONCE * 4 {
            last.retain(|_, t| !t.is_finished());
        }
        let before = last.remove(&hash);
        let (o, slots) = (owners.clone(), slots.clone());
        let task = tokio::spawn(async move {
            if let Some(b) = before {
                let _ = b.await;
            }
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            o.run(job).await;
        });
        last.insert(hash, task);
    }
    let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(10));
    for (_, t) in last {
        let _ = tokio::time::timeout_at(until, t).await;
    }
}

impl ViewOwners {
    /// Does one keeper job.
    async fn run(&self, job: Job) {
        let shared = &self.shared;
        let unqueue = |hash: &str| {
            shared
                .queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(hash);
        };
        match job {
            Job::Save(hash) => {
                unqueue(&hash);
                if let Some(frames) = self.state_of(&hash) {
                    if let Err(e) = shared.kept.save(&hash, &frames).await {
                        tracing::debug!(view = %hash, error = %e, "writing a view's checkpoint failed");
                    }
                }
            }
            Job::Keep(hash, frames) => {
                unqueue(&hash);
                if let Err(e) = shared.kept.save(&hash, &frames).await {
                    tracing::warn!(view = %hash, error = %e, "writing a closed view's checkpoint failed");
                }
            }
            Job::Release(hash, revision) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.release(&hash, revision))
                    .await;
            }
            Job::Done => {}
        }
    }
}

/// Renews the leases of owned views every third of the TTL; on stopping,
/// hands them all back.
async fn renew(owners: ViewOwners, mut stopped: watch::Receiver<bool>) {
    let bus = owners.shared.bus.clone();
    let every = super::Lease::interval(&bus);
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
async fn demote(owners: ViewOwners, view: Arc<View>, hash: String) {
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

/// Keeps a follower current: applies the owner's frames, reloads after a
/// gap (or a new owner's epoch), and takes the view over when its lease is
/// gone.
async fn follow(
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
    let every = super::Lease::interval(&bus);
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

/// Wakes the follower of a view whose lease was handed back (a delete in
/// the lease bucket; an expiry is noticed by the followers' own checks).
async fn watch_releases(owners: ViewOwners, mut stopped: watch::Receiver<bool>) {
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

/// Applies the view's frames the stream holds after the follower's version.
async fn fill(owners: &ViewOwners, engine: &crate::engine::Engine, v: &Arc<View>, hash: &str) {
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
async fn resync(owners: &ViewOwners, engine: &crate::engine::Engine, v: &Arc<View>, hash: &str) {
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
