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
