//! Change detection without any notify call: writes from a plain SQL
//! connection reach subscribers, in WAL mode and in trigger mode.

mod common;

use arcana::config::ChangeMode;
use arcana::engine::{RowKey, Value};
use arcana::proto as pb;
use common::*;

const EXTRA_SCHEMA: &str = r#"
CREATE TABLE memberships (org text, member text, role text NOT NULL, PRIMARY KEY (org, member));
CREATE TABLE labels (name text PRIMARY KEY, color text NOT NULL, notes text NOT NULL DEFAULT '');
INSERT INTO memberships VALUES ('acme', 'o''brien', 'admin'), ('acme', 'zed', 'member');
INSERT INTO labels VALUES ('it''s "quoted"', 'red'), ('plain', 'blue');
"#;

const EXTRA_CONFIG: &str = r#"
[[graphs]]
name = "memberships"
table = "memberships"
key = ["org", "member"]
sql = "SELECT org, member, role FROM memberships ORDER BY org, member"
deps = { memberships = ["*"] }

[[graphs]]
name = "labels"
table = "labels"
key = ["name"]
sql = "SELECT name, color FROM labels ORDER BY name"
deps = { labels = ["name", "color"] }
"#;

/// Two tests running `$body`: one in WAL mode, one in trigger mode.
macro_rules! in_both_modes {
    ($wal:ident, $trigger:ident, $body:ident) => {
        #[tokio::test]
        async fn $wal() {
            $body(ChangeMode::Wal).await;
        }

        #[tokio::test]
        async fn $trigger() {
            $body(ChangeMode::Notify).await;
        }
    };
}

async fn harness(mode: ChangeMode) -> Harness {
    Harness::with_extra(EXTRA_SCHEMA, EXTRA_CONFIG, |c| {
        c.changes.mode = mode;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
    })
    .await
}

fn title(l: &Live, view: &str, id: &str) -> Option<Value> {
    l.view(view)
        .rows
        .get(&RowKey::new("tasks", id))
        .and_then(|r| r.get("title").cloned())
}

async fn inserts_updates_deletes_and_truncates_arrive(mode: ChangeMode) {
    let h = harness(mode).await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;

    h.sql("INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'From psql', 10)").await;
    l.wait_until(&v, |s| s.refs.len() == 5).await;
    assert_eq!(l.view(&v).total, Some(5));
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    h.sql("UPDATE tasks SET title = 'Edited in psql' WHERE id = 2")
        .await;
    l.wait_field(&v, "tasks", "2", "title", "Edited in psql")
        .await;
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    h.sql("DELETE FROM tasks WHERE id = 3").await;
    l.wait_until(&v, |s| s.refs.len() == 4).await;
    assert!(title(&l, &v, "3").is_none());
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    h.sql("TRUNCATE tasks").await;
    l.wait_until(&v, |s| s.refs.is_empty()).await;
    assert_eq!(l.view(&v).total, Some(0));
    assert!(l.view(&v).rows.is_empty());
}

in_both_modes!(
    wal_inserts_updates_deletes_and_truncates_arrive,
    trigger_inserts_updates_deletes_and_truncates_arrive,
    inserts_updates_deletes_and_truncates_arrive
);

async fn transactions_arrive_whole_and_rollbacks_not_at_all(mode: ChangeMode) {
    let h = harness(mode).await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let start = l.view(&v).version;

    h.sql("BEGIN; UPDATE tasks SET title = 'tx one' WHERE id = 1; UPDATE tasks SET title = 'tx two' WHERE id = 2; \
           INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'tx three', 20); COMMIT;")
        .await;
    l.wait_until(&v, |s| s.refs.len() == 5).await;
    // Every frame after the start shows the whole transaction or none of it.
    let mut state = arcana::client::ViewState::default();
    for f in &l.frames {
        if f.view_id != v {
            continue;
        }
        state.apply(f).unwrap();
        if state.version > start {
            assert!(
                state
                    .rows
                    .get(&RowKey::new("tasks", "1"))
                    .is_some_and(|r| r["title"] == Value::from("tx one")),
                "half a transaction"
            );
            assert!(
                state
                    .rows
                    .get(&RowKey::new("tasks", "2"))
                    .is_some_and(|r| r["title"] == Value::from("tx two")),
                "half a transaction"
            );
            assert_eq!(state.refs.len(), 5);
        }
    }
    assert_eq!(
        l.view(&v).version,
        start + 1,
        "one transaction, one version"
    );

    h.sql("BEGIN; UPDATE tasks SET title = 'rolled back' WHERE id = 1; ROLLBACK;")
        .await;
    h.sql("UPDATE tasks SET title = 'marker' WHERE id = 4")
        .await;
    l.wait_field(&v, "tasks", "4", "title", "marker").await;
    assert_eq!(
        l.view(&v).version,
        start + 2,
        "the rolled-back transaction sent nothing"
    );
    assert_eq!(title(&l, &v, "1"), Some(Value::from("tx one")));
}

in_both_modes!(
    wal_transactions_arrive_whole_and_rollbacks_not_at_all,
    trigger_transactions_arrive_whole_and_rollbacks_not_at_all,
    transactions_arrive_whole_and_rollbacks_not_at_all
);

async fn untracked_columns_cause_no_evaluation(mode: ChangeMode) {
    let h = harness(mode).await;
    // Without the old row the WAL cannot tell which columns an update
    // changed, so every update would count.
    h.sql("ALTER TABLE tasks REPLICA IDENTITY FULL; ALTER TABLE labels REPLICA IDENTITY FULL")
        .await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let lv = l.subscribe("labels", params(&[])).await.unwrap().view_id;
    // Updates reaching a view: evaluations, or patches from the change itself.
    let updates = || {
        let s = h.app().engine.stats();
        s.evaluations + s.patches
    };
    let before = updates();
    // tasks.notes and labels.notes are read by no graph.
    h.sql("UPDATE tasks SET notes = 'untracked' WHERE id = 1")
        .await;
    h.sql(r#"UPDATE labels SET notes = 'untracked' WHERE name = 'it''s "quoted"'"#)
        .await;
    h.sql("UPDATE tasks SET title = 'tracked' WHERE id = 2")
        .await;
    l.wait_field(&v, "tasks", "2", "title", "tracked").await;
    assert_eq!(
        updates(),
        before + 1,
        "only the tracked update reached the view: {:?}",
        h.app().engine.stats()
    );

    // A schema change on a tracked table does not break the stream.
    h.sql("ALTER TABLE tasks ADD COLUMN extra int DEFAULT 7")
        .await;
    h.sql("UPDATE tasks SET title = 'after alter', extra = 8 WHERE id = 2")
        .await;
    l.wait_field(&v, "tasks", "2", "title", "after alter").await;
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // Text keys with quotes and composite keys.
    h.sql(r#"UPDATE labels SET color = 'green' WHERE name = 'it''s "quoted"'"#)
        .await;
    l.wait_until(&lv, |s| {
        s.rows
            .get(&RowKey::new("labels", "it's \"quoted\""))
            .is_some_and(|r| r["color"] == Value::from("green"))
    })
    .await;
    let mv = l
        .subscribe("memberships", params(&[]))
        .await
        .unwrap()
        .view_id;
    let key = RowKey::new("memberships", r#"["acme","o'brien"]"#);
    assert!(
        l.view(&mv).rows.contains_key(&key),
        "{:?}",
        l.view(&mv).rows.keys().collect::<Vec<_>>()
    );
    h.sql("UPDATE memberships SET role = 'owner' WHERE org = 'acme' AND member = 'o''brien'")
        .await;
    l.wait_until(&mv, |s| {
        s.rows
            .get(&key)
            .is_some_and(|r| r["role"] == Value::from("owner"))
    })
    .await;
    h.sql("DELETE FROM memberships WHERE member = 'zed'").await;
    l.wait_until(&mv, |s| s.refs.len() == 1).await;
    assert_eq!(
        l.view(&mv).content(),
        h.fresh("dev-alice", "memberships", params(&[]))
            .await
            .content()
    );
}

in_both_modes!(
    wal_untracked_columns_schema_changes_and_odd_keys,
    trigger_untracked_columns_schema_changes_and_odd_keys,
    untracked_columns_cause_no_evaluation
);

#[tokio::test]
async fn wal_writes_made_while_the_server_was_down_reach_clients_after_restart() {
    let mut h = harness(ChangeMode::Wal).await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let before = l.view(&v).clone();
    drop(l);
    h.stop().await;

    h.sql("UPDATE tasks SET title = 'written while down' WHERE id = 1")
        .await;
    h.sql("INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', 1, 'also while down', 30)").await;
    let lsn_after_writes = h
        .query_i64("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
        .await;
    h.start_again().await;

    let mut back = h.live("dev-alice").await;
    let r = back.resume(&v, &before, "project_tasks", project(1)).await;
    assert_eq!(
        r.results[0].mode,
        pb::SyncMode::Snapshot as i32,
        "a restarted server has new epochs"
    );
    assert_eq!(back.view(&v).refs.len(), 5);
    assert_eq!(
        title(&back, &v, "1"),
        Some(Value::from("written while down"))
    );
    assert_eq!(
        back.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // The backlog is consumed and confirmed: the slot moves past the writes.
    let slot = h.config.changes.slot.clone();
    let mut confirmed = 0;
    for _ in 0..300 {
        confirmed = h
            .query_i64(&format!("SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '{slot}'"))
            .await;
        if confirmed >= lsn_after_writes {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        confirmed >= lsn_after_writes,
        "slot confirmed {confirmed}, writes ended at {lsn_after_writes}"
    );

    // Live changes keep flowing after the restart, each applied once.
    let start = back.view(&v).version;
    h.sql("UPDATE tasks SET title = 'after restart' WHERE id = 2")
        .await;
    back.wait_field(&v, "tasks", "2", "title", "after restart")
        .await;
    assert_eq!(back.view(&v).version, start + 1);
}

#[tokio::test]
async fn wal_mode_explains_a_server_without_logical_replication() {
    // A role without REPLICATION cannot stream: startup says how to fix it.
    let h = harness(ChangeMode::None).await;
    h.sql("CREATE ROLE plain_user LOGIN").await;
    let url = h.db_url.replace("postgres@", "plain_user@");
    let mut config = arcana::config::Config::parse(arcana::app::DEMO_CONFIG).unwrap();
    config.changes.slot = "never_created".into();
    // Not the role's business here: policies and the evaluation role.
    config.rls.install = false;
    config.database.eval_role = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = arcana::app::App::start(&config, &url, listener)
        .await
        .err()
        .expect("startup fails");
    assert!(
        err.contains("REPLICATION") && err.contains("plain_user"),
        "{err}"
    );
}

#[tokio::test]
async fn the_triggers_command_prints_and_installs_the_trigger_sql() {
    let h = harness(ChangeMode::None).await;
    let dir = std::env::temp_dir().join(format!("arcana-cli-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("arcana.toml");
    std::fs::write(
        &config,
        format!("{}\n{EXTRA_CONFIG}", arcana::app::DEMO_CONFIG),
    )
    .unwrap();
    let run = |action: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"))
            .args(["triggers", action, "--config"])
            .arg(&config)
            .args(["--database-url", &h.db_url])
            .output()
    };
    let out = run("sql").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sql = String::from_utf8(out.stdout).unwrap();
    for table in ["tasks", "users", "projects", "memberships", "labels"] {
        assert!(
            sql.contains(&format!("AFTER INSERT OR UPDATE OR DELETE ON \"{table}\"")),
            "no trigger for {table}:\n{sql}"
        );
    }
    assert!(
        sql.contains("array_to_json(ARRAY[NEW.\"org\"::text, NEW.\"member\"::text])"),
        "composite key:\n{sql}"
    );
    let out = run("install").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A row trigger, a truncate trigger and the deferred end-marker trigger per table.
    assert_eq!(
        h.query_i64("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'arcana_notify_%'")
            .await,
        15
    );
    assert_eq!(
        h.query_i64("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'arcana_notify_%_end' AND tgdeferrable")
            .await,
        5
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn wal_unchanged_toasted_values_are_neither_changes_nor_nulls() {
    let h = Harness::with_extra(
        "CREATE TABLE docs (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL, notes text NOT NULL DEFAULT '');
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         INSERT INTO docs (id, title, body) SELECT 1, 'doc', string_agg(md5(i::text || random()::text), '') FROM generate_series(1, 300) i;",
        r#"
[[graphs]]
name = "docs"
table = "docs"
sql = "SELECT id, title, body FROM docs ORDER BY id"
deps = { docs = ["id", "title", "body"] }
"#,
        |c| {
            c.changes.mode = ChangeMode::Wal;
            c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
        },
    )
    .await;
    // The body is stored out of line, uncompressed (TOAST): updates that leave it
    // alone send it as "unchanged" rather than its value.
    assert_eq!(
        h.query_i64("SELECT pg_column_size(body)::int8 FROM docs")
            .await,
        9600
    );
    let mut l = h.live("dev-alice").await;
    let v = l.subscribe("docs", params(&[])).await.unwrap().view_id;
    let body = l.view(&v).rows[&RowKey::new("docs", "1")]["body"].clone();
    assert!(matches!(&body, Value::String(s) if s.len() == 9600));
    h.sql("UPDATE docs SET title = 'retitled' WHERE id = 1")
        .await;
    l.wait_field(&v, "docs", "1", "title", "retitled").await;
    assert_eq!(
        l.view(&v).rows[&RowKey::new("docs", "1")]["body"],
        body,
        "and was not read as NULL"
    );
}

#[tokio::test]
async fn trigger_payloads_over_the_notify_limit_still_notify() {
    let h = harness(ChangeMode::Notify).await;
    let long = "k".repeat(8000);
    h.sql(&format!(
        "INSERT INTO labels (name, color) VALUES ('{long}', 'grey')"
    ))
    .await;
    let mut l = h.live("dev-alice").await;
    let v = l.subscribe("labels", params(&[])).await.unwrap().view_id;
    // The key alone is over the limit: the payload drops it and the column list.
    h.sql(&format!(
        "UPDATE labels SET color = 'black' WHERE name = '{long}'"
    ))
    .await;
    l.wait_field(&v, "labels", &long, "color", "black").await;
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "labels", params(&[])).await.content()
    );
}
