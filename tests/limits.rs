//! Limits on what one peer can make the server hold: connections that send
//! nothing, sessions, views per Sync, unread replies, and echoed input.

mod common;

use std::time::{Duration, Instant};

use arcana::proto::{self as pb, client_message::Kind as Req, server_message::Kind as Msg};
use common::*;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn view(project_id: i64) -> pb::SyncView {
    pb::SyncView {
        graph: "project_tasks".into(),
        params: project(project_id),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_sync_naming_too_many_views_is_refused() {
    let h = Harness::with(|c| c.server.max_sync_views = 10).await;
    let mut l = h.live("dev-alice").await;
    let e = l
        .request(Req::Sync(pb::SyncRequest {
            views: (0..11).map(view).collect(),
            session_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted as i32, "{}", e.message);
    assert!(e.message.contains("server.max_sync_views"), "{}", e.message);
    // At the limit it works, and the session goes on.
    let r = l.sync((0..10).map(view).collect()).await;
    assert_eq!(r.results.len(), 10);
    // The unary call has the same limit.
    let mut c = h.client("dev-alice").await;
    let mut stream = c
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let Some(Msg::Opened(o)) = stream.message().await.unwrap().unwrap().kind else {
        panic!("opened first")
    };
    let e = c
        .sync(pb::SyncRequest {
            views: (0..11).map(view).collect(),
            session_id: o.session_id,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn echoed_input_is_cut_short() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let long = "g".repeat(200_000);
    let e = l.subscribe(&long, project(1)).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32);
    assert!(e.message.len() < 1024, "{} bytes", e.message.len());
    assert!(e.message.contains("gggg…`"), "{}", e.message);
    // The same in every entry of a Sync.
    let r = l
        .sync(
            (0..5)
                .map(|_| pb::SyncView {
                    graph: long.clone(),
                    ..Default::default()
                })
                .collect(),
        )
        .await;
    for res in r.results {
        let m = res.error.expect("an error").message;
        assert!(m.len() < 1024, "{} bytes", m.len());
    }
    let e = h
        .client("dev-alice")
        .await
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            // Under the 64 KiB a Subscribe may take.
            session_id: long[..60_000].to_owned(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().len() < 1024);
}

#[tokio::test]
async fn notify_for_a_table_no_graph_reads_is_not_found() {
    let h = Harness::start().await;
    let mut c = h.client("dev-service").await;
    let e = c
        .notify(pb::NotifyRequest {
            changes: vec![pb::Change {
                table: "invoices".into(),
                id: "1".into(),
                columns: vec![],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert!(e.message().contains("`invoices`"), "{}", e.message());
    c.notify(pb::NotifyRequest {
        changes: vec![pb::Change {
            table: "tasks".into(),
            id: "1".into(),
            columns: vec![],
            ..Default::default()
        }],
    })
    .await
    .expect("a table a graph reads");
}

#[tokio::test]
async fn values_out_of_range_for_their_column_are_invalid_arguments() {
    let h = Harness::with_extra(
        "",
        r#"
[[mutations]]
name = "set_due"
permissions = ["tasks:write"]
sql = "UPDATE tasks SET due_at = :due WHERE id = :id AND workspace_id = :workspace_id RETURNING id"
changes = [{ table = "tasks", columns = ["due_at"], id = "id" }]

[mutations.params.id]
type = "int"
required = true

[mutations.params.due]
type = "timestamp"
required = true
"#,
        |_| {},
    )
    .await;
    let mut l = h.live("dev-alice").await;
    let e = l
        .mutate(
            "move_task",
            params(&[("id", int(1)), ("position", int(2_147_483_648))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
    assert!(e.message.contains("int4"), "{}", e.message);
    assert!(e.message.contains("param `position`"), "{}", e.message);
    let ts = |seconds: i64| pb::Value {
        kind: Some(pb::value::Kind::Timestamp(prost_types::Timestamp {
            seconds,
            nanos: 0,
        })),
    };
    // 10,000 BC, before PostgreSQL's earliest timestamp.
    let e = l
        .mutate(
            "set_due",
            params(&[("id", int(1)), ("due", ts(-377_705_116_800))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
    assert!(e.message.contains("range"), "{}", e.message);
    // So far out that microseconds overflow 64 bits: refused, not taken for infinity.
    for seconds in [i64::MAX, i64::MIN] {
        let e = l
            .mutate("set_due", params(&[("id", int(1)), ("due", ts(seconds))]))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
        assert!(e.message.contains("range"), "{}", e.message);
    }
    // A timestamp's nanos must lie in 0..=999,999,999.
    for nanos in [-1, 2_000_000_000] {
        let due = pb::Value {
            kind: Some(pb::value::Kind::Timestamp(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos,
            })),
        };
        let e = l
            .mutate("set_due", params(&[("id", int(1)), ("due", due)]))
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
        assert!(e.message.contains("param `due`"), "{}", e.message);
        assert!(
            e.message.contains(&format!("nanos {nanos}")),
            "{}",
            e.message
        );
    }
    l.mutate(
        "set_due",
        params(&[("id", int(1)), ("due", ts(1_700_000_000))]),
    )
    .await
    .expect("an ordinary time");
    assert_eq!(
        h.query_i64("SELECT position::int8 FROM tasks WHERE id = 1")
            .await,
        1,
        "nothing wrapped"
    );
}

#[tokio::test]
async fn sessions_are_capped_per_identity_and_in_total() {
    let h = Harness::with(|c| {
        c.server.max_sessions_per_identity = 2;
        c.server.max_sessions = 3;
    })
    .await;
    let a1 = h.live("dev-alice").await;
    let _a2 = h.live("dev-alice").await;
    let e = Live::connect(h.client("dev-alice").await)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("server.max_sessions_per_identity"),
        "{}",
        e.message()
    );
    let e = h
        .client("dev-alice")
        .await
        .open_session(pb::OpenSessionRequest {})
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let _b = h.live("dev-bob").await;
    let e = Live::connect(h.client("dev-carol").await)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("server.max_sessions"),
        "{}",
        e.message()
    );
    // Closing a session gives its slot back.
    drop(a1);
    let deadline = Instant::now() + WAIT;
    loop {
        match Live::connect(h.client("dev-carol").await).await {
            Ok(mut l) => {
                l.ping().await;
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot not released: {e}"),
        }
    }
}

/// A client that writes requests without reading replies is slowed down,
/// not disconnected: every reply arrives once it reads.
#[tokio::test]
async fn a_client_that_does_not_read_is_held_back_not_killed() {
    const PINGS: u64 = 5_000;
    let h = Harness::with(|c| c.engine.session_queue = 64).await;
    let mut c = h.client("dev-alice").await;
    let (tx, rx) = mpsc::channel(64);
    let mut stream = c
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let writer = tokio::spawn(async move {
        for id in 1..=PINGS {
            let ping = pb::ClientMessage {
                request_id: id,
                kind: Some(Req::Ping(pb::PingRequest {})),
            };
            if tx.send(ping).await.is_err() {
                return (id, tx);
            }
        }
        (PINGS, tx)
    });
    // Read nothing while the client writes as fast as it can.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut replies = 0u64;
    let mut next = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while replies < PINGS {
        assert!(Instant::now() < deadline, "only {replies} replies");
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a reply in time")
            .unwrap_or_else(|e| panic!("stream failed after {replies} replies: {e}"))
            .expect("stream open");
        match msg.kind {
            Some(Msg::Opened(_)) => {}
            Some(Msg::Reply(r)) => {
                assert_eq!(r.request_id, next, "replies in order");
                assert!(
                    matches!(r.result, Some(pb::reply::Result::Ping(_))),
                    "{r:?}"
                );
                next += 1;
                replies += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let (sent, tx) = writer.await.unwrap();
    assert_eq!(sent, PINGS);
    // The session is still alive.
    tx.send(pb::ClientMessage {
        request_id: PINGS + 1,
        kind: Some(Req::Subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: String::new(),
            window: None,
        })),
    })
    .await
    .unwrap();
    let msg = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(&msg.kind, Some(Msg::Reply(r)) if r.request_id == PINGS + 1),
        "{msg:?}"
    );
}

async fn describe_ok(c: &mut Client) -> Duration {
    let t = Instant::now();
    c.describe(pb::DescribeRequest {})
        .await
        .expect("describe answers");
    t.elapsed()
}

/// Connections that never send a request are closed after the timeout; past
/// the cap they wait in the backlog; a connected client keeps being served.
#[tokio::test]
async fn silent_connections_are_capped_and_closed() {
    const CAP: usize = 16;
    let h = Harness::with(|c| {
        c.server.max_connections = CAP;
        c.server.handshake_timeout_ms = 500;
    })
    .await;
    let mut live = h.client("dev-alice").await;
    describe_ok(&mut live).await;
    let addr = h.app().addr;
    let mut silent = Vec::new();
    for _ in 0..CAP * 3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The connected client is unaffected while the flood sits there.
    for _ in 0..5 {
        let took = describe_ok(&mut live).await;
        assert!(took < Duration::from_secs(1), "describe took {took:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each silent connection is closed after the timeout, those beyond the
    // cap once a slot frees; none stays open.
    let started = Instant::now();
    for (i, s) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's HTTP/2 preface
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "silent connection {i} still open");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed after the timeout, not at once ({took:?})"
    );
    // New clients are served again.
    let mut fresh = h.client("dev-bob").await;
    describe_ok(&mut fresh).await;
    describe_ok(&mut live).await;
}

// ---- Load figures (docs/SECURITY.md) ------------------------------------
//
// cargo test --release --test limits load_figures -- --ignored --nocapture
//
// Runs `arcana serve` as its own process with a 1,024 file-descriptor limit,
// so its memory and CPU can be read from /proc, and prints a table. Every
// connection goes to 127.0.0.1; every phase is bounded in count and time.

/// A server process and what /proc says about it.
struct Served {
    child: std::process::Child,
    addr: String,
    config: std::path::PathBuf,
}

impl Served {
    async fn start(server_toml: &str) -> Served {
        let url = fresh_database().await;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let text = arcana::app::DEMO_CONFIG
            .replace("[server]\n", &format!("[server]\n{server_toml}\n"))
            + "\n[changes]\nmode = \"none\"\n";
        let config = std::env::temp_dir().join(format!("load-{port}.toml"));
        std::fs::write(&config, text).unwrap();
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 1024 && exec {} serve --config {} --listen 127.0.0.1:{port}",
                env!("CARGO_BIN_EXE_arcana"),
                config.display()
            ))
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "error")
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Served {
            child,
            addr,
            config,
        }
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory in MiB.
    fn rss_mib(&self) -> f64 {
        self.proc_field("status", "VmRSS:") as f64 / 1024.0
    }

    /// User plus system CPU time in seconds.
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        (f[11] + f[12]) as f64 / 100.0 // utime, stime in clock ticks
    }

    async fn client(&self, token: &str) -> Client {
        let ch = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::arcana_service_client::ArcanaServiceClient::with_interceptor(ch, Bearer(token.into()))
            .max_encoding_message_size(4 << 20)
            .max_decoding_message_size(64 << 20)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Describe latencies on an open connection for `period`.
async fn probe(c: &mut Client, period: Duration) -> Vec<Duration> {
    let end = Instant::now() + period;
    let mut out = Vec::new();
    while Instant::now() < end {
        out.push(describe_ok(c).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.sort();
    out
}

async fn flood(served: &Served, label: &str, silent: usize) {
    let mut c = served.client("dev-alice").await;
    let quiet = probe(&mut c, Duration::from_secs(2)).await;
    let cpu0 = served.cpu_secs();
    let mut socks = Vec::new();
    for _ in 0..silent {
        match tokio::net::TcpStream::connect(&served.addr).await {
            Ok(s) => socks.push(s),
            Err(_) => break,
        }
    }
    let busy = probe(&mut c, Duration::from_secs(4)).await;
    let cpu = served.cpu_secs() - cpu0;
    // A new client during the flood waits for a slot.
    let t = Instant::now();
    let mut fresh = served.client("dev-bob").await;
    describe_ok(&mut fresh).await;
    let fresh_ms = t.elapsed().as_secs_f64() * 1000.0;
    // How many silent connections the server closes within 10 s more.
    let opened = socks.len();
    let waits = socks.into_iter().map(|mut s| {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let read = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
            read.await.is_ok()
        })
    });
    let mut closed = 0;
    for w in waits.collect::<Vec<_>>() {
        closed += usize::from(w.await.unwrap());
    }
    println!(
        "| {label} | {opened} | {closed} | {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.2} | {:.0} |",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy.last().unwrap().as_secs_f64() * 1000.0,
        cpu,
        fresh_ms,
    );
}

/// One address opens `n` connections with one request each (an open
/// `Connect` with a valid token, or a refused `Describe`) while a client at
/// another address times fresh connections' health checks.
async fn request_flood(served: &Served, label: &str, authenticated: bool, n: usize) {
    let addr: std::net::SocketAddr = served.addr.parse().unwrap();
    let flood = tokio::spawn(async move {
        let mut held = Vec::new();
        let mut attempted = 0;
        for batch in 0..n.div_ceil(50) {
            let tasks: Vec<_> = (0..50.min(n - batch * 50))
                .map(|_| {
                    tokio::spawn(async move {
                        let mut raw = Raw::connect(addr, [127, 0, 0, 1]).await?;
                        if authenticated {
                            let _ = raw.open_connect(&[ALICE]).await;
                        } else {
                            let _ = raw.unary(DESCRIBE, &[]).await;
                        }
                        Some(raw)
                    })
                })
                .collect();
            for t in tasks {
                attempted += 1;
                held.extend(t.await.unwrap());
            }
        }
        (attempted, held)
    });
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        let (status, took) = health_from(addr, [127, 0, 0, 2]).await;
        assert_eq!(status, 1, "SERVING");
        times.push(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (attempted, mut held) = flood.await.unwrap();
    let served_conns = held.len();
    let mut closed = 0;
    for r in &mut held {
        closed += usize::from(r.closed_within(Duration::from_millis(10)).await);
    }
    times.sort();
    println!(
        "| {label} | {attempted} | {served_conns} | {closed} | {:.1} / {:.1} |",
        percentile(&times, 0.5),
        times.last().unwrap().as_secs_f64() * 1000.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load run for docs/SECURITY.md; run with --ignored --nocapture"]
async fn load_figures() {
    println!("\n| one address floods | connections attempted | got an HTTP/2 connection | closed by the server after 4 s | other address: new connection's health check p50 / max ms |");
    println!("|---|---|---|---|---|");
    {
        let s = Served::start("").await;
        request_flood(&s, "600 unauthenticated Describes", false, 600).await;
    }
    {
        let s = Served::start("").await;
        request_flood(&s, "600 Connects with a valid token", true, 600).await;
    }

    println!("\n| silent flood | connections opened | closed by the server | Describe p50 / p99 ms before | during: p50 / p99 / max ms | server CPU s in 4 s | new client's first Describe ms |");
    println!("|---|---|---|---|---|---|---|");
    {
        let s = Served::start("handshake_timeout_ms = 2000").await;
        flood(&s, "defaults (512 connections)", 1_500).await;
    }
    {
        // Past the descriptor limit: accept fails with EMFILE and backs off.
        let s = Served::start("handshake_timeout_ms = 2000\nmax_connections = 4096").await;
        flood(&s, "cap above the fd limit (EMFILE)", 1_500).await;
    }

    println!("\n| concurrent Syncs | requests | request size | refused | server RSS MiB before | after | peak (VmHWM) |");
    println!("|---|---|---|---|---|---|---|");
    let s = Served::start("").await;
    for (label, views, n) in [
        ("empty views, ~1 MiB each", 500_000usize, 8usize),
        ("200 distinct views each (the cap)", 200, 8),
    ] {
        let before = s.rss_mib();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut c = s.client("dev-alice").await;
            tasks.push(tokio::spawn(async move {
                let (tx, rx) = mpsc::channel(4);
                let mut stream = c
                    .connect(ReceiverStream::new(rx))
                    .await
                    .unwrap()
                    .into_inner();
                let views: Vec<pb::SyncView> = (0..views)
                    .map(|i| {
                        if views > 1_000 {
                            pb::SyncView::default()
                        } else {
                            view(i as i64 + 1)
                        }
                    })
                    .collect();
                let size = prost::Message::encoded_len(&pb::SyncRequest {
                    views: views.clone(),
                    session_id: String::new(),
                });
                tx.send(pb::ClientMessage {
                    request_id: 1,
                    kind: Some(Req::Sync(pb::SyncRequest {
                        views,
                        session_id: String::new(),
                    })),
                })
                .await
                .unwrap();
                loop {
                    let m = stream.message().await.unwrap().unwrap();
                    if let Some(Msg::Reply(r)) = m.kind {
                        let refused = matches!(r.result, Some(pb::reply::Result::Error(_)));
                        return (size, refused);
                    }
                }
            }));
        }
        let mut size = 0;
        let mut refused = 0;
        for t in tasks {
            let (sz, r) = t.await.unwrap();
            size = sz;
            refused += usize::from(r);
        }
        let peak = s.proc_field("status", "VmHWM:") as f64 / 1024.0;
        println!(
            "| {label} | {n} | {:.2} MiB | {refused} | {:.1} | {:.1} | {peak:.1} |",
            size as f64 / (1 << 20) as f64,
            before,
            s.rss_mib()
        );
    }

    println!("\n| stalled readers | sessions | pings each, unread | server RSS MiB before | while stalled | after reading |");
    println!("|---|---|---|---|---|---|");
    let before = s.rss_mib();
    let mut stalled = Vec::new();
    const SESSIONS: usize = 50;
    const PINGS: u64 = 5_000;
    for _ in 0..SESSIONS {
        let mut c = s.client("dev-carol").await;
        let (tx, rx) = mpsc::channel(64);
        let stream = c
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let writer = tokio::spawn(async move {
            for id in 1..=PINGS {
                let msg = pb::ClientMessage {
                    request_id: id,
                    kind: Some(Req::Ping(pb::PingRequest {})),
                };
                // Bounded: a writer held back for 10 s gives up.
                match tokio::time::timeout(Duration::from_secs(10), tx.send(msg)).await {
                    Ok(Ok(())) => {}
                    _ => break,
                }
            }
            tx
        });
        stalled.push((stream, writer));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = s.rss_mib();
    let mut replies = 0u64;
    for (mut stream, writer) in stalled {
        let mut got = 0;
        while got < PINGS {
            let m = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("reply in time")
                .expect("stream alive")
                .expect("stream open");
            if let Some(Msg::Reply(_)) = m.kind {
                got += 1;
            }
        }
        replies += got;
        drop(writer.await);
    }
    println!(
        "| Connect, no reads for 3 s | {SESSIONS} | {PINGS} | {before:.1} | {during:.1} | {:.1} |",
        s.rss_mib()
    );
    assert_eq!(replies, SESSIONS as u64 * PINGS);
}

const SLEEPY_GRAPH: &str = r#"
[[graphs]]
name = "sleepy"
table = "tasks"
sql = """
SELECT t.id, t.title FROM tasks t
WHERE t.workspace_id = :workspace_id AND t.id = :n AND pg_sleep(0.4) IS NOT NULL
"""
deps = { tasks = ["title"] }

[graphs.params.n]
type = "int"
required = true
"#;

#[tokio::test]
async fn first_evaluations_wait_for_an_evaluation_slot() {
    let h = Harness::with_extra("", SLEEPY_GRAPH, |c| c.engine.eval_concurrency = 1).await;
    let client = h.client("dev-alice").await;
    let subscribes: Vec<_> = (1..=4)
        .map(|n| {
            let mut c = client.clone();
            tokio::spawn(async move {
                let mut l = Live::connect(c.clone()).await.unwrap();
                l.subscribe("sleepy", params(&[("n", int(n))]))
                    .await
                    .unwrap();
                let _ = &mut c;
            })
        })
        .collect();
    // The most first evaluations ever running at once, as PostgreSQL sees them.
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribes.iter().any(|s| !s.is_finished()) && Instant::now() < deadline {
        let running = h
            .query_i64(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE state = 'active' AND query LIKE '%pg_sleep(0.4)%' AND pid <> pg_backend_pid()",
            )
            .await;
        most = most.max(running);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in subscribes {
        s.await.unwrap();
    }
    assert_eq!(
        most, 1,
        "engine.eval_concurrency = 1 bounds first evaluations too"
    );
}

// ---- Connection fairness ------------------------------------------------

/// A raw HTTP/2 connection from a chosen loopback address (all of 127/8 is
/// local, so each address is a different peer to the server).
struct Raw {
    send: h2::client::SendRequest<bytes::Bytes>,
    /// Ends when the server closes the connection.
    closed: tokio::task::JoinHandle<()>,
    /// Calls left open (their streams stay alive while these are held).
    open: Vec<h2::SendStream<bytes::Bytes>>,
}

impl Raw {
    /// Connects from `local`; `None` when the server closes it before the
    /// HTTP/2 handshake completes.
    async fn connect(addr: std::net::SocketAddr, local: [u8; 4]) -> Option<Raw> {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from((local, 0))).unwrap();
        let tcp = sock.connect(addr).await.ok()?;
        let (send, conn) = tokio::time::timeout(WAIT, h2::client::handshake(tcp))
            .await
            .ok()?
            .ok()?;
        let closed = tokio::spawn(async move {
            let _ = conn.await;
        });
        Some(Raw {
            send,
            closed,
            open: Vec::new(),
        })
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut req = http::Request::post(format!("http://arcana{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    /// Sends one empty-message unary call and returns its `grpc-status`.
    async fn unary(&mut self, path: &str, headers: &[(&str, &str)]) -> Option<String> {
        let send = self.send.clone().ready().await.ok()?;
        let (resp, mut body) = send
            .clone()
            .send_request(Self::request(path, headers), false)
            .ok()?;
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .ok()?;
        let resp = tokio::time::timeout(WAIT, resp).await.ok()?.ok()?;
        if let Some(s) = resp.headers().get("grpc-status") {
            return Some(s.to_str().unwrap().to_owned());
        }
        let mut body = resp.into_body();
        while let Some(d) = body.data().await {
            let d = d.ok()?;
            let _ = body.flow_control().release_capacity(d.len());
        }
        let trailers = body.trailers().await.ok()??;
        Some(trailers.get("grpc-status")?.to_str().unwrap().to_owned())
    }

    /// Opens `Connect` and keeps the call open; returns the status the
    /// response headers carry, if they end the call (a refusal).
    async fn open_connect(&mut self, headers: &[(&str, &str)]) -> Result<(), String> {
        let send = self.send.clone().ready().await.map_err(|e| e.to_string())?;
        let (resp, body) = send
            .clone()
            .send_request(
                Self::request("/arcana.v1.ArcanaService/Connect", headers),
                false,
            )
            .map_err(|e| e.to_string())?;
        self.open.push(body);
        let resp = tokio::time::timeout(WAIT, resp)
            .await
            .map_err(|_| "no response headers".to_owned())?
            .map_err(|e| e.to_string())?;
        match resp.headers().get("grpc-status") {
            Some(s) => Err(format!("grpc-status {}", s.to_str().unwrap())),
            None => Ok(()),
        }
    }

    /// Whether the server closes the connection within `d`.
    async fn closed_within(&mut self, d: Duration) -> bool {
        tokio::time::timeout(d, &mut self.closed).await.is_ok()
    }
}

/// The health check of a client connecting from `local`, and how long it
/// took from the first connection attempt.
async fn health_from(addr: std::net::SocketAddr, local: [u8; 4]) -> (i32, Duration) {
    let t = Instant::now();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .local_address(Some(std::net::IpAddr::from(local)))
        .connect_timeout(WAIT)
        .connect()
        .await
        .unwrap();
    let r = tokio::time::timeout(
        WAIT,
        tonic_health::pb::health_client::HealthClient::new(ch)
            .check(tonic_health::pb::HealthCheckRequest::default()),
    )
    .await
    .expect("the health check is answered")
    .unwrap();
    (r.into_inner().status, t.elapsed())
}

const DESCRIBE: &str = "/arcana.v1.ArcanaService/Describe";
const ALICE: (&str, &str) = ("authorization", "Bearer dev-alice");

/// One peer opening connections with one request each (an open `Connect`
/// with a valid token, or a refused `Describe`) cannot take every
/// connection slot: a client from another address gets its health check
/// answered within two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_flooding_connections_leaves_room_for_others() {
    let h = Harness::with(|c| {
        c.server.max_connections = 48;
        c.server.max_connections_per_peer = 16;
        c.server.handshake_timeout_ms = 30_000;
    })
    .await;
    let addr = h.app().addr;
    let flood: Vec<_> = (0..120)
        .map(|i| {
            tokio::spawn(async move {
                let mut raw = Raw::connect(addr, [127, 0, 0, 1]).await?;
                if i % 2 == 0 {
                    let _ = raw.open_connect(&[ALICE]).await;
                } else {
                    let _ = raw.unary(DESCRIBE, &[]).await;
                }
                Some(raw)
            })
        })
        .collect();
    let mut held = Vec::new();
    for f in flood {
        held.extend(f.await.unwrap());
    }
    let (status, took) = health_from(addr, [127, 0, 0, 2]).await;
    assert_eq!(status, 1, "SERVING");
    assert!(took < Duration::from_secs(2), "health check took {took:?}");
    drop(held);
}

/// A connection whose call failed authentication is closed after the
/// error (GOAWAY), so it cannot hold a slot with one refused request.
#[tokio::test]
async fn a_connection_that_fails_authentication_is_closed() {
    let h = Harness::with(|c| c.server.handshake_timeout_ms = 30_000).await;
    let addr = h.app().addr;
    for headers in [vec![], vec![("authorization", "Bearer nope")]] {
        let mut raw = Raw::connect(addr, [127, 0, 0, 3]).await.unwrap();
        assert_eq!(raw.unary(DESCRIBE, &headers).await.as_deref(), Some("16"));
        assert!(
            raw.closed_within(Duration::from_secs(5)).await,
            "the connection is closed after UNAUTHENTICATED"
        );
    }
    // An authenticated one stays open for more calls.
    let mut raw = Raw::connect(addr, [127, 0, 0, 3]).await.unwrap();
    assert_eq!(raw.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("0"));
    assert_eq!(raw.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("0"));
}

/// A connection with no open call is closed after `server.idle_timeout_ms`;
/// one with an open call is not.
#[tokio::test]
async fn idle_connections_are_closed() {
    let h = Harness::with(|c| {
        c.server.idle_timeout_ms = 300;
        c.server.handshake_timeout_ms = 30_000;
    })
    .await;
    let addr = h.app().addr;
    let mut idle = Raw::connect(addr, [127, 0, 0, 4]).await.unwrap();
    assert_eq!(idle.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("0"));
    let t = Instant::now();
    assert!(
        idle.closed_within(Duration::from_secs(5)).await,
        "idle connection closed"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    // A session stream keeps its connection: it still answers after three
    // idle timeouts.
    let mut l = h.live("dev-alice").await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    l.ping().await;
}

/// Connections are capped per identity, and calls per peer address.
#[tokio::test]
async fn connections_per_identity_and_calls_per_peer_are_capped() {
    let h = Harness::with(|c| {
        c.server.max_connections_per_identity = 2;
        c.server.max_calls_per_peer = 3;
    })
    .await;
    let addr = h.app().addr;
    let mut a = Raw::connect(addr, [127, 0, 0, 5]).await.unwrap();
    let mut b = Raw::connect(addr, [127, 0, 0, 6]).await.unwrap();
    let mut c = Raw::connect(addr, [127, 0, 0, 7]).await.unwrap();
    assert_eq!(a.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("0"));
    assert_eq!(b.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("0"));
    assert_eq!(c.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("8"));
    assert!(c.closed_within(Duration::from_secs(5)).await);
    // Another identity is not affected; once a connection of alice's
    // closes, she can open another.
    let mut d = Raw::connect(addr, [127, 0, 0, 7]).await.unwrap();
    let bob = [("authorization", "Bearer dev-bob")];
    assert_eq!(d.unary(DESCRIBE, &bob).await.as_deref(), Some("0"));
    drop(a);
    let mut ok = false;
    for _ in 0..100 {
        let mut e = Raw::connect(addr, [127, 0, 0, 8]).await.unwrap();
        if e.unary(DESCRIBE, &[ALICE]).await.as_deref() == Some("0") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a slot of alice's freed");
    // Three open calls from 127.0.0.9, over two connections; a fourth is refused.
    let carol = [("authorization", "Bearer dev-carol")];
    let mut p = Raw::connect(addr, [127, 0, 0, 9]).await.unwrap();
    let mut q = Raw::connect(addr, [127, 0, 0, 9]).await.unwrap();
    p.open_connect(&carol).await.unwrap();
    p.open_connect(&carol).await.unwrap();
    q.open_connect(&carol).await.unwrap();
    let e = q.open_connect(&carol).await.unwrap_err();
    assert_eq!(e, "grpc-status 8");
    // Other addresses are served.
    let mut r = Raw::connect(addr, [127, 0, 0, 10]).await.unwrap();
    r.open_connect(&[("authorization", "Bearer dev-service")])
        .await
        .unwrap();
}

/// Calls are capped per identity over all its connections and addresses:
/// past the cap one user's calls are refused, other users are served, and
/// a call that ends frees its place.
#[tokio::test]
async fn calls_are_capped_per_identity() {
    let h = Harness::with(|c| c.server.max_calls_per_identity = 3).await;
    let addr = h.app().addr;
    let mut p = Raw::connect(addr, [127, 0, 0, 21]).await.unwrap();
    let mut q = Raw::connect(addr, [127, 0, 0, 22]).await.unwrap();
    p.open_connect(&[ALICE]).await.unwrap();
    p.open_connect(&[ALICE]).await.unwrap();
    q.open_connect(&[ALICE]).await.unwrap();
    let mut r = Raw::connect(addr, [127, 0, 0, 23]).await.unwrap();
    assert_eq!(r.open_connect(&[ALICE]).await.unwrap_err(), "grpc-status 8");
    assert_eq!(r.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("8"));
    let e = h
        .client("dev-alice")
        .await
        .describe(pb::DescribeRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(
        e.message().contains("server.max_calls_per_identity"),
        "{}",
        e.message()
    );
    // Another user on the same connection is served.
    let bob = [("authorization", "Bearer dev-bob")];
    assert_eq!(r.unary(DESCRIBE, &bob).await.as_deref(), Some("0"));
    r.open_connect(&bob).await.unwrap();
    // Alice's two calls on `p` end with its connection: she is served again.
    drop(p);
    let mut served = false;
    for _ in 0..100 {
        if r.unary(DESCRIBE, &[ALICE]).await.as_deref() == Some("0") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "alice's ended calls freed their places");
}

/// Behind a trusted proxy, calls count against the forwarded address, and
/// the proxy's connections are neither capped nor closed as one peer's.
#[tokio::test]
async fn a_trusted_proxy_forwards_the_peer_address() {
    let h = Harness::with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.11".into(), "10.0.0.0/8".into()];
        c.server.max_connections_per_peer = 2;
        c.server.max_calls_per_peer = 1;
    })
    .await;
    let addr = h.app().addr;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Raw::connect(addr, [127, 0, 0, 11]).await.unwrap());
    }
    let from = |ip: &'static str| [ALICE, ("x-forwarded-for", ip)];
    conns[0].open_connect(&from("192.0.2.1")).await.unwrap();
    let e = conns[1].open_connect(&from("192.0.2.1")).await.unwrap_err();
    assert_eq!(e, "grpc-status 8");
    conns[2].open_connect(&from("192.0.2.2")).await.unwrap();
    // A refused token does not close the proxy's connection.
    let fwd = [("x-forwarded-for", "192.0.2.3")];
    assert_eq!(conns[3].unary(DESCRIBE, &fwd).await.as_deref(), Some("16"));
    let ok = [ALICE, ("x-forwarded-for", "192.0.2.3")];
    assert_eq!(conns[3].unary(DESCRIBE, &ok).await.as_deref(), Some("0"));
    // Not trusted: the header is ignored and the peer capped.
    let mut other = Raw::connect(addr, [127, 0, 0, 12]).await.unwrap();
    other.open_connect(&from("192.0.2.9")).await.unwrap();
    let e = other.open_connect(&from("192.0.2.10")).await.unwrap_err();
    assert_eq!(e, "grpc-status 8");
}

/// A client that sends re-anchors on `Connect` as fast as it can, while it
/// reads, gets an answer to every one (back-pressure, or a per-request
/// RESOURCE_EXHAUSTED), never a dropped stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reanchors_on_one_stream_is_answered() {
    const N: u64 = 3_000;
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let w = |anchor: i64| pb::Window {
        limit: 2,
        cursor: vec![int(anchor * 10), int(anchor)],
        direction: pb::WindowDirection::After as i32,
        inclusive: false,
    };
    let v = l
        .subscribe_window("task_window", project(1), Some(w(1)))
        .await
        .unwrap();
    let mut client = h.client("dev-alice").await;
    let (tx, rx) = mpsc::channel(64);
    let mut stream = client
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let Some(Msg::Opened(_)) = stream.message().await.unwrap().unwrap().kind else {
        panic!("opened first")
    };
    // A view of this session's own to move around.
    tx.send(pb::ClientMessage {
        request_id: 0,
        kind: Some(Req::Subscribe(pb::SubscribeRequest {
            graph: "task_window".into(),
            params: project(1),
            session_id: String::new(),
            window: Some(w(1)),
        })),
    })
    .await
    .unwrap();
    let view_id = loop {
        let m = stream.message().await.unwrap().unwrap();
        if let Some(Msg::Reply(r)) = m.kind {
            let Some(pb::reply::Result::Subscribe(s)) = r.result else {
                panic!("{r:?}")
            };
            break s.view_id;
        }
    };
    drop(v);
    let writer = tokio::spawn(async move {
        for i in 1..=N {
            let msg = pb::ClientMessage {
                request_id: i,
                kind: Some(Req::Reanchor(pb::ReanchorRequest {
                    view_id: view_id.clone(),
                    window: Some(w(1 + (i as i64 % 4))),
                    session_id: String::new(),
                })),
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
        tx
    });
    let mut answered = 0u64;
    let mut refused = 0u64;
    while answered < N {
        let m = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a message in time")
            .unwrap_or_else(|e| panic!("the stream ended after {answered} replies: {e}"))
            .unwrap_or_else(|| panic!("the stream ended after {answered} replies"));
        if let Some(Msg::Reply(r)) = m.kind {
            answered += 1;
            if let Some(pb::reply::Result::Error(e)) = r.result {
                assert_eq!(e.code, Code::ResourceExhausted as i32, "{}", e.message);
                refused += 1;
            }
        }
    }
    drop(writer.await.unwrap());
    println!("{answered} re-anchors answered, {refused} refused");
}

/// Like the test above, with each request in a DATA frame of its own, as
/// grpc-go sends them: the server must not let small frames pile up in
/// HTTP/2 (whose flood protection would close the connection with
/// ENHANCE_YOUR_CALM) while it works through the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reanchors_in_small_frames_is_answered() {
    use prost::Message as _;
    const N: u64 = 5_000;
    let h = Harness::start().await;
    let addr = h.app().addr;
    let raw = Raw::connect(addr, [127, 0, 0, 13]).await.unwrap();
    let send = raw.send.clone().ready().await.unwrap();
    let (resp, mut body) = send
        .clone()
        .send_request(
            Raw::request("/arcana.v1.ArcanaService/Connect", &[ALICE]),
            false,
        )
        .unwrap();
    let frame = |m: &pb::ClientMessage| {
        let mut b = vec![0u8];
        b.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut b).unwrap();
        bytes::Bytes::from(b)
    };
    let w = |anchor: i64| pb::Window {
        limit: 2,
        cursor: vec![int(anchor * 10), int(anchor)],
        direction: pb::WindowDirection::After as i32,
        inclusive: false,
    };
    body.send_data(
        frame(&pb::ClientMessage {
            request_id: 0,
            kind: Some(Req::Subscribe(pb::SubscribeRequest {
                graph: "task_window".into(),
                params: project(1),
                session_id: String::new(),
                window: Some(w(1)),
            })),
        }),
        false,
    )
    .unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    let mut rbody = resp.into_body();
    // Server messages, parsed from the response body. Unbounded on
    // purpose: the reader must keep releasing flow-control capacity, or the
    // test would hold the server back itself; the test sends a bounded
    // number of requests, so the replies are bounded too.
    let (mtx, mut mrx) = mpsc::unbounded_channel::<Result<pb::ServerMessage, String>>();
    tokio::spawn(async move {
        let mut buf = bytes::BytesMut::new();
        loop {
            match rbody.data().await {
                Some(Ok(d)) => {
                    let _ = rbody.flow_control().release_capacity(d.len());
                    buf.extend_from_slice(&d);
                    while buf.len() >= 5 {
                        let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                        if buf.len() < 5 + len {
                            break;
                        }
                        let m = buf.split_to(5 + len);
                        let _ = mtx.send(Ok(pb::ServerMessage::decode(&m[5..]).unwrap()));
                    }
                }
                Some(Err(e)) => {
                    let _ = mtx.send(Err(e.to_string()));
                    return;
                }
                None => {
                    let t = rbody.trailers().await;
                    let _ = mtx.send(Err(format!("the stream ended: {t:?}")));
                    return;
                }
            }
        }
    });
    async fn next(
        rx: &mut mpsc::UnboundedReceiver<Result<pb::ServerMessage, String>>,
    ) -> Result<pb::ServerMessage, String> {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("a message in time")
            .expect("reader alive")
    }
    let view_id = loop {
        if let Some(Msg::Reply(r)) = next(&mut mrx).await.unwrap().kind {
            let Some(pb::reply::Result::Subscribe(s)) = r.result else {
                panic!("{r:?}")
            };
            break s.view_id;
        }
    };
    for i in 1..=N {
        let m = pb::ClientMessage {
            request_id: i,
            kind: Some(Req::Reanchor(pb::ReanchorRequest {
                view_id: view_id.clone(),
                window: Some(w(1 + (i as i64 % 4))),
                session_id: String::new(),
            })),
        };
        // One DATA frame per message; h2 queues what the window does not
        // yet allow. A failure shows in the replies read below.
        if body.send_data(frame(&m), false).is_err() {
            break;
        }
    }
    let mut answered = 0u64;
    let mut refused = 0u64;
    while answered < N {
        let m = next(&mut mrx)
            .await
            .unwrap_or_else(|e| panic!("after {answered} replies: {e}"));
        if let Some(Msg::Reply(r)) = m.kind {
            answered += 1;
            if let Some(pb::reply::Result::Error(e)) = r.result {
                assert_eq!(e.code, Code::ResourceExhausted as i32, "{}", e.message);
                refused += 1;
            }
        }
    }
    println!("{answered} re-anchors answered, {refused} refused");
    drop(raw);
}

/// Decoding a request costs about its size: a Sync's views are counted on
/// the wire and judged before any is decoded. Eight concurrent Syncs of
/// 500,000 empty views each (just under `max_message_bytes`; once decoded
/// they took about 17 times their size) are refused, and the server's peak
/// memory, read from /proc for its own process, stays within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_syncs_are_refused_before_their_views_are_decoded() {
    const VIEWS: usize = 500_000;
    let s = Served::start("").await;
    let mut c = s.client("dev-alice").await;
    describe_ok(&mut c).await;
    let peak = |s: &Served| s.proc_field("status", "VmHWM:") as f64 / 1024.0;
    let before = peak(&s);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = s.client("dev-alice").await;
        tasks.push(tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let mut stream = c
                .connect(ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            tx.send(pb::ClientMessage {
                request_id: 1,
                kind: Some(Req::Sync(pb::SyncRequest {
                    views: vec![pb::SyncView::default(); VIEWS],
                    session_id: String::new(),
                })),
            })
            .await
            .unwrap();
            loop {
                let m = tokio::time::timeout(WAIT, stream.message())
                    .await
                    .expect("a reply in time")
                    .unwrap()
                    .unwrap();
                if let Some(Msg::Reply(r)) = m.kind {
                    let Some(pb::reply::Result::Error(e)) = r.result else {
                        panic!("refused: {r:?}")
                    };
                    return e;
                }
            }
        }));
    }
    for t in tasks {
        let e = t.await.unwrap();
        assert_eq!(e.code, Code::ResourceExhausted as i32, "{}", e.message);
        assert!(e.message.contains("500000 views"), "{}", e.message);
    }
    // The unary Sync too.
    let mut stream = c
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let Some(Msg::Opened(o)) = stream.message().await.unwrap().unwrap().kind else {
        panic!("opened first")
    };
    let e = c
        .sync(pb::SyncRequest {
            views: vec![pb::SyncView::default(); VIEWS],
            session_id: o.session_id,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    let grew = peak(&s) - before;
    println!("peak RSS {before:.1} MiB before, grew by {grew:.1} MiB");
    assert!(
        grew < 32.0,
        "decoding 8 MiB of requests raised the peak RSS by {grew:.1} MiB"
    );
}

/// Calls that take small messages refuse large ones before decoding them.
#[tokio::test]
async fn small_calls_refuse_large_messages_undecoded() {
    let h = Harness::start().await;
    let mut c = h.client("dev-alice").await;
    let e = c
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: (0..20_000).map(|i| (format!("p{i}"), int(i))).collect(),
            session_id: "x".into(),
            window: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(e.message().contains("at most 65536"), "{}", e.message());
}

/// A call in a content type the server does not speak gets HTTP 415 (JSON
/// and binary protobuf are Connect calls, tests/connect.rs); gRPC is served
/// as before.
#[tokio::test]
async fn calls_in_other_content_types_get_415() {
    let h = Harness::start().await;
    let raw = Raw::connect(h.app().addr, [127, 0, 0, 14]).await.unwrap();
    for ct in [Some("text/plain"), Some("application/xml"), None] {
        let mut req = http::Request::post(format!("http://arcana{DESCRIBE}"))
            .header("te", "trailers")
            .header("authorization", "Bearer dev-alice");
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let send = raw.send.clone().ready().await.unwrap();
        let (resp, mut body) = send
            .clone()
            .send_request(req.body(()).unwrap(), false)
            .unwrap();
        body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .unwrap();
        let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 415, "content-type {ct:?}");
    }
    let mut ok = Raw::connect(h.app().addr, [127, 0, 0, 14]).await.unwrap();
    assert_eq!(ok.unary(DESCRIBE, &[ALICE]).await.as_deref(), Some("0"));
}
