//! Subscriptions end to end: snapshots, diffs, shared views, release.

mod common;

use arcana::proto::{self as pb, view_frame::Body, PatchOp};
use common::*;

fn last_diff(l: &Live, view: &str) -> pb::ViewDiff {
    l.frames
        .iter()
        .rev()
        .find_map(|f| match &f.body {
            Some(Body::Diff(d)) if f.view_id == view => Some(d.clone()),
            _ => None,
        })
        .expect("a diff frame")
}

#[tokio::test]
async fn applying_the_stream_always_equals_a_fresh_snapshot() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    let v = s.view_id.clone();
    assert_eq!(l.view(&v).refs.len(), 4);
    assert_eq!(l.view(&v).total, Some(4));
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // Insert: a ref is added, its row arrives, the total grows.
    let created = l
        .mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text("New task"))]),
        )
        .await
        .unwrap();
    let new_id = match created.data["id"].kind {
        Some(pb::value::Kind::Int(i)) => i,
        ref other => panic!("id {other:?}"),
    };
    let d = last_diff(&l, &v);
    assert!(d.refs.iter().any(|o| o.op == PatchOp::Add as i32));
    assert_eq!(d.total, Some(5));
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // Field-only update: a row patch, no structural change.
    l.mutate(
        "update_task",
        params(&[("id", int(new_id)), ("title", text("Renamed"))]),
    )
    .await
    .unwrap();
    let d = last_diff(&l, &v);
    assert!(d.refs.is_empty(), "{d:?}");
    assert_eq!(d.patches.len(), 1);
    assert_eq!(d.patches[0].ops[0].path, "/title");
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // Reorder: the new task moves to the front as one move.
    l.mutate(
        "move_task",
        params(&[("id", int(new_id)), ("position", int(0))]),
    )
    .await
    .unwrap();
    let d = last_diff(&l, &v);
    let moves: Vec<_> = d
        .refs
        .iter()
        .filter(|o| o.op == PatchOp::Move as i32)
        .collect();
    assert_eq!(moves.len(), 1, "{:?}", d.refs);
    assert_eq!(l.view(&v).refs[0].key.id.as_ref(), new_id.to_string());
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // Delete: the ref goes, the row leaves the client and the store.
    let rows_before = h.app().engine.stats().store_rows;
    l.mutate("delete_task", params(&[("id", int(new_id))]))
        .await
        .unwrap();
    let d = last_diff(&l, &v);
    assert!(d.refs.iter().any(|o| o.op == PatchOp::Remove as i32));
    assert_eq!(d.total, Some(4));
    assert!(!l
        .view(&v)
        .rows
        .keys()
        .any(|k| k.id.as_ref() == new_id.to_string()));
    assert_eq!(h.app().engine.stats().store_rows, rows_before - 1);
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // A write to a nested row (the assignee's name) reaches the view too.
    h.sql("UPDATE users SET name = 'Alice L.' WHERE id = 'alice'")
        .await;
    h.notify("users", "alice", &["name"]).await;
    l.ping().await;
    let alice = l
        .view(&v)
        .rows
        .get(&arcana::engine::RowKey::new("users", "alice"))
        .unwrap();
    assert_eq!(
        alice["name"],
        arcana::engine::Value::String("Alice L.".into())
    );
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}

#[tokio::test]
async fn sessions_with_the_same_graph_and_params_share_one_view() {
    let h = Harness::start().await;
    let mut a = h.live("dev-alice").await;
    let mut b = h.live("dev-bob").await;
    let va = a.subscribe("project_tasks", project(1)).await.unwrap();
    let vb = b
        .subscribe(
            "project_tasks",
            params(&[("limit", int(50)), ("project_id", int(1))]),
        )
        .await
        .unwrap();
    assert_eq!(
        va.view_id, vb.view_id,
        "explicit default and key order do not split views"
    );
    let stats = h.app().engine.stats();
    assert_eq!(stats.views, 1);
    let evals_before = stats.view_info[0].evaluations;
    assert_eq!(
        evals_before, 1,
        "the second subscriber reused the first evaluation"
    );

    a.mutate(
        "update_task",
        params(&[("id", int(1)), ("title", text("Shared"))]),
    )
    .await
    .unwrap();
    b.ping().await;
    let stats = h.app().engine.stats();
    assert_eq!(
        stats.view_info[0].evaluations,
        evals_before + 1,
        "one evaluation per change"
    );
    assert_eq!(a.view(&va.view_id).version, b.view(&vb.view_id).version);
    assert_eq!(a.view(&va.view_id).content(), b.view(&vb.view_id).content());
    let fa = a.frames.last().unwrap();
    let fb = b.frames.last().unwrap();
    assert_eq!(fa, fb, "both sessions got the same frame");

    // Unsubscribe one and disconnect the other: every row is released.
    assert!(h.app().engine.stats().store_rows > 0);
    a.unsubscribe(&va.view_id).await.unwrap();
    assert_eq!(h.app().engine.stats().views, 1);
    drop(b);
    let mut released = false;
    for _ in 0..200 {
        let s = h.app().engine.stats();
        if s.views == 0 && s.store_rows == 0 && s.sessions == 1 {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(released, "{:?}", h.app().engine.stats());
    assert_eq!(
        a.unsubscribe(&va.view_id).await.unwrap_err().code,
        tonic::Code::NotFound as i32
    );
}

#[tokio::test]
async fn changes_to_columns_no_graph_reads_evaluate_nothing() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    l.subscribe("project_tasks", project(1)).await.unwrap();
    let before = h.app().engine.stats().evaluations;
    h.notify("tasks", "1", &["notes"]).await;
    // A table no graph reads is refused outright.
    let e = h
        .client("dev-service")
        .await
        .notify(pb::NotifyRequest {
            changes: vec![pb::Change {
                table: "workspaces".into(),
                id: "acme".into(),
                columns: vec![],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(h.app().engine.stats().evaluations, before);
    h.notify("tasks", "1", &["title"]).await;
    assert_eq!(h.app().engine.stats().evaluations, before + 1);
}

#[tokio::test]
async fn per_user_graphs_give_each_user_their_own_view() {
    let h = Harness::start().await;
    let mut a = h.live("dev-alice").await;
    let mut b = h.live("dev-bob").await;
    let va = a.subscribe("my_tasks", params(&[])).await.unwrap();
    let vb = b.subscribe("my_tasks", params(&[])).await.unwrap();
    assert_eq!(h.app().engine.stats().views, 2);
    let ids = |l: &Live, v: &str| {
        l.view(v)
            .refs
            .iter()
            .map(|r| r.key.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a, &va.view_id), vec!["1"]); // alice's open tasks: "Write the announcement"
    assert_eq!(ids(&b, &vb.view_id), vec!["2", "5", "6"]);
}

#[tokio::test]
async fn values_keep_their_type_and_precision() {
    let h = Harness::start().await;
    let mut l = h.live("dev-carol").await;
    let s = l.subscribe("project_tasks", project(3)).await.unwrap();
    let row = l
        .view(&s.view_id)
        .rows
        .get(&arcana::engine::RowKey::new("tasks", "7"))
        .unwrap()
        .clone();
    use arcana::engine::Value;
    assert_eq!(row["points"], Value::Int(9_007_199_254_740_993));
    assert_eq!(row["estimate"], Value::Numeric("9999999999.99".into()));
    assert_eq!(row["due_at"], Value::Null);
    assert_eq!(
        row["meta"],
        Value::Json(r#"{"big": 9007199254740993}"#.into())
    );
    let mut l = h.live("dev-alice").await;
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    let row = l
        .view(&s.view_id)
        .rows
        .get(&arcana::engine::RowKey::new("tasks", "1"))
        .unwrap()
        .clone();
    assert_eq!(row["due_at"], Value::Timestamp(1_796_115_600 * 1_000_000));
    assert_eq!(row["estimate"], Value::Numeric("3.50".into()));
    assert_eq!(row["position"], Value::Int(1));
    // A nested row without a match (unassigned task) has no nested ref.
    let unassigned = l
        .view(&s.view_id)
        .refs
        .iter()
        .find(|r| r.key.id.as_ref() == "3")
        .unwrap();
    assert!(unassigned.nested.is_empty());
}

#[tokio::test]
async fn a_failing_evaluation_reaches_subscribers_and_the_view_recovers() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let v = l
        .subscribe("project_tasks", project(1))
        .await
        .unwrap()
        .view_id;
    let good = l.view(&v).clone();

    // Break the graph's query under the running server.
    h.sql("ALTER TABLE tasks RENAME COLUMN title TO title_renamed")
        .await;
    h.notify("tasks", "1", &["title"]).await;
    l.ping().await;
    let err = l.view(&v).error.clone().expect("an error frame arrived");
    assert!(err.contains("title"), "{err}");
    assert_eq!(
        l.view(&v).content(),
        good.content(),
        "the last good state stands"
    );
    assert!(h.app().engine.stats().eval_errors >= 1);

    // Repair it and change something: the next diff continues from the last good state.
    h.sql("ALTER TABLE tasks RENAME COLUMN title_renamed TO title; UPDATE tasks SET title = 'recovered' WHERE id = 1").await;
    h.notify("tasks", "1", &["title"]).await;
    l.ping().await;
    assert!(l.view(&v).error.is_none());
    assert_eq!(l.view(&v).version, good.version + 1);
    assert_eq!(
        l.view(&v).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}
