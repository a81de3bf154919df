//! Reconnect and sync: exact catch-up within the history, snapshot beyond,
//! and slow sessions cut over to a resync.

mod common;

use arcana::proto::{self as pb, view_frame::Body, SyncMode};
use common::*;

async fn write_n(h: &Harness, n: usize) {
    let mut w = h.client("dev-alice").await;
    for i in 0..n {
        // Alternate structural and field-only changes.
        let req = if i % 2 == 0 {
            pb::MutateRequest {
                session_id: String::new(),
                mutation: "update_task".into(),
                params: params(&[("id", int(2)), ("title", text(&format!("Venue {i}")))]),
            }
        } else {
            pb::MutateRequest {
                session_id: String::new(),
                mutation: "move_task".into(),
                params: params(&[
                    ("id", int(3)),
                    ("position", int(if i % 4 == 1 { 0 } else { 9 })),
                ]),
            }
        };
        w.mutate(req).await.unwrap();
    }
}

/// A client that held project 1's view, went away while another kept the
/// view alive, missed `writes` versions, and came back with Sync. Returns
/// the new session, the view id, what the client held, and the reply.
async fn away_and_back(
    h: &Harness,
    writes: usize,
) -> (Live, String, arcana::client::ViewState, pb::SyncResponse) {
    let mut l = h.live("dev-alice").await;
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    let before = l.view(&s.view_id).clone();
    // Keep the view alive while the client is away (another subscriber).
    let mut keeper = h.live("dev-bob").await;
    keeper.subscribe("project_tasks", project(1)).await.unwrap();
    drop(l);

    write_n(h, writes).await;

    let mut back = h.live("dev-alice").await;
    let r = back
        .resume(&s.view_id, &before, "project_tasks", project(1))
        .await;
    drop(keeper);
    (back, s.view_id, before, r)
}

#[tokio::test]
async fn even_without_batching_a_catch_up_arrives_as_one_batch() {
    let h = Harness::with(|c| c.server.max_batch_bytes = 0).await;
    let (back, view_id, before, r) = away_and_back(&h, 3).await;
    assert_eq!(r.results[0].frames, 3);
    assert_eq!(back.frames.len(), 3);
    assert_eq!(back.batches, 1);
    assert_eq!(back.view(&view_id).version, before.version + 3);
}

#[tokio::test]
async fn a_client_that_missed_a_few_versions_catches_up_exactly() {
    let h = Harness::with(|c| c.engine.history_len = 8).await;
    let (back, view_id, before, r) = away_and_back(&h, 5).await;
    let res = &r.results[0];
    assert!(res.error.is_none(), "{res:?}");
    assert_eq!(res.mode, SyncMode::CatchUp as i32);
    assert_eq!(res.frames, 5);
    assert_eq!(res.version, before.version + 5);
    assert_eq!(back.view(&view_id).version, res.version);
    assert_eq!(
        back.batches, 1,
        "the missed diffs were queued together and arrive as one batch message"
    );
    assert!(
        back.frames
            .iter()
            .all(|f| matches!(f.body, Some(Body::Diff(_)))),
        "catch-up is diffs only"
    );
    assert!(
        back.frames.iter().any(
            |f| matches!(&f.body, Some(Body::Diff(d)) if d.refs.is_empty() && !d.patches.is_empty())
        ),
        "field-only updates are part of the catch-up"
    );
    assert_eq!(
        back.view(&view_id).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );

    // Up to date: nothing to send.
    let mut again = h.live("dev-alice").await;
    let v = back.view(&view_id).clone();
    let r = again
        .resume(&view_id, &v, "project_tasks", project(1))
        .await;
    assert_eq!(r.results[0].mode, SyncMode::Current as i32);
    assert!(again.frames.is_empty());
}

#[tokio::test]
async fn a_client_too_far_behind_gets_a_snapshot() {
    let h = Harness::with(|c| c.engine.history_len = 3).await;
    let mut l = h.live("dev-alice").await;
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    let before = l.view(&s.view_id).clone();
    let mut keeper = h.live("dev-bob").await;
    keeper.subscribe("project_tasks", project(1)).await.unwrap();
    drop(l);

    write_n(&h, 6).await;

    let mut back = h.live("dev-alice").await;
    let r = back
        .sync(vec![pb::SyncView {
            graph: "project_tasks".into(),
            params: project(1),
            epoch: before.epoch,
            version: before.version,
            window: None,
        }])
        .await;
    assert_eq!(r.results[0].mode, SyncMode::Snapshot as i32);
    assert_eq!(back.view(&s.view_id).version, before.version + 6);
    assert_eq!(
        back.view(&s.view_id).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}

#[tokio::test]
async fn a_view_that_was_dropped_and_recreated_answers_with_a_snapshot() {
    let h = Harness::start().await;
    let mut l = h.live("dev-alice").await;
    let s = l.subscribe("project_tasks", project(1)).await.unwrap();
    let before = l.view(&s.view_id).clone();
    drop(l); // the only subscriber: the view closes, its history is gone
    write_n(&h, 2).await;
    let mut back = h.live("dev-alice").await;
    let r = back
        .sync(vec![
            pb::SyncView {
                graph: "project_tasks".into(),
                params: project(1),
                epoch: before.epoch,
                version: before.version,
                window: None,
            },
            pb::SyncView {
                graph: "nope".into(),
                params: project(1),
                epoch: 1,
                version: 1,
                window: None,
            },
        ])
        .await;
    assert_eq!(
        r.results[0].mode,
        SyncMode::Snapshot as i32,
        "a new epoch never matches an old version"
    );
    assert_ne!(back.view(&s.view_id).epoch, before.epoch);
    assert_eq!(
        r.results[1].error.as_ref().unwrap().code,
        tonic::Code::NotFound as i32
    );
    assert_eq!(
        back.view(&s.view_id).content(),
        h.fresh("dev-alice", "project_tasks", project(1))
            .await
            .content()
    );
}

#[tokio::test]
async fn a_session_that_stops_reading_is_resynced_without_blocking_others() {
    let h = Harness::with(|c| c.engine.session_queue = 4).await;
    // A slow client: a tiny HTTP/2 window so the server's writes back up.
    let channel = tonic::transport::Endpoint::from_shared(h.endpoint())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let slow_client = arcana::proto::arcana_service_client::ArcanaServiceClient::with_interceptor(
        channel,
        Bearer("dev-alice".into()),
    );
    let mut slow = Live::connect(slow_client).await.unwrap();
    let s = slow.subscribe("project_tasks", project(1)).await.unwrap();
    let mut fast = h.live("dev-bob").await;
    fast.subscribe("project_tasks", project(1)).await.unwrap();

    // Many changes while the slow session does not read.
    let mut w = h.client("dev-alice").await;
    for i in 0..120 {
        w.mutate(pb::MutateRequest {
            session_id: String::new(),
            mutation: "update_task".into(),
            params: params(&[
                ("id", int(1)),
                ("title", text(&format!("{i} {}", "x".repeat(150)))),
            ]),
        })
        .await
        .unwrap();
    }
    // The fast session kept up the whole time.
    fast.ping().await;
    let current = h.fresh("dev-alice", "project_tasks", project(1)).await;
    assert_eq!(fast.view(&s.view_id).content(), current.content());
    assert!(
        h.app().engine.stats().resyncs >= 1,
        "the slow session fell behind: {:?}",
        h.app().engine.stats()
    );

    // The slow session reads again: it gets a snapshot and ends exact.
    slow.ping().await;
    assert!(
        slow.frames
            .iter()
            .filter(|f| matches!(f.body, Some(Body::Snapshot(_))))
            .count()
            >= 2,
        "initial + resync snapshot"
    );
    assert_eq!(slow.view(&s.view_id).content(), current.content());
    assert_eq!(slow.view(&s.view_id).version, current.version);
}
