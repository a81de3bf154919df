//! Exactness under real concurrency: PostgreSQL's own `pgbench` (8
//! clients, its `simple-update` transaction over every account or over a
//! few hundred hot ones) while top-N views of one graph, which share
//! evaluation rounds, watch them. Once the change
//! source has confirmed everything pgbench wrote, every view must equal
//! the graph's SQL run directly, without a later write to repair it.

mod common;

use std::process::Command;
use std::time::Duration;

use arcana::config::ChangeMode;
use common::*;

/// pgbench's tables at scale 2 (200,000 accounts), as `pgbench -i` makes
/// them, with the balances of a few hundred hot accounts spread so that
/// updates move them across the top-N boundaries all the time.
const PGBENCH: &str = "
CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
INSERT INTO pgbench_branches SELECT b, 0 FROM generate_series(1, 2) b;
INSERT INTO pgbench_tellers SELECT t, (t - 1) / 10 + 1, 0 FROM generate_series(1, 20) t;
INSERT INTO pgbench_accounts SELECT a, (a - 1) / 100000 + 1, 0, '' FROM generate_series(1, 200000) a;
CREATE INDEX pgbench_accounts_top ON pgbench_accounts (abalance, aid);
";

const TOP_GRAPH: &str = r#"
[[graphs]]
name = "top_accounts"
table = "pgbench_accounts"
key = ["aid"]
sql = "SELECT a.aid, a.bid, a.abalance FROM pgbench_accounts a ORDER BY a.abalance DESC, a.aid LIMIT :n"
deps = { pgbench_accounts = ["aid", "bid", "abalance"] }
patch = { pgbench_accounts = ["bid"] }
[graphs.params.n]
type = "int"
default = 20
"#;

/// A pgbench script like its built-in `simple-update`, on 300 hot
/// accounts, so the same rows move in and out of the top N.
const HOT_SCRIPT: &str = "\\set aid random(1, 300)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// pgbench, from PATH or beside PostgreSQL's server binaries.
fn pgbench() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let beside_server = arcana::postgres::embedded::find_bin_dir();
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    on_path
        .chain(beside_server)
        .chain(versioned)
        .map(|d| d.join("pgbench"))
        .find(|p| p.is_file())
        .expect("pgbench ships with PostgreSQL (the postgresql-contrib or postgresql package)")
}

/// What pgbench runs.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Its built-in `simple-update` (`-N`) over all 200,000 accounts.
    SimpleUpdate,
    /// The same transaction on 300 hot accounts.
    Hot,
}

/// Runs pgbench against `url` for `seconds` with 8 clients.
async fn run_pgbench(url: &str, script_kind: Script, seconds: u32) {
    let dir = std::env::temp_dir().join(format!("arcana-pgbench-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("hot.sql");
    std::fs::write(&script, HOT_SCRIPT).unwrap();
    let url = url.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(pgbench());
        cmd.args(["-n", "-c", "8", "-j", "2", "-T"])
            .arg(seconds.to_string());
        match script_kind {
            Script::SimpleUpdate => cmd.arg("-N"),
            Script::Hot => cmd.arg("-f").arg(&script),
        };
        cmd.arg(&url).output()
    })
    .await
    .unwrap()
    .expect("run pgbench");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The top `n` account ids, as the SQL gives them now.
async fn truth(h: &Harness, n: i64) -> Vec<String> {
    let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query(
        "SELECT aid FROM pgbench_accounts ORDER BY abalance DESC, aid LIMIT $1",
        &[&n],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<_, i32>(0).to_string())
    .collect()
}

fn ids(s: &arcana::client::ViewState) -> Vec<String> {
    s.refs.iter().map(|r| r.key.id.to_string()).collect()
}

async fn top_n_views_equal_the_sql_after_pgbench(mode: ChangeMode) {
    let h = Harness::with_extra(PGBENCH, TOP_GRAPH, |c| {
        c.changes.mode = mode;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
        c.changes.install_triggers = true;
    })
    .await;
    let sizes = [10i64, 20, 50];
    let mut l = h.live("dev-alice").await;
    let mut views = Vec::new();
    for n in sizes {
        let v = l
            .subscribe("top_accounts", params(&[("n", int(n))]))
            .await
            .unwrap()
            .view_id;
        views.push((n, v));
    }
    for (round, script) in [Script::Hot, Script::SimpleUpdate, Script::Hot]
        .into_iter()
        .enumerate()
    {
        run_pgbench(&h.db_url, script, 3).await;
        // As autovacuum would: with spread balances the planner answers the
        // top-N from the `(abalance, aid)` index with an incremental sort,
        // which makes evaluations short and rounds frequent.
        h.sql("ANALYZE pgbench_accounts").await;
        if mode == ChangeMode::Wal {
            // The slot confirms a position only once the diffs of every
            // transaction before it are queued to sessions.
            let end = h
                .query_i64("SELECT (pg_current_wal_lsn() - '0/0')::int8")
                .await;
            let slot = &h.config.changes.slot;
            let confirmed = format!(
                "SELECT coalesce((SELECT (confirmed_flush_lsn - '0/0')::int8 \
                 FROM pg_replication_slots WHERE slot_name = '{slot}'), 0)"
            );
            let deadline = tokio::time::Instant::now() + WAIT;
            while h.query_i64(&confirmed).await < end {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never confirmed the WAL's end"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for &(n, ref v) in &views {
            let want = truth(&h, n).await;
            if mode == ChangeMode::Wal {
                // Confirmed: the diffs are queued, so after a round trip
                // the view must show the truth already.
                l.ping().await;
                assert_eq!(
                    ids(l.view(v)),
                    want,
                    "round {round} ({script:?}): top {n} is stale after pgbench though the slot confirmed it"
                );
                continue;
            }
            // Notifications carry no position to wait for: the view must
            // reach the truth with no further write.
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                l.ping().await;
                if ids(l.view(v)) == want {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round} ({script:?}): top {n} stays stale after pgbench ({mode:?}):\n view {:?}\n  sql {:?}",
                    ids(l.view(v)),
                    want
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_views_follow_pgbench_in_wal_mode() {
    top_n_views_equal_the_sql_after_pgbench(ChangeMode::Wal).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_views_follow_pgbench_in_notify_mode() {
    top_n_views_equal_the_sql_after_pgbench(ChangeMode::Notify).await;
}
