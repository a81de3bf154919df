//! The update fast path: a single-row update of columns a graph only shows
//! is patched into the views holding the row from the WAL's new values,
//! without running the query; anything else still evaluates.

mod common;

use arcana::engine::EngineStats;
use common::*;

fn counts(h: &Harness) -> (u64, u64) {
    let s: EngineStats = h.app().engine.stats();
    (s.evaluations, s.patches)
}

#[tokio::test]
async fn shown_columns_are_patched_and_the_rest_evaluated() {
    let h = Harness::wal().await;
    let mut l = h.live("dev-alice").await;
    let p1 = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let p2 = l
        .subscribe("project_tasks", project(2))
        .await
        .unwrap()
        .view_id;
    let mine = l.subscribe("my_tasks", params(&[])).await.unwrap().view_id;
    let (evals, patches) = counts(&h);

    // Title and points of task 1 (project 1, alice's): only shown.
    h.sql("UPDATE tasks SET title = 'patched', points = 40 WHERE id = 1")
        .await;
    l.wait_field(&p1, "tasks", "1", "title", "patched").await;
    l.wait_field(&mine, "tasks", "1", "title", "patched").await;
    let (e, p) = counts(&h);
    assert_eq!(e, evals, "no query ran");
    assert_eq!(p, patches + 2, "both views holding task 1 were patched");

    // A nested row: the assignee's name, shown in project 1 and 2.
    h.sql("UPDATE users SET name = 'Robert' WHERE id = 'bob'")
        .await;
    l.wait_until(&p2, |s| {
        s.rows
            .get(&arcana::engine::RowKey::new("users", "bob"))
            .is_some_and(|r| r.get("name") == Some(&arcana::engine::Value::from("Robert")))
    })
    .await;
    l.wait_field(&p1, "users", "bob", "name", "Robert").await;
    assert_eq!(counts(&h).0, evals, "still no query");

    // Position orders the view: evaluated.
    h.sql("UPDATE tasks SET position = 0, title = 'first' WHERE id = 3")
        .await;
    l.wait_field(&p1, "tasks", "3", "title", "first").await;
    assert!(counts(&h).0 > evals, "an ordering column needs the query");

    for (v, ps) in [(&p1, project(1)), (&p2, project(2))] {
        assert_eq!(
            l.view(v).content(),
            h.fresh("dev-alice", "project_tasks", ps).await.content()
        );
    }
    assert_eq!(
        l.view(&mine).content(),
        h.fresh("dev-alice", "my_tasks", params(&[]))
            .await
            .content()
    );
}

#[tokio::test]
async fn multi_row_transactions_and_unknown_values_are_evaluated() {
    let h = Harness::wal().await;
    let mut l = h.live("dev-alice").await;
    let p1 = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let (evals, patches) = counts(&h);
    // Two rows in one transaction: one evaluation, whole.
    h.sql("UPDATE tasks SET title = title || ' (2)' WHERE id IN (1, 2)")
        .await;
    l.wait_field(&p1, "tasks", "2", "title", "Book the venue (2)")
        .await;
    let (e, p) = counts(&h);
    assert_eq!(p, patches);
    assert!(e > evals);
    assert_eq!(
        l.view(&p1).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}

/// A mutation's own change evaluates its views at once; the WAL brings the
/// same write later as a patch. A patch of a write an evaluation already
/// read must not be applied over newer values: the view's title may only
/// move forward, write by write.
#[tokio::test]
async fn a_late_patch_never_takes_a_view_back_past_a_newer_evaluation() {
    // Asynchronous commits are visible at once but reach the WAL stream only
    // when the WAL writer flushes, so the patches come well after the
    // mutations' own evaluations, as they do on a busy server.
    const ASYNC_COMMITS: &str = "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$;";
    let h = Harness::with_extra(ASYNC_COMMITS, "", |c| {
        c.changes.mode = arcana::config::ChangeMode::Wal;
        c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
    })
    .await;
    let mut l = h.live("dev-alice").await;
    let p1 = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    const ROUNDS: usize = 15;
    const WRITES: usize = 3;
    for round in 0..ROUNDS {
        for k in 0..WRITES {
            let mut ps = params(&[("id", int(1))]);
            ps.insert("title".into(), text(&format!("t{:04}", round * WRITES + k)));
            l.mutate("update_task", ps).await.expect("mutation applied");
        }
    }
    h.wal_applied().await;
    let last = format!("t{:04}", ROUNDS * WRITES - 1);
    l.wait_field(&p1, "tasks", "1", "title", last.as_str())
        .await;
    l.ping().await;

    // Replay every frame of the view, noting the title after each version.
    let mut state = arcana::client::ViewState::default();
    let mut seen: Vec<String> = Vec::new();
    let key = arcana::engine::RowKey::new("tasks", "1");
    for f in l.frames.iter().filter(|f| f.view_id == p1) {
        state.apply(f).expect("frame applies");
        if let Some(arcana::engine::Value::String(t)) =
            state.rows.get(&key).and_then(|r| r.get("title"))
        {
            if seen.last() != Some(t) {
                seen.push(t.clone());
            }
        }
    }
    let back: Vec<_> = seen.windows(2).filter(|w| w[1] < w[0]).collect();
    assert!(back.is_empty(), "the title went back: {back:?} in {seen:?}");
    assert_eq!(
        l.view(&p1).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}
