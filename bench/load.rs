//! The load: subscriber sessions over real gRPC and writers over plain SQL
//! connections.
//!
//! A subscriber opens a `Connect` session, subscribes to one bucket view and
//! reads every message: it checks each diff continues the version it holds,
//! and for every row patch carrying `written_us` (the commit timestamp the
//! writer stored in the row) records the latency at receipt. It keeps the
//! highest `seq` it has seen, which tells the benchmark when every
//! subscriber shows the last write of its bucket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arcana::proto::{
    self as pb, arcana_service_client::ArcanaServiceClient, client_message::Kind as Req,
    server_message::Kind as Msg, value::Kind as V, view_frame::Body,
};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// The bearer token the benchmark's config defines.
pub const TOKEN: &str = "bench-token";

/// What every subscriber adds to while it reads.
#[derive(Default)]
pub struct Counters {
    /// Server messages received.
    pub messages: AtomicU64,
    /// View frames received (a batch message carries several).
    pub frames: AtomicU64,
    /// Encoded bytes of the messages.
    pub bytes: AtomicU64,
    /// Diffs that did not continue the version held: must stay 0.
    pub gaps: AtomicU64,
    /// Snapshots after the first (a session that fell behind is resynced).
    pub resyncs: AtomicU64,
}

/// The authenticated client every benchmark call uses.
pub fn client(
    channel: Channel,
) -> ArcanaServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, impl tonic::service::Interceptor>,
> {
    ArcanaServiceClient::with_interceptor(channel, |mut req: tonic::Request<()>| {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {TOKEN}").parse().expect("ascii"),
        );
        Ok(req)
    })
    .max_decoding_message_size(usize::MAX)
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// One subscriber's view of its stream.
struct Reader {
    /// Per view: (epoch, version).
    versions: HashMap<String, (u64, u64)>,
    snapshots: u64,
    seen: Arc<AtomicU64>,
    latencies_us: Vec<u32>,
    first_frame: Option<Instant>,
}

impl Reader {
    fn frame(&mut self, f: pb::ViewFrame, now: i64, counters: &Counters) {
        counters.frames.fetch_add(1, Ordering::Relaxed);
        match f.body {
            Some(Body::Snapshot(s)) => {
                if s.more {
                    // A part: the snapshot is complete with its last part.
                    return;
                }
                self.snapshots += 1;
                if self
                    .versions
                    .insert(f.view_id, (f.epoch, f.version))
                    .is_some()
                {
                    counters.resyncs.fetch_add(1, Ordering::Relaxed);
                }
                for r in &s.rows {
                    self.fields(r.fields.iter(), None);
                }
            }
            Some(Body::Diff(d)) => {
                let held = self.versions.entry(f.view_id).or_default();
                if (f.epoch, f.prev_version) != *held {
                    counters.gaps.fetch_add(1, Ordering::Relaxed);
                }
                *held = (f.epoch, f.version);
                for p in &d.patches {
                    self.fields(
                        p.ops.iter().filter_map(|op| {
                            Some((op.path.strip_prefix('/')?, op.value.as_ref()?))
                        }),
                        Some(now),
                    );
                }
                for r in &d.rows {
                    self.fields(r.fields.iter(), Some(now));
                }
            }
            _ => {}
        }
    }

    /// Reads `seq` and `written_us` from a row's fields; with `now`, records
    /// the latency of the write.
    fn fields<'a, K: AsRef<str> + 'a>(
        &mut self,
        fields: impl Iterator<Item = (K, &'a pb::Value)>,
        now: Option<i64>,
    ) {
        for (name, v) in fields {
            let Some(V::Int(x)) = v.kind else { continue };
            match name.as_ref() {
                "seq" => {
                    self.seen.fetch_max(x as u64, Ordering::Relaxed);
                }
                "written_us" if x > 0 => {
                    if let Some(now) = now {
                        self.latencies_us
                            .push((now - x).clamp(0, u32::MAX as i64) as u32);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Subscribes to `graph` once per params set (through `window` when
/// given) and reads until `stop`. Reports on `ready` when every
/// subscription has its snapshot; returns the recorded latencies (µs).
#[allow(clippy::too_many_arguments)]
pub async fn subscriber(
    channel: Channel,
    graph: &'static str,
    subscriptions: Vec<HashMap<String, pb::Value>>,
    window: Option<pb::Window>,
    counters: Arc<Counters>,
    seen: Arc<AtomicU64>,
    ready: mpsc::UnboundedSender<Instant>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u32> {
    let mut c = client(channel);
    let wanted = subscriptions.len();
    let (tx, rx) = mpsc::channel(wanted.max(1));
    for (i, params) in subscriptions.into_iter().enumerate() {
        tx.send(pb::ClientMessage {
            request_id: i as u64 + 1,
            kind: Some(Req::Subscribe(pb::SubscribeRequest {
                graph: graph.into(),
                params,
                session_id: String::new(),
                window: window.clone(),
            })),
        })
        .await
        .expect("queue subscribe");
    }
    let mut stream = match c.connect(ReceiverStream::new(rx)).await {
        Ok(s) => s.into_inner(),
        Err(e) => panic!("connect: {e}"),
    };
    let mut r = Reader {
        versions: HashMap::new(),
        snapshots: 0,
        seen,
        latencies_us: Vec::new(),
        first_frame: None,
    };
    let mut announced = false;
    loop {
        let m = tokio::select! {
            m = stream.message() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let m = match m {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) => panic!("session stream failed: {status}"),
        };
        let now = now_us();
        counters.messages.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes
            .fetch_add(m.encoded_len() as u64, Ordering::Relaxed);
        match m.kind {
            Some(Msg::Frame(f)) => r.frame(f, now, &counters),
            Some(Msg::Frames(b)) => {
                for f in b.frames {
                    r.frame(f, now, &counters);
                }
            }
            Some(Msg::Reply(rep)) => {
                if let Some(pb::reply::Result::Error(e)) = rep.result {
                    panic!("subscribe failed: {} {}", e.code, e.message);
                }
            }
            _ => {}
        }
        if r.snapshots > 0 {
            r.first_frame.get_or_insert_with(Instant::now);
        }
        if !announced && r.versions.len() >= wanted {
            announced = true;
            let _ = ready.send(r.first_frame.unwrap_or_else(Instant::now));
        }
    }
    drop(tx);
    r.latencies_us
}

/// Who writes what.
#[derive(Debug, Clone, Copy)]
pub struct WritePlan {
    /// Rows in `items` (ids 1..=rows).
    pub rows: usize,
    /// Buckets (`bucket = id % views`).
    pub views: usize,
    /// Writer connections.
    pub writers: usize,
    /// Total writes per second; 0 writes as fast as the connections go.
    pub rate: u64,
    /// Total writes.
    pub total: u64,
}

/// Shared bookkeeping of the writers.
pub struct Written {
    /// The last sequence number handed out.
    pub seq: AtomicU64,
    /// Per bucket: the highest `seq` committed to it.
    pub last: Vec<AtomicU64>,
    /// Per bucket: how many writes it got.
    pub count: Vec<AtomicU64>,
    /// Commits done.
    pub commits: AtomicU64,
}

impl Written {
    /// Bookkeeping for `views` buckets.
    pub fn new(views: usize) -> Self {
        Written {
            seq: AtomicU64::new(0),
            last: (0..views).map(|_| AtomicU64::new(0)).collect(),
            count: (0..views).map(|_| AtomicU64::new(0)).collect(),
            commits: AtomicU64::new(0),
        }
    }
}

/// Runs the plan: single-row UPDATEs that store a fresh `seq` and the
/// commit-time clock in `written_us`. Each writer owns the rows with
/// `(id - 1) % writers == w`, so a row's last write is its highest `seq`.
pub async fn write(url: &str, plan: WritePlan, written: Arc<Written>) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..plan.writers {
        let url = url.to_owned();
        let written = written.clone();
        tasks.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("writer connects");
            tokio::spawn(conn);
            let stmt = c
                .prepare(
                    "UPDATE items SET seq = $1, \
                     written_us = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint \
                     WHERE id = $2",
                )
                .await
                .expect("prepare");
            let mine = (plan.rows / plan.writers).max(1);
            let n = plan.total / plan.writers as u64
                + u64::from((w as u64) < plan.total % plan.writers as u64);
            for k in 0..n {
                if plan.rate > 0 {
                    let slot = k * plan.writers as u64 + w as u64;
                    let due = start + Duration::from_secs_f64(slot as f64 / plan.rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let j = rand::random_range(0..mine);
                let id = (1 + w + plan.writers * j) as i64;
                let seq = written.seq.fetch_add(1, Ordering::Relaxed) + 1;
                c.execute(&stmt, &[&(seq as i64), &id])
                    .await
                    .expect("write");
                let bucket = id as usize % plan.views;
                written.last[bucket].fetch_max(seq, Ordering::Relaxed);
                written.count[bucket].fetch_add(1, Ordering::Relaxed);
                written.commits.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    start.elapsed()
}
