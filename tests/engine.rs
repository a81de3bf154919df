//! The engine as a library, with Rust factories and no database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use arcana::engine::{
    Change, Engine, EngineConfig, Fields, GraphDef, GraphResult, Identity, Outbound, Params, Ref,
    Registry, Scope, TableDep, Value,
};

fn one_row(n: i64) -> GraphResult {
    let mut r = GraphResult::new();
    let mut f = Fields::new();
    f.insert("n".into(), Value::Int(n));
    r.add_row("t", "1", f);
    r.add_ref(Ref::new("t", "1"));
    r
}

#[tokio::test]
async fn a_slow_view_does_not_hold_up_the_others() {
    // `slow` blocks on its second evaluation until the gate opens.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow_calls = Arc::new(AtomicI64::new(0));
    let (g, c) = (gate.clone(), slow_calls.clone());
    let mut slow = GraphDef::new("slow", move |_: Scope, _: Params| {
        let (gate, calls) = (g.clone(), c.clone());
        async move {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n > 0 {
                gate.acquire().await.unwrap().forget();
            }
            Ok(one_row(n))
        }
    });
    slow.deps = vec![TableDep::all("t")];
    let fast_calls = Arc::new(AtomicI64::new(0));
    let fc = fast_calls.clone();
    let mut fast = GraphDef::new("fast", move |_: Scope, _: Params| {
        let n = fc.fetch_add(1, Ordering::SeqCst);
        async move { Ok(one_row(n)) }
    });
    fast.deps = vec![TableDep::all("t"), TableDep::all("u")];
    let mut reg = Registry::new();
    reg.register(slow).unwrap();
    reg.register(fast).unwrap();
    let engine = Engine::new(reg, EngineConfig::default());

    let session = engine.open_session(Identity::new("user", "ws"));
    engine
        .subscribe(&session, "slow", HashMap::new(), None, |_| None)
        .await
        .unwrap();
    let fast_view = engine
        .subscribe(&session, "fast", HashMap::new(), None, |_| None)
        .await
        .unwrap()
        .view_id;
    let next = || async {
        match tokio::time::timeout(Duration::from_secs(5), session.next())
            .await
            .expect("a frame in time")
        {
            Some(Outbound::Frame(f, _)) => f,
            other => panic!("{other:?}"),
        }
    };
    next().await;
    next().await; // the two snapshots

    // A change both read: `fast` answers while `slow` is stuck.
    let e = engine.clone();
    let both = tokio::spawn(async move { e.notify(vec![Change::table("t")]).await });
    assert_eq!(next().await.view_id, fast_view);
    // A change only `fast` reads is not queued behind `slow` either.
    tokio::time::timeout(
        Duration::from_secs(5),
        engine.notify(vec![Change::table("u")]),
    )
    .await
    .expect("not queued behind the slow view")
    .unwrap();
    let f = next().await;
    assert_eq!((f.view_id.clone(), f.version), (fast_view.clone(), 3));
    assert!(
        !both.is_finished(),
        "the first notify waits until every view it touched is refreshed"
    );

    gate.add_permits(1);
    both.await.unwrap().unwrap();
    assert_ne!(
        next().await.view_id,
        fast_view,
        "then the slow view's diff arrives"
    );
    assert_eq!(slow_calls.load(Ordering::SeqCst), 2);
}

// One thread: the test runs only while the engine waits, never halfway
// through handling a batch.
#[tokio::test(flavor = "current_thread")]
async fn a_patch_reaches_a_view_whose_evaluation_read_the_old_row() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;
    // The "database": whether row 2 is in the view, and its title.
    let db = Arc::new(Mutex::new((false, "old".to_string())));
    // Evaluations after the first block on the gate once they have read.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicI64::new(0));
    let (d, g, c) = (db.clone(), gate.clone(), calls.clone());
    let mut graph = GraphDef::new("g", move |_: Scope, _: Params| {
        let (db, gate, calls) = (d.clone(), g.clone(), c.clone());
        async move {
            let (with_two, title) = db.lock().unwrap().clone();
            if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                gate.acquire().await.unwrap().forget();
            }
            let mut r = GraphResult::new();
            for id in ["1", "2"].into_iter().filter(|id| *id == "1" || with_two) {
                let mut f = Fields::new();
                f.insert("title".into(), Value::from(title.as_str()));
                r.add_row("t", id, f);
                r.add_ref(Ref::new("t", id));
            }
            Ok(r)
        }
    });
    graph.deps = vec![TableDep::all("t")];
    graph.patchable = BTreeMap::from([("t".to_string(), BTreeSet::from(["title".into()]))]);
    let mut reg = Registry::new();
    reg.register(graph).unwrap();
    let engine = Engine::new(reg, EngineConfig::default());
    let session = engine.open_session(Identity::new("user", "ws"));
    let view = engine
        .subscribe(&session, "g", HashMap::new(), None, |_| None)
        .await
        .unwrap()
        .view_id;

    // Row 2 joins the view; the evaluation reads it, then stalls.
    db.lock().unwrap().0 = true;
    let batches = engine.stats().batches;
    let e = engine.clone();
    let joined = tokio::spawn(async move { e.notify(vec![Change::table("t")]).await });
    while calls.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Meanwhile row 2's title changes, reported with its new value.
    db.lock().unwrap().1 = "new".into();
    let mut patch = Change::row("t", "2", ["title"]);
    let mut values = Fields::new();
    values.insert("title".into(), Value::from("new"));
    patch.values = Some(values);
    let e = engine.clone();
    let patched = tokio::spawn(async move { e.notify(vec![patch]).await });
    // The patch must reach the view while its evaluation is stalled. The
    // engine counts, routes and schedules a batch in one step, so once the
    // patch's batch is counted it waits on the view.
    while engine.stats().batches < batches + 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    gate.add_permits(100);
    joined.await.unwrap().unwrap();
    patched.await.unwrap().unwrap();

    // Replay the session's frames: row 2 must show the new title. Both
    // notifies returned, so every frame they caused is queued already.
    let mut title = None;
    while let Some(Some(item)) = session.next().now_or_never() {
        let Outbound::Frame(f, _) = item else {
            continue;
        };
        assert_eq!(f.view_id, view);
        let rows = match &f.body {
            arcana::engine::FrameBody::Snapshot(s) => s.rows.clone(),
            arcana::engine::FrameBody::Diff(d) => {
                for (k, ops) in &d.patches {
                    if k.id.as_ref() == "2" {
                        for op in ops {
                            if op.path == "/title" {
                                title = op.value.clone();
                            }
                        }
                    }
                }
                d.rows.clone()
            }
            arcana::engine::FrameBody::Error(e) => panic!("{e}"),
        };
        for (k, f) in rows {
            if k.id.as_ref() == "2" {
                title = f.get("title").cloned();
            }
        }
    }
    assert_eq!(
        title,
        Some(Value::from("new")),
        "the evaluation brought row 2 in with its old title; the patch must follow it"
    );
}
