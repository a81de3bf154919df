//! Client sessions: each holds several views over one `Connect` stream,
//! applies their frames with `ViewState`, counts gaps, and when its stream
//! breaks reconnects with backoff and resumes its views with `Sync`. With
//! several nodes, every reconnect goes to another node than the last.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arcana::client::ViewState;
use arcana::proto::{
    self as pb, client_message::Kind as Req, server_message::Kind as Msg, view_frame::Body,
    SyncMode,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::model::{ViewSpec, Who, Win};
use super::rng::Rng;
use super::server::connect;
use super::stats::Stats;

/// One view as a client holds it.
#[derive(Debug, Clone)]
pub struct Held {
    pub spec: ViewSpec,
    pub view_id: Option<String>,
    pub state: ViewState,
    /// Had a subscribe or sync answered, so it resumes with `Sync`.
    pub known: bool,
    /// A request for it failed; ask again.
    retry: bool,
    /// A subscribe or sync is in flight, so a snapshot is expected.
    awaiting: bool,
    /// A sync announced this (epoch, version) but it had not arrived by the
    /// reply; must arrive before quiescence ends.
    pub owed: Option<(u64, u64)>,
    /// A sync reply came before the frames it announced: allowed only when
    /// the session overflowed meanwhile, so a resync snapshot must follow
    /// (and the announced diffs must not).
    pub late: bool,
}

/// What the coordinator reads.
pub struct Shared {
    pub who: Who,
    pub label: String,
    /// The node of the current (or last) session, counted from 0.
    pub node: usize,
    pub views: Vec<Held>,
}

/// What the coordinator tells a client to do.
pub enum Cmd {
    /// Drop the connection, stay away this long, then reconnect and `Sync`.
    Drop(Duration),
    /// Stop reading for a while.
    Pause(Duration),
    /// Move the windowed view at this index to another window (skipped
    /// when the view is not windowed, not subscribed yet, or the client
    /// holds that window already).
    Reanchor(usize, Win),
}

/// A running client: its state, its command channel and its task (ended
/// when the handle is dropped).
pub struct ClientHandle {
    pub shared: Arc<Mutex<Shared>>,
    pub cmds: mpsc::Sender<Cmd>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum End {
    /// The stream broke or a gap calls for a resync: reconnect.
    Reconnect,
    /// Told to go away for a while, then reconnect.
    Away(Duration),
    /// The coordinator is done with this client.
    Quit,
}

/// gRPC's INTERNAL code.
const INTERNAL: i32 = 13;

enum Pending {
    Subscribe(usize),
    /// The views synced, and whether this is the first sync after moving
    /// to another node.
    Sync(Vec<(usize, u64, u64)>, bool),
    Reanchor(usize, Win),
}

/// Starts a client holding `specs` as `who`, first on node `first` of
/// `addrs`; `rng` picks the nodes it moves to.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    addrs: Vec<String>,
    first: usize,
    rng: Rng,
    who: Who,
    label: String,
    specs: Vec<ViewSpec>,
    stats: Arc<Stats>,
) -> ClientHandle {
    let shared = Arc::new(Mutex::new(Shared {
        who,
        label,
        node: first % addrs.len(),
        views: specs
            .into_iter()
            .map(|spec| Held {
                spec,
                view_id: None,
                state: ViewState::default(),
                known: false,
                retry: false,
                awaiting: false,
                owed: None,
                late: false,
            })
            .collect(),
    }));
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(run(addrs, first, rng, shared.clone(), rx, stats));
    ClientHandle {
        shared,
        cmds: tx,
        task,
    }
}

/// A node other than `last_session` (where the previous session was) and
/// `last_try` (the last connect attempt); any other one when there are too
/// few nodes for both.
fn next_node(n: usize, last_session: usize, last_try: usize, rng: &mut Rng) -> usize {
    let others: Vec<usize> = (0..n)
        .filter(|&i| i != last_session && i != last_try)
        .collect();
    if !others.is_empty() {
        return *rng.pick(&others);
    }
    let others: Vec<usize> = (0..n).filter(|&i| i != last_try).collect();
    if others.is_empty() {
        last_try
    } else {
        *rng.pick(&others)
    }
}

async fn run(
    addrs: Vec<String>,
    first_node: usize,
    mut rng: Rng,
    shared: Arc<Mutex<Shared>>,
    mut cmds: mpsc::Receiver<Cmd>,
    stats: Arc<Stats>,
) {
    let who = shared.lock().unwrap().who;
    let mut backoff = Duration::from_millis(50);
    let mut first = true;
    let mut node = first_node % addrs.len();
    let mut session_node = node;
    let mut attempted = false;
    loop {
        if attempted {
            node = next_node(addrs.len(), session_node, node, &mut rng);
        }
        attempted = true;
        let opened = tokio::select! {
            o = open(&addrs[node], who.token) => o,
            c = cmds.recv() => match c {
                None => return,
                Some(_) => continue,
            },
        };
        let (tx, stream) = match opened {
            Ok(s) => s,
            Err(_) => {
                Stats::inc(&stats.connect_failures);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let moved = !first && node != session_node;
        if !first {
            Stats::inc(&stats.reconnects);
        }
        if moved {
            Stats::inc(&stats.node_switches);
        }
        first = false;
        session_node = node;
        shared.lock().unwrap().node = node;
        let mut s = Session {
            moved,
            tx,
            next_id: 0,
            pending: HashMap::new(),
            unknown: HashMap::new(),
            shared: shared.clone(),
            stats: stats.clone(),
        };
        match s.run(stream, &mut cmds).await {
            End::Reconnect => continue,
            End::Away(d) => tokio::time::sleep(d).await,
            End::Quit => return,
        }
    }
}

/// An open `Connect` stream: the request sender and the message stream.
pub type Opened = (
    mpsc::Sender<pb::ClientMessage>,
    Streaming<pb::ServerMessage>,
);

/// Opens a `Connect` session and reads its `opened` message.
pub async fn open(addr: &str, token: &'static str) -> Result<Opened, String> {
    let mut client = connect(addr, token).await?;
    let (tx, rx) = mpsc::channel(64);
    let mut stream = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Ok(Some(pb::ServerMessage {
            kind: Some(Msg::Opened(_)),
        }))) => Ok((tx, stream)),
        other => Err(format!("no `opened`: {other:?}")),
    }
}

struct Session {
    /// Opened on another node than the previous session.
    moved: bool,
    tx: mpsc::Sender<pb::ClientMessage>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Frames of views whose id the session has not learned yet.
    unknown: HashMap<String, Vec<pb::ViewFrame>>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<Stats>,
}

impl Session {
    async fn run(
        &mut self,
        mut stream: Streaming<pb::ServerMessage>,
        cmds: &mut mpsc::Receiver<Cmd>,
    ) -> End {
        if self.resume().await.is_err() {
            return End::Reconnect;
        }
        let mut retry = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                m = stream.message() => {
                    let m = match m {
                        Ok(Some(m)) => m,
                        Err(status) => {
                            if status.code() == tonic::Code::Internal {
                                Stats::inc(&self.stats.internal_errors);
                                println!("INTERNAL {}: the stream ended with {status}", self.shared.lock().unwrap().label);
                            }
                            return End::Reconnect;
                        }
                        Ok(None) => return End::Reconnect,
                    };
                    if self.handle(m).is_err() {
                        return End::Reconnect;
                    }
                }
                c = cmds.recv() => match c {
                    None => return End::Quit,
                    Some(Cmd::Drop(d)) => return End::Away(d),
                    Some(Cmd::Pause(d)) => tokio::time::sleep(d).await,
                    Some(Cmd::Reanchor(i, w)) => {
                        if self.reanchor(i, w).await.is_err() {
                            return End::Reconnect;
                        }
                    }
                },
                _ = retry.tick() => {
                    if self.resume().await.is_err() {
                        return End::Reconnect;
                    }
                }
            }
        }
    }

    async fn send(&mut self, kind: Req, p: Pending) -> Result<(), ()> {
        self.next_id += 1;
        self.pending.insert(self.next_id, p);
        self.tx
            .send(pb::ClientMessage {
                request_id: self.next_id,
                kind: Some(kind),
            })
            .await
            .map_err(|_| ())
    }

    /// Sends a `Reanchor` for view `i` if it can move to `w`.
    async fn reanchor(&mut self, i: usize, w: Win) -> Result<(), ()> {
        let req = {
            let g = self.shared.lock().unwrap();
            let Some(h) = g.views.get(i) else {
                return Ok(());
            };
            let target = ViewSpec {
                window: Some(w.clone()),
                ..h.spec.clone()
            };
            let movable = h.spec.window.is_some()
                && h.known
                && !h.awaiting
                && !g.views.iter().any(|o| o.spec == target);
            match (&h.view_id, movable) {
                (Some(id), true) => Req::Reanchor(pb::ReanchorRequest {
                    view_id: id.clone(),
                    window: Some(w.pb()),
                    session_id: String::new(),
                }),
                _ => return Ok(()),
            }
        };
        Stats::inc(&self.stats.reanchors);
        self.send(req, Pending::Reanchor(i, w)).await
    }

    /// Asks for every view not yet asked for on this session (or whose
    /// request failed): `Subscribe` for new ones, one `Sync` for the rest.
    async fn resume(&mut self) -> Result<(), ()> {
        let after_move = self.moved && self.next_id == 0;
        let mut subs = Vec::new();
        let mut syncs = Vec::new();
        {
            let mut g = self.shared.lock().unwrap();
            let fresh_session = self.next_id == 0;
            for (i, h) in g.views.iter_mut().enumerate() {
                if fresh_session {
                    // Requests of a broken session are answered never.
                    h.awaiting = false;
                } else if !h.retry || h.awaiting {
                    continue;
                }
                h.retry = false;
                h.awaiting = true;
                if h.known {
                    syncs.push((i, h.spec.clone(), h.state.epoch, h.state.version));
                } else {
                    subs.push((i, h.spec.clone()));
                }
            }
        }
        for (i, spec) in subs {
            Stats::inc(&self.stats.subscribes);
            let req = Req::Subscribe(pb::SubscribeRequest {
                graph: spec.graph.into(),
                params: spec.pb_params(),
                session_id: String::new(),
                window: spec.pb_window(),
            });
            self.send(req, Pending::Subscribe(i)).await?;
        }
        if !syncs.is_empty() {
            let views = syncs
                .iter()
                .map(|(_, spec, epoch, version)| pb::SyncView {
                    graph: spec.graph.into(),
                    params: spec.pb_params(),
                    epoch: *epoch,
                    version: *version,
                    window: spec.pb_window(),
                })
                .collect();
            let sent = syncs.iter().map(|(i, _, e, v)| (*i, *e, *v)).collect();
            let req = Req::Sync(pb::SyncRequest {
                views,
                session_id: String::new(),
            });
            self.send(req, Pending::Sync(sent, after_move)).await?;
        }
        Ok(())
    }

    /// Handles one server message; `Err` asks for a reconnect and resync.
    fn handle(&mut self, m: pb::ServerMessage) -> Result<(), ()> {
        match m.kind {
            Some(Msg::Frame(f)) => self.frame(f),
            Some(Msg::Frames(b)) => {
                for f in b.frames {
                    self.frame(f)?;
                }
                Ok(())
            }
            Some(Msg::Reply(r)) => {
                self.reply(r);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn frame(&mut self, f: pb::ViewFrame) -> Result<(), ()> {
        let mut g = self.shared.lock().unwrap();
        let label = g.label.clone();
        let Some(h) = g
            .views
            .iter_mut()
            .find(|h| h.view_id.as_deref() == Some(f.view_id.as_str()))
        else {
            self.unknown.entry(f.view_id.clone()).or_default().push(f);
            return Ok(());
        };
        apply(&label, h, &f, &self.stats)
    }

    fn reply(&mut self, r: pb::Reply) {
        let Some(p) = self.pending.remove(&r.request_id) else {
            return;
        };
        let stats = self.stats.clone();
        let mut g = self.shared.lock().unwrap();
        let label = g.label.clone();
        let mut learned = Vec::new();
        match (p, r.result) {
            (Pending::Reanchor(i, w), Some(pb::reply::Result::Reanchor(_))) => {
                // The diff may have come first; from now on the view is the
                // new window (a broken session before this reply resumes
                // the old one, and a snapshot sorts out what it held).
                g.views[i].spec.window = Some(w);
            }
            (Pending::Reanchor(..), _) => {
                Stats::inc(&stats.request_errors);
            }
            (Pending::Subscribe(i), Some(pb::reply::Result::Subscribe(s))) => {
                // Still awaiting: the snapshot follows the reply.
                let h = &mut g.views[i];
                h.known = true;
                h.view_id = Some(s.view_id.clone());
                learned.push((i, None));
            }
            (Pending::Sync(sent, after_move), Some(pb::reply::Result::Sync(resp))) => {
                for ((i, epoch, version), res) in sent.into_iter().zip(resp.results) {
                    let h = &mut g.views[i];
                    if res.error.is_some() || res.view_id.is_empty() {
                        Stats::inc(&stats.request_errors);
                        if let Some(e) = res.error.as_ref().filter(|e| e.code == INTERNAL) {
                            Stats::inc(&stats.internal_errors);
                            println!("INTERNAL {label} {}: sync answered {}", h.spec, e.message);
                        }
                        h.awaiting = false;
                        h.retry = true;
                        continue;
                    }
                    h.view_id = Some(res.view_id.clone());
                    let mode = SyncMode::try_from(res.mode).unwrap_or(SyncMode::Unspecified);
                    learned.push((i, Some(mode)));
                    if after_move {
                        Stats::inc(match mode {
                            SyncMode::CatchUp => &stats.moved_catch_up,
                            SyncMode::Current => &stats.moved_current,
                            _ => &stats.moved_snapshot,
                        });
                    }
                    let consistent = match mode {
                        SyncMode::Current => {
                            Stats::inc(&stats.sync_current);
                            res.epoch == epoch && res.version == version
                        }
                        SyncMode::CatchUp => {
                            Stats::inc(&stats.sync_catch_up);
                            stats
                                .max_catch_up
                                .fetch_max(res.frames.into(), std::sync::atomic::Ordering::Relaxed);
                            // Versions skip ahead when another node takes
                            // the view over, so frames and versions need not
                            // match in number; each frame's own chain is
                            // checked as it applies.
                            res.epoch == epoch
                                && res.version > version
                                && res.frames >= 1
                                && res.version - version >= u64::from(res.frames)
                        }
                        SyncMode::Snapshot => {
                            Stats::inc(&stats.sync_snapshot);
                            true
                        }
                        SyncMode::Unspecified => false,
                    };
                    if !consistent {
                        Stats::inc(&stats.bad_sync_replies);
                        Stats::inc(&stats.gaps);
                        println!(
                            "GAP {label} {}: sync of epoch {epoch} version {version} answered {mode:?} epoch {} version {} frames {}",
                            h.spec, res.epoch, res.version, res.frames
                        );
                    }
                    // Frames of this view queued before the reply are
                    // either already applied or still buffered as unknown.
                    h.owed = Some((res.epoch, res.version));
                }
            }
            (p, result) => {
                Stats::inc(&stats.request_errors);
                if let Some(pb::reply::Result::Error(e)) = result
                    .as_ref()
                    .filter(|r| matches!(r, pb::reply::Result::Error(e) if e.code == INTERNAL))
                {
                    Stats::inc(&stats.internal_errors);
                    println!("INTERNAL {label}: a request answered {}", e.message);
                }
                let idx: Vec<usize> = match p {
                    Pending::Subscribe(i) => vec![i],
                    Pending::Sync(s, _) => s.into_iter().map(|(i, _, _)| i).collect(),
                    Pending::Reanchor(..) => vec![],
                };
                for i in idx {
                    g.views[i].awaiting = false;
                    g.views[i].retry = true;
                }
            }
        }
        for (i, synced) in learned {
            let h = &mut g.views[i];
            let id = h.view_id.clone().unwrap();
            for f in self.unknown.remove(&id).unwrap_or_default() {
                if apply(&label, h, &f, &stats).is_err() {
                    break;
                }
            }
            if synced.is_some() {
                // What a sync owes is queued before its reply.
                h.awaiting = false;
            }
            if let Some((e, v)) = h.owed {
                if h.state.epoch == e && h.state.version >= v {
                    h.owed = None;
                } else if let Some(mode) = synced {
                    // Allowed only when the session overflowed meanwhile:
                    // a snapshot must then follow (checked as frames
                    // arrive and at quiescence).
                    Stats::inc(&stats.late_sync);
                    h.late = true;
                    println!(
                        "  note: {label} {}: sync answered {mode:?} to version {v} but the view was at {} (epoch {}) when the reply came",
                        h.spec, h.state.version, h.state.epoch
                    );
                }
            }
        }
    }
}

/// Applies one frame to a held view; a diff not on top of the held version
/// is a gap.
fn apply(label: &str, h: &mut Held, f: &pb::ViewFrame, stats: &Stats) -> Result<(), ()> {
    Stats::inc(&stats.frames);
    match &f.body {
        Some(Body::Snapshot(_)) => {
            if !h.awaiting {
                Stats::inc(&stats.cut_over);
            }
            if std::mem::take(&mut h.late) {
                Stats::inc(&stats.late_sync_resynced);
            }
            h.awaiting = false;
            h.owed = None;
        }
        // A re-anchor diff applies on a version of another epoch.
        Some(Body::Diff(_))
            if (if f.prev_epoch != 0 {
                f.prev_epoch
            } else {
                f.epoch
            }) != h.state.epoch
                || f.prev_version != h.state.version =>
        {
            Stats::inc(&stats.gaps);
            println!(
                "GAP {label} {}: diff {}->{} (epoch {}) on version {} (epoch {}){}",
                h.spec,
                f.prev_version,
                f.version,
                f.epoch,
                h.state.version,
                h.state.epoch,
                if h.owed.is_some() {
                    " after a sync whose catch-up had not arrived"
                } else {
                    ""
                }
            );
            h.owed = None;
            h.retry = true;
            return Err(());
        }
        Some(Body::Diff(_)) => {}
        Some(Body::Error(_)) => Stats::inc(&stats.error_frames),
        None => {}
    }
    if let Err(e) = h.state.apply(f) {
        Stats::inc(&stats.gaps);
        println!("GAP {label} {}: frame does not apply: {e}", h.spec);
        h.state = ViewState::default();
        return Err(());
    }
    if let Some((e, v)) = h.owed {
        if h.state.epoch == e && h.state.version >= v {
            h.owed = None;
            if std::mem::take(&mut h.late) {
                // The announced diffs came after the reply: the reply
                // claimed a state the client did not have yet.
                Stats::inc(&stats.gaps);
                println!(
                    "GAP {label} {}: the diffs a sync announced (to version {v}) arrived after its reply, with no resync",
                    h.spec
                );
            }
        }
    }
    Ok(())
}
