//! Tenancy in the demo and in what the server answers: references stay in
//! their workspace, errors name constraints but echo no values, mutations
//! that touch no row say so, graph keys must identify one row, and queries
//! and pool waits are bounded.

mod common;

use std::time::{Duration, Instant};

use arcana::app::{App, DEMO_CONFIG};
use arcana::config::Config;
use arcana::engine::RowKey;
use common::*;
use tonic::Code;

#[tokio::test]
async fn an_assignee_must_belong_to_the_tasks_workspace() {
    let h = Harness::start().await;
    let mut carol = h.live("dev-carol").await;
    let v = carol.subscribe("project_tasks", project(3)).await.unwrap();
    let e = carol
        .mutate(
            "create_task",
            params(&[
                ("project_id", int(3)),
                ("title", text("borrowed help")),
                ("assignee_id", text("alice")),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition as i32, "{}", e.message);
    assert!(
        e.message.contains("tasks_assignee_in_workspace") && e.message.contains("23503"),
        "names the constraint: {}",
        e.message
    );
    assert!(
        !e.message.contains("alice"),
        "echoes no value: {}",
        e.message
    );
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE title = 'borrowed help'")
            .await,
        0
    );
    // Renaming alice reaches nobody in globex.
    h.sql("UPDATE users SET name = 'Alice Renamed' WHERE id = 'alice'")
        .await;
    h.notify("users", "alice", &["name"]).await;
    carol.ping().await;
    let view = carol.view(&v.view_id);
    assert!(!view.rows.contains_key(&RowKey::new("users", "alice")));
    for f in &carol.frames {
        assert!(!format!("{f:?}").contains("Alice"), "{f:?}");
    }
    // Her own colleague is fine.
    carol
        .mutate(
            "create_task",
            params(&[
                ("project_id", int(3)),
                ("title", text("own help")),
                ("assignee_id", text("carol")),
            ]),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_project_of_another_workspace_is_not_found() {
    let h = Harness::start().await;
    let mut carol = h.live("dev-carol").await;
    let e = carol
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text("sneak in"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32, "{}", e.message);
    assert!(e.message.contains("create_task"), "{}", e.message);
    assert_eq!(h.query_i64("SELECT count(*) FROM tasks").await, 7);
}

#[tokio::test]
async fn a_foreign_key_error_names_the_constraint_not_the_value() {
    let h = Harness::start().await;
    let mut alice = h.live("dev-alice").await;
    let e = alice
        .mutate(
            "create_task",
            params(&[
                ("project_id", int(1)),
                ("title", text("x")),
                ("assignee_id", text("no-such-user")),
            ]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition as i32, "{}", e.message);
    assert!(e.message.contains("foreign key violation"), "{}", e.message);
    assert!(
        e.message.contains("tasks_assignee_in_workspace"),
        "{}",
        e.message
    );
    for leak in ["no-such-user", "Key (", "is not present"] {
        assert!(!e.message.contains(leak), "{leak:?} in {}", e.message);
    }
}

const EXPECT: &str = r#"
[[mutations]]
name = "retitle_project"
permissions = ["tasks:write"]
sql = "UPDATE tasks SET title = title || '?' WHERE project_id = :project_id AND workspace_id = :workspace_id"
expect = "one"
[mutations.params.project_id]
type = "int"
required = true

[[mutations]]
name = "touch_project"
permissions = ["tasks:write"]
sql = [
  "UPDATE tasks SET notes = 'touched' WHERE project_id = :project_id AND workspace_id = :workspace_id",
  "SELECT count(*) AS n FROM tasks WHERE notes = 'touched' AND workspace_id = :workspace_id",
]
expect = "some"
[mutations.params.project_id]
type = "int"
required = true
"#;

#[tokio::test]
async fn a_mutation_touching_no_row_or_too_many_rolls_back() {
    let h = Harness::with_extra("", EXPECT, |_| {}).await;
    let mut carol = h.live("dev-carol").await;
    // Acme's task 1 is out of carol's reach: NOT_FOUND, not an empty OK.
    let e = carol
        .mutate(
            "update_task",
            params(&[("id", int(1)), ("title", text("hijack"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32, "{}", e.message);
    assert!(e.message.contains("update_task"), "{}", e.message);
    let e = carol
        .mutate("delete_task", params(&[("id", int(999))]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32, "{}", e.message);

    let mut alice = h.live("dev-alice").await;
    // Project 1 has four tasks; `one` refuses and rolls the update back.
    let e = alice
        .mutate("retitle_project", params(&[("project_id", int(1))]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition as i32, "{}", e.message);
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE title LIKE '%?'")
            .await,
        0
    );
    // Project 3 is not acme's: no row, NOT_FOUND.
    assert!(alice
        .mutate("retitle_project", params(&[("project_id", int(3))]))
        .await
        .is_err_and(|e| e.code == Code::NotFound as i32));
    // `some` counts affected rows of the UPDATE and returned rows together.
    let ok = alice
        .mutate("touch_project", params(&[("project_id", int(2))]))
        .await
        .unwrap();
    assert_eq!(ok.data.get("n"), Some(&int(2)));
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE notes = 'touched'")
            .await,
        2
    );
    // In globex's project 1 nothing matches the UPDATE, but the SELECT
    // returns its row: together that is `some`.
    carol
        .mutate("touch_project", params(&[("project_id", int(1))]))
        .await
        .unwrap();
    // A single UPDATE on one row passes `one`.
    alice
        .mutate(
            "update_task",
            params(&[("id", int(1)), ("title", text("fine"))]),
        )
        .await
        .unwrap();
}

/// The table of the report: ids are unique only within a workspace.
const SCOPED_IDS: &str = "
CREATE TABLE docs (
    workspace_id text NOT NULL,
    id int NOT NULL,
    title text NOT NULL,
    slug text NOT NULL,
    PRIMARY KEY (workspace_id, id)
);
CREATE UNIQUE INDEX docs_slug ON docs (workspace_id, slug);
ALTER TABLE docs REPLICA IDENTITY FULL;
INSERT INTO docs VALUES ('acme', 1, 'acme one', 'a'), ('globex', 1, 'globex one', 'a');
";

fn docs_graph(key: &str) -> String {
    format!(
        r#"
[[graphs]]
name = "docs"
table = "docs"
key = {key}
permissions = ["tasks:read"]
sql = "SELECT d.workspace_id, d.id, d.title FROM docs d WHERE d.workspace_id = :workspace_id ORDER BY d.id"
deps = {{ docs = ["*"] }}
patch = {{ docs = ["title"] }}
"#
    )
}

async fn start_with(schema: &str, toml: &str) -> Result<App, String> {
    let url = fresh_database().await;
    arcana::postgres::execute_script(&url, schema)
        .await
        .unwrap();
    let mut config = Config::parse(&format!("{DEMO_CONFIG}\n{toml}")).unwrap();
    config.changes.mode = arcana::config::ChangeMode::None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    App::start(&config, &url, listener).await
}

#[tokio::test]
async fn a_graph_key_that_is_not_unique_is_refused_at_startup() {
    let e = start_with(SCOPED_IDS, &docs_graph(r#"["id"]"#))
        .await
        .err()
        .expect("startup refuses the key");
    for part in [
        "graph `docs`",
        "[id]",
        "`docs`",
        "primary key (workspace_id, id)",
        "unique index docs_slug (workspace_id, slug)",
    ] {
        assert!(e.contains(part), "{part:?} missing in: {e}");
    }
    // A nested ref is checked the same way.
    let nested = r#"
[[graphs]]
name = "task_docs"
table = "tasks"
permissions = ["tasks:read"]
sql = "SELECT t.id, d.id AS \"doc.id\" FROM tasks t LEFT JOIN docs d ON d.workspace_id = t.workspace_id AND d.id = t.id WHERE t.workspace_id = :workspace_id"
deps = { tasks = ["*"], docs = ["*"] }
nested = { doc = { table = "docs", key = ["id"] } }
"#;
    let e = start_with(SCOPED_IDS, nested)
        .await
        .err()
        .expect("startup refuses the nested key");
    assert!(
        e.contains("nested ref `doc`") && e.contains("primary key (workspace_id, id)"),
        "{e}"
    );
    // The key in another column order is the same set: accepted.
    start_with(SCOPED_IDS, &docs_graph(r#"["id", "workspace_id"]"#))
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
}

#[tokio::test]
async fn with_the_full_key_a_wal_patch_stays_in_its_workspace() {
    let h = Harness::with_extra(SCOPED_IDS, &docs_graph(r#"["workspace_id", "id"]"#), |c| {
        c.changes.mode = arcana::config::ChangeMode::Wal;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
    })
    .await;
    let mut carol = h.live("dev-carol").await;
    let cv = carol.subscribe("docs", params(&[])).await.unwrap();
    let mut alice = h.live("dev-alice").await;
    let av = alice.subscribe("docs", params(&[])).await.unwrap();
    h.sql("UPDATE docs SET title = 'acme renamed' WHERE workspace_id = 'acme' AND id = 1")
        .await;
    alice
        .wait_field(
            &av.view_id,
            "docs",
            r#"["acme","1"]"#,
            "title",
            "acme renamed",
        )
        .await;
    carol.ping().await;
    let row = carol
        .view(&cv.view_id)
        .rows
        .get(&RowKey::new("docs", r#"["globex","1"]"#))
        .expect("globex's row");
    assert_eq!(row.get("title"), Some(&"globex one".into()));
}

const SLEEPY: &str = r#"
[[graphs]]
name = "sleepy"
table = "tasks"
permissions = ["tasks:read"]
sql = "SELECT t.id, t.title FROM tasks t, pg_sleep(:seconds) WHERE t.workspace_id = :workspace_id"
deps = { tasks = ["*"] }
[graphs.params.seconds]
type = "float"
required = true
"#;

fn seconds(s: f64) -> std::collections::HashMap<String, arcana::proto::Value> {
    params(&[(
        "seconds",
        arcana::proto::Value {
            kind: Some(arcana::proto::value::Kind::Float(s)),
        },
    )])
}

#[tokio::test]
async fn a_query_past_the_statement_timeout_is_deadline_exceeded() {
    let h = Harness::with_extra("", SLEEPY, |c| c.database.statement_timeout_ms = 300).await;
    let mut l = h.live("dev-alice").await;
    let started = Instant::now();
    let e = l.subscribe("sleepy", seconds(5.0)).await.unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded as i32, "{}", e.message);
    assert!(
        e.message.contains("graph `sleepy`") && e.message.contains("statement_timeout_ms"),
        "{}",
        e.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cancelled early"
    );
    // A quick one still runs.
    l.subscribe("sleepy", seconds(0.0)).await.unwrap();
}

#[tokio::test]
async fn a_full_pool_answers_unavailable_after_the_pool_timeout() {
    let h = Harness::with_extra("", SLEEPY, |c| {
        c.database.pool_size = 1;
        c.database.pool_timeout_ms = 200;
    })
    .await;
    // One session holds the only connection for a while.
    let mut slow = h.live("dev-alice").await;
    let hold = tokio::spawn(async move { slow.subscribe("sleepy", seconds(2.0)).await.is_ok() });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut l = h.live("dev-alice").await;
    let e = l
        .mutate(
            "update_task",
            params(&[("id", int(1)), ("title", text("waits"))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::Unavailable as i32, "{}", e.message);
    assert!(
        e.message.contains("update_task") && e.message.contains("pool_timeout_ms"),
        "{}",
        e.message
    );
    assert!(hold.await.unwrap(), "the slow view itself completes");
}

#[tokio::test]
async fn stats_show_a_workspace_admin_only_their_workspace() {
    let token = |token: &str, workspace: &str, permission: &str| arcana::config::TokenConfig {
        token: token.into(),
        user: format!("{token}-user"),
        workspace: workspace.into(),
        role: String::new(),
        permissions: vec![permission.into()],
    };
    let h = Harness::with(|c| {
        c.auth
            .tokens
            .push(token("globex-admin", "globex", "arcana:admin"));
        c.auth
            .tokens
            .push(token("root", "acme", "arcana:global-admin"));
    })
    .await;
    let mut alice = h.live("dev-alice").await;
    alice.subscribe("project_tasks", project(1)).await.unwrap();
    alice.subscribe("project_tasks", project(2)).await.unwrap();
    let mut carol = h.live("dev-carol").await;
    carol.subscribe("project_tasks", project(3)).await.unwrap();

    let stats = |token: &str| {
        let h = &h;
        let token = token.to_owned();
        async move {
            h.client(&token)
                .await
                .stats(arcana::proto::StatsRequest {})
                .await
                .map(|r| r.into_inner())
        }
    };
    let globex = stats("globex-admin").await.unwrap();
    assert_eq!(globex.views, 1);
    assert_eq!(globex.subscriptions, 1);
    assert_eq!(globex.sessions, 1);
    assert!(
        globex.view_stats.iter().all(|v| v.workspace_id == "globex"),
        "{:?}",
        globex.view_stats
    );
    assert_eq!(
        globex.changes, 0,
        "engine-wide counters are not a workspace's"
    );
    let all = stats("root").await.unwrap();
    assert_eq!(all.views, 3);
    assert_eq!(all.view_stats.len(), 3);
    let err = stats("dev-alice").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
