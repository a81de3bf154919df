//! The engine as a library, with Rust factories and no database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        .subscribe(&session, "slow", HashMap::new(), |_| None)
        .await
        .unwrap();
    let fast_view = engine
        .subscribe(&session, "fast", HashMap::new(), |_| None)
        .await
        .unwrap()
        .view_id;
    let next = || async {
        match tokio::time::timeout(Duration::from_secs(5), session.next())
            .await
            .expect("a frame in time")
        {
            Some(Outbound::Frame(f)) => f,
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
