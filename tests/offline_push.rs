//! How a bundle's rows are written: in an order the database's foreign
//! keys accept, whatever order the device wrote them in (parents first for
//! rows that end existing, children first for rows that end deleted), and
//! never into the columns the server owns.

mod common;

use arcana::proto::{self as pb, IntentOp};
use common::offline::*;
use common::*;

const SCHEMA: &str = r#"
CREATE TABLE posts (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    title        text NOT NULL
);
CREATE TABLE comments (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    post_id      text NOT NULL REFERENCES posts(id),
    body         text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT '2020-01-01 00:00:00+00'
);
-- Two tables that reference each other: only deferred checks let a pair
-- of new rows in.
CREATE TABLE left_side (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    other        text
);
CREATE TABLE right_side (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    other        text REFERENCES left_side(id) DEFERRABLE INITIALLY IMMEDIATE
);
ALTER TABLE left_side ADD FOREIGN KEY (other) REFERENCES right_side(id) DEFERRABLE INITIALLY IMMEDIATE;
GRANT SELECT, INSERT, UPDATE, DELETE ON posts, comments, left_side, right_side TO arcana_eval;
"#;

// Children are listed first on purpose: the order of the config is not
// what decides.
const CONFIG: &str = r#"
[[offline.tables]]
table = "comments"
scope = "workspace"
protected = ["created_at"]

[[offline.tables]]
table = "posts"
scope = "workspace"

[[offline.tables]]
table = "left_side"
scope = "workspace"

[[offline.tables]]
table = "right_side"
scope = "workspace"
"#;

fn post(op: IntentOp, id: &str, base: u64) -> pb::RowIntent {
    intent("posts", op, &[("id", text(id)), ("title", text("t"))], base)
}

fn comment(op: IntentOp, id: &str, post: &str, base: u64) -> pb::RowIntent {
    intent(
        "comments",
        op,
        &[
            ("id", text(id)),
            ("post_id", text(post)),
            ("body", text("b")),
        ],
        base,
    )
}

async fn count(h: &Harness, table: &str) -> i64 {
    h.query_i64(&format!("SELECT count(*) FROM {table}")).await
}

#[tokio::test]
async fn children_written_before_their_parents_apply() {
    let h = Harness::with_extra(SCHEMA, CONFIG, |_| {}).await;
    let mut d = Device::new(&h, "dev-alice", "order-1").await;
    let r = d
        .push(vec![
            comment(IntentOp::Insert, "c1", "p1", 0),
            comment(IntentOp::Insert, "c2", "p1", 0),
            post(IntentOp::Insert, "p1", 0),
        ])
        .await
        .expect("the bundle applies");
    assert!(r.applied);
    // Results stay in the device's order.
    assert_eq!(r.results.len(), 3);
    assert!(r.results.iter().all(|x| x.version == 1), "{r:?}");
    assert_eq!(count(&h, "comments").await, 2);

    // Deleting the parent first, then its children.
    let r = d
        .push(vec![
            post(IntentOp::Delete, "p1", 1),
            comment(IntentOp::Delete, "c1", "p1", 1),
            comment(IntentOp::Delete, "c2", "p1", 1),
        ])
        .await
        .expect("the bundle applies");
    assert!(r.applied);
    assert_eq!(count(&h, "posts").await, 0);
    assert_eq!(count(&h, "comments").await, 0);

    // A row created and deleted in one bundle, before its parent: its two
    // intents stay in order, after the parent's.
    let r = d
        .push(vec![
            comment(IntentOp::Insert, "c4", "p3", 0),
            comment(IntentOp::Delete, "c4", "p3", 1),
            post(IntentOp::Insert, "p3", 0),
        ])
        .await
        .expect("the bundle applies");
    assert!(r.applied, "{r:?}");
    assert_eq!(count(&h, "posts").await, 1);
    assert_eq!(count(&h, "comments").await, 0);
}

#[tokio::test]
async fn rows_of_a_deferrable_cycle_apply_together() {
    let h = Harness::with_extra(SCHEMA, CONFIG, |_| {}).await;
    let mut d = Device::new(&h, "dev-alice", "order-2").await;
    let side = |table: &str, id: &str, other: &str| {
        intent(
            table,
            IntentOp::Insert,
            &[("id", text(id)), ("other", text(other))],
            0,
        )
    };
    let r = d
        .push(vec![
            side("left_side", "l1", "r1"),
            side("right_side", "r1", "l1"),
        ])
        .await
        .expect("deferred checks see both rows");
    assert!(r.applied);
    assert_eq!(count(&h, "left_side").await, 1);
    assert_eq!(count(&h, "right_side").await, 1);
}

#[tokio::test]
async fn a_push_never_writes_a_protected_column() {
    let h = Harness::with_extra(SCHEMA, CONFIG, |_| {}).await;
    let mut d = Device::new(&h, "dev-alice", "protected-1").await;
    let stamp = pb::Value {
        kind: Some(pb::value::Kind::Timestamp(prost_types::Timestamp {
            seconds: 946_684_800,
            nanos: 0,
        })),
    };
    let mut c = comment(IntentOp::Insert, "c1", "p1", 0);
    c.values.insert("created_at".into(), stamp.clone());
    let r = d
        .push(vec![post(IntentOp::Insert, "p1", 0), c])
        .await
        .expect("the bundle applies");
    assert!(r.applied);
    let year = "SELECT extract(year FROM created_at)::bigint FROM comments WHERE id = 'c1'";
    assert_eq!(h.query_i64(year).await, 2020, "the default stands");
    let mut u = comment(IntentOp::Update, "c1", "p1", 1);
    u.values.insert("created_at".into(), stamp);
    u.values.insert("body".into(), text("changed"));
    assert!(d.push(vec![u]).await.unwrap().applied);
    assert_eq!(h.query_i64(year).await, 2020);
    assert_eq!(
        h.query_i64("SELECT count(*) FROM comments WHERE body = 'changed'")
            .await,
        1,
        "the rest of the write applied"
    );
    // The column still travels to devices.
    d.snapshot().await.unwrap();
    let row = &d.rows[&("comments".to_owned(), "c1".to_owned())];
    assert!(row.values.contains_key("created_at"));
}

#[tokio::test]
async fn a_protected_key_is_refused_at_startup() {
    let config = CONFIG.replace(r#"protected = ["created_at"]"#, r#"protected = ["id"]"#);
    let db = fresh_database().await;
    arcana::postgres::execute_script(&db, SCHEMA).await.unwrap();
    let mut c =
        arcana::config::Config::parse(&format!("{}\n{config}", arcana::app::DEMO_CONFIG)).unwrap();
    c.changes.mode = arcana::config::ChangeMode::None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = match arcana::app::App::start(&c, &db, listener).await {
        Ok(_) => panic!("a protected key column was accepted"),
        Err(e) => e,
    };
    assert!(e.contains("cannot be protected"), "{e}");
}
