//! Exactness at the edges: each test is a way a client once ended with
//! something other than what a fresh snapshot gives, or waited for a change
//! that never came.

mod common;

use std::time::Duration;

use arcana::engine::{RowKey, Value};
use arcana::proto as pb;
use common::*;

const PEOPLE: &str = "
CREATE TABLE people (
    id         bigint PRIMARY KEY,
    workspace_id text NOT NULL,
    name       text NOT NULL,
    email      text NOT NULL,
    manager_id bigint REFERENCES people(id)
);
INSERT INTO people VALUES (1, 'acme', 'Ann', 'ann@acme.test', NULL), (2, 'acme', 'Bob', 'bob@acme.test', 1);
";

const PEOPLE_GRAPH: &str = r#"
[[graphs]]
name = "people"
table = "people"
sql = """
SELECT p.id, p.name, p.email, m.id AS "manager.id", m.name AS "manager.name"
FROM people p LEFT JOIN people m ON m.id = p.manager_id
WHERE p.workspace_id = :workspace_id
ORDER BY p.id
"""
deps = { people = ["*"] }
nested = { manager = { table = "people", key = ["id"] } }
"#;

fn field<'a>(
    s: &'a arcana::client::ViewState,
    table: &str,
    id: &str,
    f: &str,
) -> Option<&'a Value> {
    s.rows.get(&RowKey::new(table, id))?.get(f)
}

#[tokio::test]
async fn a_row_reached_through_refs_with_different_fields_carries_their_union() {
    let h = Harness::with_extra(PEOPLE, PEOPLE_GRAPH, |_| {}).await;
    let mut l = h.live("dev-alice").await;
    let v = l.subscribe("people", params(&[])).await.unwrap().view_id;
    // Ann is a top-level row (id, name, email) and Bob's manager (id, name).
    assert_eq!(
        field(l.view(&v), "people", "1", "email"),
        Some(&Value::from("ann@acme.test")),
        "the snapshot keeps the fields of both refs: {:?}",
        l.view(&v).rows
    );
    h.sql("UPDATE people SET email = 'ann@new.test', name = 'Anne' WHERE id = 1")
        .await;
    h.notify("people", "1", &["email", "name"]).await;
    l.wait_field(&v, "people", "1", "name", "Anne").await;
    assert_eq!(
        field(l.view(&v), "people", "1", "email"),
        Some(&Value::from("ann@new.test"))
    );
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "people", params(&[])).await.content()
    );
}

#[tokio::test]
async fn a_delete_reaches_routed_views_without_replica_identity_full() {
    let h = Harness::wal().await;
    h.sql("ALTER TABLE tasks REPLICA IDENTITY DEFAULT").await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    assert!(l.view(&v).rows.contains_key(&RowKey::new("tasks", "2")));
    h.sql("DELETE FROM tasks WHERE id = 2").await;
    l.wait_until(&v, |s| !s.rows.contains_key(&RowKey::new("tasks", "2")))
        .await;
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}

/// Makes `n` versions of project 1's view with explicit notifications.
async fn new_versions(h: &Harness, n: usize) {
    for i in 0..n {
        h.sql(&format!("UPDATE tasks SET title = 'step {i}' WHERE id = 1"))
            .await;
        h.notify("tasks", "1", &["title"]).await;
    }
}

#[tokio::test]
async fn a_catch_up_longer_than_the_session_queue_arrives_whole_before_the_reply() {
    let h = Harness::with(|c| {
        c.engine.session_queue = 8;
        c.server.max_batch_bytes = 0;
    })
    .await;
    // Another subscriber keeps the view (and its history) alive.
    let mut keeper = h.live("dev-bob").await;
    keeper.subscribe("project_tasks", project(1)).await.unwrap();
    let (view_id, before) = {
        let mut l = h.live("dev-alice").await;
        let v = l
            .subscribe("project_tasks", project(1))
            .await
            .unwrap()
            .view_id;
        (v.clone(), l.views.remove(&v).unwrap())
    };
    new_versions(&h, 20).await;

    let mut l = h.live("dev-alice").await;
    let reply = l
        .resume(&view_id, &before, "project_tasks", project(1))
        .await;
    let r = &reply.results[0];
    assert_eq!(r.mode, pb::SyncMode::CatchUp as i32, "{r:?}");
    assert_eq!(r.frames, 20);
    // Everything announced arrived before the reply, as one batch.
    assert_eq!(l.frames.len(), 20, "{:?}", l.frames);
    assert!(l
        .frames
        .iter()
        .all(|f| matches!(f.body, Some(pb::view_frame::Body::Diff(_)))));
    assert_eq!(l.batches, 1);
    assert_eq!(l.view(&view_id).version, r.version);
    assert_eq!(
        l.view(&view_id).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_sync_answer_unavailable_while_postgres_is_down() {
    let own = OwnCluster::start(arcana::config::ChangeMode::None).await;
    let mut l = Live::connect(own.client("dev-alice")).await.unwrap();
    let OwnCluster { pg, app, .. } = own;
    tokio::task::block_in_place(|| pg.stop());

    let err = l.subscribe("project_tasks", project(1)).await.unwrap_err();
    assert_eq!(err.code, tonic::Code::Unavailable as i32, "{err:?}");
    let reply = l
        .sync(vec![pb::SyncView {
            graph: "project_tasks".into(),
            params: project(2),
            epoch: 1,
            version: 1,
            window: None,
        }])
        .await;
    let e = reply.results[0].error.as_ref().expect("an error");
    assert_eq!(e.code, tonic::Code::Unavailable as i32, "{e:?}");
    drop(l);
    let _ = app.stop().await;
}

const GATED: &str = "
CREATE TABLE gate (ok boolean NOT NULL);
INSERT INTO gate VALUES (true);
";

/// A graph that fails while `gate.ok` is false; it does not depend on
/// `gate`, so opening the gate is not a change the graph hears about.
const GATED_GRAPH: &str = r#"
[[graphs]]
name = "gated_tasks"
table = "tasks"
sql = """
SELECT t.id, t.title FROM tasks t
WHERE t.workspace_id = :workspace_id AND t.project_id = 1
  AND 1 / (SELECT CASE WHEN ok THEN 1 ELSE 0 END FROM gate) = 1
ORDER BY t.id
"""
deps = { tasks = ["title", "project_id", "workspace_id"] }
"#;

#[tokio::test]
async fn a_view_whose_evaluation_failed_retries_until_it_succeeds() {
    let h = Harness::with_extra(GATED, GATED_GRAPH, |_| {}).await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("gated_tasks", params(&[]))
        .await
        .unwrap()
        .view_id;
    h.sql("UPDATE gate SET ok = false").await;
    h.sql("UPDATE tasks SET title = 'while failing' WHERE id = 1")
        .await;
    h.notify("tasks", "1", &["title"]).await;
    l.wait_until(&v, |s| s.error.is_some()).await;
    // Nothing else changes: the view must get there on its own.
    h.sql("UPDATE gate SET ok = true").await;
    l.wait_field(&v, "tasks", "1", "title", "while failing")
        .await;
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "gated_tasks", params(&[]))
            .await
            .content()
    );
}

#[tokio::test]
async fn a_view_that_recovers_unchanged_clears_its_error() {
    let h = Harness::with_extra(GATED, GATED_GRAPH, |_| {}).await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("gated_tasks", params(&[]))
        .await
        .unwrap()
        .view_id;
    let before = l.view(&v).clone();
    h.sql("UPDATE gate SET ok = false").await;
    h.notify("tasks", "1", &["title"]).await;
    l.wait_until(&v, |s| s.error.is_some()).await;
    // The gate opens; the content is what it was: the retry must still say so.
    h.sql("UPDATE gate SET ok = true").await;
    l.wait_until(&v, |s| s.error.is_none()).await;
    assert_eq!(l.view(&v).content(), before.content());
    assert_eq!(l.view(&v).version, before.version + 1);
}

const SLOW_GRAPH: &str = r#"
[[graphs]]
name = "slow_tasks"
table = "tasks"
sql = """
SELECT t.id, t.title FROM tasks t
WHERE t.workspace_id = :workspace_id AND t.project_id = 1 AND t.id > -(:n)::bigint
  AND pg_sleep(0.005) IS NOT NULL
ORDER BY t.id
"""
deps = { tasks = ["title", "project_id", "workspace_id"] }

[graphs.params.n]
type = "int"
required = true
"#;

fn n(i: i64) -> std::collections::HashMap<String, pb::Value> {
    params(&[("n", int(i))])
}

fn baseline(h: &Harness) -> (usize, usize, usize, usize) {
    let s = h.app().engine.stats();
    (s.sessions, s.views, s.subscriptions, s.store_rows)
}

async fn settled(h: &Harness, want: (usize, usize, usize, usize)) {
    for _ in 0..200 {
        if baseline(h) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(baseline(h), want, "sessions, views, subscriptions, rows");
}

#[tokio::test]
async fn cancelled_subscribes_and_sessions_closed_mid_subscribe_leave_nothing_behind() {
    let h = Harness::with_extra("", SLOW_GRAPH, |c| {
        c.engine.max_subscriptions_per_session = 5000;
    })
    .await;
    let base = baseline(&h);
    let client = h.client("dev-alice").await;
    let mut opened = client.clone();
    let mut session = opened
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut stream_session = None;
    while let Some(m) = session.message().await.unwrap() {
        if let Some(pb::server_message::Kind::Opened(o)) = m.kind {
            stream_session = Some(o.session_id);
            break;
        }
    }
    let session_id = stream_session.unwrap();

    // Unary subscribes cancelled while their first evaluation runs.
    let mut cancelled = 0;
    for i in 0..1000 {
        let mut c = client.clone();
        let mut req = tonic::Request::new(pb::SubscribeRequest {
            graph: "slow_tasks".into(),
            params: n(1000 + i),
            session_id: session_id.clone(),
            window: None,
        });
        req.set_timeout(Duration::from_millis(5));
        if c.subscribe(req).await.is_err() {
            cancelled += 1;
        }
    }
    assert!(
        cancelled > 500,
        "most subscribes were cancelled: {cancelled}"
    );
    // Those that completed before the cancel reached the server are the
    // session's; the others left no view behind.
    let completed = 1000 - cancelled;
    let held = |h: &Harness| {
        let s = h.app().engine.stats();
        (s.views, s.subscriptions)
    };
    for _ in 0..100 {
        if held(&h).0 <= completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (views, subscriptions) = held(&h);
    assert_eq!(views, subscriptions, "every view has its subscriber");
    assert!(
        views <= completed,
        "{views} views, {completed} subscribes completed"
    );
    // A change to every project evaluates the held views and nothing else.
    let evaluations = h.app().engine.stats().evaluations;
    h.notify("tasks", "", &["title"]).await;
    assert_eq!(
        h.app().engine.stats().evaluations,
        evaluations + views as u64
    );
    drop(session);
    settled(&h, base).await;

    // Sessions closed while their subscribe runs.
    for i in 0..1000 {
        let mut l = Live::connect(client.clone()).await.unwrap();
        l.send(pb::client_message::Kind::Subscribe(pb::SubscribeRequest {
            graph: "slow_tasks".into(),
            params: n(5000 + i % 7),
            session_id: String::new(),
            window: None,
        }))
        .await;
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        drop(l);
    }
    settled(&h, base).await;
}

#[tokio::test]
async fn a_transaction_is_one_batch_in_notify_mode() {
    let h = Harness::with(|c| c.changes.mode = arcana::config::ChangeMode::Notify).await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let batches = || h.app().engine.stats().batches;
    for round in 0..3 {
        let before = batches();
        // Thousands of notifications in one transaction, read in many pieces.
        h.sql(&format!(
            "BEGIN;
             UPDATE tasks SET title = 'r{round}' WHERE id = 1;
             INSERT INTO tasks (workspace_id, project_id, title, position)
               SELECT 'acme', 2, 'bulk ' || g, 100 + g FROM generate_series(1, 3000) g;
             UPDATE tasks SET title = 'r{round} done' WHERE id = 2;
             COMMIT;"
        ))
        .await;
        l.wait_field(&v, "tasks", "2", "title", format!("r{round} done").as_str())
            .await;
        // A later transaction's notifications arrive after all of the first
        // one's, and batches are taken in order: once its change shows, any
        // second batch of the first transaction has been counted.
        h.sql(&format!(
            "UPDATE tasks SET title = 'r{round} after' WHERE id = 3"
        ))
        .await;
        l.wait_field(
            &v,
            "tasks",
            "3",
            "title",
            format!("r{round} after").as_str(),
        )
        .await;
        assert_eq!(
            batches(),
            before + 2,
            "one transaction, one batch, then the later one's (round {round})"
        );
    }
}

const NOTES: &str = "
CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
INSERT INTO notes VALUES (1, 'first'), (2, 'second');
";

/// Two graphs showing every column of `notes`, so each view's copy of a
/// row is complete.
const NOTES_GRAPHS: &str = r#"
[[graphs]]
name = "notes"
table = "notes"
sql = "SELECT id, body FROM notes ORDER BY id"
deps = { notes = ["*"] }

[[graphs]]
name = "notes_from"
table = "notes"
sql = "SELECT id, body FROM notes WHERE id >= :from ORDER BY id"
deps = { notes = ["*"] }

[graphs.params.from]
type = "int"
required = true
"#;

#[tokio::test]
async fn an_update_without_the_old_row_is_never_judged_unchanged_from_a_newer_copy() {
    let h = Harness::with_extra(NOTES, NOTES_GRAPHS, |c| {
        c.changes.mode = arcana::config::ChangeMode::Wal;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
    })
    .await;
    let mut l = h.live("dev-alice").await;
    let a = l.subscribe("notes", params(&[])).await.unwrap().view_id;
    for round in 0..3 {
        let body = format!("late {round}");
        // An asynchronous commit is visible at once but reaches the WAL
        // stream only when the WAL writer flushes: meanwhile another view
        // reads the new body, so the engine holds a copy newer than view A's.
        h.sql(&format!(
            "SET synchronous_commit = off; UPDATE notes SET body = '{body}' WHERE id = 1"
        ))
        .await;
        let b = l
            .subscribe("notes_from", params(&[("from", int(-round))]))
            .await
            .unwrap();
        l.wait_field(&b.view_id, "notes", "1", "body", body.as_str())
            .await;
        l.wait_field(&a, "notes", "1", "body", body.as_str()).await;
    }
}
