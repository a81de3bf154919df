//! Two-way offline sync over the real server and PostgreSQL: the change log
//! under concurrent writers, registration, pushes under each conflict
//! policy, replays, pulls and follows of writes made anywhere, retention
//! and snapshots, tenancy, and chunk errors.

mod common;

use std::time::Duration;

use arcana::proto::{self as pb, IntentOp};
use common::offline::*;
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;

const SCHEMA: &str = r#"
CREATE TABLE notes (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    title        text NOT NULL CHECK (length(title) > 0),
    body         text
);
CREATE TABLE lww_notes (LIKE notes INCLUDING ALL);
CREATE TABLE sw_notes (LIKE notes INCLUDING ALL);
CREATE TABLE prefs (
    user_id text NOT NULL,
    name    text NOT NULL,
    value   text,
    PRIMARY KEY (user_id, name)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON notes, lww_notes, sw_notes, prefs TO arcana_eval;
"#;

const CONFIG: &str = r#"
[offline]
min_app_version = "1.0.0"
max_chunk_rows = 5
max_push_rows = 8
retention_interval_ms = 100

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

[[offline.tables]]
table = "prefs"
scope = "user"
push = "owner_only"
owner_column = "user_id"
"#;

async fn harness() -> Harness {
    Harness::with_extra(SCHEMA, CONFIG, |_| {}).await
}

async fn harness_with(f: impl FnOnce(&mut arcana::config::Config)) -> Harness {
    Harness::with_extra(SCHEMA, CONFIG, f).await
}

fn note(table: &str, op: IntentOp, id: &str, title: &str, base: u64) -> pb::RowIntent {
    let mut v = vec![("id", text(id))];
    if op != IntentOp::Delete {
        v.push(("title", text(title)));
    }
    intent(table, op, &v, base)
}

async fn seqs(h: &Harness, scope: &str) -> Vec<i64> {
    let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query(
        "SELECT seq FROM arcana_offline.changes WHERE scope = $1 ORDER BY seq",
        &[&scope],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn concurrent_writers_never_show_a_gap_in_the_sequence() {
    let h = harness().await;
    let writers = 6;
    let per = 15;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = h.db_url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            for i in 0..per {
                let tx = c.transaction().await.unwrap();
                // Two rows per transaction, and a pause holding them open,
                // so commits interleave.
                for k in 0..2 {
                    tx.execute(
                        "INSERT INTO notes (id, workspace_id, title) VALUES ($1, 'acme', 't')",
                        &[&format!("w{w}-{i}-{k}")],
                    )
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 3)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    let total = (writers * per * 2) as i64;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = seqs(&h, "workspace:acme").await;
        let expected: Vec<i64> = (1..=s.len() as i64).collect();
        assert_eq!(s, expected, "a reader saw a gap");
        if s.len() as i64 == total {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "writers stalled");
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Versions bump on every write, whoever makes it.
    h.sql("UPDATE notes SET title = 'again' WHERE id = 'w0-0-0'")
        .await;
    assert_eq!(
        h.query_i64(
            "SELECT version FROM arcana_offline.rows WHERE tbl = 'notes' AND id = 'w0-0-0'"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn the_log_survives_a_restart_and_rows_already_there_are_logged_once() {
    let mut h = harness().await;
    h.sql("INSERT INTO notes VALUES ('n1', 'acme', 'one', NULL)")
        .await;
    h.restart().await;
    h.sql("INSERT INTO notes VALUES ('n2', 'acme', 'two', NULL)")
        .await;
    assert_eq!(seqs(&h, "workspace:acme").await, vec![1, 2]);
    let mut d = Device::new(&h, "dev-alice", "d1").await;
    assert!(d.pull().await.unwrap().is_none());
    assert_eq!(d.column("notes", "title").len(), 2);
}

#[tokio::test]
async fn capabilities_and_registration() {
    let h = harness().await;
    let mut c = offline_client(&h, "dev-alice").await;
    let caps = c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.min_app_version, "1.0.0");
    assert_eq!(caps.limits.as_ref().unwrap().max_chunk_rows, 5);
    let notes = caps.tables.iter().find(|t| t.name == "notes").unwrap();
    assert_eq!(notes.key, vec!["id".to_string()]);
    let title = notes.columns.iter().find(|c| c.name == "title").unwrap();
    assert_eq!(
        (title.pg_type.as_str(), title.kind.as_str()),
        ("text", "string")
    );
    assert!(!title.nullable);
    let prefs = caps.tables.iter().find(|t| t.name == "prefs").unwrap();
    assert_eq!(prefs.key.len(), 2);
    assert_eq!(prefs.push_policy, pb::PushPolicy::OwnerOnly as i32);
    assert!(caps.features.contains(&"follow".to_string()));

    let e = c
        .register_client(pb::RegisterClientRequest {
            client_id: "old".into(),
            platform: "ios".into(),
            app_version: "0.9.7".into(),
            replaces_client_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("upgrade required") && e.message().contains(">= 1.0.0"),
        "{}",
        e.message()
    );

    // An unregistered client may not push or pull.
    let mut d = Device::new(&h, "dev-alice", "known").await;
    d.id = "stranger".into();
    let e = d
        .push(vec![note("notes", IntentOp::Insert, "x", "x", 0)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("RegisterClient"), "{}", e.message());
    // Nor may another user use this client id.
    let mut carol = offline_client(&h, "dev-carol").await;
    let e = carol
        .register_client(pb::RegisterClientRequest {
            client_id: "known".into(),
            platform: "ios".into(),
            app_version: "1.2.0".into(),
            replaces_client_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn reject_refuses_the_whole_bundle_and_devices_converge_after_rebasing() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut b = Device::new(&h, "dev-bob", "b").await;
    let r = a
        .push(vec![
            note("notes", IntentOp::Insert, "n1", "first", 0),
            note("notes", IntentOp::Insert, "n2", "second", 0),
        ])
        .await
        .unwrap();
    assert!(r.applied && !r.replayed);
    assert_eq!(
        r.committed,
        vec![pb::ScopeSequence {
            scope: "workspace:acme".into(),
            sequence: 2
        }]
    );
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    assert_eq!(b.version("notes", "n1"), 1);
    // Both edit n1 from version 1; b also edits n2 in the same bundle.
    a.push(vec![note("notes", IntentOp::Update, "n1", "alice's", 1)])
        .await
        .unwrap();
    let r = b
        .push(vec![
            note("notes", IntentOp::Update, "n2", "bob's n2", 1),
            note("notes", IntentOp::Update, "n1", "bob's", 1),
        ])
        .await
        .unwrap();
    assert!(!r.applied);
    assert!(r.committed.is_empty());
    assert_eq!(
        r.results[1].status,
        pb::intent_result::Status::Conflict as i32
    );
    let server = r.results[1].server_row.as_ref().unwrap();
    assert_eq!(server.version, 2);
    assert_eq!(
        text_of(server.values.get("title")).as_deref(),
        Some("alice's")
    );
    assert!(!server.deleted);
    // Nothing of it applied, n2 included.
    assert_eq!(
        server_column(&h, "notes", "title", "id = 'n2'").await["n2"].as_deref(),
        Some("second")
    );
    // b rebases on what it pulls and pushes again.
    b.pull().await.unwrap();
    let r = b
        .push(vec![
            note(
                "notes",
                IntentOp::Update,
                "n2",
                "bob's n2",
                b.version("notes", "n2"),
            ),
            note(
                "notes",
                IntentOp::Update,
                "n1",
                "bob's",
                b.version("notes", "n1"),
            ),
        ])
        .await
        .unwrap();
    assert!(r.applied, "{r:?}");
    // Each applied intent reports the row's new version.
    assert_eq!(r.results[0].version, 2);
    assert_eq!(r.results[1].version, 3);
    assert_eq!(
        h.query_i64("SELECT version FROM arcana_offline.rows WHERE tbl = 'notes' AND id = 'n1'")
            .await,
        3
    );
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    let want = server_column(&h, "notes", "title", "workspace_id = 'acme'").await;
    assert_eq!(a.column("notes", "title"), want);
    assert_eq!(b.column("notes", "title"), want);
    assert_eq!(want["n1"].as_deref(), Some("bob's"));
}

#[tokio::test]
async fn last_writer_wins_and_server_wins_converge() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut b = Device::new(&h, "dev-bob", "b").await;
    for t in ["lww_notes", "sw_notes"] {
        a.push(vec![note(t, IntentOp::Insert, "n", "base", 0)])
            .await
            .unwrap();
    }
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Both edit from version 1 while offline; b's write is later but
    // arrives first.
    let timed = |t: &str, title: &str, at: i64| {
        let mut i = note(t, IntentOp::Update, "n", title, 1);
        i.client_time_unix_ms = at;
        i
    };
    for t in ["lww_notes", "sw_notes"] {
        let r = b
            .push(vec![timed(t, "bob later", now + 1000)])
            .await
            .unwrap();
        assert!(r.applied);
        let r = a.push(vec![timed(t, "alice earlier", now)]).await.unwrap();
        assert!(r.applied, "superseded writes do not refuse the bundle");
        assert_eq!(
            r.results[0].status,
            pb::intent_result::Status::Superseded as i32
        );
        assert_eq!(
            text_of(
                r.results[0]
                    .server_row
                    .as_ref()
                    .unwrap()
                    .values
                    .get("title")
            )
            .as_deref(),
            Some("bob later")
        );
    }
    // A stale write with a later time wins under last-writer-wins only.
    let r = a
        .push(vec![timed("lww_notes", "alice latest", now + 2000)])
        .await
        .unwrap();
    assert_eq!(
        r.results[0].status,
        pb::intent_result::Status::Applied as i32
    );
    let r = a
        .push(vec![timed("sw_notes", "alice latest", now + 2000)])
        .await
        .unwrap();
    assert_eq!(
        r.results[0].status,
        pb::intent_result::Status::Superseded as i32
    );
    // A time far in the future is clamped to the server's clock plus the
    // skew tolerance, so it cannot win forever.
    let r = b
        .push(vec![timed(
            "lww_notes",
            "bob from the future",
            now + 86_400_000,
        )])
        .await
        .unwrap();
    assert_eq!(
        r.results[0].status,
        pb::intent_result::Status::Applied as i32
    );
    // Both clamp to the server's clock plus the skew: let that clock move.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let r = a
        .push(vec![timed("lww_notes", "alice now", now + 3_600_000)])
        .await
        .unwrap();
    assert_eq!(
        r.results[0].status,
        pb::intent_result::Status::Applied as i32,
        "the future write was clamped"
    );
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    for t in ["lww_notes", "sw_notes"] {
        let want = server_column(&h, t, "title", "true").await;
        assert_eq!(a.column(t, "title"), want, "{t}");
        assert_eq!(b.column(t, "title"), want, "{t}");
    }
    assert_eq!(
        server_column(&h, "lww_notes", "title", "true").await["n"].as_deref(),
        Some("alice now")
    );
    assert_eq!(
        server_column(&h, "sw_notes", "title", "true").await["n"].as_deref(),
        Some("bob later")
    );
}

#[tokio::test]
async fn a_replayed_bundle_returns_its_result_and_applies_nothing() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let bundle = vec![
        note("notes", IntentOp::Insert, "r1", "once", 0),
        intent(
            "prefs",
            IntentOp::Insert,
            &[("name", text("theme")), ("value", text("dark"))],
            0,
        ),
    ];
    let first = a.push_as(7, bundle.clone()).await.unwrap();
    assert!(first.applied && !first.replayed);
    assert_eq!(first.committed.len(), 2, "{first:?}");
    let again = a.push_as(7, bundle).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.committed, first.committed);
    assert_eq!(again.results, first.results);
    // The same bundle id with other content is a device bug, not a replay.
    let e = a
        .push_as(7, vec![note("notes", IntentOp::Insert, "r2", "other", 0)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("resend it unchanged"),
        "{}",
        e.message()
    );
    assert_eq!(
        h.query_i64("SELECT count(*) FROM arcana_offline.changes")
            .await,
        2
    );
    assert_eq!(
        h.query_i64("SELECT version FROM arcana_offline.rows WHERE id = 'r1'")
            .await,
        1
    );
    // The device recognises its own writes when it pulls them.
    let mut s = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::pull_response::Kind::Changes(b)) = s.next().await.unwrap().unwrap().kind else {
        panic!()
    };
    assert!(b
        .changes
        .iter()
        .all(|c| c.source_client_id == "a" && c.source_bundle_id == 7));
    // The owner column was filled in from the caller.
    assert_eq!(
        h.query_i64("SELECT count(*) FROM prefs WHERE user_id = 'alice' AND name = 'theme'")
            .await,
        1
    );
}

#[tokio::test]
async fn writes_from_psql_reach_pulls_and_follows() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    h.sql("INSERT INTO notes VALUES ('p1', 'acme', 'from psql', NULL)")
        .await;
    a.pull().await.unwrap();
    assert_eq!(
        a.column("notes", "title")["p1"].as_deref(),
        Some("from psql")
    );
    let mut s = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            after: a.after(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Caught up: one empty batch.
    let Some(pb::pull_response::Kind::Changes(b)) = s.next().await.unwrap().unwrap().kind else {
        panic!()
    };
    assert!(b.changes.is_empty() && !b.has_more);
    h.sql("UPDATE notes SET title = 'edited in psql' WHERE id = 'p1'")
        .await;
    let m = tokio::time::timeout(WAIT, s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::pull_response::Kind::Changes(b)) = m.kind else {
        panic!()
    };
    a.take(&b);
    assert_eq!(
        a.column("notes", "title")["p1"].as_deref(),
        Some("edited in psql")
    );
    // Another workspace's commit wakes nobody here; a delete arrives.
    h.sql("INSERT INTO notes VALUES ('g1', 'globex', 'theirs', NULL)")
        .await;
    h.sql("DELETE FROM notes WHERE id = 'p1'").await;
    let m = tokio::time::timeout(WAIT, s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(pb::pull_response::Kind::Changes(b)) = m.kind else {
        panic!()
    };
    assert!(
        b.changes.iter().all(|c| c.scope == "workspace:acme"),
        "{b:?}"
    );
    a.take(&b);
    assert!(a.column("notes", "title").is_empty());
    // Follow streams per client are bounded.
    let _second = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let e = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
}

/// A pull can ask for some tables only: it gets their changes, and its
/// position still moves past the other tables' changes.
#[tokio::test]
async fn a_pull_of_some_tables_gets_only_theirs_and_moves_past_the_rest() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    h.sql("INSERT INTO notes VALUES ('n1', 'acme', 'note', NULL); INSERT INTO lww_notes VALUES ('l1', 'acme', 'lww', NULL); INSERT INTO notes VALUES ('n2', 'acme', 'note 2', NULL)")
        .await;
    let pull = |after: Vec<pb::ScopeSequence>, tables: Vec<String>| pb::PullRequest {
        client_id: "a".into(),
        after,
        tables,
        max_rows: 0,
        max_bytes: 0,
        follow: false,
    };
    let mut s = a
        .client
        .pull(pull(Vec::new(), vec!["lww_notes".into()]))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::pull_response::Kind::Changes(b)) = s.next().await.unwrap().unwrap().kind else {
        panic!()
    };
    assert_eq!(
        b.changes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec!["l1"]
    );
    assert!(!b.has_more);
    let last = *seqs(&h, "workspace:acme").await.last().unwrap() as u64;
    assert_eq!(
        b.through
            .iter()
            .find(|t| t.scope == "workspace:acme")
            .map(|t| t.sequence),
        Some(last),
        "the position moved past the notes"
    );
    // Small batches: each carries lww changes only, in order.
    h.sql("INSERT INTO lww_notes VALUES ('l2', 'acme', 'lww 2', NULL); INSERT INTO notes VALUES ('n3', 'acme', 'note 3', NULL); INSERT INTO lww_notes VALUES ('l3', 'acme', 'lww 3', NULL)")
        .await;
    let mut req = pull(b.through.clone(), vec!["lww_notes".into()]);
    req.max_rows = 1;
    let mut s = a.client.pull(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.next().await {
        let Some(pb::pull_response::Kind::Changes(b)) = m.unwrap().kind else {
            panic!()
        };
        got.extend(b.changes.iter().map(|c| c.id.clone()));
    }
    assert_eq!(got, vec!["l2", "l3"]);
    let e = a
        .client
        .pull(pull(Vec::new(), vec!["nope".into()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nope"), "{}", e.message());
}

/// Batches end between transactions: a transaction cut by the row or byte
/// limit waits for the next batch, and one larger than a batch comes whole.
#[tokio::test]
async fn pulls_never_split_a_transaction() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    h.sql("INSERT INTO notes VALUES ('a1', 'acme', 'alone', NULL)")
        .await;
    h.sql("INSERT INTO notes VALUES ('b1', 'acme', 'b', NULL), ('b2', 'acme', 'b', NULL), ('b3', 'acme', 'b', NULL)")
        .await;
    h.sql("INSERT INTO notes VALUES ('c1', 'acme', 'c', NULL), ('c2', 'acme', 'c', NULL)")
        .await;
    for (max_rows, max_bytes) in [(2, 0), (1, 0), (0, 1)] {
        let mut s = a
            .client
            .pull(pb::PullRequest {
                client_id: "a".into(),
                after: vec![pb::ScopeSequence {
                    scope: "workspace:acme".into(),
                    sequence: 0,
                }],
                max_rows,
                max_bytes,
                follow: false,
                tables: Vec::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut batches = Vec::new();
        while let Some(m) = s.next().await {
            let Some(pb::pull_response::Kind::Changes(b)) = m.unwrap().kind else {
                panic!()
            };
            if !b.changes.is_empty() {
                batches.push(b.changes.iter().map(|c| c.id.clone()).collect::<Vec<_>>());
            }
        }
        assert_eq!(
            batches,
            vec![vec!["a1"], vec!["b1", "b2", "b3"], vec!["c1", "c2"]],
            "max_rows {max_rows}, max_bytes {max_bytes}"
        );
    }
}

/// A device reinstalled with its outbox kept registers a new client id in
/// place of the old: a bundle applied under the old id and pushed again
/// under the new one is a replay, and the old id is released.
#[tokio::test]
async fn a_reinstalled_device_replays_nothing_under_its_new_id() {
    let h = harness().await;
    let mut old = Device::new(&h, "dev-alice", "phone-1").await;
    let first = vec![note("notes", IntentOp::Insert, "r1", "once", 0)];
    assert!(old.push_as(1, first.clone()).await.unwrap().applied);
    let register = |client_id: &str, replaces: &str| pb::RegisterClientRequest {
        client_id: client_id.into(),
        platform: "test".into(),
        app_version: "1.0.0".into(),
        replaces_client_id: replaces.into(),
    };
    // Someone else's id cannot be taken over, nor an unknown one.
    let mut carol = offline_client(&h, "dev-carol").await;
    let e = carol
        .register_client(register("carol-1", "phone-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let e = old
        .client
        .register_client(register("phone-2", "never-seen"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());

    old.client
        .register_client(register("phone-2", "phone-1"))
        .await
        .unwrap();
    let mut new = Device::new(&h, "dev-alice", "phone-2").await;
    let r = new.push_as(1, first).await.unwrap();
    assert!(r.replayed, "{r:?}");
    assert_eq!(
        h.query_i64("SELECT count(*) FROM notes WHERE id = 'r1'")
            .await,
        1
    );
    assert_eq!(
        h.query_i64("SELECT version FROM arcana_offline.rows WHERE tbl = 'notes' AND id = 'r1'")
            .await,
        1,
        "written once"
    );
    // The outbox goes on under the new id; the old id is released.
    let r = new
        .push_as(2, vec![note("notes", IntentOp::Update, "r1", "twice", 1)])
        .await
        .unwrap();
    assert!(r.applied && !r.replayed);
    let e = old
        .push_as(3, vec![note("notes", IntentOp::Insert, "r2", "late", 0)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
}

/// TRUNCATE fires no row triggers; the log still records every row it
/// removed, so devices drop them.
#[tokio::test]
async fn a_truncate_reaches_devices_as_deletes() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    h.sql("INSERT INTO notes VALUES ('t1', 'acme', 'one', NULL), ('t2', 'acme', 'two', NULL), ('g1', 'globex', 'theirs', NULL)")
        .await;
    a.pull().await.unwrap();
    assert_eq!(a.column("notes", "title").len(), 2);
    h.sql("TRUNCATE notes").await;
    a.pull().await.unwrap();
    assert!(a.column("notes", "title").is_empty(), "{:?}", a.rows);
    // A fresh device sees nothing either, and rows written afterwards come
    // through as before.
    h.sql("INSERT INTO notes VALUES ('t3', 'acme', 'three', NULL)")
        .await;
    let mut b = Device::new(&h, "dev-alice", "b").await;
    b.pull().await.unwrap();
    a.pull().await.unwrap();
    for d in [&a, &b] {
        assert_eq!(
            d.column("notes", "title").keys().collect::<Vec<_>>(),
            vec!["t3"]
        );
    }
}

#[tokio::test]
async fn a_device_behind_retention_snapshots_and_converges() {
    let h = harness_with(|c| c.offline.retention_max_rows = 3).await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut b = Device::new(&h, "dev-bob", "b").await;
    for i in 0..6 {
        a.push(vec![note(
            "notes",
            IntentOp::Insert,
            &format!("n{i}"),
            "t",
            0,
        )])
        .await
        .unwrap();
    }
    h.sql("DELETE FROM notes WHERE id = 'n0'").await;
    // Wait for the retention task to prune.
    let deadline = tokio::time::Instant::now() + WAIT;
    while h
        .query_i64("SELECT floor FROM arcana_offline.scopes WHERE scope = 'workspace:acme'")
        .await
        < 4
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let need = b.pull().await.unwrap().expect("told to snapshot");
    assert_eq!(need.scope, "workspace:acme");
    assert_eq!(need.retained_floor, 4);
    assert!(
        need.reason.contains("retention_max_rows"),
        "{}",
        need.reason
    );
    b.snapshot().await.unwrap();
    assert_eq!(b.at["workspace:acme"], 7);
    h.sql("UPDATE notes SET title = 'later' WHERE id = 'n5'")
        .await;
    assert!(b.pull().await.unwrap().is_none());
    let want = server_column(&h, "notes", "title", "workspace_id = 'acme'").await;
    assert_eq!(b.column("notes", "title"), want);
    assert_eq!(want.len(), 5);
}

/// Waits until `q` (one bigint) reads `want`.
async fn until_i64(h: &Harness, q: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = h.query_i64(q).await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{q}: {now}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a whole retention pass: a client aged past the idle limit
/// after it begins is deactivated by the pass, the next one by a later.
async fn retention_pass(h: &Harness, probes: [&str; 2]) {
    for p in probes {
        h.sql(&format!(
            "UPDATE arcana_offline.clients SET last_seen = now() - interval '1000 days' WHERE client_id = '{p}'"
        ))
        .await;
        until_i64(
            h,
            &format!("SELECT (NOT active)::int::bigint FROM arcana_offline.clients WHERE client_id = '{p}'"),
            1,
        )
        .await;
    }
}

/// Compaction prunes what every active device has pulled, and no further:
/// the slowest active device still pulls, only new devices snapshot.
#[tokio::test]
async fn compaction_prunes_only_what_every_active_device_has_pulled() {
    let h = harness_with(|c| c.offline.compact_after_seconds = 0).await;
    let floor = "SELECT floor FROM arcana_offline.scopes WHERE scope = 'workspace:acme'";
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut b = Device::new(&h, "dev-alice", "b").await;
    for p in ["p1", "p2"] {
        Device::new(&h, "dev-alice", p).await;
    }
    h.sql("INSERT INTO notes VALUES ('n1', 'acme', 'one', NULL), ('n2', 'acme', 'two', NULL), ('n3', 'acme', 'three', NULL)")
        .await;
    // A pulls twice: the second pull says it holds all three. B pulled
    // once, from 0.
    a.pull().await.unwrap();
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    retention_pass(&h, ["p1", "p2"]).await;
    assert_eq!(h.query_i64(floor).await, 0, "b still needs the changes");
    // Once B says so too, they go.
    b.pull().await.unwrap();
    until_i64(&h, floor, 3).await;
    h.sql("UPDATE notes SET title = 'later' WHERE id = 'n1'")
        .await;
    for d in [&mut a, &mut b] {
        assert_eq!(
            d.pull().await.unwrap(),
            None,
            "an active device never snapshots"
        );
        assert_eq!(d.column("notes", "title")["n1"].as_deref(), Some("later"));
    }
    let mut fresh = Device::new(&h, "dev-alice", "c").await;
    let need = fresh.pull().await.unwrap().expect("a new device snapshots");
    assert!(
        need.reason.contains("compact_after_seconds"),
        "{}",
        need.reason
    );
}

#[tokio::test]
async fn a_snapshot_resumed_from_its_cursor_converges() {
    let h = harness_with(|c| c.offline.snapshot_chunk_rows = 2).await;
    for i in 0..5 {
        h.sql(&format!(
            "INSERT INTO notes VALUES ('s{i}', 'acme', 't{i}', NULL)"
        ))
        .await;
    }
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut s = a
        .client
        .snapshot(pb::SnapshotRequest {
            client_id: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = s.next().await.unwrap().unwrap();
    drop(s);
    assert_eq!(first.rows.len(), 2);
    assert!(!first.last);
    // Changes meanwhile, before the resume.
    h.sql(
        "DELETE FROM notes WHERE id = 's4'; INSERT INTO notes VALUES ('s9', 'acme', 'new', NULL)",
    )
    .await;
    for r in &first.rows {
        a.rows.insert(
            (r.table.clone(), r.id.clone()),
            LocalRow {
                version: r.version,
                values: r.values.clone(),
                scope: r.scope.clone(),
            },
        );
    }
    let mut s = a
        .client
        .snapshot(pb::SnapshotRequest {
            client_id: "a".into(),
            cursor: first.cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        assert_eq!(c.at, first.at, "frozen at the same sequences");
        for r in c.rows {
            a.rows.insert(
                (r.table.clone(), r.id.clone()),
                LocalRow {
                    version: r.version,
                    values: r.values,
                    scope: r.scope,
                },
            );
        }
    }
    for x in &first.at {
        a.at.insert(x.scope.clone(), x.sequence);
    }
    a.pull().await.unwrap();
    assert_eq!(
        a.column("notes", "title"),
        server_column(&h, "notes", "title", "workspace_id = 'acme'").await
    );
    // A forged cursor is refused.
    let e = a
        .client
        .snapshot(pb::SnapshotRequest {
            client_id: "a".into(),
            cursor: "bm9wZQ".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn another_scopes_rows_are_never_visible_or_writable() {
    let h = harness().await;
    h.sql("INSERT INTO notes VALUES ('g1', 'globex', 'globex secret', NULL)")
        .await;
    h.sql("INSERT INTO prefs VALUES ('bob', 'theme', 'bob secret')")
        .await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    a.pull().await.unwrap();
    a.snapshot().await.unwrap();
    assert!(a.rows.is_empty(), "{:?}", a.rows);
    // Pulling or snapshotting another scope by name is refused.
    let e = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            after: vec![pb::ScopeSequence {
                scope: "workspace:globex".into(),
                sequence: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = a
        .client
        .snapshot(pb::SnapshotRequest {
            client_id: "a".into(),
            scopes: vec!["user:bob".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Writing it is refused, the whole bundle with it, with no data echoed.
    for bad in [
        note("notes", IntentOp::Update, "g1", "mine now", 1),
        intent(
            "notes",
            IntentOp::Insert,
            &[
                ("id", text("x")),
                ("workspace_id", text("globex")),
                ("title", text("t")),
            ],
            0,
        ),
        intent(
            "prefs",
            IntentOp::Update,
            &[
                ("user_id", text("bob")),
                ("name", text("theme")),
                ("value", text("x")),
            ],
            1,
        ),
    ] {
        let e = a
            .push(vec![note("notes", IntentOp::Insert, "ok", "fine", 0), bad])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        assert!(!e.message().contains("secret"), "{}", e.message());
    }
    assert_eq!(
        h.query_i64("SELECT count(*) FROM notes WHERE id = 'ok'")
            .await,
        0
    );
    assert_eq!(
        server_column(&h, "notes", "title", "id = 'g1'").await["g1"].as_deref(),
        Some("globex secret")
    );
}

#[tokio::test]
async fn chunk_errors_get_precise_statuses() {
    let h = harness().await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let chunk = |bundle: u64, index: u32, last: bool, n: usize| pb::PushChunk {
        client_id: "a".into(),
        bundle_id: bundle,
        chunk_index: index,
        last,
        intents: (0..n)
            .map(|i| {
                note(
                    "notes",
                    IntentOp::Insert,
                    &format!("c{bundle}-{index}-{i}"),
                    "t",
                    0,
                )
            })
            .collect(),
    };
    let cases = [
        (
            vec![chunk(1, 0, false, 1), chunk(1, 2, true, 1)],
            Code::InvalidArgument,
            "chunk_index 2 arrived where 1 was expected",
        ),
        (
            vec![chunk(1, 0, false, 1), chunk(2, 1, true, 1)],
            Code::InvalidArgument,
            "one bundle per stream",
        ),
        (
            vec![chunk(1, 0, false, 1)],
            Code::InvalidArgument,
            "without one with last = true",
        ),
        (
            vec![chunk(1, 0, true, 6)],
            Code::ResourceExhausted,
            "offline.max_chunk_rows = 5",
        ),
        (
            vec![chunk(1, 0, false, 5), chunk(1, 1, true, 4)],
            Code::ResourceExhausted,
            "offline.max_push_rows = 8",
        ),
        (vec![], Code::InvalidArgument, "held no chunk"),
    ];
    for (chunks, code, text) in cases {
        let e = a.push_chunks(chunks).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(text), "{}", e.message());
    }
    let bad = [
        (
            intent("nope", IntentOp::Insert, &[], 0),
            Code::InvalidArgument,
            "table `nope` is not synced",
        ),
        (
            intent("notes", IntentOp::Unspecified, &[("id", text("x"))], 0),
            Code::InvalidArgument,
            "op must be",
        ),
        (
            intent("notes", IntentOp::Insert, &[("title", text("x"))], 0),
            Code::InvalidArgument,
            "key column `id`",
        ),
        (
            intent(
                "notes",
                IntentOp::Insert,
                &[("id", text("x")), ("colour", text("x"))],
                0,
            ),
            Code::InvalidArgument,
            "column `colour`",
        ),
        (
            note("notes", IntentOp::Insert, "x", "", 0),
            Code::InvalidArgument,
            "check constraint",
        ),
    ];
    for (i, code, text) in bad {
        let e = a.push(vec![i]).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(e.message().contains(text), "{}", e.message());
    }
    assert_eq!(h.query_i64("SELECT count(*) FROM notes").await, 0);
    // Chunks in order apply as one bundle.
    let r = a
        .push_chunks(vec![chunk(9, 0, false, 3), chunk(9, 1, true, 2)])
        .await
        .unwrap();
    assert!(r.applied);
    assert_eq!(r.results.len(), 5);
    assert_eq!(h.query_i64("SELECT count(*) FROM notes").await, 5);
}

#[tokio::test]
async fn idle_clients_are_deactivated_and_must_register_again() {
    let h = harness_with(|c| c.offline.client_idle_seconds = 0).await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    h.sql("UPDATE arcana_offline.clients SET last_seen = now() - interval '1 hour'")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while h
        .query_i64("SELECT count(*) FROM arcana_offline.clients WHERE active")
        .await
        > 0
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = a.pull().await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("register") || e.message().contains("RegisterClient"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("Snapshot"), "{}", e.message());
    let _again = Device::new(&h, "dev-alice", "a").await;
}

#[tokio::test]
async fn a_key_that_is_not_unique_is_refused_at_startup() {
    let db_url = fresh_database().await;
    arcana::postgres::execute_script(&db_url, SCHEMA)
        .await
        .unwrap();
    let mut config =
        arcana::config::Config::parse(&format!("{}\n{CONFIG}", arcana::app::DEMO_CONFIG)).unwrap();
    config.changes.mode = arcana::config::ChangeMode::None;
    config.offline.tables[0].key = vec!["title".into()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = arcana::app::App::start(&config, &db_url, listener).await else {
        panic!("started with a key that is not unique")
    };
    assert!(
        e.contains("offline.tables `notes`") && e.contains("not the primary key or a unique index"),
        "{e}"
    );
}

/// `arcana serve` as a child process, killed with SIGKILL at will.
struct Child {
    proc: tokio::process::Child,
    addr: String,
}

async fn serve_child(config: &std::path::Path, db_url: &str, addr: &str) -> Child {
    let proc = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--database-url", db_url, "--listen", addr])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Child {
        proc,
        addr: addr.to_owned(),
    }
}

async fn child_client(c: &Child, token: &str) -> OfflineClient {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", c.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    arcana::proto::offline_service_client::OfflineServiceClient::with_interceptor(
        channel,
        Bearer(token.into()),
    )
}

#[tokio::test]
async fn a_server_killed_mid_push_applies_nothing_and_the_replay_works() {
    let db_url = fresh_database().await;
    arcana::postgres::execute_script(&db_url, SCHEMA)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("arcana-offline-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("arcana.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[changes]\nmode = \"none\"\n{CONFIG}",
            arcana::app::DEMO_CONFIG
        ),
    )
    .unwrap();
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut server = serve_child(&config, &db_url, &addr).await;
    let mut c = child_client(&server, "dev-alice").await;
    c.register_client(pb::RegisterClientRequest {
        client_id: "k".into(),
        platform: "test".into(),
        app_version: "1.0.0".into(),
        replaces_client_id: String::new(),
    })
    .await
    .unwrap();
    let chunk = |index: u32, last: bool| pb::PushChunk {
        client_id: "k".into(),
        bundle_id: 1,
        chunk_index: index,
        last,
        intents: vec![note(
            "notes",
            IntentOp::Insert,
            &format!("k{index}"),
            "t",
            0,
        )],
    };
    // Chunk 0 arrives, then the server dies before the last chunk.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(chunk(0, false)).await.unwrap();
    let mut pusher = c.clone();
    let push = tokio::spawn(async move {
        pusher
            .push(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.proc.kill().await.unwrap();
    assert!(push.await.unwrap().is_err());
    drop(tx);
    let (pg, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let count = |q: &'static str| {
        let pg = &pg;
        async move { pg.query_one(q, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("SELECT count(*) FROM notes").await, 0);
    assert_eq!(
        count("SELECT count(*) FROM arcana_offline.bundles").await,
        0
    );
    // A new server; the device replays the whole bundle.
    server = serve_child(&config, &db_url, &addr).await;
    let mut c = child_client(&server, "dev-alice").await;
    let r = c
        .push(tokio_stream::iter(vec![chunk(0, false), chunk(1, true)]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.applied && !r.replayed);
    // Killed right after answering, before the device saw the answer: the
    // replay on the next server returns the same result.
    server.proc.kill().await.unwrap();
    server = serve_child(&config, &db_url, &addr).await;
    let mut c = child_client(&server, "dev-alice").await;
    let again = c
        .push(tokio_stream::iter(vec![chunk(0, false), chunk(1, true)]))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.results, r.results);
    assert_eq!(count("SELECT count(*) FROM notes").await, 2);
    assert_eq!(
        count("SELECT count(*) FROM arcana_offline.changes").await,
        2
    );
    server.proc.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_offline_command_prints_and_installs_the_change_log() {
    let db_url = fresh_database().await;
    arcana::postgres::execute_script(&db_url, SCHEMA)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("arcana-offline-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("arcana.toml");
    std::fs::write(&config, format!("{}\n{CONFIG}", arcana::app::DEMO_CONFIG)).unwrap();
    let run = |action: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
            .args(["offline", action, "--config"])
            .arg(&config)
            .args(["--database-url", &db_url])
            .output()
    };
    let out = run("sql").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(
        sql.contains("CREATE TABLE IF NOT EXISTS arcana_offline.changes"),
        "{sql}"
    );
    assert!(
        sql.contains("AFTER INSERT OR UPDATE OR DELETE ON \"prefs\""),
        "{sql}"
    );
    assert!(
        sql.contains("to_json(ARRAY[NEW.\"user_id\"::text, NEW.\"name\"::text]::text[])"),
        "{sql}"
    );
    let out = run("install").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (c, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute("INSERT INTO prefs VALUES ('alice', 'theme', 'dark')")
        .await
        .unwrap();
    let id: String = c
        .query_one(
            "SELECT id FROM arcana_offline.changes WHERE tbl = 'prefs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The same id a device computes for the composite key.
    assert_eq!(id, r#"["alice","theme"]"#);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn every_change_of_a_transaction_is_sequenced_once_however_it_commits() {
    let h = harness().await;
    h.sql(
        "BEGIN;
         INSERT INTO notes VALUES ('a', 'acme', 'a', NULL), ('b', 'acme', 'b', NULL), ('c', 'acme', 'c', NULL);
         SAVEPOINT s;
         INSERT INTO notes VALUES ('gone', 'acme', 'rolled back', NULL);
         ROLLBACK TO s;
         SET CONSTRAINTS arcana_offline.arcana_offline_sequence IMMEDIATE;
         INSERT INTO notes VALUES ('d', 'acme', 'd', NULL), ('e', 'acme', 'e', NULL);
         COMMIT;",
    )
    .await;
    assert_eq!(seqs(&h, "workspace:acme").await, vec![1, 2, 3, 4, 5]);
    // A bulk write sequences in one pass at commit, not once per row.
    let started = std::time::Instant::now();
    h.sql(
        "INSERT INTO notes SELECT 'bulk' || g, 'acme', 't', NULL FROM generate_series(1, 20000) g",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        h.query_i64("SELECT max(seq) FROM arcana_offline.changes WHERE scope = 'workspace:acme'")
            .await,
        20005
    );
    assert_eq!(
        h.query_i64("SELECT count(*) FROM arcana_offline.pending")
            .await,
        0
    );
}

const TEAM_SCHEMA: &str = r#"
CREATE TABLE team_members (
    user_id      text NOT NULL,
    workspace_id text NOT NULL,
    team_id      int NOT NULL,
    PRIMARY KEY (user_id, workspace_id, team_id)
);
CREATE TABLE team_tasks (
    id      text PRIMARY KEY,
    team_id int NOT NULL,
    title   text NOT NULL
);
INSERT INTO team_members VALUES ('alice', 'acme', 1), ('alice', 'acme', 3), ('bob', 'acme', 2);
GRANT SELECT ON team_members TO arcana_eval;
GRANT SELECT, INSERT, UPDATE, DELETE ON team_tasks TO arcana_eval;
"#;

const TEAM_CONFIG: &str = r#"
[offline]
retention_interval_ms = 100

[[offline.tables]]
table = "team_tasks"
scope = "sql"
scope_column = "team_id"
scope_name = "team"
scopes_sql = "SELECT team_id FROM team_members WHERE user_id = :user_id AND workspace_id = :workspace_id"
"#;

async fn team_harness() -> Harness {
    Harness::with_extra(TEAM_SCHEMA, TEAM_CONFIG, |_| {}).await
}

fn task(op: IntentOp, id: &str, team: i64, title: &str, base: u64) -> pb::RowIntent {
    intent(
        "team_tasks",
        op,
        &[
            ("id", text(id)),
            ("team_id", int(team)),
            ("title", text(title)),
        ],
        base,
    )
}

async fn registered_scopes(h: &Harness, token: &str, client_id: &str) -> Vec<String> {
    offline_client(h, token)
        .await
        .register_client(pb::RegisterClientRequest {
            client_id: client_id.into(),
            platform: "test".into(),
            app_version: "1.0.0".into(),
            replaces_client_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .scopes
        .into_iter()
        .map(|s| s.scope)
        .collect()
}

#[tokio::test]
async fn sql_buckets_give_each_user_only_their_teams_rows() {
    let h = team_harness().await;
    h.sql("INSERT INTO team_tasks VALUES ('t1', 1, 'team one'), ('t2', 2, 'team two secret'), ('t3', 3, 'team three')")
        .await;
    assert_eq!(
        registered_scopes(&h, "dev-alice", "a").await,
        ["team:1", "team:3"]
    );
    assert_eq!(registered_scopes(&h, "dev-bob", "b").await, ["team:2"]);
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut b = Device::new(&h, "dev-bob", "b").await;
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    let ids = |d: &Device| {
        d.column("team_tasks", "title")
            .into_keys()
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ["t1", "t3"]);
    assert_eq!(ids(&b), ["t2"]);
    // The log buckets later writes the same way.
    h.sql("INSERT INTO team_tasks VALUES ('t4', 2, 'later')")
        .await;
    a.pull().await.unwrap();
    b.pull().await.unwrap();
    assert_eq!(ids(&a), ["t1", "t3"]);
    assert_eq!(ids(&b), ["t2", "t4"]);
    // Another team by name is refused, naming none of its data.
    let e = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            after: vec![pb::ScopeSequence {
                scope: "team:2".into(),
                sequence: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(!e.message().contains("secret"), "{}", e.message());
}

#[tokio::test]
async fn a_membership_added_by_sql_counts_on_the_next_call_and_a_lost_one_ends_the_follow() {
    let h = team_harness().await;
    h.sql("INSERT INTO team_tasks VALUES ('t2', 2, 'team two')")
        .await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let snapshot_team2 = |c: &mut OfflineClient| {
        let mut c = c.clone();
        async move {
            c.snapshot(pb::SnapshotRequest {
                client_id: "a".into(),
                scopes: vec!["team:2".into()],
                cursor: String::new(),
            })
            .await
        }
    };
    assert_eq!(
        snapshot_team2(&mut a.client).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    h.sql("INSERT INTO team_members VALUES ('alice', 'acme', 2)")
        .await;
    assert_eq!(
        registered_scopes(&h, "dev-alice", "a").await,
        ["team:1", "team:2", "team:3"]
    );
    let mut s = snapshot_team2(&mut a.client).await.unwrap().into_inner();
    let mut rows = Vec::new();
    while let Some(c) = s.next().await {
        rows.extend(c.unwrap().rows.into_iter().map(|r| (r.id, r.scope)));
    }
    assert_eq!(rows, [("t2".to_owned(), "team:2".to_owned())]);
    a.snapshot().await.unwrap();
    assert_eq!(a.version("team_tasks", "t2"), 1);
    // A follow of team 2 ends with PERMISSION_DENIED once alice leaves it.
    let mut f = a
        .client
        .pull(pb::PullRequest {
            client_id: "a".into(),
            after: a.after(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    f.next().await.unwrap().unwrap();
    h.sql("DELETE FROM team_members WHERE user_id = 'alice' AND team_id = 2")
        .await;
    h.sql("UPDATE team_tasks SET title = 'after she left' WHERE id = 't2'")
        .await;
    let end = tokio::time::timeout(WAIT, f.next()).await.unwrap();
    let e = end.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(!e.message().contains("after she left"), "{}", e.message());
    assert!(tokio::time::timeout(WAIT, f.next())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_push_touching_another_teams_row_is_refused_whole() {
    let h = team_harness().await;
    h.sql("INSERT INTO team_tasks VALUES ('t1', 1, 'one'), ('t2', 2, 'team two secret')")
        .await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let before = server_column(&h, "team_tasks", "team_id || ':' || title", "true").await;
    for bad in [
        // Another team's row, its bucket before the write.
        task(IntentOp::Update, "t2", 2, "mine now", 1),
        task(IntentOp::Update, "t2", 1, "moved to mine", 1),
        intent("team_tasks", IntentOp::Delete, &[("id", text("t2"))], 1),
        // Into another team, its bucket after the write.
        task(IntentOp::Insert, "x", 2, "new", 0),
        task(IntentOp::Update, "t1", 2, "given away", 1),
    ] {
        let e = a
            .push(vec![task(IntentOp::Insert, "ok", 1, "fine", 0), bad])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
        assert!(!e.message().contains("secret"), "{}", e.message());
        assert_eq!(
            server_column(&h, "team_tasks", "team_id || ':' || title", "true").await,
            before
        );
    }
    // An insert must say which team it goes to.
    let e = a
        .push(vec![intent(
            "team_tasks",
            IntentOp::Insert,
            &[("id", text("y")), ("title", text("t"))],
            0,
        )])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    // Moving a row between two of one's own teams is a write like any
    // other; the log bumps its version twice (out of one, into the other).
    let r = a
        .push(vec![task(IntentOp::Update, "t1", 3, "moved", 1)])
        .await
        .unwrap();
    assert!(r.applied);
    assert_eq!(r.results[0].version, 3);
    a.pull().await.unwrap();
    assert_eq!(a.version("team_tasks", "t1"), 3);
    assert_eq!(
        a.column("team_tasks", "team_id").get("t1"),
        Some(&Some("3".to_owned()))
    );
}

#[tokio::test]
async fn a_broken_scopes_sql_stops_startup_with_the_databases_words() {
    let db_url = fresh_database().await;
    arcana::postgres::execute_script(&db_url, TEAM_SCHEMA)
        .await
        .unwrap();
    let config = TEAM_CONFIG.replace("SELECT team_id FROM", "SELECT team_ident FROM");
    let mut config =
        arcana::config::Config::parse(&format!("{}\n{config}", arcana::app::DEMO_CONFIG)).unwrap();
    config.changes.mode = arcana::config::ChangeMode::None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = arcana::app::App::start(&config, &db_url, listener).await else {
        panic!("started with a broken scopes_sql")
    };
    assert!(
        e.contains("offline.tables `team_tasks`")
            && e.contains("scopes_sql")
            && e.contains("column \"team_ident\" does not exist"),
        "{e}"
    );
    // A missing scopes_sql is named too.
    config.offline.tables[0].scopes_sql = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = arcana::app::App::start(&config, &db_url, listener).await else {
        panic!("started without scopes_sql")
    };
    assert!(e.contains("needs scopes_sql"), "{e}");
    // Two tables sharing a scope name must share its query.
    let config = format!(
        "{}\n{TEAM_CONFIG}\n[[offline.tables]]\ntable = \"team_members\"\nscope = \"sql\"\n\
         scope_column = \"team_id\"\nscope_name = \"team\"\nscopes_sql = \"SELECT 1\"\n",
        arcana::app::DEMO_CONFIG
    );
    let mut config = arcana::config::Config::parse(&config).unwrap();
    config.changes.mode = arcana::config::ChangeMode::None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = arcana::app::App::start(&config, &db_url, listener).await else {
        panic!("started with two queries for one scope name")
    };
    assert!(
        e.contains("shares scope_name `team` with table `team_tasks`"),
        "{e}"
    );
}

const KINDS_SCHEMA: &str = r#"
CREATE TABLE kinds (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL,
    i8  bigint, i4 integer, i2 smallint,
    f8  double precision, f4 real,
    b   boolean,
    s   text, vc varchar(20),
    bin bytea,
    n   numeric(14,2), nf numeric,
    d   date,
    ts  timestamptz, tsn timestamp,
    j   jsonb, js json,
    u   uuid
);
GRANT SELECT, INSERT, UPDATE, DELETE ON kinds TO arcana_eval;
"#;

const KINDS_CONFIG: &str = r#"
[offline]

[[offline.tables]]
table = "kinds"
scope = "workspace"
"#;

fn val(k: pb::value::Kind) -> pb::Value {
    pb::Value { kind: Some(k) }
}

fn ts(seconds: i64, nanos: i32) -> pb::Value {
    val(pb::value::Kind::Timestamp(prost_types::Timestamp {
        seconds,
        nanos,
    }))
}

/// One value per column, with a SQL condition true when the table holds it.
type KindRow = Vec<(&'static str, pb::Value, String)>;

fn kinds_first() -> KindRow {
    use pb::value::Kind::*;
    vec![
        (
            "i8",
            val(Int(-9_007_199_254_740_993)),
            "i8 = '-9007199254740993'::bigint".into(),
        ),
        ("i4", val(Int(2_147_483_647)), "i4 = 2147483647".into()),
        ("i2", val(Int(-32768)), "i2 = '-32768'::smallint".into()),
        ("f8", val(Float(0.1)), "f8 = '0.1'::float8".into()),
        ("f4", val(Float(0.5)), "f4 = '0.5'::real".into()),
        ("b", val(Bool(true)), "b".into()),
        (
            "s",
            val(String("héllo ✓ 'q'".into())),
            "s = 'héllo ✓ ''q'''".into(),
        ),
        ("vc", val(String("short".into())), "vc = 'short'".into()),
        (
            "bin",
            val(Bytes(vec![0u8, 1, 255].into())),
            r"bin = '\x0001ff'::bytea".into(),
        ),
        (
            "n",
            val(Numeric("123456789012.34".into())),
            "n::text = '123456789012.34'".into(),
        ),
        (
            "nf",
            val(Numeric("-0.000000000000000000001".into())),
            "nf::text = '-0.000000000000000000001'".into(),
        ),
        (
            "d",
            val(Date("1999-12-31".into())),
            "d = '1999-12-31'::date".into(),
        ),
        (
            "ts",
            ts(946_684_799, 123_456_000),
            "ts = '1999-12-31 23:59:59.123456+00'::timestamptz".into(),
        ),
        (
            "tsn",
            ts(1_709_208_000, 1_000),
            "tsn = '2024-02-29 12:00:00.000001'::timestamp".into(),
        ),
        (
            "j",
            val(Json(r#"{"a": [1, 2.50, "x"], "b": null}"#.into())),
            r#"j::text = '{"a": [1, 2.50, "x"], "b": null}'"#.into(),
        ),
        (
            "js",
            val(Json(r#"{"z":1,  "a" : 2.0}"#.into())),
            r#"js::text = '{"z":1,  "a" : 2.0}'"#.into(),
        ),
        (
            "u",
            val(Uuid("0f8fad5b-d9cb-469f-a165-70867728950e".into())),
            "u = '0f8fad5b-d9cb-469f-a165-70867728950e'::uuid".into(),
        ),
    ]
}

fn kinds_second() -> KindRow {
    use pb::value::Kind::*;
    let null = |c: &'static str| (c, val(Null(0)), format!("{c} IS NULL"));
    vec![
        null("i8"),
        ("i4", val(Int(-1)), "i4 = -1".into()),
        ("i2", val(Int(7)), "i2 = 7".into()),
        ("f8", val(Float(-1.5e300)), "f8 = '-1.5e300'::float8".into()),
        null("f4"),
        ("b", val(Bool(false)), "NOT b".into()),
        ("s", val(String("".into())), "s = ''".into()),
        null("vc"),
        (
            "bin",
            val(Bytes(Vec::new().into())),
            r"bin = '\x'::bytea".into(),
        ),
        (
            "n",
            val(Numeric("-0.01".into())),
            "n::text = '-0.01'".into(),
        ),
        (
            "nf",
            val(Numeric("NaN".into())),
            "nf = 'NaN'::numeric".into(),
        ),
        (
            "d",
            val(Date("2000-02-29".into())),
            "d = '2000-02-29'::date".into(),
        ),
        (
            "ts",
            ts(-1, 999_999_000),
            "ts = '1969-12-31 23:59:59.999999+00'::timestamptz".into(),
        ),
        null("tsn"),
        (
            "j",
            val(Json(r#"{"k": {"deep": [true, false]}}"#.into())),
            r#"j::text = '{"k": {"deep": [true, false]}}'"#.into(),
        ),
        null("js"),
        null("u"),
    ]
}

fn kinds_third() -> KindRow {
    use pb::value::Kind::*;
    let mut r = kinds_second();
    for c in &mut r {
        match c.0 {
            "nf" => {
                *c = (
                    "nf",
                    val(Numeric("Infinity".into())),
                    "nf = 'Infinity'::numeric".into(),
                )
            }
            "d" => {
                *c = (
                    "d",
                    val(Date("infinity".into())),
                    "d = 'infinity'::date".into(),
                )
            }
            "n" => *c = ("n", val(Numeric("0.00".into())), "n::text = '0.00'".into()),
            _ => {}
        }
    }
    r
}

fn kinds_intent(op: IntentOp, id: &str, row: &KindRow, base: u64) -> pb::RowIntent {
    let mut v: Vec<(&str, pb::Value)> = vec![("id", text(id))];
    v.extend(row.iter().map(|(c, x, _)| (*c, x.clone())));
    intent("kinds", op, &v, base)
}

/// The device and PostgreSQL both hold exactly `row` for `id`.
async fn assert_kinds(h: &Harness, d: &Device, id: &str, row: &KindRow, version: u64) {
    let local = d
        .rows
        .get(&("kinds".to_owned(), id.to_owned()))
        .unwrap_or_else(|| panic!("device {} lacks {id}", d.id));
    assert_eq!(local.version, version, "device {} row {id}", d.id);
    for (c, x, _) in row {
        assert_eq!(
            local.values.get(*c),
            Some(x),
            "device {} row {id} column {c}",
            d.id
        );
    }
    assert_eq!(local.values.get("id"), Some(&text(id)));
    assert_eq!(local.values.get("workspace_id"), Some(&text("acme")));
    for (c, _, cond) in row {
        assert_eq!(
            h.query_i64(&format!(
                "SELECT count(*) FROM kinds WHERE id = '{id}' AND {cond}"
            ))
            .await,
            1,
            "PostgreSQL row {id} column {c}: {cond}"
        );
    }
}

#[tokio::test]
async fn every_value_kind_round_trips_through_push_pull_and_snapshot() {
    let h = Harness::with_extra(KINDS_SCHEMA, KINDS_CONFIG, |_| {}).await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    // The table covers every kind a Value has.
    let caps = a
        .client
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut kinds: Vec<String> = caps.tables[0]
        .columns
        .iter()
        .map(|c| c.kind.clone())
        .collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "bool",
            "bytes",
            "date",
            "float",
            "int",
            "json",
            "numeric",
            "string",
            "timestamp",
            "uuid"
        ]
    );
    let mut b = Device::new(&h, "dev-bob", "b").await;
    let check = |rows: Vec<(&'static str, KindRow, u64)>| {
        let h = &h;
        async move {
            let mut c = Device::new(h, "dev-alice", "c").await;
            c.snapshot().await.unwrap();
            for (id, row, version) in &rows {
                assert_kinds(h, &c, id, row, *version).await;
            }
            rows
        }
    };
    let r = a
        .push(vec![
            kinds_intent(IntentOp::Insert, "k1", &kinds_first(), 0),
            kinds_intent(IntentOp::Insert, "k2", &kinds_second(), 0),
            kinds_intent(IntentOp::Insert, "k3", &kinds_third(), 0),
        ])
        .await
        .unwrap();
    assert!(r.applied, "{r:?}");
    b.pull().await.unwrap();
    let rows = check(vec![
        ("k1", kinds_first(), 1),
        ("k2", kinds_second(), 1),
        ("k3", kinds_third(), 1),
    ])
    .await;
    for (id, row, version) in &rows {
        assert_kinds(&h, &b, id, row, *version).await;
    }
    // Updates the other way round: values over NULLs and NULLs over values.
    let r = a
        .push(vec![
            kinds_intent(IntentOp::Update, "k1", &kinds_second(), 1),
            kinds_intent(IntentOp::Update, "k2", &kinds_first(), 1),
            kinds_intent(IntentOp::Update, "k3", &kinds_first(), 1),
        ])
        .await
        .unwrap();
    assert!(r.applied, "{r:?}");
    b.pull().await.unwrap();
    let rows = check(vec![
        ("k1", kinds_second(), 2),
        ("k2", kinds_first(), 2),
        ("k3", kinds_first(), 2),
    ])
    .await;
    for (id, row, version) in &rows {
        assert_kinds(&h, &b, id, row, *version).await;
    }
    // A value the column cannot take is the caller's error, named.
    let e = a
        .push(vec![intent(
            "kinds",
            IntentOp::Update,
            &[
                ("id", text("k1")),
                ("d", val(pb::value::Kind::Date("1999-13-01".into()))),
            ],
            2,
        )])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    let e = a
        .push(vec![intent(
            "kinds",
            IntentOp::Update,
            &[
                ("id", text("k1")),
                ("n", val(pb::value::Kind::Numeric("12x".into()))),
            ],
            2,
        )])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_copies_of_a_bundle_all_get_its_one_stored_result() {
    let h = harness().await;
    let a = Device::new(&h, "dev-alice", "a").await;
    for round in 0..3u64 {
        let old = format!("c{round}");
        h.sql(&format!(
            "INSERT INTO notes VALUES ('{old}', 'acme', 'before', NULL)"
        ))
        .await;
        let bundle = vec![
            note("notes", IntentOp::Update, &old, "after", 1),
            note("notes", IntentOp::Insert, &format!("new{round}"), "new", 0),
        ];
        let chunk = pb::PushChunk {
            client_id: "a".into(),
            bundle_id: 100 + round,
            chunk_index: 0,
            last: true,
            intents: bundle,
        };
        let copies: Vec<_> = (0..6)
            .map(|_| {
                let mut c = a.client.clone();
                let chunk = chunk.clone();
                tokio::spawn(async move { c.push(tokio_stream::iter(vec![chunk])).await })
            })
            .collect();
        let mut answers = Vec::new();
        for c in copies {
            answers.push(c.await.unwrap().unwrap().into_inner());
        }
        let first: Vec<_> = answers.iter().filter(|r| !r.replayed).collect();
        assert_eq!(first.len(), 1, "round {round}: {answers:#?}");
        let first = first[0].clone();
        assert!(first.applied && !first.committed.is_empty(), "{first:?}");
        for r in &answers {
            assert!(r.applied, "round {round}: {r:?}");
            assert_eq!(r.committed, first.committed, "round {round}");
            assert_eq!(r.results, first.results, "round {round}");
        }
        // Applied once.
        assert_eq!(
            h.query_i64(&format!(
                "SELECT version FROM arcana_offline.rows WHERE id = '{old}'"
            ))
            .await,
            2
        );
        assert_eq!(
            h.query_i64(&format!(
                "SELECT count(*) FROM arcana_offline.changes WHERE bundle_id = {}",
                100 + round
            ))
            .await,
            2
        );
    }
}

#[tokio::test]
async fn a_pull_after_a_sequence_past_the_int64_range_is_refused() {
    let h = harness().await;
    h.sql("INSERT INTO notes VALUES ('n1', 'acme', 'one', NULL)")
        .await;
    let a = Device::new(&h, "dev-alice", "a").await;
    let pull = |sequence: u64| {
        let mut c = a.client.clone();
        async move {
            let mut s = c
                .pull(pb::PullRequest {
                    client_id: "a".into(),
                    after: vec![pb::ScopeSequence {
                        scope: "workspace:acme".into(),
                        sequence,
                    }],
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut got = Vec::new();
            while let Some(m) = s.next().await {
                got.push(m?);
            }
            Ok::<_, tonic::Status>(got)
        }
    };
    for seq in [1u64 << 63, u64::MAX] {
        let e = pull(seq).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains("workspace:acme") && e.message().contains(&seq.to_string()),
            "{}",
            e.message()
        );
    }
    // The highest position that fits is a position like any other.
    let got = pull(i64::MAX as u64).await.unwrap();
    let Some(pb::pull_response::Kind::Changes(b)) = &got[0].kind else {
        panic!("{got:?}")
    };
    assert!(b.changes.is_empty(), "{b:?}");
}

#[tokio::test]
async fn a_row_moved_between_two_of_ones_buckets_converges_in_any_order() {
    let h = team_harness().await;
    h.sql(
        "INSERT INTO team_members VALUES ('alice', 'acme', 2); \
         INSERT INTO team_tasks VALUES ('t', 2, 'task'), ('u', 1, 'one'), ('w', 2, 'two')",
    )
    .await;
    let device = |id: &'static str, scopes: &'static [&'static str]| {
        let h = &h;
        async move {
            let mut d = Device::new(h, "dev-alice", id).await;
            d.pull_only(scopes).await.unwrap();
            d
        }
    };
    const BOTH: &[&str] = &["team:1", "team:2"];
    let mut both_12 = device("both-12", BOTH).await;
    let mut both_21 = device("both-21", BOTH).await;
    let mut both_once = device("both-once", BOTH).await;
    let mut source = device("source", &["team:2"]).await;
    let mut target = device("target", &["team:1"]).await;
    let mut gains_after = device("gains-after", &["team:2"]).await;
    let mut gains_before = device("gains-before", &["team:2"]).await;
    let mut loses_source = device("loses-source", BOTH).await;
    let mut pusher = device("pusher", BOTH).await;
    assert_eq!(pusher.version("team_tasks", "t"), 1);
    // Each device's rows and versions equal the server's rows of `teams`.
    let check = |d: &Device, teams: &'static str| {
        let h = &h;
        let rows: Vec<(String, u64, Option<String>, String)> = d
            .rows
            .iter()
            .filter(|((t, _), _)| t == "team_tasks")
            .map(|((_, id), r)| {
                (
                    id.clone(),
                    r.version,
                    text_of(r.values.get("title")),
                    text_of(r.values.get("team_id")).unwrap_or_default(),
                )
            })
            .collect();
        let who = d.id.clone();
        async move {
            let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let want: Vec<(String, u64, Option<String>, String)> = c
                .query(
                    &format!(
                        "SELECT t.id, r.version, t.title, t.team_id::text FROM team_tasks t \
                         JOIN arcana_offline.rows r ON r.tbl = 'team_tasks' AND r.id = t.id \
                         WHERE t.team_id IN ({teams}) ORDER BY t.id"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1) as u64, r.get(2), r.get(3)))
                .collect();
            assert_eq!(rows, want, "device {who} holding teams {teams}");
        }
    };
    for step in ["to team 1", "back to team 2"] {
        if step == "to team 1" {
            let r = pusher
                .push(vec![task(IntentOp::Update, "t", 1, "moved", 1)])
                .await
                .unwrap();
            assert!(r.applied);
            assert_eq!(r.results[0].version, 3);
        } else {
            // A move made by SQL is logged the same way.
            h.sql("UPDATE team_tasks SET team_id = 2, title = 'back' WHERE id = 't'")
                .await;
        }
        both_12.pull_only(&["team:1"]).await.unwrap();
        both_12.pull_only(&["team:2"]).await.unwrap();
        check(&both_12, "1, 2").await;
        both_21.pull_only(&["team:2"]).await.unwrap();
        both_21.pull_only(&["team:1"]).await.unwrap();
        check(&both_21, "1, 2").await;
        both_once.pull_only(BOTH).await.unwrap();
        check(&both_once, "1, 2").await;
        source.pull_only(&["team:2"]).await.unwrap();
        check(&source, "2").await;
        target.pull_only(&["team:1"]).await.unwrap();
        check(&target, "1").await;
        pusher.pull_only(&["team:2"]).await.unwrap();
        pusher.pull_only(&["team:1"]).await.unwrap();
        check(&pusher, "1, 2").await;
        if step == "to team 1" {
            // Gaining the target bucket after pulling the source's side of
            // the move, or before.
            gains_after.pull_only(&["team:2"]).await.unwrap();
            check(&gains_after, "2").await;
            gains_after.pull_only(&["team:1"]).await.unwrap();
            check(&gains_after, "1, 2").await;
            gains_before.pull_only(&["team:1"]).await.unwrap();
            gains_before.pull_only(&["team:2"]).await.unwrap();
            check(&gains_before, "1, 2").await;
            // Losing the source bucket before pulling it.
            loses_source.drop_scope("team:2");
            loses_source.pull_only(&["team:1"]).await.unwrap();
            check(&loses_source, "1").await;
        } else {
            for d in [&mut gains_after, &mut gains_before] {
                d.pull_only(BOTH).await.unwrap();
                check(d, "1, 2").await;
            }
            loses_source.pull_only(&["team:1"]).await.unwrap();
            check(&loses_source, "1").await;
        }
        // A new device from 0, both buckets in one pull or one by one.
        let mut fresh = device("fresh", BOTH).await;
        check(&fresh, "1, 2").await;
        fresh = device("fresh-21", &["team:2"]).await;
        fresh.pull_only(&["team:1"]).await.unwrap();
        check(&fresh, "1, 2").await;
        fresh = device("fresh-all", &[]).await;
        fresh.pull().await.unwrap();
        check(&fresh, "1, 2, 3").await;
    }
    // A real delete is no move: it removes the row wherever it is held.
    h.sql("DELETE FROM team_tasks WHERE id = 't'").await;
    for d in [&mut both_12, &mut source, &mut loses_source] {
        let held: Vec<String> = d.at.keys().cloned().collect();
        let held: Vec<&str> = held.iter().map(String::as_str).collect();
        d.pull_only(&held).await.unwrap();
        assert_eq!(d.version("team_tasks", "t"), 0, "device {}", d.id);
    }
}

/// `count` notes of `kib` KiB each in acme, written directly.
async fn big_notes(h: &Harness, count: usize, kib: usize) {
    h.sql(&format!(
        "INSERT INTO notes (id, workspace_id, title, body) \
         SELECT 'big' || g, 'acme', 'big', repeat('x', {}) FROM generate_series(1, {count}) g",
        kib * 1024
    ))
    .await;
}

async fn open_snapshot(
    d: &mut Device,
) -> Result<tonic::Streaming<pb::SnapshotChunk>, tonic::Status> {
    d.client
        .snapshot(pb::SnapshotRequest {
            client_id: d.id.clone(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Waits until no transaction stays open in the test database: every
/// snapshot whose reader stalled has given its transaction back.
async fn no_open_transactions(h: &Harness) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let open = h
            .query_i64(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
            )
            .await;
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} snapshot transactions still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows in a snapshot read to its end.
async fn read_snapshot(s: &mut tonic::Streaming<pb::SnapshotChunk>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut last = false;
    while let Some(c) = tokio::time::timeout(WAIT, s.next())
        .await
        .expect("a chunk in time")
    {
        let c = c.unwrap();
        ids.extend(c.rows.into_iter().map(|r| r.id));
        last = c.last;
    }
    assert!(last, "the snapshot ended with its last chunk");
    ids
}

/// Snapshots whose readers stall hold no connection the engine needs (the
/// offline service has its own pool), and give their transactions back
/// after `offline.snapshot_stall_ms`; read later, they are complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_snapshots_do_not_starve_the_engine() {
    let h = harness_with(|c| {
        c.database.pool_size = 2;
        c.database.pool_timeout_ms = 2_000;
        c.offline.pool_size = 2;
        c.offline.snapshot_chunk_rows = 1;
        c.offline.snapshot_stall_ms = 300;
    })
    .await;
    big_notes(&h, 60, 64).await;
    let mut stalled = Vec::new();
    for (token, id) in [
        ("dev-alice", "a1"),
        ("dev-alice", "a2"),
        ("dev-bob", "b1"),
        ("dev-bob", "b2"),
    ] {
        let mut d = Device::new(&h, token, id).await;
        let s = open_snapshot(&mut d).await.unwrap();
        stalled.push((d, s));
    }
    // The engine evaluates and mutates meanwhile.
    let mut l = h.live("dev-alice").await;
    let v = l.subscribe("project_tasks", project(1)).await.unwrap();
    l.mutate("move_task", params(&[("id", int(1)), ("position", int(5))]))
        .await
        .expect("a mutation while snapshots stall");
    l.wait_field(&v.view_id, "tasks", "1", "position", 5i64)
        .await;
    // No transaction stays open for a reader that does not read.
    no_open_transactions(&h).await;
    // Each goes on from where it stood: every row, once.
    for (_, mut s) in stalled {
        let mut ids = read_snapshot(&mut s).await;
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "no row twice");
        assert_eq!(n, 60);
    }
}

/// The load figure of docs/SECURITY.md for stalled snapshots: sixteen
/// unread snapshots (two identities, eight each) on the offline service's
/// default pool, while a client times mutations.
/// `cargo test --test offline load_stalled_snapshots -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "load run for docs/SECURITY.md; run with --ignored --nocapture"]
async fn load_stalled_snapshots() {
    let h = harness_with(|c| {
        c.offline.snapshot_chunk_rows = 1;
        c.offline.max_snapshots_per_identity = 8;
    })
    .await;
    big_notes(&h, 200, 64).await;
    let mut l = h.live("dev-alice").await;
    let v = l.subscribe("project_tasks", project(1)).await.unwrap();
    let mut position = 0i64;
    async fn timed(l: &mut Live, view_id: &str, position: &mut i64, n: usize) -> Vec<Duration> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            *position += 1;
            let started = std::time::Instant::now();
            l.mutate(
                "move_task",
                params(&[("id", int(1)), ("position", int(*position))]),
            )
            .await
            .expect("a mutation");
            l.wait_field(view_id, "tasks", "1", "position", *position)
                .await;
            times.push(started.elapsed());
        }
        times.sort();
        times
    }
    let ms = |t: &[Duration], p: f64| t[((t.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    let before = timed(&mut l, &v.view_id, &mut position, 50).await;
    // Registered first: the snapshots then hold the offline pool.
    let mut devices = Vec::new();
    for token in ["dev-alice", "dev-bob"] {
        for i in 0..8 {
            devices.push(Device::new(&h, token, &format!("{token}-{i}")).await);
        }
    }
    let mut stalled = Vec::new();
    for mut d in devices {
        // While the earlier ones fill their windows the offline pool is
        // busy, and an opening may be told to retry (UNAVAILABLE).
        let deadline = std::time::Instant::now() + WAIT;
        let s = loop {
            match open_snapshot(&mut d).await {
                Ok(s) => break s,
                Err(e) if e.code() == Code::Unavailable => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                }
                Err(e) => panic!("a snapshot: {e}"),
            }
        };
        stalled.push((d, s));
    }
    let during = timed(&mut l, &v.view_id, &mut position, 50).await;
    // Once every reader has stalled past offline.snapshot_stall_ms, the
    // snapshots hold no transaction: measure again.
    no_open_transactions(&h).await;
    let stalled_after = timed(&mut l, &v.view_id, &mut position, 50).await;
    println!(
        "\n| stalled snapshots | mutation + frame p50 / p99 ms before | while they fill their windows | once stalled | rows each, read afterwards |"
    );
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (_, mut s) in stalled {
        rows.push(read_snapshot(&mut s).await.len());
    }
    assert!(rows.iter().all(|&n| n == 200), "{rows:?}");
    println!(
        "| {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} |",
        rows.len(),
        ms(&before, 0.5),
        ms(&before, 0.99),
        ms(&during, 0.5),
        ms(&during, 0.99),
        ms(&stalled_after, 0.5),
        ms(&stalled_after, 0.99),
        rows[0]
    );
}

/// Open snapshots are capped per client id and per identity.
#[tokio::test]
async fn snapshots_are_capped_per_client_and_per_identity() {
    let h = harness_with(|c| {
        c.offline.snapshot_chunk_rows = 1;
        c.offline.max_snapshots_per_identity = 2;
    })
    .await;
    // Large enough that an unread snapshot stays open.
    big_notes(&h, 60, 64).await;
    let mut a1 = Device::new(&h, "dev-alice", "a1").await;
    let mut a2 = Device::new(&h, "dev-alice", "a2").await;
    let mut a3 = Device::new(&h, "dev-alice", "a3").await;
    let mut b1 = Device::new(&h, "dev-bob", "b1").await;
    let s1 = open_snapshot(&mut a1).await.unwrap();
    let e = open_snapshot(&mut a1).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("offline.max_snapshots_per_client"),
        "{}",
        e.message()
    );
    let _s2 = open_snapshot(&mut a2).await.unwrap();
    let e = open_snapshot(&mut a3).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("offline.max_snapshots_per_identity"),
        "{}",
        e.message()
    );
    // Another user is not affected.
    let mut sb = open_snapshot(&mut b1).await.unwrap();
    assert_eq!(read_snapshot(&mut sb).await.len(), 60);
    // Closing one frees its slot.
    drop(s1);
    let deadline = std::time::Instant::now() + WAIT;
    let mut s3 = loop {
        match open_snapshot(&mut a3).await {
            Ok(s) => break s,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(std::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(read_snapshot(&mut s3).await.len(), 60);
}

/// A snapshot whose reader goes away frees its slot at once, even while
/// its next query waits (here on a lock), so the resume from its cursor
/// is not refused.
#[tokio::test]
async fn a_cancelled_snapshot_frees_its_slot_while_its_query_waits() {
    let h = harness_with(|c| {
        c.offline.snapshot_chunk_rows = 1;
        c.offline.snapshot_stall_ms = 200;
    })
    .await;
    // More than a client's HTTP/2 windows hold: the server reads on only
    // as the client takes chunks.
    big_notes(&h, 120, 64).await;
    let mut a1 = Device::new(&h, "dev-alice", "a1").await;
    let mut s1 = open_snapshot(&mut a1).await.unwrap();
    let first = tokio::time::timeout(WAIT, s1.next())
        .await
        .expect("a first chunk in time")
        .expect("a first chunk")
        .unwrap();
    assert!(!first.last);
    // The reader stalls, so the snapshot gives its transaction back...
    no_open_transactions(&h).await;
    // ...and the rows table is held, so its next query will wait.
    let (locker, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    locker
        .batch_execute("BEGIN; LOCK TABLE arcana_offline.rows IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let reading = tokio::spawn(async move { while let Some(Ok(_)) = s1.next().await {} });
    let deadline = std::time::Instant::now() + WAIT;
    while h
        .query_i64(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reader leaves while the query waits.
    reading.abort();
    let _ = reading.await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut s2 = loop {
        match open_snapshot(&mut a1).await {
            Ok(s) => break s,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
                assert!(
                    std::time::Instant::now() < deadline,
                    "the left snapshot kept its slot while its query waited"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(read_snapshot(&mut s2).await.len(), 120);
}

/// Pull and Snapshot run as the caller, so row-level security applies to
/// them as to pushes, graphs and mutations.
#[tokio::test]
async fn pull_and_snapshot_apply_row_level_security() {
    let h = harness().await;
    h.sql(
        "CREATE POLICY hide_secret ON notes AS RESTRICTIVE FOR SELECT TO arcana_eval \
             USING (title NOT LIKE 'secret%'); \
         INSERT INTO notes (id, workspace_id, title) VALUES \
             ('open1', 'acme', 'hello'), ('hidden1', 'acme', 'secret plan')",
    )
    .await;
    let mut a = Device::new(&h, "dev-alice", "a1").await;
    a.snapshot().await.unwrap();
    assert_eq!(
        a.column("notes", "title").keys().collect::<Vec<_>>(),
        ["open1"],
        "snapshot"
    );
    let mut b = Device::new(&h, "dev-alice", "a2").await;
    assert!(b.pull().await.unwrap().is_none());
    assert_eq!(
        b.column("notes", "title").keys().collect::<Vec<_>>(),
        ["open1"],
        "pull"
    );
}

/// RegisterClient bounds its strings and the client ids of one user, and
/// follow streams are counted per user as well as per client id.
#[tokio::test]
async fn registrations_and_follows_are_capped_per_identity() {
    let h = harness_with(|c| {
        c.offline.max_clients_per_identity = 3;
        c.offline.max_follows_per_identity = 3;
    })
    .await;
    let mut c = offline_client(&h, "dev-alice").await;
    let reg = |id: &str, platform: &str, app_version: &str| pb::RegisterClientRequest {
        client_id: id.into(),
        platform: platform.into(),
        app_version: app_version.into(),
        replaces_client_id: String::new(),
    };
    let long = "p".repeat(65);
    for r in [
        reg("d0", &long, "1.0.0"),
        reg("d0", "ios", &format!("1.0.0-{long}")),
    ] {
        let e = c.register_client(r).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("64 characters"), "{}", e.message());
    }
    let mut devices = Vec::new();
    for id in ["d1", "d2", "d3"] {
        devices.push(Device::new(&h, "dev-alice", id).await);
    }
    let e = c
        .register_client(reg("d4", "ios", "1.0.0"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("offline.max_clients_per_identity"),
        "{}",
        e.message()
    );
    // Registering a held id again is fine, and another user is not affected.
    c.register_client(reg("d1", "ios", "1.0.1")).await.unwrap();
    Device::new(&h, "dev-bob", "b1").await;
    assert_eq!(
        h.query_i64("SELECT count(*) FROM arcana_offline.clients WHERE user_id = 'alice'")
            .await,
        3
    );
    // Follows: two on d1 (its own limit), one on d2, then the user's limit.
    let follow = |d: &mut Device| {
        let mut client = d.client.clone();
        let req = pb::PullRequest {
            client_id: d.id.clone(),
            follow: true,
            ..Default::default()
        };
        async move { client.pull(req).await.map(|r| r.into_inner()) }
    };
    let mut open = Vec::new();
    open.push(follow(&mut devices[0]).await.unwrap());
    open.push(follow(&mut devices[0]).await.unwrap());
    open.push(follow(&mut devices[1]).await.unwrap());
    let e = follow(&mut devices[2]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("offline.max_follows_per_identity"),
        "{}",
        e.message()
    );
    // Closing one frees the user's slot.
    open.pop();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match follow(&mut devices[2]).await {
            Ok(s) => {
                open.push(s);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(std::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A pushed timestamp whose nanos lie outside 0..=999,999,999 is refused
/// with INVALID_ARGUMENT naming the column; nothing is written.
#[tokio::test]
async fn a_pushed_timestamp_with_nanos_out_of_range_is_refused() {
    let h = Harness::with_extra(KINDS_SCHEMA, KINDS_CONFIG, |_| {}).await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    for nanos in [-1, 2_000_000_000] {
        let e = a
            .push(vec![intent(
                "kinds",
                IntentOp::Insert,
                &[
                    ("id", text("t1")),
                    ("workspace_id", text("acme")),
                    ("ts", ts(1_700_000_000, nanos)),
                ],
                0,
            )])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("column `ts`"), "{}", e.message());
        assert!(
            e.message().contains(&format!("nanos {nanos}")),
            "{}",
            e.message()
        );
    }
    assert_eq!(h.query_i64("SELECT count(*) FROM kinds").await, 0);
}

/// A pushed int too large for its column is refused naming the column.
#[tokio::test]
async fn a_pushed_int_out_of_range_names_its_column() {
    let h = Harness::with_extra(KINDS_SCHEMA, KINDS_CONFIG, |_| {}).await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let e = a
        .push(vec![intent(
            "kinds",
            IntentOp::Insert,
            &[
                ("id", text("t1")),
                ("workspace_id", text("acme")),
                ("i4", int(2_147_483_648)),
            ],
            0,
        )])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("column `i4`"), "{}", e.message());
    assert!(e.message().contains("2147483648"), "{}", e.message());
    assert_eq!(h.query_i64("SELECT count(*) FROM kinds").await, 0);
}

/// `user:<id>` is one bucket across workspaces, so a user-scoped table with
/// a workspace column is refused at startup: otherwise user `alice` of
/// globex would read the rows of user `alice` of acme.
#[tokio::test]
async fn a_user_scoped_table_with_a_workspace_column_is_refused_at_startup() {
    let db_url = fresh_database().await;
    arcana::postgres::execute_script(
        &db_url,
        &format!(
            "{SCHEMA}\nCREATE TABLE drafts (id text PRIMARY KEY, workspace_id text NOT NULL, user_id text NOT NULL, body text);"
        ),
    )
    .await
    .unwrap();
    let extra = "\n[[offline.tables]]\ntable = \"drafts\"\nscope = \"user\"\n";
    let mut config =
        arcana::config::Config::parse(&format!("{}\n{CONFIG}{extra}", arcana::app::DEMO_CONFIG))
            .unwrap();
    config.changes.mode = arcana::config::ChangeMode::None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let Err(e) = arcana::app::App::start(&config, &db_url, listener).await else {
        panic!("started with a user-scoped table that has a workspace column")
    };
    assert!(
        e.contains("offline.tables `drafts`") && e.contains("workspace_id column"),
        "{e}"
    );
}

/// Snapshot cursors are signed: one altered to skip ahead, or an unsigned
/// one, is refused; the cursor as issued resumes.
#[tokio::test]
async fn a_forged_snapshot_cursor_is_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = harness_with(|c| c.offline.snapshot_chunk_rows = 1).await;
    big_notes(&h, 5, 1).await;
    let mut a = Device::new(&h, "dev-alice", "a").await;
    let mut s = open_snapshot(&mut a).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    drop(s);
    let (body, sig) = first.cursor.split_once('.').expect("a signed cursor");
    let mut json: serde_json::Value = serde_json::from_slice(&b64.decode(body).unwrap()).unwrap();
    json["id"] = serde_json::Value::String("big4".into());
    let altered = b64.encode(serde_json::to_vec(&json).unwrap());
    let resume = |cursor: String| {
        let mut c = a.client.clone();
        let client_id = a.id.clone();
        async move {
            c.snapshot(pb::SnapshotRequest {
                client_id,
                cursor,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    for forged in [format!("{altered}.{sig}"), altered.clone(), body.to_owned()] {
        let e = resume(forged).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().contains("not one this server issued"),
            "{}",
            e.message()
        );
    }
    let mut s = resume(first.cursor.clone()).await.unwrap();
    let rest = read_snapshot(&mut s).await;
    assert_eq!(rest.len() + first.rows.len(), 5);
}

/// Holds every update of `lww_notes` for a moment, so two bundles that each
/// lock their first row have both done so before either wants its second.
const SLOW_UPDATES: &str = r#"
CREATE FUNCTION slow_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.3);
    RETURN NEW;
END $$;
CREATE TRIGGER slow_update BEFORE UPDATE ON lww_notes
    FOR EACH ROW EXECUTE FUNCTION slow_update();
"#;

async fn deadlocks(h: &Harness) -> i64 {
    h.query_i64("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .await
}

/// Two devices update the same two rows in opposite orders at once, with
/// `database.mutation_retries = retries`, and their transactions deadlock
/// (checked); returns both answers.
async fn deadlocking_pushes(
    retries: u32,
) -> (
    Harness,
    Result<pb::PushResponse, tonic::Status>,
    Result<pb::PushResponse, tonic::Status>,
) {
    let h = Harness::with_extra(&format!("{SCHEMA}{SLOW_UPDATES}"), CONFIG, |c| {
        c.database.mutation_retries = retries;
    })
    .await;
    h.sql("INSERT INTO lww_notes VALUES ('x', 'acme', 'x0', NULL), ('y', 'acme', 'y0', NULL)")
        .await;
    let before = deadlocks(&h).await;
    let mut a = Device::new(&h, "dev-alice", "dev-a").await;
    let mut b = Device::new(&h, "dev-alice", "dev-b").await;
    let bundle = |first: &str, second: &str, title: &str| {
        vec![
            note("lww_notes", IntentOp::Update, first, title, 1),
            note("lww_notes", IntentOp::Update, second, title, 1),
        ]
    };
    let (ra, rb) = tokio::join!(
        a.push(bundle("x", "y", "from a")),
        b.push(bundle("y", "x", "from b")),
    );
    // The pushes did deadlock (the database counts it; its statistics
    // arrive a moment later).
    let start = std::time::Instant::now();
    while deadlocks(&h).await <= before {
        assert!(
            start.elapsed() < WAIT,
            "the pushes never deadlocked: the test proves nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (h, ra, rb)
}

/// A push whose transaction PostgreSQL aborts for a deadlock is run again
/// instead of answering ABORTED: both bundles apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_that_deadlock_are_retried_and_both_apply() {
    let (h, ra, rb) = deadlocking_pushes(3).await;
    let ra = ra.unwrap_or_else(|s| panic!("device a: {s:?}"));
    let rb = rb.unwrap_or_else(|s| panic!("device b: {s:?}"));
    for r in [&ra, &rb] {
        assert!(r.applied && !r.replayed, "{r:?}");
        assert!(
            r.results
                .iter()
                .all(|i| i.status == pb::intent_result::Status::Applied as i32),
            "{r:?}"
        );
    }
    // Each bundle applied once: both rows carry the title of the same,
    // later, bundle, each row's version moved by one per bundle, and each
    // bundle is recorded once.
    let titles: Vec<String> = {
        let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query("SELECT title FROM lww_notes ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(titles.len(), 2);
    assert_eq!(titles[0], titles[1], "one bundle's rows, not a mix");
    for id in ["x", "y"] {
        assert_eq!(
            h.query_i64(&format!(
                "SELECT version FROM arcana_offline.rows WHERE tbl = 'lww_notes' AND id = '{id}'"
            ))
            .await,
            3,
            "row {id}"
        );
    }
    assert_eq!(
        h.query_i64(
            "SELECT count(*) FROM arcana_offline.bundles WHERE client_id IN ('dev-a', 'dev-b')"
        )
        .await,
        2
    );
}

/// With no retries left the loser answers ABORTED, saying so, and nothing of
/// its bundle applies; never INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_that_deadlocks_with_no_retries_left_is_aborted_and_applies_nothing() {
    let (h, ra, rb) = deadlocking_pushes(0).await;
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("one push wins, the other loses: {other:?}"),
    };
    assert!(won.applied, "{won:?}");
    assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
    assert!(
        lost.message().contains("database.mutation_retries = 0"),
        "{lost:?}"
    );
    for id in ["x", "y"] {
        assert_eq!(
            h.query_i64(&format!(
                "SELECT version FROM arcana_offline.rows WHERE tbl = 'lww_notes' AND id = '{id}'"
            ))
            .await,
            2,
            "row {id}: only the winner applied"
        );
    }
    assert_eq!(
        h.query_i64(
            "SELECT count(*) FROM arcana_offline.bundles WHERE client_id IN ('dev-a', 'dev-b')"
        )
        .await,
        1
    );
}
