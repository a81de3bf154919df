//! One owner per view (`cluster.view_owners`): the node that takes a view's
//! lease (`view-<hash>` in the lease bucket) evaluates it and publishes each
//! frame, encoded as sessions get it, to `<frames_subject>.<hash>` in the
//! frames stream. Any other node with subscribers of the view follows it:
//! it subscribes to that subject, asks the owner for its snapshot and kept
//! diffs (`<snapshot_subject>.<owner>.<hash>`), and from then on applies the
//! owner's frames to its copy and fans them out, so its clients see the
//! owner's epoch and versions and can Sync on any node. A follower that
//! finds the lease gone (the owner died or let go) takes it, and the view
//! goes on in a new epoch on that node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::bus::Bus;
use crate::engine::{Change, Claim, EngineError, Followed, Frame, Owners, View, WeakEngine};
use crate::grpc::convert::{encoded_frame, frame_from_encoded};

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
}

/// A view this node follows.
struct Following {
    view: Weak<View>,
    task: JoinHandle<()>,
}

struct Shared {
    bus: Bus,
    engine: WeakEngine,
    owned: Mutex<HashMap<String, Owned>>,
    following: Mutex<HashMap<String, Following>>,
    frames: mpsc::UnboundedSender<(String, Arc<Frame>)>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        let owners = ViewOwners {
            shared: Arc::new(Shared {
                bus: bus.clone(),
                engine,
                owned: Mutex::default(),
                following: Mutex::default(),
                frames: tx,
            }),
        };
        let tasks = vec![
            tokio::spawn(publish(bus.clone(), rx, stopped.clone())),
            tokio::spawn(answer(owners.clone(), requests, stopped.clone())),
            tokio::spawn(renew(owners.clone(), stopped)),
        ];
        Ok((owners, tasks))
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        self.shared.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn following(&self) -> std::sync::MutexGuard<'_, HashMap<String, Following>> {
        self.shared
            .following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Tries to take the view's lease; its revision when taken. A lease this
    /// node already holds (left from an earlier life of the view) is taken
    /// over.
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
                    Some(en) if en.value.as_ref() == me.as_bytes() => Ok(Some(en.revision)),
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
                self.owned().insert(
                    hash,
                    Owned {
                        view: Arc::downgrade(&view),
                        revision,
                    },
                );
                return Ok(Claim::Own);
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
                    let task = tokio::spawn(follow(
                        self.clone(),
                        Arc::downgrade(&view),
                        hash.clone(),
                        frames,
                    ));
                    let old = self.following().insert(
                        hash,
                        Following {
                            view: Arc::downgrade(&view),
                            task,
                        },
                    );
                    if let Some(old) = old {
                        old.task.abort();
                    }
                    return Ok(Claim::Follow { snapshot, history });
                }
            }
            if Instant::now() >= deadline {
                return Err(unavailable("its owner node does not answer".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
        let mut frames = unpack(reply.payload)?.into_iter();
        let snapshot = frames.next()?;
        Some((snapshot, frames.collect()))
    }
}

impl Owners for ViewOwners {
    fn claim(&self, view: Arc<View>) -> BoxFuture<'static, Result<Claim, EngineError>> {
        let me = self.clone();
        Box::pin(async move { me.claim_view(view).await })
    }

    fn published(&self, view: &View, frame: &Arc<Frame>) {
        let _ = self.shared.frames.send((view_hash(view), frame.clone()));
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
            // Handed back at once, so a follower with subscribers takes
            // over without waiting for it to expire.
            let leases = self.shared.bus.leases.clone();
            tokio::spawn(async move {
                let _ = leases
                    .delete_expect_revision(lease_key(&hash), Some(o.revision))
                    .await;
            });
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

/// Frames as one message: each one's length (4 bytes) then its bytes.
fn pack(frames: &[Arc<Frame>]) -> Bytes {
    let mut out = BytesMut::new();
    for f in frames {
        let b = encoded_frame(f);
        out.put_u32(b.len() as u32);
        out.put_slice(&b);
    }
    out.freeze()
}

fn unpack(mut b: Bytes) -> Option<Vec<Arc<Frame>>> {
    let mut out = Vec::new();
    while b.remaining() >= 4 {
        let n = b.get_u32() as usize;
        if b.remaining() < n {
            return None;
        }
        out.push(Arc::new(frame_from_encoded(b.split_to(n)).ok()?));
    }
    Some(out)
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
        let view = owners.owned().get(&hash).and_then(|o| o.view.upgrade());
        let payload = match view.and_then(|v| v.snapshot_with_history()) {
            Some((snapshot, history)) => {
                let mut frames = vec![snapshot];
                frames.extend(history);
                pack(&frames)
            }
            None => Bytes::new(),
        };
        let _ = owners.shared.bus.client.publish(reply, payload).await;
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
        let held: Vec<(String, u64)> = owners
            .owned()
            .iter()
            .map(|(h, o)| (h.clone(), o.revision))
            .collect();
        for (hash, revision) in held {
            let r = bus
                .leases
                .update(lease_key(&hash), me.clone().into_bytes().into(), revision)
                .await;
            match r {
                Ok(r) => {
                    if let Some(o) = owners.owned().get_mut(&hash) {
                        o.revision = r;
                    }
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    // Expired while NATS was out of reach: another node may
                    // own the view now, so this copy follows it (or owns
                    // it again if nobody took it).
                    let view = owners.owned().remove(&hash).and_then(|o| o.view.upgrade());
                    if let Some(v) = view {
                        tracing::warn!(view = %v.id, "lost a view's lease; following its new owner");
                        tokio::spawn(demote(owners.clone(), v, hash));
                    }
                }
                Err(e) => tracing::debug!(view = %hash, error = %e, "renewing a view lease failed"),
            }
        }
    }
    let held: Vec<(String, u64)> = owners
        .owned()
        .drain()
        .map(|(h, o)| (h, o.revision))
        .collect();
    for (hash, revision) in held {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            bus.leases
                .delete_expect_revision(lease_key(&hash), Some(revision)),
        )
        .await;
    }
}

/// Turns a view whose lease this node lost back into a follower of its
/// new owner, or takes the lease again when nobody holds it.
async fn demote(owners: ViewOwners, view: Arc<View>, hash: String) {
    let bus = owners.shared.bus.clone();
    let c = &bus.config;
    let deadline = Instant::now() + Duration::from_millis(c.lease_ttl_ms + c.owner_wait_ms);
    while Instant::now() < deadline && !view.is_closed() {
        if let Ok(Some(revision)) = owners.take(&hash).await {
            owners.owned().insert(
                hash,
                Owned {
                    view: Arc::downgrade(&view),
                    revision,
                },
            );
            return;
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
                    let task = tokio::spawn(follow(
                        owners.clone(),
                        Arc::downgrade(&view),
                        hash.clone(),
                        frames,
                    ));
                    let f = Following {
                        view: Arc::downgrade(&view),
                        task,
                    };
                    if let Some(old) = owners.following().insert(hash, f) {
                        old.task.abort();
                    }
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
                match engine.follow(&v, frame) {
                    Followed::Applied | Followed::Stale => {}
                    Followed::Gap => resync(&owners, &engine, &v, &hash).await,
                    Followed::Closed => return,
                }
            }
            _ = tick.tick() => {
                let holder = bus.leases.get(lease_key(&hash)).await;
                if let Ok(None) = holder {
                    if let Ok(Some(revision)) = owners.take(&hash).await {
                        owners.owned().insert(hash.clone(), Owned { view: view.clone(), revision });
                        owners.following().remove(&hash);
                        if engine.promote(&v) {
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
