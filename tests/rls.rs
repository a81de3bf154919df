//! Row-level security as a second wall: graphs and mutations whose SQL
//! forgets the workspace filter still only reach the caller's rows when
//! the policies are installed, views of several workspaces never share a
//! transaction, and change detection keeps working with RLS on.

mod common;

use arcana::config::ChangeMode;
use arcana::engine::{Change, RowKey};
use common::*;
use tonic::Code;

/// A graph and mutations that forget `:workspace_id`.
const CARELESS: &str = r#"
[[graphs]]
name = "all_tasks"
table = "tasks"
permissions = ["tasks:read"]
sql = """
SELECT t.id, t.title, t.workspace_id FROM tasks t
WHERE (:status::text IS NULL OR t.status = :status)
ORDER BY t.id
"""
deps = { tasks = ["*"] }
[graphs.params.status]
type = "string"

[[mutations]]
name = "retitle_any"
permissions = ["tasks:write"]
sql = "UPDATE tasks SET title = :title WHERE id = :id RETURNING id"
[mutations.params.id]
type = "int"
required = true
[mutations.params.title]
type = "string"
required = true

[[mutations]]
name = "add_to_acme"
permissions = ["tasks:write"]
sql = "INSERT INTO tasks (workspace_id, project_id, title) VALUES ('acme', 1, :title) RETURNING id"
[mutations.params.title]
type = "string"
required = true
"#;

fn task_ids(l: &Live, view_id: &str) -> Vec<String> {
    let mut ids: Vec<String> = l
        .view(view_id)
        .rows
        .keys()
        .filter(|k| k.table.as_ref() == "tasks")
        .map(|k| k.id.to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn with_rls_a_graph_without_a_workspace_filter_returns_only_the_callers_rows() {
    let h = Harness::with_extra("", CARELESS, |_| {}).await;
    let mut carol = h.live("dev-carol").await;
    let v = carol.subscribe("all_tasks", params(&[])).await.unwrap();
    assert_eq!(task_ids(&carol, &v.view_id), ["7"]);
    let mut alice = h.live("dev-alice").await;
    let v = alice.subscribe("all_tasks", params(&[])).await.unwrap();
    assert_eq!(task_ids(&alice, &v.view_id), ["1", "2", "3", "4", "5", "6"]);
}

#[tokio::test]
async fn without_rls_a_graph_without_a_workspace_filter_returns_every_row() {
    let h = Harness::with_extra("", CARELESS, |c| c.rls.install = false).await;
    let mut carol = h.live("dev-carol").await;
    let v = carol.subscribe("all_tasks", params(&[])).await.unwrap();
    assert_eq!(
        task_ids(&carol, &v.view_id),
        ["1", "2", "3", "4", "5", "6", "7"],
        "the documented behaviour: the graph's SQL is the only filter"
    );
    // And a careless mutation writes wherever it is pointed.
    carol
        .mutate(
            "retitle_any",
            params(&[("id", int(1)), ("title", text("crossed"))]),
        )
        .await
        .unwrap();
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE title = 'crossed'")
            .await,
        1
    );
}

#[tokio::test]
async fn with_rls_a_mutation_cannot_write_another_workspaces_row() {
    let h = Harness::with_extra("", CARELESS, |_| {}).await;
    let mut carol = h.live("dev-carol").await;
    // The UPDATE does not see acme's row at all.
    let r = carol
        .mutate(
            "retitle_any",
            params(&[("id", int(1)), ("title", text("crossed"))]),
        )
        .await
        .unwrap();
    assert!(r.data.is_empty(), "{r:?}");
    // An INSERT of an acme row fails the policy's check.
    let e = carol
        .mutate("add_to_acme", params(&[("title", text("planted"))]))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied as i32, "{}", e.message);
    assert!(e.message.contains("add_to_acme"), "{}", e.message);
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE title IN ('crossed', 'planted')")
            .await,
        0
    );
    // The same mutations work inside the caller's own workspace.
    let mut alice = h.live("dev-alice").await;
    alice
        .mutate(
            "retitle_any",
            params(&[("id", int(1)), ("title", text("own"))]),
        )
        .await
        .unwrap();
    alice
        .mutate("add_to_acme", params(&[("title", text("own too"))]))
        .await
        .unwrap();
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE title IN ('own', 'own too')")
            .await,
        2
    );
}

#[tokio::test]
async fn views_of_two_workspaces_refreshed_in_one_round_each_see_their_own_rows() {
    let h = Harness::with_extra("", CARELESS, |c| c.engine.eval_concurrency = 1).await;
    let todo = || params(&[("status", text("todo"))]);
    let mut carol = h.live("dev-carol").await;
    let cv = carol.subscribe("all_tasks", todo()).await.unwrap();
    let mut alice = h.live("dev-alice").await;
    let av = alice.subscribe("all_tasks", todo()).await.unwrap();
    h.sql("UPDATE tasks SET title = title || '!'").await;
    let before = h.app().engine.stats();
    // Both views are due at once: one round, one query per workspace.
    h.app()
        .engine
        .notify(vec![Change::table("tasks")])
        .await
        .unwrap();
    let after = h.app().engine.stats();
    assert_eq!(after.evaluations - before.evaluations, 2);
    assert_eq!(after.evaluation_rounds - before.evaluation_rounds, 1);
    carol
        .wait_field(&cv.view_id, "tasks", "7", "title", "Take over the world!")
        .await;
    alice
        .wait_field(&av.view_id, "tasks", "2", "title", "Book the venue!")
        .await;
    assert_eq!(task_ids(&carol, &cv.view_id), ["7"]);
    assert_eq!(task_ids(&alice, &av.view_id), ["2", "3", "5"]);
}

#[tokio::test]
async fn wal_change_detection_works_with_rls_on() {
    detects_changes(ChangeMode::Wal).await;
}

#[tokio::test]
async fn trigger_change_detection_works_with_rls_on() {
    detects_changes(ChangeMode::Notify).await;
}

/// Writes from a plain connection reach views; the listener runs as the
/// server's role, without the identity settings.
async fn detects_changes(mode: ChangeMode) {
    let h = Harness::with(|c| {
        c.changes.mode = mode;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
    })
    .await;
    assert!(h.config.rls.install, "the demo runs with RLS on");
    let mut alice = h.live("dev-alice").await;
    let v = alice.subscribe("project_tasks", project(1)).await.unwrap();
    h.sql("UPDATE tasks SET title = 'Renamed in psql' WHERE id = 2")
        .await;
    alice
        .wait_field(&v.view_id, "tasks", "2", "title", "Renamed in psql")
        .await;
    h.sql("INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'From psql', 10)")
        .await;
    alice.wait_until(&v.view_id, |s| s.refs.len() == 5).await;
    assert!(alice
        .view(&v.view_id)
        .rows
        .contains_key(&RowKey::new("tasks", "8")));
}

#[tokio::test]
async fn rls_sql_covers_tenant_tables_and_honours_overrides() {
    let h = Harness::start().await;
    let mut rls = h.config.rls.clone();
    let sql = arcana::postgres::rls::all_sql(&h.db_url, &rls)
        .await
        .unwrap()
        .join(";\n");
    for table in ["tasks", "users", "projects", "workspaces"] {
        assert!(
            sql.contains(&format!(
                "CREATE POLICY arcana_tenant ON \"public\".\"{table}\""
            )),
            "{table}: {sql}"
        );
        // The server's role owns the tables, so RLS is forced on them.
        assert!(
            sql.contains(&format!(
                "ALTER TABLE \"public\".\"{table}\" FORCE ROW LEVEL SECURITY"
            )),
            "{sql}"
        );
    }
    assert!(sql.contains("\"id\" = NULLIF(current_setting('arcana.workspace_id', true), '')::text"));
    rls.tables.insert(
        "users".into(),
        arcana::config::RlsTableConfig {
            exclude: true,
            ..Default::default()
        },
    );
    rls.user_column = Some("assignee_id".into());
    let sql = arcana::postgres::rls::all_sql(&h.db_url, &rls)
        .await
        .unwrap()
        .join(";\n");
    assert!(!sql.contains("\"users\""), "{sql}");
    assert!(
        sql.contains("\"assignee_id\" = NULLIF(current_setting('arcana.user_id', true), '')::text"),
        "{sql}"
    );
    // A typo in an override is an error, not a silently open table.
    rls.tables
        .insert("taks".into(), arcana::config::RlsTableConfig::default());
    let e = arcana::postgres::rls::all_sql(&h.db_url, &rls)
        .await
        .unwrap_err();
    assert!(e.contains("taks"), "{e}");
}

#[tokio::test]
async fn the_cli_prints_and_installs_the_policies() {
    let h = Harness::with(|c| c.rls.install = false).await;
    let dir = std::env::temp_dir().join(format!("arcana_rls_{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("arcana.toml");
    std::fs::write(&config, arcana::app::DEMO_CONFIG).unwrap();
    let run = |action: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
            .args(["rls", action, "--config"])
            .arg(&config)
            .args(["--database-url", &h.db_url])
            .output()
            .unwrap()
    };
    let out = run("sql");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ENABLE ROW LEVEL SECURITY"), "{text}");
    assert_eq!(
        h.query_i64("SELECT count(*) FROM pg_policies WHERE policyname = 'arcana_tenant'")
            .await,
        0,
        "printing applies nothing"
    );
    let out = run("install");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        h.query_i64("SELECT count(*) FROM pg_policies WHERE policyname = 'arcana_tenant'")
            .await,
        4
    );
    // Idempotent.
    assert!(run("install").status.success());
    let _ = std::fs::remove_dir_all(&dir);
}
