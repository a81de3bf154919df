//! Startup of the real `arcana` binary: the gRPC port accepts connections
//! only once the server answers, so a client that waits for the port (as
//! scripts and the client tests do) is served from its first call.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use arcana::app::DEMO_CONFIG;
use arcana::proto::arcana_service_client::ArcanaServiceClient;
use arcana::proto::DescribeRequest;
use common::*;
use tokio::process::{Child, Command};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Limit for the whole startup, a throwaway PostgreSQL included.
const STARTUP: Duration = Duration::from_secs(120);

/// How long the first calls may take once the port accepts: a ready server
/// answers in milliseconds; one still starting makes them wait for the rest
/// of its startup.
const FIRST_CALL: Duration = Duration::from_secs(2);

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Polls until `addr` accepts a TCP connection, as a client waiting for the
/// server does; fails if `child` exits first.
async fn wait_for_port(child: &mut Child, addr: &str) {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited before listening: {status}");
        }
        assert!(start.elapsed() < STARTUP, "{addr} never accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first calls after the port accepts: Describe succeeds and the health
/// service says SERVING, both within [`FIRST_CALL`].
async fn first_calls_succeed(addr: &str) {
    let calls = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        let mut req = tonic::Request::new(DescribeRequest {});
        req.metadata_mut()
            .insert("authorization", "Bearer dev-alice".parse().unwrap());
        let described = ArcanaServiceClient::new(channel.clone())
            .describe(req)
            .await
            .expect("Describe")
            .into_inner();
        assert!(
            described.graphs.iter().any(|g| g.name == "project_tasks"),
            "{described:?}"
        );
        let health = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "arcana.v1.ArcanaService".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            ServingStatus::try_from(health.status).unwrap(),
            ServingStatus::Serving,
            "ready on the first call"
        );
    };
    tokio::time::timeout(FIRST_CALL, calls)
        .await
        .expect("the first calls after the port accepted were answered in time");
}

/// Stops the server with SIGTERM (so the demo removes its PostgreSQL) and
/// waits for it.
async fn terminate(mut child: Child) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(STARTUP, child.wait())
        .await
        .expect("the server exits")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_port_accepts_only_once_the_demo_answers() {
    let addr = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_arcana"))
        .args(["demo", "--listen", &addr, "--admin-listen", "127.0.0.1:0"])
        // Its own throwaway PostgreSQL, whose start takes seconds.
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(&mut child, &addr).await;
    first_calls_succeed(&addr).await;
    terminate(child).await;
}

/// A WAL-mode config on its own slot, in a temporary folder.
struct WalConfig {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
    slot: String,
}

impl WalConfig {
    fn new() -> WalConfig {
        let slot = format!("slot_{:016x}", rand::random::<u64>());
        let dir =
            std::env::temp_dir().join(format!("arcana-startup-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("arcana.toml");
        // WAL mode: ready only once the replication stream runs.
        std::fs::write(
            &path,
            format!("{DEMO_CONFIG}\n[changes]\nmode = \"wal\"\nslot = \"{slot}\"\n"),
        )
        .unwrap();
        WalConfig { dir, path, slot }
    }

    fn serve(&self, db: &str, addr: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_arcana"))
            .arg("serve")
            .arg("--config")
            .arg(&self.path)
            .args(["--listen", addr, "--database-url", db])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// Removes the folder and the slot (the shared cluster keeps none).
    async fn remove(self, db: &str) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let drop = format!("SELECT pg_drop_replication_slot('{}')", self.slot);
        let start = Instant::now();
        while arcana::postgres::execute_script(db, &drop).await.is_err() {
            assert!(start.elapsed() < WAIT, "slot {} not dropped", self.slot);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_port_accepts_only_once_the_server_is_ready() {
    let db = fresh_database().await;
    let config = WalConfig::new();
    let addr = free_port();
    let mut child = config.serve(&db, &addr);
    wait_for_port(&mut child, &addr).await;
    first_calls_succeed(&addr).await;
    terminate(child).await;
    config.remove(&db).await;
}

/// A server that cannot become ready (its slot streams to another one)
/// still opens its port once built, after a bounded wait, and answers,
/// reporting NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_not_ready_still_opens_its_port() {
    let db = fresh_database().await;
    let config = WalConfig::new();
    let first_addr = free_port();
    let mut first = config.serve(&db, &first_addr);
    wait_for_port(&mut first, &first_addr).await;
    first_calls_succeed(&first_addr).await;

    // Same slot: it never streams while the first one runs.
    let addr = free_port();
    let mut second = config.serve(&db, &addr);
    let start = Instant::now();
    wait_for_port(&mut second, &addr).await;
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "opened after {:?}, before the readiness wait ran out",
        start.elapsed()
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut req = tonic::Request::new(DescribeRequest {});
    req.metadata_mut()
        .insert("authorization", "Bearer dev-alice".parse().unwrap());
    ArcanaServiceClient::new(channel.clone())
        .describe(req)
        .await
        .expect("a server that is not ready still answers");
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "arcana.v1.ArcanaService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ServingStatus::try_from(health.status).unwrap(),
        ServingStatus::NotServing
    );
    terminate(second).await;
    terminate(first).await;
    config.remove(&db).await;
}
