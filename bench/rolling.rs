//! The rolling restart: a cluster of nodes serving many sessions under a
//! steady write load is restarted one node at a time (SIGTERM, wait for the
//! exit, start again on the same port, wait until its health check answers
//! SERVING, wait until every dropped session is back), and the benchmark
//! measures what the clients go through.
//!
//! Policy: a session whose node goes away reconnects at once to another
//! node (the others in turn, starting at one picked by a hash of its index
//! and the node it left, so the dropped sessions spread evenly), and Syncs
//! the view it holds with its epoch and version. It never moves back by
//! itself.
//!
//! "Current again": once the last node is back, the writers stop and one
//! marker write goes to every bucket; a session is current when it is
//! connected and Synced and has seen its bucket's marker. The time reported
//! runs from the first SIGTERM to the moment every session is current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcana::postgres::embedded::EmbeddedPostgres;
use arcana::proto::{
    self as pb, client_message::Kind as Req, server_message::Kind as Msg, value::Kind as V,
    view_frame::Body,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::{cell, load, server, Metrics, Spec, SESSIONS_PER_CONNECTION};

/// A session's node while it is down (between a drop and its Sync).
const DOWN: u8 = u8::MAX;

/// The shape of a rolling run.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Client sessions, one subscription each.
    pub sessions: usize,
    /// Bucket views; a tenth of them are held by sessions of one node only.
    pub views: usize,
    /// Rows in the table.
    pub rows: usize,
    /// Writes per second during the roll.
    pub rate: u64,
    /// Nodes.
    pub nodes: usize,
    /// Pause after a node's sessions are all back, before the next SIGTERM.
    pub pause: Duration,
    /// Extra `[cluster]` lines for every node.
    pub cluster_extra: String,
}

/// Which node and bucket each session starts on: the shared buckets
/// (nine tenths) get sessions on every node; each of the other buckets gets
/// sessions of one node only.
fn placement(shape: &Shape) -> Vec<(usize, usize)> {
    let local = if shape.nodes > 1 { shape.views / 10 } else { 0 };
    let shared = shape.views - local;
    let local_sessions = shape.sessions * local / shape.views.max(1);
    let mut out = Vec::with_capacity(shape.sessions);
    for k in 0..shape.sessions - local_sessions {
        // Each round over the shared buckets is shifted by one node, so a
        // bucket's sessions land on every node and each node gets as many.
        out.push(((k + k / shared) % shape.nodes, k % shared));
    }
    for k in 0..local_sessions {
        let view = shared + k % local;
        out.push((view % shape.nodes, view));
    }
    out
}

/// What every session adds to.
#[derive(Default)]
struct Tally {
    messages: AtomicU64,
    bytes: AtomicU64,
    frames: AtomicU64,
    /// Complete snapshots received (after a Subscribe, a Sync, or pushed).
    snapshots: AtomicU64,
    /// Encoded bytes of snapshot frames (every part).
    snapshot_bytes: AtomicU64,
    /// Snapshots nobody asked for: a view that moved to a new epoch.
    pushed_snapshots: AtomicU64,
    sync_snapshot: AtomicU64,
    sync_catch_up: AtomicU64,
    sync_current: AtomicU64,
    /// Catch-up diffs the Sync answers announced.
    catch_up_frames: AtomicU64,
    /// A Sync or Subscribe answered with an error.
    request_errors: AtomicU64,
    /// A diff that did not continue the version held.
    gaps: AtomicU64,
    /// Connect calls that failed (the node was down or going away).
    connect_failures: AtomicU64,
    /// Streams that ended with a status other than the shutdown's.
    stream_errors: AtomicU64,
    /// Streams that ended (a node going away).
    drops: AtomicU64,
}

impl Tally {
    fn read(&self) -> HashMap<&'static str, u64> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HashMap::from([
            ("messages", l(&self.messages)),
            ("bytes", l(&self.bytes)),
            ("frames", l(&self.frames)),
            ("snapshots", l(&self.snapshots)),
            ("snapshot_bytes", l(&self.snapshot_bytes)),
            ("pushed_snapshots", l(&self.pushed_snapshots)),
            ("sync_snapshot", l(&self.sync_snapshot)),
            ("sync_catch_up", l(&self.sync_catch_up)),
            ("sync_current", l(&self.sync_current)),
            ("catch_up_frames", l(&self.catch_up_frames)),
            ("request_errors", l(&self.request_errors)),
            ("gaps", l(&self.gaps)),
            ("connect_failures", l(&self.connect_failures)),
            ("stream_errors", l(&self.stream_errors)),
            ("drops", l(&self.drops)),
        ])
    }
}

/// State shared by the sessions and the benchmark, one slot per session.
struct Board {
    tally: Tally,
    /// Highest `seq` each session has seen.
    seen: Vec<AtomicU64>,
    /// The node each session is Synced on, or [`DOWN`].
    node: Vec<AtomicU8>,
    /// Sessions not (yet, or no longer) Synced.
    down: AtomicUsize,
    /// Per move: ms from the drop until Synced elsewhere, and the Sync mode.
    moves: std::sync::Mutex<Vec<(u32, i32)>>,
}

/// One session: the view it holds and where the last request stands.
struct Session {
    id: usize,
    bucket: usize,
    /// (epoch, version) held; None before the first snapshot.
    held: Option<(u64, u64)>,
    /// After a reply: the (epoch, version) that completes the request.
    target: Option<(u64, u64)>,
    /// Whether a Subscribe or Sync is in flight: a snapshot then is asked for.
    asked: bool,
    /// The mode of the last Sync answer.
    mode: i32,
}

impl Session {
    fn frame(&mut self, f: &pb::ViewFrame, bytes: u64, board: &Board) {
        let t = &board.tally;
        t.frames.fetch_add(1, Ordering::Relaxed);
        match &f.body {
            Some(Body::Snapshot(s)) => {
                t.snapshot_bytes.fetch_add(bytes, Ordering::Relaxed);
                if s.more {
                    return;
                }
                t.snapshots.fetch_add(1, Ordering::Relaxed);
                if !self.asked {
                    t.pushed_snapshots.fetch_add(1, Ordering::Relaxed);
                }
                self.held = Some((f.epoch, f.version));
                for r in &s.rows {
                    self.fields(r.fields.iter(), board);
                }
            }
            Some(Body::Diff(d)) => {
                if self.held != Some((f.epoch, f.prev_version)) {
                    t.gaps.fetch_add(1, Ordering::Relaxed);
                }
                self.held = Some((f.epoch, f.version));
                for p in &d.patches {
                    self.fields(
                        p.ops.iter().filter_map(|op| {
                            Some((op.path.strip_prefix('/')?, op.value.as_ref()?))
                        }),
                        board,
                    );
                }
                for r in &d.rows {
                    self.fields(r.fields.iter(), board);
                }
            }
            _ => {}
        }
    }

    fn fields<'a, K: AsRef<str> + 'a>(
        &self,
        fields: impl Iterator<Item = (K, &'a pb::Value)>,
        board: &Board,
    ) {
        for (name, v) in fields {
            if let (Some(V::Int(x)), "seq") = (&v.kind, name.as_ref()) {
                board.seen[self.id].fetch_max(*x as u64, Ordering::Relaxed);
            }
        }
    }

    /// Whether the answered request is complete: the view is at the
    /// epoch and version the reply named.
    fn settled(&self) -> bool {
        match (self.target, self.held) {
            (Some((e, v)), Some((he, hv))) => he == e && hv >= v,
            _ => false,
        }
    }
}

/// Runs one session until `stop`: subscribes on its home node, and after
/// every drop reconnects to another node and Syncs.
async fn session(
    mut s: Session,
    home: usize,
    pools: Arc<Vec<Vec<Channel>>>,
    board: Arc<Board>,
    mut stop: watch::Receiver<bool>,
) {
    let nodes = pools.len();
    let mut node = home;
    // The node that dropped the session last, and how many nodes it tried since.
    let mut from = home;
    let mut attempt = 0usize;
    let mut dropped: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let pool = &pools[node];
        let mut client = load::client(pool[s.id % pool.len()].clone());
        let (tx, rx) = mpsc::channel(1);
        let request = match s.held {
            None => Req::Subscribe(pb::SubscribeRequest {
                graph: "bucket".into(),
                params: super::bucket_params(s.bucket),
                session_id: String::new(),
                window: None,
            }),
            Some((epoch, version)) => Req::Sync(pb::SyncRequest {
                views: vec![pb::SyncView {
                    graph: "bucket".into(),
                    params: super::bucket_params(s.bucket),
                    epoch,
                    version,
                    window: None,
                }],
                session_id: String::new(),
            }),
        };
        tx.send(pb::ClientMessage {
            request_id: 1,
            kind: Some(request),
        })
        .await
        .expect("queue the request");
        s.asked = true;
        s.target = None;
        let stream = tokio::select! {
            r = client.connect(ReceiverStream::new(rx)) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut stream = match stream {
            Ok(r) => r.into_inner(),
            Err(_) => {
                board.tally.connect_failures.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                node = next_node(from, s.id, attempt, nodes);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ended = loop {
            let m = tokio::select! {
                m = stream.message() => m,
                _ = stop.wait_for(|s| *s) => return,
            };
            let m = match m {
                Ok(Some(m)) => m,
                Ok(None) => break None,
                Err(status) => break Some(status),
            };
            let t = &board.tally;
            t.messages.fetch_add(1, Ordering::Relaxed);
            let len = m.encoded_len() as u64;
            t.bytes.fetch_add(len, Ordering::Relaxed);
            match m.kind {
                Some(Msg::Frame(f)) => s.frame(&f, len, &board),
                Some(Msg::Frames(b)) => {
                    for f in &b.frames {
                        s.frame(f, f.encoded_len() as u64, &board);
                    }
                }
                Some(Msg::Reply(rep)) => s.reply(rep.result, &board),
                _ => {}
            }
            if s.asked && s.settled() {
                s.asked = false;
                board.node[s.id].store(node as u8, Ordering::Relaxed);
                board.down.fetch_sub(1, Ordering::Relaxed);
                if let Some(at) = dropped.take() {
                    let ms = at.elapsed().as_millis().min(u32::MAX as u128) as u32;
                    board.moves.lock().expect("moves").push((ms, s.mode));
                }
            }
        };
        // The node went away (or the stream failed): move on.
        let t = &board.tally;
        t.drops.fetch_add(1, Ordering::Relaxed);
        if ended.is_some_and(|st| st.code() != tonic::Code::Unavailable) {
            t.stream_errors.fetch_add(1, Ordering::Relaxed);
        }
        if !s.asked {
            dropped = Some(Instant::now());
            board.node[s.id].store(DOWN, Ordering::Relaxed);
            board.down.fetch_add(1, Ordering::Relaxed);
        }
        // From the node that dropped it: the next candidates in turn.
        from = node;
        attempt = 1;
        node = next_node(from, s.id, attempt, nodes);
    }
}

/// The `attempt`-th node to try after `from` dropped the session: the
/// others in turn, starting at one picked by a hash of the session's index
/// and `from` (so sessions that moved together split again at their next
/// move); `from` itself last.
fn next_node(from: usize, id: usize, attempt: usize, nodes: usize) -> usize {
    if nodes == 1 {
        return from;
    }
    let k = (attempt - 1) % nodes;
    if k == nodes - 1 {
        return from;
    }
    // A hash of both, as a load balancer's pick would be.
    let h = ((id as u64) ^ ((from as u64) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
    (from + 1 + (h as usize + k) % (nodes - 1)) % nodes
}

impl Session {
    fn reply(&mut self, result: Option<pb::reply::Result>, board: &Board) {
        let t = &board.tally;
        match result {
            Some(pb::reply::Result::Subscribe(r)) => self.target = Some((r.epoch, r.version)),
            Some(pb::reply::Result::Sync(r)) => {
                let Some(res) = r.results.into_iter().next() else {
                    t.request_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if res.error.is_some() {
                    t.request_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                let mode = pb::SyncMode::try_from(res.mode).unwrap_or(pb::SyncMode::Unspecified);
                match mode {
                    pb::SyncMode::Snapshot => &t.sync_snapshot,
                    pb::SyncMode::CatchUp => &t.sync_catch_up,
                    _ => &t.sync_current,
                }
                .fetch_add(1, Ordering::Relaxed);
                t.catch_up_frames
                    .fetch_add(u64::from(res.frames), Ordering::Relaxed);
                self.mode = res.mode;
                self.target = Some((res.epoch, res.version));
            }
            Some(pb::reply::Result::Error(_)) => {
                t.request_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// A paced writer that runs until `stop`: single-row updates of random
/// rows, each storing a fresh `seq`.
async fn write(
    url: String,
    rate: u64,
    rows: usize,
    written: Arc<load::Written>,
    stop: watch::Receiver<bool>,
) {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("writer connects");
    tokio::spawn(conn);
    let stmt = c.prepare(UPDATE).await.expect("prepare");
    let start = Instant::now();
    let views = written.last.len();
    for k in 0u64.. {
        if *stop.borrow() {
            break;
        }
        if rate > 0 {
            let due = start + Duration::from_secs_f64(k as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let id = rand::random_range(1..=rows) as i64;
        let seq = written.seq.fetch_add(1, Ordering::Relaxed) + 1;
        c.execute(&stmt, &[&(seq as i64), &id])
            .await
            .expect("write");
        written.last[id as usize % views].fetch_max(seq, Ordering::Relaxed);
        written.commits.fetch_add(1, Ordering::Relaxed);
    }
}

const UPDATE: &str = "UPDATE items SET seq = $1, \
     written_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint WHERE id = $2";

/// One write to every bucket (rows 1..=views cover them all).
async fn markers(url: &str, written: &load::Written) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("writer connects");
    tokio::spawn(conn);
    let stmt = c.prepare(UPDATE).await.expect("prepare");
    let views = written.last.len();
    for id in 1..=views {
        let seq = written.seq.fetch_add(1, Ordering::Relaxed) + 1;
        c.execute(&stmt, &[&(seq as i64), &(id as i64)])
            .await
            .expect("marker");
        written.last[id % views].fetch_max(seq, Ordering::Relaxed);
    }
}

fn spec(shape: &Shape) -> Spec {
    Spec {
        scenario: "rolling".into(),
        variant: format!("{} nodes", shape.nodes),
        subscribers: shape.sessions,
        per_session: 1,
        views: shape.views,
        rows: shape.rows,
        rate: shape.rate,
        writes: 0,
        writers: 1,
        batch_bytes: arcana::grpc::DEFAULT_BATCH_BYTES,
        route: true,
        eval_batch: arcana::engine::EngineConfig::default().eval_batch,
        patch: true,
        nodes: shape.nodes,
        cluster_extra: shape.cluster_extra.clone(),
    }
}

/// Waits until `done` holds, checking every 10 ms, for at most `limit`;
/// returns whether it did.
async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// One rolling run.
pub async fn run(bin: &std::path::Path, pg: &EmbeddedPostgres, shape: &Shape) -> Metrics {
    let s = spec(shape);
    let (db, url) = super::create_database(pg, &s).await;
    // Sessions that move pile onto the other nodes' connections.
    let cfg = |port| {
        super::config(&s, port, &format!("slot_{db}")).replacen(
            "[server]\n",
            "[server]\nmax_streams_per_connection = 10000\n",
            1,
        )
    };
    let (nodes, _nats) = server::cluster(bin, shape.nodes, &url, &shape.cluster_extra, cfg).await;
    let mut nodes = server::Nodes(nodes);
    let place = placement(shape);
    let per_node = shape.sessions.div_ceil(shape.nodes);
    let mut pools = Vec::new();
    for n in &nodes.0 {
        let mut pool = Vec::new();
        for _ in 0..per_node.div_ceil(SESSIONS_PER_CONNECTION) {
            pool.push(
                Channel::from_shared(n.addr.clone())
                    .expect("address")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        pools.push(pool);
    }
    let pools = Arc::new(pools);
    let board = Arc::new(Board {
        tally: Tally::default(),
        seen: (0..shape.sessions).map(|_| AtomicU64::new(0)).collect(),
        node: (0..shape.sessions).map(|_| AtomicU8::new(DOWN)).collect(),
        down: AtomicUsize::new(shape.sessions),
        moves: std::sync::Mutex::new(Vec::new()),
    });
    let (stop_tx, stop) = watch::channel(false);
    let setup = Instant::now();
    let mut tasks = Vec::with_capacity(shape.sessions);
    for (id, &(home, bucket)) in place.iter().enumerate() {
        let s = Session {
            id,
            bucket,
            held: None,
            target: None,
            asked: false,
            mode: 0,
        };
        tasks.push(tokio::spawn(session(
            s,
            home,
            pools.clone(),
            board.clone(),
            stop.clone(),
        )));
    }
    let subscribed = until(Duration::from_secs(180), || {
        board.down.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(
        subscribed,
        "rolling: sessions did not all get their snapshot"
    );
    eprintln!(
        "  [rolling] {} sessions subscribed in {:.1}s",
        shape.sessions,
        setup.elapsed().as_secs_f64()
    );

    let written = Arc::new(load::Written::new(shape.views));
    let (stop_writes, writes_stopped) = watch::channel(false);
    let writer = tokio::spawn(write(
        url.clone(),
        shape.rate,
        shape.rows,
        written.clone(),
        writes_stopped,
    ));
    // Steady state before the roll.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = board.tally.read();
    let commits0 = written.commits.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut m = Metrics::new();
    let mut worst_back = Duration::ZERO;
    let mut stops = Vec::new();
    let mut starts = Vec::new();
    let mut readies = Vec::new();
    for k in 0..nodes.0.len() {
        let held = (0..shape.sessions)
            .filter(|&i| board.node[i].load(Ordering::Relaxed) as usize == k)
            .count() as u64;
        let drops0 = board.tally.drops.load(Ordering::Relaxed);
        let sigterm = Instant::now();
        let r = nodes.0[k].restart().await;
        // Every session the node held has dropped and is Synced elsewhere.
        let back = until(Duration::from_secs(120), || {
            board.tally.drops.load(Ordering::Relaxed) >= drops0 + held
                && board.down.load(Ordering::Relaxed) == 0
        })
        .await;
        let took = sigterm.elapsed();
        eprintln!(
            "  [rolling] node {k}: {held} sessions, stopped in {} ms, listening in {} ms, ready in {} ms, sessions back {} after {} ms",
            r.stop.as_millis(),
            r.start.as_millis(),
            r.ready.as_millis(),
            if back { "all" } else { "NOT all" },
            took.as_millis(),
        );
        worst_back = worst_back.max(took);
        stops.push(r.stop.as_secs_f64() * 1000.0);
        starts.push(r.start.as_secs_f64() * 1000.0);
        readies.push(r.ready.as_secs_f64() * 1000.0);
        tokio::time::sleep(shape.pause).await;
    }
    let rolled = t0.elapsed();
    let _ = stop_writes.send(true);
    writer.await.expect("writer");
    markers(&url, &written).await;
    let behind = || {
        (0..shape.sessions)
            .filter(|&i| {
                board.node[i].load(Ordering::Relaxed) == DOWN
                    || board.seen[i].load(Ordering::Relaxed)
                        < written.last[place[i].1].load(Ordering::Relaxed)
            })
            .count()
    };
    let converged = until(Duration::from_secs(120), || behind() == 0).await;
    let current = t0.elapsed();
    let after = board.tally.read();
    let unconverged = if converged { 0 } else { behind() };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let d = |k: &str| (after[k] - before[k]) as f64;
    let moves = std::mem::take(&mut *board.moves.lock().expect("moves"));
    let mut gap: Vec<u32> = moves.iter().map(|m| m.0).collect();
    gap.sort_unstable();
    // Slow moves by the mode of their Sync answer, to see what they waited for.
    let slow = |mode: pb::SyncMode| {
        moves
            .iter()
            .filter(|m| m.0 >= 1000 && m.1 == mode as i32)
            .count()
    };
    eprintln!(
        "  [rolling] moves over 1 s: {} SNAPSHOT, {} CATCH_UP, {} CURRENT",
        slow(pb::SyncMode::Snapshot),
        slow(pb::SyncMode::CatchUp),
        slow(pb::SyncMode::Current)
    );
    let ms = |p: f64| super::pct(&gap, p) * 1000.0;
    m.extend([
        ("roll_s", rolled.as_secs_f64()),
        ("current_s", current.as_secs_f64()),
        (
            "tail_ms",
            current.saturating_sub(rolled).as_secs_f64() * 1000.0,
        ),
        ("worst_node_back_ms", worst_back.as_secs_f64() * 1000.0),
        ("pauses_s", shape.pause.as_secs_f64() * nodes.0.len() as f64),
        ("stop_ms", super::median(&mut stops)),
        ("start_ms", super::median(&mut starts)),
        ("ready_ms", super::median(&mut readies)),
        (
            "writes",
            (written.commits.load(Ordering::Relaxed) - commits0) as f64,
        ),
        ("moves", d("drops")),
        ("sync_snapshot", d("sync_snapshot")),
        ("sync_catch_up", d("sync_catch_up")),
        ("sync_current", d("sync_current")),
        ("catch_up_frames", d("catch_up_frames")),
        ("snapshots", d("snapshots")),
        ("pushed_snapshots", d("pushed_snapshots")),
        ("frames", d("frames")),
        ("mib", d("bytes") / 1048576.0),
        ("snapshot_mib", d("snapshot_bytes") / 1048576.0),
        ("gaps", d("gaps")),
        ("move_p50_ms", ms(0.5)),
        ("move_p99_ms", ms(0.99)),
        ("move_max_ms", ms(1.0)),
        ("request_errors", d("request_errors")),
        ("connect_failures", d("connect_failures")),
        ("stream_errors", d("stream_errors")),
        ("unconverged", unconverged as f64),
        ("client_peak_rss_mib", own_peak_rss() as f64 / 1048576.0),
    ]);
    drop(nodes);
    let _ = arcana::postgres::execute_script(
        &pg.url("postgres"),
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )
    .await;
    m
}

/// This process's peak resident memory, bytes: what the sessions cost the
/// client side (PostgreSQL and the servers are other processes).
fn own_peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// The rolling table: one row per run and the median.
pub fn print(shape: &Shape, runs: &[Metrics]) {
    println!();
    println!("| run | nodes | sessions | views | writes/s | roll s | all current s | of which pauses s | tail ms | slowest node back ms | stop ms | listening ms | ready ms | moved sessions | move p50 ms | move p99 ms | move max ms | Sync SNAPSHOT | Sync CATCH_UP | Sync CURRENT | catch-up diffs | snapshot frames | of which pushed | MiB received | MiB snapshots | gaps | errors | unconverged | client peak RSS MiB |");
    println!("|{}", "---|".repeat(29));
    let mut rows: Vec<(String, Metrics)> = runs
        .iter()
        .enumerate()
        .map(|(i, m)| ((i + 1).to_string(), m.clone()))
        .collect();
    if runs.len() > 1 {
        rows.push(("median".into(), super::medians(runs)));
    }
    for (name, m) in rows {
        let errors = ["request_errors", "connect_failures", "stream_errors"]
            .iter()
            .filter_map(|k| m.get(k))
            .sum::<f64>();
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {errors:.0} | {} | {} |",
            shape.nodes,
            shape.sessions,
            shape.views,
            shape.rate,
            cell(&m, "roll_s", 1),
            cell(&m, "current_s", 1),
            cell(&m, "pauses_s", 1),
            cell(&m, "tail_ms", 0),
            cell(&m, "worst_node_back_ms", 0),
            cell(&m, "stop_ms", 0),
            cell(&m, "start_ms", 0),
            cell(&m, "ready_ms", 0),
            cell(&m, "moves", 0),
            cell(&m, "move_p50_ms", 0),
            cell(&m, "move_p99_ms", 0),
            cell(&m, "move_max_ms", 0),
            cell(&m, "sync_snapshot", 0),
            cell(&m, "sync_catch_up", 0),
            cell(&m, "sync_current", 0),
            cell(&m, "catch_up_frames", 0),
            cell(&m, "snapshots", 0),
            cell(&m, "pushed_snapshots", 0),
            cell(&m, "mib", 1),
            cell(&m, "snapshot_mib", 1),
            cell(&m, "gaps", 0),
            cell(&m, "unconverged", 0),
            cell(&m, "client_peak_rss_mib", 0),
        );
    }
}
