//! The load benchmark: a real PostgreSQL, the real `arcana serve` process,
//! N subscribers over real gRPC, and writes from a plain SQL connection.
//! Reports commit-to-client latency percentiles, throughput, and the
//! server's CPU time and memory per subscriber.
//!
//!     cargo build --release --bin arcana --bin arcana-bench
//!     target/release/arcana-bench [--quick]
//!
//! Latency of write `s` is measured from the moment its COMMIT returned to
//! the first frame, on each subscriber, showing write `s` or a later one
//! (bursts are coalesced, so a client may skip straight to a later state).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arcana::app::{DEMO_CONFIG, DEMO_SCHEMA};
use arcana::client::ViewState;
use arcana::engine::{RowKey, Value};
use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use arcana::proto::{
    self as pb, arcana_service_client::ArcanaServiceClient, client_message::Kind as Req,
    server_message::Kind as Msg,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

struct Server {
    child: Child,
    addr: String,
    _config: tempdir::Dir,
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Server {
    async fn start(bin: &PathBuf, url: &str, mode: &str, slot: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("arcana-bench-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!("{DEMO_CONFIG}\n[changes]\nmode = \"{mode}\"\nslot = \"{slot}\"\n")
            .replace(
                "[server]\nlisten = \"127.0.0.1:50051\"",
                &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[database]\npool_size = 16"),
            );
        let path = dir.join("arcana.toml");
        std::fs::write(&path, cfg).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&path)
            .args(["--database-url", url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start arcana serve");
        let addr = format!("http://127.0.0.1:{port}");
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Server {
                    child,
                    addr,
                    _config: tempdir::Dir(dir),
                };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("arcana serve did not start");
    }

    /// (CPU seconds used so far, resident memory in bytes).
    fn usage(&self) -> (f64, u64) {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
            / tck;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        (cpu, rss)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn bearer(token: &'static str) -> impl tonic::service::Interceptor + Clone {
    move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Ok(req)
    }
}

/// Opens a session subscribed to `params` of project_tasks; returns once its
/// snapshot is in, then records (seq, arrival) for every frame that moves
/// task 1's title to `bench <seq>`.
async fn subscriber(channel: Channel, limit: i64, arrivals: Arrivals, ready: mpsc::Sender<()>) {
    let mut client = ArcanaServiceClient::with_interceptor(channel, bearer("dev-alice"));
    let (tx, rx) = mpsc::channel(4);
    let mut stream = client
        .connect(ReceiverStream::new(rx))
        .await
        .expect("connect")
        .into_inner();
    let params: HashMap<String, pb::Value> = [
        (
            "project_id".to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Int(1)),
            },
        ),
        (
            "limit".to_string(),
            pb::Value {
                kind: Some(pb::value::Kind::Int(limit)),
            },
        ),
    ]
    .into();
    tx.send(pb::ClientMessage {
        request_id: 1,
        kind: Some(Req::Subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params,
            session_id: String::new(),
        })),
    })
    .await
    .unwrap();
    let mut state = ViewState::default();
    let mut announced = false;
    let key = RowKey::new("tasks", "1");
    let mut last = 0;
    while let Ok(Some(m)) = stream.message().await {
        if let Some(Msg::Frame(f)) = m.kind {
            state.apply(&f).expect("frames apply in order");
            if !announced {
                announced = true;
                let _ = ready.send(()).await;
            }
            if let Some(Value::String(t)) = state.rows.get(&key).and_then(|r| r.get("title")) {
                if let Some(seq) = t.strip_prefix("bench ").and_then(|s| s.parse::<u64>().ok()) {
                    if seq > last {
                        last = seq;
                        arrivals.lock().unwrap().push((seq, Instant::now()));
                    }
                }
            }
        }
    }
    drop(tx);
}

struct Outcome {
    latencies_ms: Vec<f64>,
    elapsed: Duration,
    writes: u64,
    cpu_s: f64,
    rss_per_sub: f64,
    coalesced: f64,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One scenario: `subs` sessions (over `subs/50` connections) on `views`
/// distinct views, `writes` single-row commits at `rate` per second (0: as
/// fast as one connection goes).
async fn scenario(
    bin: &PathBuf,
    pg: &EmbeddedPostgres,
    mode: &str,
    subs: usize,
    views: usize,
    writes: u64,
    rate: u64,
) -> Outcome {
    let db = format!("bench_{:08x}", rand::random::<u32>());
    arcana::postgres::execute_script(&pg.url("postgres"), &format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = pg.url(&db);
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .unwrap();
    let server = Server::start(bin, &url, mode, &format!("slot_{db}")).await;
    let (cpu0, rss0) = server.usage();

    let mut channels = Vec::new();
    for _ in 0..subs.div_ceil(50) {
        channels.push(
            Channel::from_shared(server.addr.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let (ready_tx, mut ready_rx) = mpsc::channel(subs);
    let mut all: Vec<Arrivals> = Vec::new();
    for i in 0..subs {
        let a: Arrivals = Arc::default();
        all.push(a.clone());
        // Distinct views differ only in `limit` (all above the task count).
        tokio::spawn(subscriber(
            channels[i / 50].clone(),
            50 + (i % views) as i64,
            a,
            ready_tx.clone(),
        ));
    }
    for _ in 0..subs {
        ready_rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rss1) = server.usage();

    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let stmt = c
        .prepare("UPDATE tasks SET title = $1 WHERE id = 1")
        .await
        .unwrap();
    let mut commits: Vec<Instant> = Vec::with_capacity(writes as usize);
    let start = Instant::now();
    for s in 1..=writes {
        if rate > 0 {
            let due = start + Duration::from_secs_f64((s - 1) as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        c.execute(&stmt, &[&format!("bench {s}")]).await.unwrap();
        commits.push(Instant::now());
        if mode == "none" {
            // Explicit notification, as an app without change detection would.
            let mut n =
                ArcanaServiceClient::with_interceptor(channels[0].clone(), bearer("dev-service"));
            n.notify(pb::NotifyRequest {
                changes: vec![pb::Change {
                    table: "tasks".into(),
                    id: "1".into(),
                    columns: vec!["title".into()],
                }],
            })
            .await
            .unwrap();
        }
    }
    // Wait until every subscriber shows the last write.
    let deadline = Instant::now() + Duration::from_secs(60);
    while all
        .iter()
        .any(|a| a.lock().unwrap().last().map(|x| x.0) != Some(writes))
    {
        assert!(Instant::now() < deadline, "subscribers did not converge");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let (cpu1, _) = server.usage();

    let mut lat = Vec::new();
    let mut seen = 0usize;
    for a in &all {
        let a = a.lock().unwrap();
        seen += a.len();
        let mut j = 0;
        for (i, commit) in commits.iter().enumerate() {
            let s = i as u64 + 1;
            while j < a.len() && a[j].0 < s {
                j += 1;
            }
            if let Some((_, at)) = a.get(j) {
                lat.push(at.saturating_duration_since(*commit).as_secs_f64() * 1000.0);
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    drop(server);
    Outcome {
        latencies_ms: lat,
        elapsed,
        writes,
        cpu_s: cpu1 - cpu0,
        rss_per_sub: rss1.saturating_sub(rss0) as f64 / subs as f64,
        coalesced: 1.0 - seen as f64 / (subs as f64 * writes as f64),
    }
}

/// Writes `commits` single-row commits (4 connections) while the server is
/// down, starts it, and measures how fast its WAL listener works through the
/// backlog: the time until the slot confirms the last write.
async fn backlog(bin: &PathBuf, pg: &EmbeddedPostgres, commits: usize) -> (f64, f64) {
    let db = format!("bench_{:08x}", rand::random::<u32>());
    arcana::postgres::execute_script(&pg.url("postgres"), &format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = pg.url(&db);
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .unwrap();
    let slot = format!("slot_{db}");
    drop(Server::start(bin, &url, "wal", &slot).await); // creates the slot, then stops
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let stmt = c
                .prepare("UPDATE tasks SET title = $1 WHERE id = $2")
                .await
                .unwrap();
            for s in 0..commits / 4 {
                c.execute(&stmt, &[&format!("backlog {s}"), &((w % 4) as i64 + 1)])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let write_rate = commits as f64 / start.elapsed().as_secs_f64();
    let mut start = Instant::now();
    let server = Server::start(bin, &url, "wal", &slot).await;
    let channel = Channel::from_shared(server.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin = ArcanaServiceClient::with_interceptor(channel, bearer("dev-service"));
    let mut moving = false;
    loop {
        // Each commit reaches the engine as one change (one row, one table).
        let seen = admin
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .changes;
        if !moving && seen > 0 {
            // Count from the first change: server startup is not replay.
            moving = true;
            start = Instant::now();
        }
        if seen >= commits as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "backlog not consumed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let replay = commits as f64 / start.elapsed().as_secs_f64();
    drop(server);
    (write_rate, replay)
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let bin = std::env::current_exe().unwrap().with_file_name("arcana");
    assert!(
        bin.exists(),
        "build the server first: cargo build --release --bin arcana"
    );
    let pg = EmbeddedPostgres::start(EmbeddedOptions::default())
        .await
        .expect("PostgreSQL");
    let (writes, burst) = if quick { (100, 500) } else { (300, 2000) };
    let runs: Vec<(&str, usize, usize, u64, u64)> = vec![
        // (mode, subscribers, distinct views, writes, rate/s)
        ("wal", 1, 1, writes, 100),
        ("wal", 100, 1, writes, 100),
        ("wal", 1000, 1, writes, 100),
        ("wal", 100, 100, writes / 3, 20),
        ("notify", 100, 1, writes, 100),
        ("none", 100, 1, writes, 100),
        ("wal", 100, 1, burst, 0),
        ("notify", 100, 1, burst, 0),
    ];
    println!("| mode | subscribers | views | writes | rate/s | p50 ms | p90 ms | p99 ms | max ms | writes/s | coalesced | server CPU s | KiB/subscriber |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (mode, subs, views, w, rate) in runs {
        let o = scenario(&bin, &pg, mode, subs, views, w, rate).await;
        let l = &o.latencies_ms;
        println!(
            "| {mode} | {subs} | {views} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0}% | {:.2} | {:.1} |",
            o.writes,
            if rate == 0 { "max".to_string() } else { rate.to_string() },
            pct(l, 0.5),
            pct(l, 0.9),
            pct(l, 0.99),
            pct(l, 1.0),
            o.writes as f64 / o.elapsed.as_secs_f64(),
            o.coalesced * 100.0,
            o.cpu_s,
            o.rss_per_sub / 1024.0,
        );
    }
    let n = if quick { 4000 } else { 20000 };
    let (write_rate, replay) = backlog(&bin, &pg, n).await;
    println!();
    println!("| backlog | commits | written while down (commits/s, 4 connections) | replayed after start (commits/s) |");
    println!("|---|---|---|---|");
    println!("| wal | {n} | {write_rate:.0} | {replay:.0} |");
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}
