//! Routed invalidation: a change re-evaluates only the views whose route
//! param matches the values the changed rows held, and every view of the
//! graph when those values are unknown.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use arcana::engine::{Change, RowKey, Value};
use arcana::proto as pb;
use common::*;

/// Evaluations run so far by the view `view_id` (`<graph>/<hash>`) of
/// workspace `acme`.
fn evaluations(h: &Harness, view_id: &str) -> u64 {
    scoped_evaluations(h, view_id, "acme", None)
}

/// Evaluations of the view `view_id` of a workspace (and user).
fn scoped_evaluations(h: &Harness, view_id: &str, workspace: &str, user: Option<&str>) -> u64 {
    h.app()
        .engine
        .stats()
        .view_info
        .iter()
        .find(|v| {
            format!("{}/{}", v.graph, v.params_hash) == view_id
                && &*v.workspace_id == workspace
                && v.user_id.as_deref() == user
        })
        .map(|v| v.evaluations)
        .unwrap_or_else(|| panic!("no live view {view_id}"))
}

fn routed(table: &str, id: &str, column: &str, values: &[&str]) -> Change {
    let mut c = Change::row(table, id, ["title"]);
    c.route_values = BTreeMap::from([(
        column.to_owned(),
        values
            .iter()
            .map(|v| v.to_string())
            .collect::<BTreeSet<_>>(),
    )]);
    c
}

#[tokio::test]
async fn a_routed_change_evaluates_only_the_views_it_can_touch() {
    let h = Harness::start().await;
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
    let (e1, e2) = (evaluations(&h, &p1), evaluations(&h, &p2));

    h.sql("UPDATE tasks SET title = 'routed' WHERE id = 1")
        .await;
    h.app()
        .engine
        .notify(vec![routed("tasks", "1", "project_id", &["1"])])
        .await
        .unwrap();
    assert_eq!(evaluations(&h, &p1), e1 + 1);
    assert_eq!(evaluations(&h, &p2), e2, "project 2 cannot hold task 1");
    l.wait_field(&p1, "tasks", "1", "title", "routed").await;

    // A row moving between projects names both values.
    h.sql("UPDATE tasks SET project_id = 2 WHERE id = 1").await;
    h.app()
        .engine
        .notify(vec![routed("tasks", "1", "project_id", &["1", "2"])])
        .await
        .unwrap();
    assert_eq!(evaluations(&h, &p1), e1 + 2);
    assert_eq!(evaluations(&h, &p2), e2 + 1);
    l.wait_until(&p2, |s| s.rows.contains_key(&RowKey::new("tasks", "1")))
        .await;
    l.wait_until(&p1, |s| !s.rows.contains_key(&RowKey::new("tasks", "1")))
        .await;
    for (v, p) in [(&p1, 1), (&p2, 2)] {
        assert_eq!(
            l.view(v).content(),
            h.fresh("dev-alice", "project_tasks", project(p))
                .await
                .content()
        );
    }

    // Without route values, every view of the graph is evaluated.
    h.app()
        .engine
        .notify(vec![Change::row("tasks", "1", ["title"])])
        .await
        .unwrap();
    assert_eq!(evaluations(&h, &p1), e1 + 3);
    assert_eq!(evaluations(&h, &p2), e2 + 2);
}

#[tokio::test]
async fn routes_on_the_scope_follow_the_workspace_and_the_user() {
    let h = Harness::start().await;
    let mut alice = h.live("dev-alice").await;
    let mut bob = h.live("dev-bob").await;
    let mut carol = h.live("dev-carol").await;
    let acme = alice
        .subscribe("projects", params(&[]))
        .await
        .unwrap()
        .view_id;
    let globex = carol
        .subscribe("projects", params(&[]))
        .await
        .unwrap()
        .view_id;
    let a_mine = alice
        .subscribe("my_tasks", params(&[]))
        .await
        .unwrap()
        .view_id;
    let b_mine = bob
        .subscribe("my_tasks", params(&[]))
        .await
        .unwrap()
        .view_id;
    let acme_evals = || scoped_evaluations(&h, &acme, "acme", None);
    let globex_evals = || scoped_evaluations(&h, &globex, "globex", None);
    let alice_evals = || scoped_evaluations(&h, &a_mine, "acme", Some("alice"));
    let bob_evals = || scoped_evaluations(&h, &b_mine, "acme", Some("bob"));
    let (e_acme, e_globex, e_a, e_b) = (acme_evals(), globex_evals(), alice_evals(), bob_evals());
    h.app()
        .engine
        .notify(vec![
            routed("projects", "3", "workspace_id", &["globex"]),
            routed("tasks", "5", "assignee_id", &["bob"]),
        ])
        .await
        .unwrap();
    assert_eq!(acme_evals(), e_acme, "another workspace's project");
    assert_eq!(globex_evals(), e_globex + 1);
    assert_eq!(alice_evals(), e_a, "bob's task is not alice's");
    assert_eq!(bob_evals(), e_b + 1);
}

async fn wal_harness(identity_full: bool) -> Harness {
    let h = Harness::wal().await;
    if !identity_full {
        h.sql("ALTER TABLE tasks REPLICA IDENTITY DEFAULT").await;
    }
    h
}

/// Moves task 1 from project 1 to 2 with plain SQL; both views follow, and
/// a view of a project the task never was in is evaluated only when the
/// route values are unknown.
async fn a_task_moving_between_projects(identity_full: bool) {
    let h = wal_harness(identity_full).await;
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
    let mut carol = h.live("dev-carol").await;
    let p3 = carol
        .subscribe("project_tasks", project(3))
        .await
        .unwrap()
        .view_id;
    let p3_evals = || scoped_evaluations(&h, &p3, "globex", None);
    let e3 = p3_evals();

    h.sql("UPDATE tasks SET project_id = 2, title = 'moved' WHERE id = 1")
        .await;
    l.wait_until(&p2, |s| s.rows.contains_key(&RowKey::new("tasks", "1")))
        .await;
    l.wait_until(&p1, |s| !s.rows.contains_key(&RowKey::new("tasks", "1")))
        .await;
    for (v, p) in [(&p1, 1), (&p2, 2)] {
        assert_eq!(
            l.view(v).content(),
            h.fresh("dev-alice", "project_tasks", project(p))
                .await
                .content()
        );
    }
    assert_eq!(
        l.view(&p2).rows[&RowKey::new("tasks", "1")].get("title"),
        Some(&Value::String("moved".into()))
    );
    // Every evaluation the move caused has run once the slot confirms it.
    h.wal_applied().await;
    if identity_full {
        assert_eq!(p3_evals(), e3, "project 3 was never involved");
    } else {
        assert!(
            p3_evals() > e3,
            "without old values the update cannot be routed"
        );
    }
}

#[tokio::test]
async fn a_task_moving_between_projects_is_routed_to_both_from_the_wal() {
    a_task_moving_between_projects(true).await;
}

#[tokio::test]
async fn without_replica_identity_full_updates_reach_every_view() {
    a_task_moving_between_projects(false).await;
}

/// Carol's globex views of "project 1" (a project id her workspace does not
/// have) and acme's real project 1: acme's writes, from the WAL, mutations
/// and workspace-naming notifications, never evaluate globex's views.
#[tokio::test]
async fn one_workspaces_writes_never_evaluate_another_workspaces_views() {
    let h = Harness::wal().await;
    let mut alice = h.live("dev-alice").await;
    let acme = alice
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let mut carol = h.live("dev-carol").await;
    let globex = carol
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let globex_evals = || scoped_evaluations(&h, &globex, "globex", None);
    let acme_evals = || scoped_evaluations(&h, &acme, "acme", None);
    let (g0, a0) = (globex_evals(), acme_evals());

    // Plain SQL, through the WAL (the row carries its workspace).
    h.sql("UPDATE tasks SET position = 9 WHERE id = 1").await;
    alice
        .wait_until(&acme, |s| s.refs.last().map(|r| &*r.key.id) == Some("1"))
        .await;
    // A mutation: the caller's workspace, and the project it returns.
    alice
        .mutate(
            "move_task",
            params(&[("id", int(2)), ("position", int(10))]),
        )
        .await
        .unwrap();
    // A notification naming the workspace.
    let mut service = h.client("dev-service").await;
    service
        .notify(pb::NotifyRequest {
            changes: vec![pb::Change {
                table: "tasks".into(),
                columns: vec!["position".into()],
                workspace_id: "acme".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    // The mutation's write also comes back through the WAL: wait until
    // every evaluation the writes caused has run.
    h.wal_applied().await;
    assert!(acme_evals() >= a0 + 3, "acme's view followed every write");
    assert_eq!(globex_evals(), g0, "globex's view was never evaluated");

    // A notification naming no workspace reaches every workspace.
    h.notify("tasks", "", &["position"]).await;
    assert_eq!(globex_evals(), g0 + 1);
}
