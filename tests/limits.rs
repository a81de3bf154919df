//! Limits on what one peer can make the server hold: connections that send
//! nothing, sessions, views per Sync, unread replies, and echoed input.

mod common;

use std::time::{Duration, Instant};

use arcana::proto::{self as pb, client_message::Kind as Req, server_message::Kind as Msg};
use common::*;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn view(project_id: i64) -> pb::SyncView {
    pb::SyncView {
        graph: "project_tasks".into(),
        params: project(project_id),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_sync_naming_too_many_views_is_refused() {
    let h = Harness::with(|c| c.server.max_sync_views = 10).await;
    let mut l = h.live("dev-alice").await;
    let e = l
        .request(Req::Sync(pb::SyncRequest {
            views: (0..11).map(view).collect(),
            session_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted as i32, "{}", e.message);
    assert!(e.message.contains("server.max_sync_views"), "{}", e.message);
    // At the limit it works, and the session goes on.
    let r = l.sync((0..10).map(view).collect()).await;
    assert_eq!(r.results.len(), 10);
    // The unary call has the same limit.
    let mut c = h.client("dev-alice").await;
    let mut stream = c
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let Some(Msg::Opened(o)) = stream.message().await.unwrap().unwrap().kind else {
        panic!("opened first")
    };
    let e = c
        .sync(pb::SyncRequest {
            views: (0..11).map(view).collect(),
            session_id: o.session_id,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn echoed_input_is_cut_short() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let long = "g".repeat(200_000);
    let e = l.subscribe(&long, project(1)).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound as i32);
    assert!(e.message.len() < 1024, "{} bytes", e.message.len());
    assert!(e.message.contains("gggg…`"), "{}", e.message);
    // The same in every entry of a Sync.
    let r = l
        .sync(
            (0..5)
                .map(|_| pb::SyncView {
                    graph: long.clone(),
                    ..Default::default()
                })
                .collect(),
        )
        .await;
    for res in r.results {
        let m = res.error.expect("an error").message;
        assert!(m.len() < 1024, "{} bytes", m.len());
    }
    let e = h
        .client("dev-alice")
        .await
        .subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: long.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().len() < 1024);
}

#[tokio::test]
async fn notify_for_a_table_no_graph_reads_is_not_found() {
    let h = Harness::start().await;
    let mut c = h.client("dev-service").await;
    let e = c
        .notify(pb::NotifyRequest {
            changes: vec![pb::Change {
                table: "invoices".into(),
                id: "1".into(),
                columns: vec![],
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    assert!(e.message().contains("`invoices`"), "{}", e.message());
    c.notify(pb::NotifyRequest {
        changes: vec![pb::Change {
            table: "tasks".into(),
            id: "1".into(),
            columns: vec![],
        }],
    })
    .await
    .expect("a table a graph reads");
}

#[tokio::test]
async fn values_out_of_range_for_their_column_are_invalid_arguments() {
    let h = Harness::with_extra(
        "",
        r#"
[[mutations]]
name = "set_due"
permissions = ["tasks:write"]
sql = "UPDATE tasks SET due_at = :due WHERE id = :id AND workspace_id = :workspace_id RETURNING id"
changes = [{ table = "tasks", columns = ["due_at"], id = "id" }]

[mutations.params.id]
type = "int"
required = true

[mutations.params.due]
type = "timestamp"
required = true
"#,
        |_| {},
    )
    .await;
    let mut l = h.live("dev-alice").await;
    let e = l
        .mutate(
            "move_task",
            params(&[("id", int(1)), ("position", int(2_147_483_648))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
    assert!(e.message.contains("int4"), "{}", e.message);
    let ts = |seconds: i64| pb::Value {
        kind: Some(pb::value::Kind::Timestamp(prost_types::Timestamp {
            seconds,
            nanos: 0,
        })),
    };
    // 10,000 BC, before PostgreSQL's earliest timestamp.
    let e = l
        .mutate(
            "set_due",
            params(&[("id", int(1)), ("due", ts(-377_705_116_800))]),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
    assert!(e.message.contains("range"), "{}", e.message);
    l.mutate(
        "set_due",
        params(&[("id", int(1)), ("due", ts(1_700_000_000))]),
    )
    .await
    .expect("an ordinary time");
    assert_eq!(
        h.query_i64("SELECT position::int8 FROM tasks WHERE id = 1")
            .await,
        1,
        "nothing wrapped"
    );
}

#[tokio::test]
async fn sessions_are_capped_per_identity_and_in_total() {
    let h = Harness::with(|c| {
        c.server.max_sessions_per_identity = 2;
        c.server.max_sessions = 3;
    })
    .await;
    let a1 = h.live("dev-alice").await;
    let _a2 = h.live("dev-alice").await;
    let e = Live::connect(h.client("dev-alice").await)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("server.max_sessions_per_identity"),
        "{}",
        e.message()
    );
    let e = h
        .client("dev-alice")
        .await
        .open_session(pb::OpenSessionRequest {})
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let _b = h.live("dev-bob").await;
    let e = Live::connect(h.client("dev-carol").await)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("server.max_sessions"),
        "{}",
        e.message()
    );
    // Closing a session gives its slot back.
    drop(a1);
    let deadline = Instant::now() + WAIT;
    loop {
        match Live::connect(h.client("dev-carol").await).await {
            Ok(mut l) => {
                l.ping().await;
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot not released: {e}"),
        }
    }
}

/// A client that writes requests without reading replies is slowed down,
/// not disconnected: every reply arrives once it reads.
#[tokio::test]
async fn a_client_that_does_not_read_is_held_back_not_killed() {
    const PINGS: u64 = 5_000;
    let h = Harness::with(|c| c.engine.session_queue = 64).await;
    let mut c = h.client("dev-alice").await;
    let (tx, rx) = mpsc::channel(64);
    let mut stream = c
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let writer = tokio::spawn(async move {
        for id in 1..=PINGS {
            let ping = pb::ClientMessage {
                request_id: id,
                kind: Some(Req::Ping(pb::PingRequest {})),
            };
            if tx.send(ping).await.is_err() {
                return (id, tx);
            }
        }
        (PINGS, tx)
    });
    // Read nothing while the client writes as fast as it can.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut replies = 0u64;
    let mut next = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while replies < PINGS {
        assert!(Instant::now() < deadline, "only {replies} replies");
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a reply in time")
            .unwrap_or_else(|e| panic!("stream failed after {replies} replies: {e}"))
            .expect("stream open");
        match msg.kind {
            Some(Msg::Opened(_)) => {}
            Some(Msg::Reply(r)) => {
                assert_eq!(r.request_id, next, "replies in order");
                assert!(
                    matches!(r.result, Some(pb::reply::Result::Ping(_))),
                    "{r:?}"
                );
                next += 1;
                replies += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    let (sent, tx) = writer.await.unwrap();
    assert_eq!(sent, PINGS);
    // The session is still alive.
    tx.send(pb::ClientMessage {
        request_id: PINGS + 1,
        kind: Some(Req::Subscribe(pb::SubscribeRequest {
            graph: "project_tasks".into(),
            params: project(1),
            session_id: String::new(),
        })),
    })
    .await
    .unwrap();
    let msg = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(&msg.kind, Some(Msg::Reply(r)) if r.request_id == PINGS + 1),
        "{msg:?}"
    );
}

async fn describe_ok(c: &mut Client) -> Duration {
    let t = Instant::now();
    c.describe(pb::DescribeRequest {})
        .await
        .expect("describe answers");
    t.elapsed()
}

/// Connections that never send a request are closed after the timeout; past
/// the cap they wait in the backlog; a connected client keeps being served.
#[tokio::test]
async fn silent_connections_are_capped_and_closed() {
    const CAP: usize = 16;
    let h = Harness::with(|c| {
        c.server.max_connections = CAP;
        c.server.handshake_timeout_ms = 500;
    })
    .await;
    let mut live = h.client("dev-alice").await;
    describe_ok(&mut live).await;
    let addr = h.app().addr;
    let mut silent = Vec::new();
    for _ in 0..CAP * 3 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // The connected client is unaffected while the flood sits there.
    for _ in 0..5 {
        let took = describe_ok(&mut live).await;
        assert!(took < Duration::from_secs(1), "describe took {took:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each silent connection is closed after the timeout, those beyond the
    // cap once a slot frees; none stays open.
    let started = Instant::now();
    for (i, s) in silent.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the server's HTTP/2 preface
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "silent connection {i} still open");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed after the timeout, not at once ({took:?})"
    );
    // New clients are served again.
    let mut fresh = h.client("dev-bob").await;
    describe_ok(&mut fresh).await;
    describe_ok(&mut live).await;
}
