//! The `windows` scenario: live windows over one long ordered list.
//!
//! 1. Re-anchor: one session moves a 50-row window back and forth near the
//!    start, the middle and the end of the list; each move is timed from
//!    the request to the arrival of its diff, with the server's CPU per move.
//! 2. Live windows: sessions each hold a 50-row window at its own cursor
//!    while writers update rows inside windows (shown columns, patched) and
//!    insert rows into them (the windows re-evaluate); commit-to-client
//!    latency from the `written_us` the writer stores.
//! 3. Big snapshot: one window of 100,000 rows, with snapshots in parts and
//!    without: time to the first frame, time to the whole snapshot, and the
//!    server's peak memory over its idle baseline.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arcana::postgres::embedded::EmbeddedPostgres;
use arcana::proto::{self as pb, client_message::Kind as Req, server_message::Kind as Msg};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::load::{self, Counters};
use super::server::{free_port, Server};
use super::{pct, Metrics, SESSIONS_PER_CONNECTION};

/// Sizes of one run.
pub struct Shape {
    /// Rows in the list.
    pub rows: i64,
    /// Sessions holding a live window.
    pub windows: usize,
    /// Writes per second while they hold them.
    pub rate: u64,
    /// Seconds of writes.
    pub seconds: u64,
    /// Re-anchors per region.
    pub moves: usize,
    /// Rows of the big snapshot.
    pub snapshot_rows: u32,
}

impl Shape {
    /// The scenario's sizes; `quick` is a tenth of the list.
    pub fn new(quick: bool) -> Shape {
        if quick {
            Shape {
                rows: 100_000,
                windows: 200,
                rate: 200,
                seconds: 5,
                moves: 50,
                snapshot_rows: 20_000,
            }
        } else {
            Shape {
                rows: 1_000_000,
                windows: 1_000,
                rate: 500,
                seconds: 20,
                moves: 200,
                snapshot_rows: 100_000,
            }
        }
    }
}

fn config(port: u16, slot: &str, part_bytes: usize, total: bool) -> String {
    // A total counts every row, so with one every change reaches every
    // window: the baseline for routing changes by the windows' reach.
    let total = if total {
        "total_sql = \"SELECT count(*) FROM feed\""
    } else {
        ""
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
max_sessions_per_identity = 100000
max_calls_per_identity = 200000
max_sessions = 100000
snapshot_part_bytes = {part_bytes}
max_message_bytes = 1048576

[database]
pool_size = 16

[[auth.tokens]]
token = "{token}"
user = "bench"
workspace = "bench"
role = "service"
permissions = ["items:read", "arcana:global-admin"]

[[graphs]]
name = "feed"
table = "feed"
permissions = ["items:read"]
sql = "SELECT id, pos, title, seq, written_us FROM feed"
deps = {{ feed = ["*"] }}
patch = {{ feed = ["title", "seq", "written_us"] }}
window = {{ order = ["pos", "id"], default_limit = 50, max_limit = 100000 }}
{total}

[changes]
mode = "wal"
slot = "{slot}"
"#,
        token = load::TOKEN,
    )
}

/// A database with the list: ids 1..=rows at positions 10, 20, ...
async fn database(pg: &EmbeddedPostgres, rows: i64) -> (String, String) {
    let db = format!("bench_w_{:08x}", rand::random::<u32>());
    arcana::postgres::execute_script(&pg.url("postgres"), &format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let url = pg.url(&db);
    arcana::postgres::execute_script(
        &url,
        &format!(
            "CREATE TABLE feed (
                 id bigint PRIMARY KEY,
                 pos bigint NOT NULL,
                 title text NOT NULL,
                 seq bigint NOT NULL DEFAULT 0,
                 written_us bigint NOT NULL DEFAULT 0
             );
             INSERT INTO feed (id, pos, title)
                 SELECT g, g * 10, 'entry number ' || g FROM generate_series(1, {rows}) g;
             CREATE INDEX feed_order ON feed (pos, id);
             ALTER TABLE feed REPLICA IDENTITY FULL;
             ANALYZE feed;"
        ),
    )
    .await
    .expect("schema");
    (db, url)
}

fn window(limit: u32, after_id: i64) -> pb::Window {
    let int = |i: i64| pb::Value {
        kind: Some(pb::value::Kind::Int(i)),
    };
    pb::Window {
        limit,
        cursor: if after_id > 0 {
            vec![int(after_id * 10), int(after_id)]
        } else {
            vec![]
        },
        direction: pb::WindowDirection::After as i32,
        inclusive: false,
    }
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

/// Runs the three parts; returns a row of metrics per part.
pub async fn run(
    bin: &Path,
    pg: &EmbeddedPostgres,
    shape: &Shape,
    compare: bool,
) -> Vec<(String, Metrics)> {
    let (db, url) = database(pg, shape.rows).await;
    let slot = format!("slot_{db}");
    let mut out = Vec::new();
    {
        let port = free_port();
        let server = Server::arcana(bin, &config(port, &slot, 1 << 20, false), &url, port).await;
        eprintln!("  [windows] re-anchoring");
        out.extend(reanchors(&server, shape).await);
        eprintln!("  [windows] live windows under writes");
        out.push(("live windows".into(), live(&server, &url, shape).await));
    }
    if compare {
        let port = free_port();
        let server = Server::arcana(bin, &config(port, &slot, 1 << 20, true), &url, port).await;
        eprintln!("  [windows] live windows, every window evaluated per change");
        out.push((
            "live windows, unrouted (graph with a total)".into(),
            live(&server, &url, shape).await,
        ));
    }
    for (variant, part_bytes) in [("in parts", 1usize << 20), ("whole", 1 << 30)] {
        eprintln!("  [windows] snapshot {variant}");
        let port = free_port();
        let server = Server::arcana(bin, &config(port, &slot, part_bytes, false), &url, port).await;
        out.push((
            format!("snapshot of {} rows, {variant}", shape.snapshot_rows),
            snapshot(&server, shape.snapshot_rows).await,
        ));
    }
    let _ = arcana::postgres::execute_script(
        &pg.url("postgres"),
        &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
    )
    .await;
    out
}

/// A `Connect` session for timing single requests.
struct Session {
    tx: mpsc::Sender<pb::ClientMessage>,
    stream: tonic::Streaming<pb::ServerMessage>,
    next: u64,
}

impl Session {
    async fn open(addr: &str) -> Session {
        let ch = Channel::from_shared(addr.to_owned())
            .expect("address")
            .connect()
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(16);
        let stream = load::client(ch)
            .connect(ReceiverStream::new(rx))
            .await
            .expect("Connect")
            .into_inner();
        Session {
            tx,
            stream,
            next: 0,
        }
    }

    async fn send(&mut self, kind: Req) {
        self.next += 1;
        self.tx
            .send(pb::ClientMessage {
                request_id: self.next,
                kind: Some(kind),
            })
            .await
            .expect("send");
    }

    /// Reads until the reply to the last request and a frame of `view` at
    /// the version the reply names (or any frame for a subscribe) are in.
    /// Returns the time the first frame arrived and the reply.
    async fn settle(&mut self) -> (Option<Instant>, pb::reply::Result) {
        let mut reply = None;
        let mut first = None;
        let mut last_version = None;
        let mut complete = false;
        loop {
            if let Some(r) = &reply {
                let want = match r {
                    pb::reply::Result::Reanchor(a) => Some(a.version),
                    pb::reply::Result::Subscribe(s) => Some(s.version),
                    _ => None,
                };
                if want.is_none() || (complete && last_version == want) {
                    return (first, reply.unwrap());
                }
            }
            let m = tokio::time::timeout(Duration::from_secs(120), self.stream.message())
                .await
                .expect("in time")
                .expect("stream")
                .expect("open");
            let frames = match m.kind {
                Some(Msg::Frame(f)) => vec![f],
                Some(Msg::Frames(b)) => b.frames,
                Some(Msg::Reply(r)) if r.request_id == self.next => {
                    let r = r.result.expect("result");
                    if let pb::reply::Result::Error(e) = &r {
                        panic!("request failed: {} {}", e.code, e.message);
                    }
                    reply = Some(r);
                    vec![]
                }
                _ => vec![],
            };
            for f in frames {
                first.get_or_insert_with(Instant::now);
                complete = !matches!(&f.body, Some(pb::view_frame::Body::Snapshot(s)) if s.more);
                last_version = Some(f.version);
            }
        }
    }
}

/// Part 1: re-anchor latency and CPU near the start, middle and end.
async fn reanchors(server: &Server, shape: &Shape) -> Vec<(String, Metrics)> {
    let mut s = Session::open(&server.addr).await;
    s.send(Req::Subscribe(pb::SubscribeRequest {
        graph: "feed".into(),
        params: HashMap::new(),
        session_id: String::new(),
        window: Some(window(50, 0)),
    }))
    .await;
    let (_, r) = s.settle().await;
    let pb::reply::Result::Subscribe(sub) = r else {
        panic!("subscribe reply")
    };
    let mut out = Vec::new();
    for (name, at) in [
        ("re-anchor near the start", 1_000),
        ("re-anchor in the middle", shape.rows / 2),
        ("re-anchor near the end", shape.rows - 1_000),
    ] {
        let mut lat = Vec::with_capacity(shape.moves);
        let before = server.usage();
        for k in 0..shape.moves {
            // Alternate between two cursors 500 rows apart: every move lands
            // on a new view (the one left closes), so each costs a query.
            let cursor = at + if k % 2 == 0 { 0 } else { 500 };
            let t = Instant::now();
            s.send(Req::Reanchor(pb::ReanchorRequest {
                view_id: sub.view_id.clone(),
                window: Some(window(50, cursor)),
                session_id: String::new(),
            }))
            .await;
            s.settle().await;
            lat.push(t.elapsed().as_micros() as u32);
        }
        let after = server.usage();
        let lat = sorted(lat);
        out.push((
            name.to_string(),
            Metrics::from([
                ("p50_ms", pct(&lat, 0.5)),
                ("p99_ms", pct(&lat, 0.99)),
                (
                    "cpu_us_per_op",
                    (after.cpu_s - before.cpu_s) * 1e6 / shape.moves as f64,
                ),
            ]),
        ));
    }
    out
}

/// Part 2: live windows under writes inside them.
async fn live(server: &Server, url: &str, shape: &Shape) -> Metrics {
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut channels = Vec::new();
    for _ in 0..shape.windows.div_ceil(SESSIONS_PER_CONNECTION) {
        channels.push(
            Channel::from_shared(server.addr.clone())
                .expect("address")
                .connect()
                .await
                .expect("connect"),
        );
    }
    // Windows spread over the list, 50 rows each, at distinct cursors.
    let span = (shape.rows - 100) / shape.windows as i64;
    let cursors: Vec<i64> = (0..shape.windows as i64).map(|i| 1 + i * span).collect();
    let mut tasks = Vec::new();
    for (i, &c) in cursors.iter().enumerate() {
        tasks.push(tokio::spawn(load::subscriber(
            channels[i / SESSIONS_PER_CONNECTION].clone(),
            "feed",
            vec![HashMap::new()],
            Some(window(50, c)),
            counters.clone(),
            Arc::new(AtomicU64::new(0)),
            ready_tx.clone(),
            stopped.clone(),
        )));
    }
    for _ in 0..shape.windows {
        tokio::time::timeout(Duration::from_secs(300), ready_rx.recv())
            .await
            .expect("windows subscribed in time");
    }
    let before = server.usage();
    let started = Instant::now();
    let total = shape.rate * shape.seconds;
    // Rows an earlier part inserted are still there: new ids go past them.
    let (db, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let top: i64 = db
        .query_one("SELECT max(id) FROM feed", &[])
        .await
        .expect("max id")
        .get(0);
    let next_id = Arc::new(AtomicU64::new(top as u64 + 1));
    let mut writers = Vec::new();
    const WRITERS: u64 = 4;
    for w in 0..WRITERS {
        let (url, cursors, next_id) = (url.to_owned(), cursors.clone(), next_id.clone());
        let rate = shape.rate;
        writers.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("writer connects");
            tokio::spawn(conn);
            let now = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint";
            let update = c
                .prepare(&format!(
                    "UPDATE feed SET seq = seq + 1, written_us = {now} WHERE id = $1"
                ))
                .await
                .expect("prepare");
            let insert = c
                .prepare(&format!(
                    "INSERT INTO feed (id, pos, title, written_us) VALUES ($1, $2, 'new', {now})"
                ))
                .await
                .expect("prepare");
            for k in (w..total).step_by(WRITERS as usize) {
                let due = started + Duration::from_secs_f64(k as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let c0 = cursors[rand::random_range(0..cursors.len())];
                let inside = c0 + 1 + rand::random_range(0..40);
                if k % 5 == 4 {
                    // A new row between two of the window's rows.
                    let id = next_id.fetch_add(1, Ordering::Relaxed) as i64;
                    c.execute(&insert, &[&id, &(inside * 10 + 5)])
                        .await
                        .expect("insert");
                } else {
                    c.execute(&update, &[&inside]).await.expect("update");
                }
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let wrote = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.usage();
    let _ = stop.send(true);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("subscriber"));
    }
    let lat = sorted(lat);
    Metrics::from([
        ("windows", shape.windows as f64),
        ("writes_per_s", total as f64 / wrote.as_secs_f64()),
        ("deliveries", lat.len() as f64),
        ("p50_ms", pct(&lat, 0.5)),
        ("p99_ms", pct(&lat, 0.99)),
        ("server_cpu_s", after.cpu_s - before.cpu_s),
        ("gaps", counters.gaps.load(Ordering::Relaxed) as f64),
    ])
}

/// Part 3: one big window's snapshot.
async fn snapshot(server: &Server, rows: u32) -> Metrics {
    let mut s = Session::open(&server.addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = server.usage();
    let t = Instant::now();
    s.send(Req::Subscribe(pb::SubscribeRequest {
        graph: "feed".into(),
        params: HashMap::new(),
        session_id: String::new(),
        window: Some(window(rows, 0)),
    }))
    .await;
    let (first, _) = s.settle().await;
    let all = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let used = server.usage();
    Metrics::from([
        (
            "first_frame_ms",
            first.map_or(f64::NAN, |f| f.duration_since(t).as_secs_f64() * 1e3),
        ),
        ("all_ms", all.as_secs_f64() * 1e3),
        (
            "peak_over_idle_mib",
            (used.peak_rss.saturating_sub(idle.rss)) as f64 / (1 << 20) as f64,
        ),
        (
            "held_over_idle_mib",
            (used.rss.saturating_sub(idle.rss)) as f64 / (1 << 20) as f64,
        ),
    ])
}

/// Prints the scenario's tables.
pub fn print(rows: &[(String, Vec<Metrics>)]) {
    let med = |runs: &[Metrics], k: &str| {
        let mut v: Vec<f64> = runs.iter().filter_map(|m| m.get(k).copied()).collect();
        if v.is_empty() {
            return "—".to_string();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let m = v[v.len() / 2];
        if m.abs() >= 100.0 {
            format!("{m:.0}")
        } else {
            format!("{m:.2}")
        }
    };
    println!("\n### windows\n");
    println!("| part | p50 ms | p99 ms | CPU µs per move |");
    println!("|---|---|---|---|");
    for (name, runs) in rows.iter().filter(|(n, _)| n.starts_with("re-anchor")) {
        println!(
            "| {name} | {} | {} | {} |",
            med(runs, "p50_ms"),
            med(runs, "p99_ms"),
            med(runs, "cpu_us_per_op")
        );
    }
    println!();
    println!("| part | windows | writes/s | deliveries | p50 ms | p99 ms | server CPU s | gaps |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, runs) in rows.iter().filter(|(n, _)| n.starts_with("live windows")) {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |",
            med(runs, "windows"),
            med(runs, "writes_per_s"),
            med(runs, "deliveries"),
            med(runs, "p50_ms"),
            med(runs, "p99_ms"),
            med(runs, "server_cpu_s"),
            med(runs, "gaps")
        );
    }
    println!();
    println!("| part | first frame ms | whole snapshot ms | server peak over idle MiB | held after MiB |");
    println!("|---|---|---|---|---|");
    for (name, runs) in rows.iter().filter(|(n, _)| n.starts_with("snapshot")) {
        println!(
            "| {name} | {} | {} | {} | {} |",
            med(runs, "first_frame_ms"),
            med(runs, "all_ms"),
            med(runs, "peak_over_idle_mib"),
            med(runs, "held_over_idle_mib")
        );
    }
}
