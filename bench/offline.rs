//! The `offline` scenario: push throughput (rows/s, bundles/s) from a few
//! devices, commit-to-device latency of follow streams for SQL writes, and
//! a snapshot of N rows (rows/s and the server's peak memory).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arcana::postgres::embedded::EmbeddedPostgres;
use arcana::proto::{self as pb, offline_service_client::OfflineServiceClient};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::server::{free_port, Server};

type Bearer = fn(Request<()>) -> Result<Request<()>, Status>;
type Client = OfflineServiceClient<InterceptedService<Channel, Bearer>>;

fn bearer(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.metadata_mut()
        .insert("authorization", "Bearer bench".parse().expect("header"));
    Ok(req)
}

fn config(port: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"

[database]
pool_size = 16

[[auth.tokens]]
token = "bench"
user = "bench"
workspace = "bench"

[changes]
mode = "none"

[offline]
max_push_rows = 1000
max_chunk_rows = 500
snapshot_chunk_rows = 1000

[[offline.tables]]
table = "notes"
scope = "workspace"
conflict = "last_writer_wins"
"#
    )
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

async fn client(addr: &str, id: &str) -> Client {
    let ch = Channel::from_shared(addr.to_owned())
        .expect("address")
        .connect()
        .await
        .expect("connect");
    let mut c = OfflineServiceClient::with_interceptor(ch, bearer as Bearer);
    c.register_client(pb::RegisterClientRequest {
        client_id: id.into(),
        platform: "bench".into(),
        app_version: "1.0.0".into(),
        replaces_client_id: String::new(),
    })
    .await
    .expect("register");
    c
}

fn row(id: i64, title: &str) -> pb::RowIntent {
    let v = |k: pb::value::Kind| pb::Value { kind: Some(k) };
    pb::RowIntent {
        table: "notes".into(),
        op: pb::IntentOp::Insert as i32,
        values: HashMap::from([
            ("id".to_string(), v(pb::value::Kind::Int(id))),
            (
                "title".to_string(),
                v(pb::value::Kind::String(title.into())),
            ),
        ]),
        base_version: 0,
        client_time_unix_ms: 0,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the scenario and prints its table.
pub async fn run(bin: &Path, pg: &EmbeddedPostgres, quick: bool) {
    let (devices, bundles, rows_per_bundle, follows, snapshot_rows) = if quick {
        (4, 25, 100, 200, 20_000)
    } else {
        (4, 100, 250, 1_000, 1_000_000)
    };
    let db = format!("bench_{:08x}", rand::random::<u32>());
    arcana::postgres::execute_script(&pg.url("postgres"), &format!("CREATE DATABASE {db}"))
        .await
        .expect("create database");
    let url = pg.url(&db);
    arcana::postgres::execute_script(
        &url,
        "CREATE TABLE notes (
             id bigint PRIMARY KEY,
             workspace_id text NOT NULL DEFAULT 'bench',
             title text NOT NULL,
             written_us bigint NOT NULL DEFAULT 0
         );",
    )
    .await
    .expect("schema");
    let port = free_port();
    let server = Server::arcana(bin, &config(port), &url, port).await;

    // Push: each device sends its bundles one after another.
    eprintln!("offline / push");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in 0..devices {
        let addr = server.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client(&addr, &format!("dev{d}")).await;
            for b in 0..bundles {
                let base = ((d * bundles + b) * rows_per_bundle) as i64;
                let intents: Vec<_> = (0..rows_per_bundle as i64)
                    .map(|i| row(base + i, "pushed"))
                    .collect();
                let r = c
                    .push(tokio_stream::iter(vec![pb::PushChunk {
                        client_id: format!("dev{d}"),
                        bundle_id: b as u64 + 1,
                        chunk_index: 0,
                        last: true,
                        intents,
                    }]))
                    .await
                    .expect("push")
                    .into_inner();
                assert!(r.applied);
            }
        }));
    }
    for t in tasks {
        t.await.expect("pusher");
    }
    let push_s = started.elapsed().as_secs_f64();
    let pushed_rows = (devices * bundles * rows_per_bundle) as f64;
    let pushed_bundles = (devices * bundles) as f64;

    // Follow: a device follows; SQL writes one row per transaction.
    eprintln!("offline / follow");
    let mut f = client(&server.addr, "follower").await;
    let reg = f
        .register_client(pb::RegisterClientRequest {
            client_id: "follower".into(),
            platform: "bench".into(),
            app_version: "1.0.0".into(),
            replaces_client_id: String::new(),
        })
        .await
        .expect("register")
        .into_inner();
    let mut stream = f
        .pull(pb::PullRequest {
            client_id: "follower".into(),
            after: reg.scopes,
            follow: true,
            ..Default::default()
        })
        .await
        .expect("follow")
        .into_inner();
    stream.next().await.expect("first batch").expect("batch");
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(follows);
        while lat.len() < follows {
            let Some(Ok(m)) = stream.next().await else {
                break;
            };
            let at = now_us();
            if let Some(pb::pull_response::Kind::Changes(b)) = m.kind {
                for c in b.changes {
                    if let Some(pb::value::Kind::Int(w)) =
                        c.values.get("written_us").and_then(|v| v.kind.clone())
                    {
                        lat.push((at - w) as f64 / 1000.0);
                    }
                }
            }
        }
        lat
    });
    let (pgc, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    for i in 0..follows {
        pgc.execute(
            "INSERT INTO notes (id, title, written_us) VALUES ($1, 'followed', $2)",
            &[&(10_000_000 + i as i64), &now_us()],
        )
        .await
        .expect("insert");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("follow timed out")
        .expect("reader");
    lat.sort_by(f64::total_cmp);
    drop(server);

    // Snapshot: N more rows, a fresh server, one device takes it all.
    eprintln!("offline / snapshot");
    pgc.batch_execute(&format!(
        "INSERT INTO notes (id, title) SELECT 20000000 + g, 'snapshot row ' || g \
         FROM generate_series(1, {snapshot_rows}) g"
    ))
    .await
    .expect("rows");
    let server = Server::arcana(bin, &config(port), &url, port).await;
    let before = server.usage();
    let mut c = client(&server.addr, "snapshotter").await;
    let started = Instant::now();
    let mut s = c
        .snapshot(pb::SnapshotRequest {
            client_id: "snapshotter".into(),
            ..Default::default()
        })
        .await
        .expect("snapshot")
        .into_inner();
    let mut got = 0usize;
    while let Some(chunk) = s.next().await {
        got += chunk.expect("chunk").rows.len();
    }
    let snap_s = started.elapsed().as_secs_f64();
    let after = server.usage();
    drop(server);

    println!();
    println!("| offline | value |");
    println!("| --- | --- |");
    println!("| push: devices x bundles x rows | {devices} x {bundles} x {rows_per_bundle} |");
    println!("| push rows/s | {:.0} |", pushed_rows / push_s);
    println!("| push bundles/s | {:.1} |", pushed_bundles / push_s);
    println!("| follow: writes | {} |", lat.len());
    println!("| follow commit-to-device p50 ms | {:.2} |", pct(&lat, 0.5));
    println!(
        "| follow commit-to-device p99 ms | {:.2} |",
        pct(&lat, 0.99)
    );
    println!("| snapshot rows | {got} |");
    println!("| snapshot rows/s | {:.0} |", got as f64 / snap_s);
    println!(
        "| server RSS before snapshot MiB | {:.1} |",
        before.rss as f64 / 1048576.0
    );
    println!(
        "| server peak RSS MiB | {:.1} |",
        after.peak_rss as f64 / 1048576.0
    );
}
