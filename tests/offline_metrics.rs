//! The offline service's metrics on `/metrics`: pushes by outcome, rows,
//! conflicts by policy and resolution, pulls, follows open, snapshot rows,
//! retention floors. Its own test binary, so the process-wide counters move
//! only with what this test does.

mod common;

use std::time::Duration;

use arcana::proto::{self as pb, IntentOp};
use common::offline::*;
use common::*;
use tokio_stream::StreamExt;

const SCHEMA: &str = r#"
CREATE TABLE notes (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    title        text NOT NULL
);
CREATE TABLE lww_notes (LIKE notes INCLUDING ALL);
CREATE TABLE sw_notes (LIKE notes INCLUDING ALL);
GRANT SELECT, INSERT, UPDATE, DELETE ON notes, lww_notes, sw_notes TO arcana_eval;
"#;

const CONFIG: &str = r#"
[offline]
retention_interval_ms = 100
retention_max_rows = 8

[[offline.tables]]
table = "notes"
scope = "workspace"

[[offline.tables]]
table = "lww_notes"
scope = "workspace"
conflict = "last_writer_wins"

[[offline.tables]]
table = "sw_notes"
scope = "workspace"
conflict = "server_wins"
"#;

/// The value of the sample `name` (with its labels as exposed), 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

struct Scrape(std::net::SocketAddr);

impl Scrape {
    async fn get(&self, name: &str) -> f64 {
        sample(&http_get(self.0, "/metrics", None).await.1, name)
    }

    /// Waits until `name` reads `want`.
    async fn wait(&self, name: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let now = self.get(name).await;
            if now == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name} is {now}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn write(table: &str, op: IntentOp, id: &str, title: &str, base: u64, at_ms: i64) -> pb::RowIntent {
    let mut i = intent(table, op, &[("id", text(id)), ("title", text(title))], base);
    i.client_time_unix_ms = at_ms;
    i
}

#[tokio::test]
async fn offline_work_shows_on_metrics() {
    let h = Harness::with_extra(SCHEMA, CONFIG, |c| {
        c.server.admin_listen = Some("127.0.0.1:0".into());
    })
    .await;
    let m = Scrape(h.app().admin_addr.expect("admin listener on"));
    let (ins, upd) = (IntentOp::Insert, IntentOp::Update);
    let mut a = Device::new(&h, "dev-alice", "metrics-a").await;
    let mut b = Device::new(&h, "dev-alice", "metrics-b").await;

    // One bundle of three rows, applied, then replayed.
    let first = vec![
        write("notes", ins, "n1", "one", 0, 0),
        write("lww_notes", ins, "l1", "one", 0, 0),
        write("sw_notes", ins, "s1", "one", 0, 0),
    ];
    assert!(a.push_as(100, first.clone()).await.unwrap().applied);
    assert!(a.push_as(100, first).await.unwrap().replayed);
    m.wait(r#"arcana_offline_pushes_total{outcome="applied"}"#, 1.0)
        .await;
    assert_eq!(
        m.get(r#"arcana_offline_pushes_total{outcome="replayed"}"#)
            .await,
        1.0
    );
    assert_eq!(m.get("arcana_offline_pushed_rows_total").await, 3.0);

    // A moves every row to version 2; B writes on version 1.
    let second = vec![
        write("notes", upd, "n1", "two", 1, 0),
        write("lww_notes", upd, "l1", "two", 1, 0),
        write("sw_notes", upd, "s1", "two", 1, 0),
    ];
    assert!(a.push(second).await.unwrap().applied);
    let later = 4_000_000_000_000;
    let r = b
        .push(vec![write("notes", upd, "n1", "b", 1, later)])
        .await
        .unwrap();
    assert!(!r.applied, "reject refuses the bundle");
    let r = b
        .push(vec![
            write("lww_notes", upd, "l1", "b", 1, later),
            write("sw_notes", upd, "s1", "b", 1, later),
        ])
        .await
        .unwrap();
    assert!(r.applied);
    let conflicts = |policy: &str, resolution: &str| {
        format!(r#"arcana_offline_conflicts_total{{policy="{policy}",resolution="{resolution}"}}"#)
    };
    assert_eq!(m.get(&conflicts("reject", "refused")).await, 1.0);
    assert_eq!(
        m.get(&conflicts("last_writer_wins", "client_applied"))
            .await,
        1.0
    );
    assert_eq!(m.get(&conflicts("server_wins", "server_kept")).await, 1.0);
    assert_eq!(
        m.get(r#"arcana_offline_pushes_total{outcome="refused"}"#)
            .await,
        1.0
    );
    assert_eq!(m.get("arcana_offline_pushed_rows_total").await, 8.0);
    let e = b
        .push(vec![write("nope", ins, "x", "x", 0, 0)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        m.get(r#"arcana_offline_pushes_total{outcome="failed"}"#)
            .await,
        1.0
    );

    // Pulls and their changes.
    assert_eq!(a.pull().await.unwrap(), None);
    let pulls = r#"arcana_offline_pulls_total{outcome="changes"}"#;
    assert!(m.get(pulls).await >= 1.0);
    // Three inserts, A's three updates and B's last-writer-wins one.
    assert_eq!(m.get("arcana_offline_pulled_changes_total").await, 7.0);

    // A follow stream counts as open until it ends.
    let mut follow = offline_client(&h, "dev-alice")
        .await
        .pull(pb::PullRequest {
            client_id: "metrics-a".into(),
            after: a.after(),
            max_rows: 0,
            max_bytes: 0,
            follow: true,
            tables: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    follow.next().await.expect("a first batch").unwrap();
    m.wait("arcana_offline_follows_open", 1.0).await;
    drop(follow);
    m.wait("arcana_offline_follows_open", 0.0).await;

    // A snapshot counts the rows it read.
    let mut fresh = Device::new(&h, "dev-alice", "metrics-c").await;
    fresh.snapshot().await.unwrap();
    assert_eq!(fresh.rows.len(), 3);
    assert_eq!(m.get("arcana_offline_snapshot_rows_total").await, 3.0);

    // Past the count ceiling retention raises the floor; a device below it
    // is sent to a snapshot.
    let many: Vec<_> = (0..6)
        .map(|i| write("notes", ins, &format!("m{i}"), "m", 0, 0))
        .collect();
    assert!(a.push(many).await.unwrap().applied);
    m.wait(r#"arcana_offline_floor_raises_total{reason="count"}"#, 1.0)
        .await;
    assert!(m.get("arcana_offline_pruned_changes_total").await >= 1.0);
    let mut behind = Device::new(&h, "dev-alice", "metrics-d").await;
    assert!(behind.pull().await.unwrap().is_some());
    assert_eq!(
        m.get(r#"arcana_offline_pulls_total{outcome="snapshot_required"}"#)
            .await,
        1.0
    );
}
