//! The benchmark: a real PostgreSQL (a throwaway cluster), the real
//! `arcana serve` process, subscriber sessions over real gRPC and writes from
//! plain SQL connections. Each scenario reports commit-to-client latency,
//! deliveries, server CPU and memory, and SQL evaluations per write.
//!
//!     cargo build --release --bin arcana --bin arcana-bench
//!     target/release/arcana-bench                       # every scenario
//!     target/release/arcana-bench --scenario fanout     # one of them
//!     target/release/arcana-bench --quick --compare     # smaller, with before/after variants
//!     target/release/arcana-bench --scenario mixed --scenario fanout --runs 3 --compare-nodes 1,3
//!     target/release/arcana-bench --scenario rolling    # restart 3 nodes in turn under load
//!
//! See docs/BENCHMARKS.md for what each number means.

mod load;
mod offline;
mod raw;
mod rolling;
mod server;
mod windows;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use arcana::proto as pb;
use clap::{Parser, Subcommand};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use load::{Counters, WritePlan, Written};
use server::{free_port, Server, Usage};

const SCENARIOS: &[&str] = &[
    "mixed", "fanout", "distinct", "burst", "ingest", "snapshot", "idle", "backlog", "windows",
    "offline",
];
/// Sessions per HTTP/2 connection, as a client process multiplexes them.
const SESSIONS_PER_CONNECTION: usize = 100;

#[derive(Parser)]
#[command(about = "Arcana's load benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Scenarios to run: mixed, fanout, distinct, burst, ingest, snapshot,
    /// idle, backlog, windows, offline (default: all of these), and
    /// rolling (only when named).
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// A tenth of the subscribers and a fifth of the writes.
    #[arg(long)]
    quick: bool,
    /// Runs per scenario; the report shows the median of each number.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Also run each scenario with the optimization it exercises turned off.
    #[arg(long)]
    compare: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Override the scenario's subscriber (session) count.
    #[arg(long, visible_alias = "sessions")]
    subscribers: Option<usize>,
    /// Override the number of distinct views.
    #[arg(long)]
    views: Option<usize>,
    /// Override the number of rows in the table.
    #[arg(long)]
    rows: Option<usize>,
    /// Override the write rate (writes/s; 0: unpaced).
    #[arg(long)]
    rate: Option<u64>,
    /// Override the number of writes.
    #[arg(long)]
    writes: Option<u64>,
    /// Run the engine scenarios on a cluster of this many nodes (one
    /// nats-server with JetStream, sessions spread over the nodes).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Run each engine scenario on each of these node counts, alternating
    /// the counts run after run (e.g. `1,3`), and print the comparison.
    #[arg(long, value_delimiter = ',')]
    compare_nodes: Vec<usize>,
    /// A `[cluster]` setting for every node of a cluster run, as
    /// `key=value` with a TOML value (e.g. `lease_ttl_ms=2000`); repeatable.
    #[arg(long = "cluster-set", value_name = "KEY=VALUE")]
    cluster_set: Vec<String>,
    /// rolling: pause after a restarted node's sessions are all back,
    /// before the next node is stopped (ms).
    #[arg(long, default_value_t = 1000)]
    roll_pause_ms: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// The reference server (started by the benchmark itself).
    #[command(hide = true)]
    RawServe {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        streams: usize,
        #[arg(long)]
        frame_bytes: usize,
        #[arg(long)]
        seconds: f64,
    },
}

/// One scenario's shape.
#[derive(Clone, Debug, Serialize)]
struct Spec {
    scenario: String,
    /// `optimized`, or the optimization turned off (`unrouted`, `unbatched`).
    variant: String,
    /// Sessions.
    subscribers: usize,
    /// Subscriptions per session (to consecutive buckets).
    per_session: usize,
    views: usize,
    rows: usize,
    /// Writes per second; 0: as fast as the writers go.
    rate: u64,
    writes: u64,
    writers: usize,
    /// `server.max_batch_bytes`.
    batch_bytes: usize,
    /// Whether the graph declares its route.
    route: bool,
    /// `engine.eval_batch`: views per evaluation round.
    eval_batch: usize,
    /// Whether the graph declares its shown columns patchable.
    patch: bool,
    /// Cluster nodes (1: a standalone server).
    nodes: usize,
    /// Extra `[cluster]` lines (from `--cluster-set`).
    cluster_extra: String,
}

/// The `--cluster-set` settings as TOML lines.
fn cluster_extra(cli: &Cli) -> String {
    cli.cluster_set
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => format!("{} = {}\n", k.trim(), v.trim()),
            None => panic!("--cluster-set takes KEY=VALUE, got `{kv}`"),
        })
        .collect()
}

fn spec(name: &str, quick: bool, cli: &Cli) -> Spec {
    let (subscribers, views, rows, rate, writes, writers) = match name {
        "mixed" => (10_000, 1_000, 10_000, 500, 10_000, 4),
        "fanout" => (10_000, 1, 10, 100, 1_000, 1),
        "distinct" => (10_000, 10_000, 20_000, 500, 10_000, 4),
        "burst" => (1_000, 1_000, 10_000, 0, 50_000, 8),
        "ingest" => (100, 100, 10_000, 5_000, 50_000, 8),
        "snapshot" => (1, 1, 100_000, 0, 0, 1),
        "idle" => (1_000, 1_000, 10_000, 0, 0, 1),
        "backlog" => (0, 1_000, 10_000, 0, 20_000, 4),
        other => panic!("unknown scenario `{other}`: use one of {SCENARIOS:?}"),
    };
    let (subscribers, views, rows, writes) = match (quick, name) {
        (false, _) => (subscribers, views, rows, writes),
        (true, "snapshot") => (1, 1, 10_000, 0),
        (true, "idle") => (100, 100, 1_000, 0),
        (true, "backlog") => (0, 1_000, 10_000, 4_000),
        (true, _) => (
            (subscribers / 10).max(1),
            (views / 10).max(1),
            (rows / 10).max(10),
            writes / 5,
        ),
    };
    Spec {
        scenario: name.into(),
        variant: if cli.nodes > 1 {
            format!("optimized, {} nodes", cli.nodes)
        } else {
            "optimized".into()
        },
        nodes: cli.nodes.max(1),
        cluster_extra: cluster_extra(cli),
        subscribers: cli.subscribers.unwrap_or(subscribers),
        per_session: if name == "idle" { 10 } else { 1 },
        views: cli.views.unwrap_or(views),
        rows: cli.rows.unwrap_or(rows),
        rate: cli.rate.unwrap_or(rate),
        writes: cli.writes.unwrap_or(writes),
        writers,
        batch_bytes: arcana::grpc::DEFAULT_BATCH_BYTES,
        route: true,
        eval_batch: arcana::engine::EngineConfig::default().eval_batch,
        patch: true,
    }
}

/// The same scenario with each optimization it exercises turned off.
fn baselines(s: &Spec) -> Vec<Spec> {
    let off = |variant: &str, f: &dyn Fn(&mut Spec)| {
        let mut b = s.clone();
        b.variant = variant.into();
        f(&mut b);
        b
    };
    let unbatched = || off("unbatched", &|b| b.batch_bytes = 0);
    let unpatched = || off("unpatched", &|b| b.patch = false);
    // Patched writes go straight to the views holding the row, so routes
    // show only when changes need the query.
    let unrouted = || {
        off("unpatched, unrouted", &|b| {
            b.patch = false;
            b.route = false;
        })
    };
    let one_by_one = || {
        off("unpatched, one view per query", &|b| {
            b.patch = false;
            b.eval_batch = 1;
        })
    };
    match s.scenario.as_str() {
        "mixed" | "distinct" => vec![unpatched(), unrouted()],
        "fanout" => vec![unbatched()],
        "burst" => vec![unbatched(), unpatched(), one_by_one()],
        "ingest" => vec![unpatched()],
        _ => Vec::new(),
    }
}

fn config(s: &Spec, port: u16, slot: &str) -> String {
    let route = if s.route {
        "route = { items = \"bucket\" }"
    } else {
        ""
    };
    let patch = if s.patch {
        "patch = { items = [\"title\", \"seq\", \"written_us\"] }"
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
max_batch_bytes = {batch}
# Every subscriber shares the one bench identity.
max_sessions_per_identity = 100000
max_calls_per_identity = 200000
max_sessions = 100000

[database]
pool_size = 16

[engine]
max_subscriptions_per_session = 100
eval_batch = {eval_batch}

[[auth.tokens]]
token = "{token}"
user = "bench"
workspace = "bench"
role = "service"
permissions = ["items:read", "arcana:global-admin"]

[[graphs]]
name = "bucket"
table = "items"
permissions = ["items:read"]
sql = "SELECT id, title, seq, written_us FROM items WHERE bucket = :bucket ORDER BY id"
deps = {{ items = ["*"] }}
{route}
{patch}

[graphs.params.bucket]
type = "int"
required = true

[changes]
mode = "wal"
slot = "{slot}"
"#,
        batch = s.batch_bytes,
        eval_batch = s.eval_batch,
        token = load::TOKEN,
    )
}

async fn create_database(pg: &EmbeddedPostgres, s: &Spec) -> (String, String) {
    let db = format!("bench_{:08x}", rand::random::<u32>());
    arcana::postgres::execute_script(&pg.url("postgres"), &format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let url = pg.url(&db);
    let schema = format!(
        "CREATE TABLE items (
             id bigint PRIMARY KEY,
             bucket int NOT NULL,
             title text NOT NULL,
             seq bigint NOT NULL DEFAULT 0,
             written_us bigint NOT NULL DEFAULT 0
         );
         CREATE INDEX items_bucket ON items (bucket, id);
         ALTER TABLE items REPLICA IDENTITY FULL;
         INSERT INTO items (id, bucket, title)
             SELECT g, g % {views}, 'item number ' || g FROM generate_series(1, {rows}) g;
         ANALYZE items;",
        views = s.views,
        rows = s.rows,
    );
    arcana::postgres::execute_script(&url, &schema)
        .await
        .expect("schema");
    (db, url)
}

async fn channels(addr: &str, sessions: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..sessions.div_ceil(SESSIONS_PER_CONNECTION) {
        out.push(
            Channel::from_shared(addr.to_owned())
                .expect("address")
                .connect()
                .await
                .expect("connect"),
        );
    }
    out
}

fn bucket_params(bucket: usize) -> HashMap<String, pb::Value> {
    HashMap::from([(
        "bucket".to_string(),
        pb::Value {
            kind: Some(pb::value::Kind::Int(bucket as i64)),
        },
    )])
}

/// The subscribers of one run.
struct Crowd {
    counters: Arc<Counters>,
    seen: Vec<Arc<AtomicU64>>,
    buckets: Vec<usize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<u32>>>,
    stop: watch::Sender<bool>,
    first_frames: Vec<Instant>,
}

async fn crowd(
    label: &str,
    channels: &[Channel],
    subs: usize,
    per_session: usize,
    views: usize,
) -> Crowd {
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut seen = Vec::with_capacity(subs);
    let mut buckets = Vec::with_capacity(subs);
    let mut tasks = Vec::with_capacity(subs);
    for i in 0..subs {
        let s = Arc::new(AtomicU64::new(0));
        // With one subscription per session (every scenario with writes),
        // `seen` and the bucket tell when the session is current.
        let bucket = (i * per_session) % views;
        seen.push(s.clone());
        buckets.push(bucket);
        tasks.push(tokio::spawn(load::subscriber(
            channels[i / SESSIONS_PER_CONNECTION].clone(),
            "bucket",
            (0..per_session)
                .map(|j| bucket_params((bucket + j) % views))
                .collect(),
            None,
            counters.clone(),
            s,
            ready_tx.clone(),
            stopped.clone(),
        )));
    }
    let mut first_frames = Vec::with_capacity(subs);
    let mut last_report = Instant::now();
    while first_frames.len() < subs {
        match tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
            Ok(Some(at)) => first_frames.push(at),
            _ => panic!("{label}: subscribers did not all get their snapshot"),
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            last_report = Instant::now();
            eprintln!("  [{label}] subscribed {}/{subs}", first_frames.len());
        }
    }
    Crowd {
        counters,
        seen,
        buckets,
        tasks,
        stop,
        first_frames,
    }
}

impl Crowd {
    fn frames(&self) -> u64 {
        self.counters.frames.load(Ordering::Relaxed)
    }

    async fn finish(self) -> (Vec<u32>, Arc<Counters>) {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("subscriber"));
        }
        (all, self.counters)
    }
}

async fn engine_stats(ch: &Channel) -> pb::StatsResponse {
    load::client(ch.clone())
        .stats(pb::StatsRequest {})
        .await
        .expect("stats")
        .into_inner()
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

type Metrics = BTreeMap<&'static str, f64>;

/// One run of an engine scenario.
async fn run_engine(bin: &Path, pg: &EmbeddedPostgres, s: &Spec) -> Metrics {
    let label = format!("{}/{}", s.scenario, s.variant);
    let (db, url) = create_database(pg, s).await;
    let (nodes, _nats) = server::cluster(bin, s.nodes, &url, &s.cluster_extra, |port| {
        config(s, port, &format!("slot_{db}"))
    })
    .await;
    let server = server::Nodes(nodes);
    let base = server.usage();
    let chans = server.channels(s.subscribers.max(1)).await;
    let setup = Instant::now();
    let crowd = crowd(&label, &chans, s.subscribers, s.per_session, s.views).await;
    let first_frame = crowd
        .first_frames
        .iter()
        .map(|t| t.duration_since(setup))
        .min()
        .unwrap_or_default();
    let setup_s = setup.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let subscribed = server.usage();
    let mut m = Metrics::new();
    m.insert("setup_s", setup_s);
    m.insert("first_frame_ms", first_frame.as_secs_f64() * 1000.0);
    m.insert(
        "kib_per_subscription",
        subscribed.rss.saturating_sub(base.rss) as f64
            / 1024.0
            / (s.subscribers * s.per_session) as f64,
    );
    if s.writes == 0 {
        m.insert(
            "snapshot_bytes",
            crowd.counters.bytes.load(Ordering::Relaxed) as f64,
        );
        m.insert(
            "server_peak_rss_mib",
            subscribed.peak_rss as f64 / 1048576.0,
        );
        m.insert("server_cpu_s", subscribed.cpu_s - base.cpu_s);
        crowd.finish().await;
        return m;
    }

    let st0 = server.stats().await;
    let (frames0, msgs0, bytes0) = (
        crowd.frames(),
        crowd.counters.messages.load(Ordering::Relaxed),
        crowd.counters.bytes.load(Ordering::Relaxed),
    );
    let written = Arc::new(Written::new(s.views));
    let plan = WritePlan {
        rows: s.rows,
        views: s.views,
        writers: s.writers,
        rate: s.rate,
        total: s.writes,
    };
    let start = Instant::now();
    let writer = tokio::spawn({
        let (url, written) = (url.clone(), written.clone());
        async move { load::write(&url, plan, written).await }
    });
    let mut last_report = Instant::now();
    while !writer.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if last_report.elapsed() > Duration::from_secs(2) {
            last_report = Instant::now();
            eprintln!(
                "  [{label}] {:.0}s: {} commits, {} frames delivered, {} resyncs",
                start.elapsed().as_secs_f64(),
                written.commits.load(Ordering::Relaxed),
                crowd.frames() - frames0,
                crowd.counters.resyncs.load(Ordering::Relaxed),
            );
        }
    }
    let write_time = writer.await.expect("writers");
    let writes_done = Instant::now();
    // Converged: every subscriber shows the last write of its bucket.
    let deadline = Instant::now() + Duration::from_secs(120);
    let behind = || {
        crowd
            .seen
            .iter()
            .zip(&crowd.buckets)
            .filter(|(seen, b)| {
                seen.load(Ordering::Relaxed) < written.last[**b].load(Ordering::Relaxed)
            })
            .count()
    };
    let mut lagging = behind();
    while lagging > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        lagging = behind();
    }
    let end = Instant::now();
    let used: Usage = server.usage();
    let st1 = server.stats().await;
    let elapsed = end.duration_since(start).as_secs_f64();
    let frames = crowd.frames() - frames0;
    let msgs = crowd.counters.messages.load(Ordering::Relaxed) - msgs0;
    let bytes = crowd.counters.bytes.load(Ordering::Relaxed) - bytes0;
    let expected: u64 = crowd
        .buckets
        .iter()
        .map(|b| written.count[*b].load(Ordering::Relaxed))
        .sum();
    let (mut lat, counters) = crowd.finish().await;
    lat.sort_unstable();
    let evaluations = (st1.evaluations - st0.evaluations) as f64;
    let writes = written.commits.load(Ordering::Relaxed) as f64;
    m.extend([
        ("p50_ms", pct(&lat, 0.5)),
        ("p90_ms", pct(&lat, 0.9)),
        ("p99_ms", pct(&lat, 0.99)),
        ("max_ms", pct(&lat, 1.0)),
        ("writes_per_s", writes / write_time.as_secs_f64()),
        (
            "recovery_ms",
            end.duration_since(writes_done).as_secs_f64() * 1000.0,
        ),
        ("frames_per_s", frames as f64 / elapsed),
        ("messages_per_s", msgs as f64 / elapsed),
        ("mib_per_s", bytes as f64 / elapsed / 1048576.0),
        ("bytes_per_frame", bytes as f64 / frames.max(1) as f64),
        ("evaluations_per_write", evaluations / writes),
        (
            "queries_per_write",
            (st1.evaluation_rounds - st0.evaluation_rounds) as f64 / writes,
        ),
        (
            "patches_per_write",
            (st1.patches - st0.patches) as f64 / writes,
        ),
        ("server_cpu_s", used.cpu_s - subscribed.cpu_s),
        (
            "cpu_us_per_frame",
            (used.cpu_s - subscribed.cpu_s) * 1e6 / frames.max(1) as f64,
        ),
        ("server_peak_rss_mib", used.peak_rss as f64 / 1048576.0),
        ("coalesced", 1.0 - lat.len() as f64 / expected.max(1) as f64),
        ("resyncs", counters.resyncs.load(Ordering::Relaxed) as f64),
        ("gaps", counters.gaps.load(Ordering::Relaxed) as f64),
        ("unconverged", lagging as f64),
    ]);
    drop(server);
    let _ = arcana::postgres::execute_script(
        &pg.url("postgres"),
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )
    .await;
    m
}

/// Writes while the server is down, starts it, and measures how fast its
/// WAL listener works through the backlog: from the first change the engine
/// counts (server startup is not replay) to the last.
async fn run_backlog(bin: &Path, pg: &EmbeddedPostgres, s: &Spec) -> Metrics {
    let (db, url) = create_database(pg, s).await;
    let slot = format!("slot_{db}");
    let port = free_port();
    drop(Server::arcana(bin, &config(s, port, &slot), &url, port).await); // creates the slot
    let plan = WritePlan {
        rows: s.rows,
        views: s.views,
        writers: s.writers,
        rate: 0,
        total: s.writes,
    };
    let took = load::write(&url, plan, Arc::new(Written::new(s.views))).await;
    let port = free_port();
    let server = Server::arcana(bin, &config(s, port, &slot), &url, port).await;
    let ch = channels(&server.addr, 1).await;
    let mut first: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let replay = loop {
        let seen = engine_stats(&ch[0]).await.changes;
        let at = Instant::now();
        if first.is_none() && seen > 0 {
            first = Some((at, seen));
        }
        if seen >= s.writes {
            let (t0, n0) = first.expect("set once changes arrive");
            break (seen - n0) as f64 / at.duration_since(t0).as_secs_f64().max(1e-9);
        }
        assert!(
            at < deadline,
            "backlog not consumed: {seen} of {}",
            s.writes
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let used = server.usage();
    drop(server);
    let _ = arcana::postgres::execute_script(
        &pg.url("postgres"),
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )
    .await;
    Metrics::from([
        ("written_per_s", s.writes as f64 / took.as_secs_f64()),
        ("replayed_per_s", replay),
        ("server_cpu_s", used.cpu_s),
    ])
}

/// The reference run: plain tonic streaming of frames of `frame_bytes`
/// to `subs` streams laid out like the engine's.
async fn run_raw(subs: usize, frame_bytes: usize) -> Metrics {
    let port = free_port();
    let seconds = 8.0;
    let exe = std::env::current_exe().expect("own path");
    let args: Vec<String> = [
        "raw-serve",
        "--port",
        &port.to_string(),
        "--streams",
        &subs.to_string(),
        "--frame-bytes",
        &frame_bytes.to_string(),
        "--seconds",
        &(seconds + 4.0).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = Server::spawn(&exe, &args, port, Server::scratch_dir()).await;
    let idle = server.usage();
    let chans = channels(&server.addr, subs).await;
    let crowd = crowd("raw", &chans, subs, 1, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (u0, f0, t0) = (server.usage(), crowd.frames(), Instant::now());
    let b0 = crowd.counters.bytes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (u1, f1, t1) = (server.usage(), crowd.frames(), Instant::now());
    let b1 = crowd.counters.bytes.load(Ordering::Relaxed);
    crowd.finish().await;
    let dt = t1.duration_since(t0).as_secs_f64();
    let frames = (f1 - f0) as f64;
    Metrics::from([
        ("frames_per_s", frames / dt),
        ("mib_per_s", (b1 - b0) as f64 / dt / 1048576.0),
        ("bytes_per_frame", (b1 - b0) as f64 / frames.max(1.0)),
        ("server_cpu_s", u1.cpu_s - u0.cpu_s),
        (
            "cpu_us_per_frame",
            (u1.cpu_s - u0.cpu_s) * 1e6 / frames.max(1.0),
        ),
        // Measured with the streams open and busy: an upper bound for idle ones.
        (
            "kib_per_subscription",
            u0.rss.saturating_sub(idle.rss) as f64 / 1024.0 / subs as f64,
        ),
        ("server_peak_rss_mib", u1.peak_rss as f64 / 1048576.0),
    ])
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of every metric over runs.
fn medians(runs: &[Metrics]) -> Metrics {
    let mut out = Metrics::new();
    for k in runs[0].keys() {
        let mut v: Vec<f64> = runs.iter().filter_map(|m| m.get(k).copied()).collect();
        out.insert(k, median(&mut v));
    }
    out
}

#[derive(Serialize)]
struct Row {
    spec: Spec,
    runs: Vec<Metrics>,
    median: Metrics,
}

fn cell(m: &Metrics, k: &str, digits: usize) -> String {
    m.get(k)
        .map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

fn print_tables(rows: &[Row]) {
    let load: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            (r.spec.writes > 0 && r.spec.scenario != "backlog") || r.spec.variant == "raw tonic"
        })
        .collect();
    if !load.is_empty() {
        println!("| scenario | variant | subscribers | views | writes | rate/s | p50 ms | p90 ms | p99 ms | max ms | writes/s | frames/s | messages/s | MiB/s | evals/write | queries/write | patches/write | coalesced | server CPU s | CPU µs/frame | peak RSS MiB | KiB/subscription | recovery ms | resyncs | gaps | unconverged |");
        println!("|{}", "---|".repeat(26));
        for r in load {
            let (s, m) = (&r.spec, &r.median);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.scenario,
                s.variant,
                s.subscribers,
                s.views,
                s.writes,
                if s.rate == 0 { "max".into() } else { s.rate.to_string() },
                cell(m, "p50_ms", 2),
                cell(m, "p90_ms", 2),
                cell(m, "p99_ms", 2),
                cell(m, "max_ms", 1),
                cell(m, "writes_per_s", 0),
                cell(m, "frames_per_s", 0),
                cell(m, "messages_per_s", 0),
                cell(m, "mib_per_s", 1),
                cell(m, "evaluations_per_write", 2),
                cell(m, "queries_per_write", 2),
                cell(m, "patches_per_write", 2),
                m.get("coalesced").map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
                cell(m, "server_cpu_s", 2),
                cell(m, "cpu_us_per_frame", 2),
                cell(m, "server_peak_rss_mib", 0),
                cell(m, "kib_per_subscription", 1),
                cell(m, "recovery_ms", 0),
                cell(m, "resyncs", 0),
                cell(m, "gaps", 0),
                cell(m, "unconverged", 0),
            );
        }
    }
    let still: Vec<&Row> = rows
        .iter()
        .filter(|r| r.spec.writes == 0 && r.spec.variant != "raw tonic")
        .collect();
    if !still.is_empty() {
        println!();
        println!("| scenario | sessions | subscriptions | rows per view | snapshot bytes | first frame ms | all snapshots ms | server CPU s | peak RSS MiB | KiB/subscription |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in still {
            let (s, m) = (&r.spec, &r.median);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.scenario,
                s.subscribers,
                s.subscribers * s.per_session,
                s.rows / s.views,
                cell(m, "snapshot_bytes", 0),
                cell(m, "first_frame_ms", 0),
                m.get("setup_s")
                    .map_or("-".into(), |v| format!("{:.0}", v * 1000.0)),
                cell(m, "server_cpu_s", 2),
                cell(m, "server_peak_rss_mib", 0),
                cell(m, "kib_per_subscription", 1),
            );
        }
    }
    for r in rows.iter().filter(|r| r.spec.scenario == "backlog") {
        println!();
        println!("| backlog | commits | written while down (commits/s, {} connections) | replayed after start (commits/s) |", r.spec.writers);
        println!("|---|---|---|---|");
        println!(
            "| wal | {} | {} | {} |",
            r.spec.writes,
            cell(&r.median, "written_per_s", 0),
            cell(&r.median, "replayed_per_s", 0)
        );
    }
    for r in rows.iter().filter(|r| r.spec.variant == "raw tonic") {
        let engine = rows
            .iter()
            .find(|e| e.spec.scenario == r.spec.scenario && e.spec.variant == "optimized");
        if let (Some(e), Some(raw)) = (engine, r.median.get("frames_per_s")) {
            println!();
            println!(
                "{}: engine deliveries {:.0} frames/s = {:.0}% of the raw tonic ceiling ({:.0} frames/s) measured in the same run",
                r.spec.scenario,
                e.median.get("frames_per_s").copied().unwrap_or(0.0),
                e.median.get("frames_per_s").copied().unwrap_or(0.0) / raw * 100.0,
                raw
            );
        }
    }
}

/// The rolling scenario's shape from the command line.
fn rolling_shape(cli: &Cli) -> rolling::Shape {
    let (sessions, views) = if cli.quick {
        (1_000, 100)
    } else {
        (10_000, 1_000)
    };
    let views = cli.views.unwrap_or(views);
    rolling::Shape {
        sessions: cli.subscribers.unwrap_or(sessions),
        views,
        rows: cli.rows.unwrap_or(views * 10),
        rate: cli.rate.unwrap_or(200),
        nodes: if cli.nodes > 1 { cli.nodes } else { 3 },
        pause: Duration::from_millis(cli.roll_pause_ms),
        cluster_extra: cluster_extra(cli),
    }
}

/// Runs `s` on each node count of `--compare-nodes`, alternating the
/// counts within each round of runs so that noise hits them alike.
async fn compare_nodes(bin: &Path, pg: &EmbeddedPostgres, s: &Spec, cli: &Cli) -> Vec<Row> {
    let specs: Vec<Spec> = cli
        .compare_nodes
        .iter()
        .map(|&n| Spec {
            nodes: n.max(1),
            variant: format!("{} node{}", n, if n == 1 { "" } else { "s" }),
            ..s.clone()
        })
        .collect();
    let mut runs: Vec<Vec<Metrics>> = vec![Vec::new(); specs.len()];
    for run in 0..cli.runs {
        for (sp, out) in specs.iter().zip(&mut runs) {
            eprintln!(
                "{} / {} (run {} of {})",
                sp.scenario,
                sp.variant,
                run + 1,
                cli.runs
            );
            out.push(run_engine(bin, pg, sp).await);
        }
    }
    specs
        .into_iter()
        .zip(runs)
        .map(|(spec, runs)| Row {
            median: medians(&runs),
            spec,
            runs,
        })
        .collect()
}

/// The node comparison: one row per scenario and node count (medians of
/// the runs), then what the bus adds to the latency, per scenario, against
/// the first node count.
fn print_nodes(rows: &[Row]) {
    println!();
    println!("| scenario | nodes | sessions | views | writes/s | p50 ms | p90 ms | p99 ms | p50 ms of each run | frames/s | coalesced | server CPU s (all nodes) | peak RSS MiB (all nodes) | gaps | unconverged |");
    println!("|{}", "---|".repeat(15));
    for r in rows {
        let (s, m) = (&r.spec, &r.median);
        let each: Vec<String> = r.runs.iter().map(|m| cell(m, "p50_ms", 2)).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.scenario,
            s.nodes,
            s.subscribers,
            s.views,
            cell(m, "writes_per_s", 0),
            cell(m, "p50_ms", 2),
            cell(m, "p90_ms", 2),
            cell(m, "p99_ms", 2),
            each.join(" / "),
            cell(m, "frames_per_s", 0),
            m.get("coalesced")
                .map_or("-".into(), |c| format!("{:.0}%", c * 100.0)),
            cell(m, "server_cpu_s", 2),
            cell(m, "server_peak_rss_mib", 0),
            cell(m, "gaps", 0),
            cell(m, "unconverged", 0),
        );
    }
    println!();
    println!("| scenario | nodes | runs | p50 added ms (median of per-run differences) | p50 added ms (difference of medians) | p99 added ms (difference of medians) | frames/s ratio |");
    println!("|---|---|---|---|---|---|---|");
    let mut i = 0;
    while i < rows.len() {
        let base = &rows[i];
        let mut j = i + 1;
        while j < rows.len() && rows[j].spec.scenario == base.spec.scenario {
            let r = &rows[j];
            // Run k of every node count ran back to back.
            let mut paired: Vec<f64> = r
                .runs
                .iter()
                .zip(&base.runs)
                .map(|(a, b)| {
                    let p50 = |m: &Metrics| m.get("p50_ms").copied().unwrap_or(f64::NAN);
                    p50(a) - p50(b)
                })
                .collect();
            let get = |row: &Row, k: &str| row.median.get(k).copied().unwrap_or(f64::NAN);
            println!(
                "| {} | {} vs {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.spec.scenario,
                r.spec.nodes,
                base.spec.nodes,
                r.runs.len(),
                median(&mut paired),
                get(r, "p50_ms") - get(base, "p50_ms"),
                get(r, "p99_ms") - get(base, "p99_ms"),
                get(r, "frames_per_s") / get(base, "frames_per_s"),
            );
            j += 1;
        }
        i = j;
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Some(Cmd::RawServe {
        port,
        streams,
        frame_bytes,
        seconds,
    }) = cli.cmd
    {
        raw::serve(port, streams, frame_bytes, seconds).await;
        return;
    }
    let bin = std::env::current_exe()
        .expect("own path")
        .with_file_name("arcana");
    assert!(
        bin.exists(),
        "build the server first: cargo build --release --bin arcana"
    );
    let names: Vec<String> = if cli.scenarios.is_empty() || cli.scenarios.iter().any(|s| s == "all")
    {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        cli.scenarios.clone()
    };
    let pg = EmbeddedPostgres::start(EmbeddedOptions {
        settings: vec![("max_connections".into(), "200".into())],
        ..EmbeddedOptions::default()
    })
    .await
    .expect("PostgreSQL");
    let mut rows: Vec<Row> = Vec::new();
    let mut window_rows: Vec<(String, Vec<Metrics>)> = Vec::new();
    let mut node_rows: Vec<Row> = Vec::new();
    let mut rolling_rows: Vec<(rolling::Shape, Vec<Metrics>)> = Vec::new();
    for name in &names {
        if name == "windows" {
            let shape = windows::Shape::new(cli.quick);
            for run in 0..cli.runs {
                eprintln!("windows (run {} of {})", run + 1, cli.runs);
                for (part, m) in windows::run(&bin, &pg, &shape, cli.compare).await {
                    match window_rows.iter_mut().find(|(p, _)| *p == part) {
                        Some((_, runs)) => runs.push(m),
                        None => window_rows.push((part, vec![m])),
                    }
                }
            }
            continue;
        }
        if name == "offline" {
            // Offline sync has its own shape and table.
            offline::run(&bin, &pg, cli.quick).await;
            continue;
        }
        if name == "rolling" {
            let shape = rolling_shape(&cli);
            let mut runs = Vec::new();
            for run in 0..cli.runs {
                eprintln!("rolling (run {} of {})", run + 1, cli.runs);
                runs.push(rolling::run(&bin, &pg, &shape).await);
            }
            rolling_rows.push((shape, runs));
            continue;
        }
        let s = spec(name, cli.quick, &cli);
        // The backlog replays with the server down: one node is its shape.
        if !cli.compare_nodes.is_empty() && name != "backlog" {
            node_rows.extend(compare_nodes(&bin, &pg, &s, &cli).await);
            continue;
        }
        let mut specs = vec![s.clone()];
        if cli.compare {
            specs.extend(baselines(&s));
        }
        for sp in specs {
            let mut runs = Vec::new();
            for run in 0..cli.runs {
                eprintln!(
                    "{} / {} (run {} of {})",
                    sp.scenario,
                    sp.variant,
                    run + 1,
                    cli.runs
                );
                runs.push(if sp.scenario == "backlog" {
                    run_backlog(&bin, &pg, &sp).await
                } else {
                    run_engine(&bin, &pg, &sp).await
                });
            }
            let median = medians(&runs);
            rows.push(Row {
                spec: sp,
                runs,
                median,
            });
        }
        if name == "fanout" {
            let engine = &rows
                .iter()
                .rev()
                .find(|r| r.spec.scenario == "fanout" && r.spec.variant == "optimized");
            let frame_bytes = engine
                .and_then(|r| r.median.get("bytes_per_frame").copied())
                .unwrap_or(100.0) as usize;
            let mut sp = s.clone();
            sp.variant = "raw tonic".into();
            let mut runs = Vec::new();
            for run in 0..cli.runs {
                eprintln!(
                    "fanout / raw tonic reference (run {} of {})",
                    run + 1,
                    cli.runs
                );
                runs.push(run_raw(s.subscribers, frame_bytes).await);
            }
            let median = medians(&runs);
            rows.push(Row {
                spec: sp,
                runs,
                median,
            });
        }
        std::io::stderr().flush().ok();
    }
    print_tables(&rows);
    if !window_rows.is_empty() {
        windows::print(&window_rows);
    }
    if !node_rows.is_empty() {
        print_nodes(&node_rows);
    }
    for (shape, runs) in &rolling_rows {
        rolling::print(shape, runs);
    }
    if let Some(path) = &cli.json {
        rows.extend(node_rows);
        std::fs::write(path, serde_json::to_string_pretty(&rows).expect("json"))
            .expect("write json");
    }
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .expect("stop");
}
