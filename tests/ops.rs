//! Operations: the admin HTTP listener (metrics, health, readiness), the
//! gRPC health service following readiness, `arcana slot status|drop`, and
//! graceful shutdown on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arcana::app::{App, DEMO_CONFIG, DEMO_SCHEMA};
use arcana::config::{ChangeMode, Config};
use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The value of the sample `name` (with its labels, if any) in a scrape.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

async fn health(addr: SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "arcana.v1.ArcanaService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(r.status).unwrap()
}

/// Polls until `f` holds or the wait runs out.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_write() {
    let h = Harness::with(|c| {
        c.changes.mode = ChangeMode::Wal;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
        c.server.admin_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let admin = h.app().admin_addr.expect("admin listener on");
    assert_eq!(http_get(admin, "/healthz", None).await.0, 200);
    // Ready once the WAL listener streams.
    eventually("ready", || async {
        http_get(admin, "/readyz", None).await.0 == 200
    })
    .await;
    assert_eq!(http_get(admin, "/nope", None).await.0, 404);

    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let before = http_get(admin, "/metrics", None).await.1;
    assert_eq!(sample(&before, "arcana_sessions"), 1.0, "{before}");
    assert!(sample(&before, "arcana_subscriptions") >= 1.0);
    assert!(sample(&before, "arcana_evaluation_seconds_count") >= 1.0);
    assert_eq!(sample(&before, "arcana_change_listener_streaming"), 1.0);
    assert!(sample(&before, "arcana_db_pool_size") >= 1.0);

    // A new row re-evaluates the view (a round); an edit of a carried
    // column is patched in.
    h.sql("INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'scraped', 10)").await;
    l.wait_until(&v, |s| format!("{:?}", s.content()).contains("scraped"))
        .await;
    h.sql("UPDATE tasks SET title = 'patched' WHERE id = 1")
        .await;
    l.wait_field(&v, "tasks", "1", "title", "patched").await;
    // A call with a bad token ends UNAUTHENTICATED.
    let mut bad = h.client("no-such-token").await;
    assert!(bad
        .describe(arcana::proto::DescribeRequest {})
        .await
        .is_err());

    let after = http_get(admin, "/metrics", None).await.1;
    for counter in [
        "arcana_changes_total",
        "arcana_change_batches_total",
        "arcana_frames_total",
        "arcana_evaluation_rounds_total",
        "arcana_patches_total",
        "arcana_evaluation_round_seconds_count",
        "arcana_commit_to_frame_seconds_count",
        "arcana_sent_bytes_total",
        "arcana_sent_messages_total",
    ] {
        assert!(
            sample(&after, counter) > sample(&before, counter),
            "{counter} did not move:\n{after}"
        );
    }
    assert!(sample(&after, "arcana_grpc_errors_total{code=\"Unauthenticated\"}") >= 1.0);
    // A request on the stream answered with an error.
    assert!(l.subscribe("no_such_graph", project(1)).await.is_err());
    let m = http_get(admin, "/metrics", None).await.1;
    assert!(
        sample(&m, "arcana_reply_errors_total{code=\"NotFound\"}") >= 1.0,
        "{m}"
    );
    // The slot confirms the write once its frames are queued.
    eventually("confirmed position moves", || async {
        let m = http_get(admin, "/metrics", None).await.1;
        sample(&m, "arcana_wal_confirmed_lsn") > sample(&before, "arcana_wal_confirmed_lsn")
    })
    .await;
    assert!(sample(&after, "arcana_ready") == 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() {
    // A cluster of this test's own, to stop it.
    let mut pg = EmbeddedPostgres::start(EmbeddedOptions {
        fast: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let url = pg.url("postgres");
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .unwrap();
    let mut config = Config::parse(DEMO_CONFIG).unwrap();
    config.changes.mode = ChangeMode::Wal;
    config.server.admin_listen = Some("127.0.0.1:0".into());
    config.admin.ready_interval_ms = 100;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::start(&config, &url, listener).await.unwrap();
    let admin = app.admin_addr.unwrap();
    let grpc = app.addr;
    eventually("ready", || async {
        http_get(admin, "/readyz", None).await.0 == 200
    })
    .await;
    assert_eq!(health(grpc).await, ServingStatus::Serving);

    // Stop PostgreSQL (fast shutdown of the postmaster) and keep it down.
    let pidfile = pg.dir().join("data").join("postmaster.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signalling the test's own PostgreSQL.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    eventually("not ready while PostgreSQL is down", || async {
        let (code, body) = http_get(admin, "/readyz", None).await;
        code == 503 && body.contains("not ready")
    })
    .await;
    eventually("gRPC health NOT_SERVING", || async {
        health(grpc).await == ServingStatus::NotServing
    })
    .await;
    // Alive all along.
    assert_eq!(http_get(admin, "/healthz", None).await.0, 200);

    tokio::task::block_in_place(|| pg.restart()).unwrap();
    eventually("ready again", || async {
        http_get(admin, "/readyz", None).await.0 == 200
    })
    .await;
    eventually("gRPC health SERVING again", || async {
        health(grpc).await == ServingStatus::Serving
    })
    .await;
    app.stop().await.unwrap();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap();
}

fn arcana(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

fn write_config(text: &str) -> (tempdir::Dir, String) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("arcana.toml");
    std::fs::write(&path, text).unwrap();
    let p = path.to_str().unwrap().to_owned();
    (dir, p)
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("arcana-ops-{:016x}", rand::random::<u64>()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_status_and_drop() {
    let mut h = Harness::wal().await;
    let slot = h.config.changes.slot.clone();
    let (_dir, path) = write_config(&format!(
        "[database]\nurl = \"{}\"\n[changes]\nslot = \"{slot}\"\n",
        h.db_url
    ));
    let cmd = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", &path]);
        let out = arcana(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The listener starts streaming a moment after the server is up.
    let mut status = tokio::task::block_in_place(|| cmd(&["slot", "status"]));
    for _ in 0..100 {
        if status.1.contains("active:           yes") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = tokio::task::block_in_place(|| cmd(&["slot", "status"]));
    }
    let (ok, out, err) = status;
    assert!(ok, "{err}");
    assert!(out.contains(&slot), "{out}");
    assert!(out.contains("active:           yes"), "{out}");
    assert!(out.contains("retained WAL:"), "{out}");
    assert!(out.contains("confirmed flush:  "), "{out}");

    // Refused while the server streams from it.
    let (ok, _, err) = tokio::task::block_in_place(|| cmd(&["slot", "drop"]));
    assert!(!ok);
    assert!(err.contains("is active"), "{err}");

    h.stop().await;
    eventually("slot inactive", || async {
        let (_, out, _) = tokio::task::block_in_place(|| cmd(&["slot", "status"]));
        out.contains("active:           no")
    })
    .await;
    let (ok, out, err) = tokio::task::block_in_place(|| cmd(&["slot", "drop"]));
    assert!(ok, "{err}");
    assert!(out.contains("dropped"), "{out}");
    let (_, out, _) = tokio::task::block_in_place(|| cmd(&["slot", "status"]));
    assert!(out.contains("does not exist"), "{out}");
    let n = h
        .query_i64(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await;
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_sessions_with_unavailable() {
    let db = fresh_database().await;
    let (_dir, path) = write_config(&format!("{DEMO_CONFIG}\n[changes]\nmode = \"none\"\n"));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            &path,
            "--listen",
            &addr,
        ])
        .args(["--database-url", &db])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let endpoint = format!("http://{addr}");
    let mut channel = None;
    let start = Instant::now();
    while channel.is_none() {
        assert!(start.elapsed() < WAIT, "the server did not come up");
        if let Ok(ch) = tonic::transport::Channel::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            channel = Some(ch);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let client = arcana::proto::arcana_service_client::ArcanaServiceClient::with_interceptor(
        channel.unwrap(),
        Bearer("dev-alice".into()),
    );
    let mut l = Live::connect(client).await.unwrap();
    l.subscribe("project_tasks", project(1)).await.unwrap();

    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Err(s) = l.read_one().await {
            break s;
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the server exits")
        .unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    // JSON log lines, without colour codes (standard error is a pipe).
    let logs = String::from_utf8(out.stderr).unwrap();
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains('\x1b'), "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_warns_when_the_slot_retains_wal() {
    let db = fresh_database().await;
    let slot = format!("slot_{:016x}", rand::random::<u64>());
    // A slot left behind while writes went on: it retains their WAL.
    arcana::postgres::execute_script(
        &db,
        &format!(
            "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput');
             INSERT INTO tasks (workspace_id, project_id, title) VALUES ('acme', 1, 'while down');"
        ),
    )
    .await
    .unwrap();
    let (_dir, path) = write_config(&format!(
        "{DEMO_CONFIG}\n[changes]\nslot = \"{slot}\"\nmax_retained_wal_mb = 0\n"
    ));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
        .args(["serve", "--config", &path, "--listen", "127.0.0.1:0"])
        .args(["--database-url", &db])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stderr.take().unwrap()));
    let warned = tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("retains much WAL") {
                return l;
            }
        }
        panic!("the server exited without the warning");
    })
    .await
    .expect("the warning in time");
    assert!(warned.contains(&slot), "{warned}");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the server exits")
        .unwrap();
    // The shared cluster keeps no slot of this test.
    let drop = format!("SELECT pg_drop_replication_slot('{slot}')");
    eventually("slot dropped", || async {
        arcana::postgres::execute_script(&db, &drop).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_is_bounded() {
    let h = Harness::with(|c| {
        c.server.admin_listen = Some("127.0.0.1:0".into());
        c.admin.max_connections = 1;
        c.admin.request_timeout_ms = 1_000;
    })
    .await;
    let admin = h.app().admin_addr.unwrap();
    // One idle connection takes the only slot until its deadline.
    let mut idle = tokio::net::TcpStream::connect(admin).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let (code, _) = http_get(admin, "/healthz", None).await;
    assert_eq!(code, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "answered after {:?}, while the only slot was taken",
        start.elapsed()
    );
    // The idle connection was closed at its deadline.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    // Only reads.
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
}
