//! Live windows over an ordered graph: keyset slices that stay equal to the
//! graph's SQL with the same cursor and limit, re-anchoring in place, and
//! snapshots in parts.

mod common;

use std::collections::{BTreeSet, HashMap};

use arcana::client::ViewState;
use arcana::proto as pb;
use common::*;

const BIG: i64 = 10;

/// Project 10 with `n` tasks at positions 10, 20, 30, ... (ids in order).
async fn seed(h: &Harness, n: i64) {
    h.sql(&format!(
        "INSERT INTO projects (id, workspace_id, name, owner_id) VALUES ({BIG}, 'acme', 'Big', 'alice');
         INSERT INTO tasks (workspace_id, project_id, title, position)
         SELECT 'acme', {BIG}, 'task ' || g, g * 10 FROM generate_series(1, {n}) g;"
    ))
    .await;
}

fn big() -> HashMap<String, pb::Value> {
    project(BIG)
}

fn window(limit: u32, cursor: Option<(i64, i64)>, dir: pb::WindowDirection) -> pb::Window {
    pb::Window {
        limit,
        cursor: cursor
            .map(|(p, id)| vec![int(p), int(id)])
            .unwrap_or_default(),
        direction: dir as i32,
        inclusive: false,
    }
}

/// The window's task ids and edges straight from SQL.
async fn expected(h: &Harness, w: &pb::Window) -> (Vec<String>, bool, bool) {
    let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = c
        .query(
            "SELECT id, position FROM tasks WHERE project_id = $1 ORDER BY position, id",
            &[&BIG],
        )
        .await
        .unwrap();
    let all: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.get::<_, i32>(1) as i64, r.get::<_, i64>(0)))
        .collect();
    let cursor = match w.cursor.as_slice() {
        [pb::Value {
            kind: Some(pb::value::Kind::Int(p)),
        }, pb::Value {
            kind: Some(pb::value::Kind::Int(id)),
        }] => Some((*p, *id)),
        _ => None,
    };
    let limit = w.limit as usize;
    let (from, to) = match (pb::WindowDirection::try_from(w.direction).unwrap(), cursor) {
        (pb::WindowDirection::Before, None) => (all.len().saturating_sub(limit), all.len()),
        (pb::WindowDirection::Before, Some(c)) => {
            let end = all.partition_point(|k| if w.inclusive { *k <= c } else { *k < c });
            (end.saturating_sub(limit), end)
        }
        (pb::WindowDirection::Around, Some(c)) => {
            let at = all.partition_point(|k| *k < c);
            let before = limit / 2;
            let start = at.saturating_sub(before);
            (start, (at + limit - before).min(all.len()))
        }
        (_, None) => (0, limit.min(all.len())),
        (_, Some(c)) => {
            let start = all.partition_point(|k| if w.inclusive { *k < c } else { *k <= c });
            (start, (start + limit).min(all.len()))
        }
    };
    let ids = all[from..to].iter().map(|(_, id)| id.to_string()).collect();
    (ids, from > 0, to < all.len())
}

/// A small seeded generator (xorshift), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn range(&mut self, r: std::ops::Range<i64>) -> i64 {
        r.start + (self.next() % (r.end - r.start) as u64) as i64
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn ids(v: &ViewState) -> Vec<String> {
    v.refs.iter().map(|r| r.key.id.to_string()).collect()
}

fn edges(v: &ViewState) -> (bool, bool) {
    let w = v.window.expect("a windowed view has edges");
    (w.has_before, w.has_after)
}

async fn assert_window(h: &Harness, v: &ViewState, w: &pb::Window) {
    let (want, before, after) = expected(h, w).await;
    assert_eq!(ids(v), want, "window {w:?}");
    assert_eq!(edges(v), (before, after), "edges of window {w:?}");
}

/// The position and id of task `id`.
async fn key_of(h: &Harness, id: i64) -> (i64, i64) {
    (
        h.query_i64(&format!("SELECT position::int8 FROM tasks WHERE id = {id}"))
            .await,
        id,
    )
}

async fn first_id(h: &Harness) -> i64 {
    h.query_i64(&format!(
        "SELECT min(id) FROM tasks WHERE project_id = {BIG}"
    ))
    .await
}

#[tokio::test]
async fn windows_equal_the_sql_slice_with_their_edges() {
    let h = Harness::start().await;
    seed(&h, 300).await;
    let base = first_id(&h).await;
    let mid = key_of(&h, base + 149).await;
    use pb::WindowDirection::*;
    let cases = [
        window(20, None, After),
        window(20, None, Before),
        window(20, Some(mid), After),
        window(20, Some(mid), Before),
        window(21, Some(mid), Around),
        pb::Window {
            inclusive: true,
            ..window(20, Some(mid), After)
        },
        pb::Window {
            inclusive: true,
            ..window(20, Some(mid), Before)
        },
        // Past the end, and a cursor between rows.
        window(20, Some((99_999, 0)), After),
        window(5, Some((15, 0)), Around),
    ];
    for w in cases {
        let v = h
            .fresh_window("dev-alice", "task_window", big(), w.clone())
            .await;
        assert_window(&h, &v, &w).await;
    }
    // No window: the graph's default, the first 50.
    let v = h.fresh("dev-alice", "task_window", big()).await;
    assert_window(&h, &v, &window(50, None, After)).await;
}

#[tokio::test]
async fn the_same_window_shares_one_view() {
    let h = Harness::start().await;
    seed(&h, 100).await;
    let mut a = h.live("dev-alice").await;
    let mut b = h.live("dev-bob").await;
    let w = window(
        10,
        Some((200, first_id(&h).await + 19)),
        pb::WindowDirection::After,
    );
    let va = a
        .subscribe_window("task_window", big(), Some(w.clone()))
        .await
        .unwrap();
    let vb = b
        .subscribe_window("task_window", big(), Some(w.clone()))
        .await
        .unwrap();
    assert_eq!(va.view_id, vb.view_id);
    assert_eq!(va.epoch, vb.epoch);
    let other = a
        .subscribe_window("task_window", big(), Some(pb::Window { limit: 11, ..w }))
        .await
        .unwrap();
    assert_ne!(other.view_id, va.view_id, "another limit is another view");
    assert_eq!(h.app().engine.stats().views, 2);
}

#[tokio::test]
async fn bad_windows_get_precise_errors() {
    let h = Harness::start().await;
    seed(&h, 10).await;
    let mut l = h.live("dev-alice").await;
    let check = |e: pb::Error, code: tonic::Code, text: &str| {
        assert_eq!(e.code, code as i32, "{e:?}");
        assert!(e.message.contains(text), "{e:?}");
    };
    let e = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(0, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap_err();
    check(e, tonic::Code::InvalidArgument, "at least 1");
    let e = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(5001, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap_err();
    check(e, tonic::Code::InvalidArgument, "max_limit of 5000");
    let e = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(5, None, pb::WindowDirection::Around)),
        )
        .await
        .unwrap_err();
    check(e, tonic::Code::InvalidArgument, "needs a cursor");
    let bad_kind = pb::Window {
        cursor: vec![text("ten"), int(1)],
        ..window(5, None, pb::WindowDirection::After)
    };
    let e = l
        .subscribe_window("task_window", big(), Some(bad_kind))
        .await
        .unwrap_err();
    check(e, tonic::Code::InvalidArgument, "`position`) must be a int");
    let e = l
        .subscribe_window(
            "project_tasks",
            project(1),
            Some(window(5, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap_err();
    check(e, tonic::Code::InvalidArgument, "declares no window order");
    let plain = l.subscribe("project_tasks", project(1)).await.unwrap();
    let e = l
        .reanchor(&plain.view_id, window(5, None, pb::WindowDirection::After))
        .await
        .unwrap_err();
    check(
        e,
        tonic::Code::InvalidArgument,
        "only windowed views re-anchor",
    );
    let e = l
        .reanchor(
            "task_window/nope",
            window(5, None, pb::WindowDirection::After),
        )
        .await
        .unwrap_err();
    check(e, tonic::Code::NotFound, "not subscribed");
    // Moving onto a window the session already holds.
    let a = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(3, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap();
    let b = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(4, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap();
    let e = l
        .reanchor(&b.view_id, window(3, None, pb::WindowDirection::After))
        .await
        .unwrap_err();
    check(e, tonic::Code::AlreadyExists, &a.view_id);
}

#[tokio::test]
async fn reanchor_moves_the_window_in_place_with_one_diff() {
    let h = Harness::wal().await;
    seed(&h, 200).await;
    let base = first_id(&h).await;
    let mut l = h.live("dev-alice").await;
    let first = window(10, None, pb::WindowDirection::After);
    let s = l
        .subscribe_window("task_window", big(), Some(first))
        .await
        .unwrap();
    let id = s.view_id.clone();
    let held: BTreeSet<String> = ids(l.view(&id)).into_iter().collect();

    // Slide by five: half the rows are held already and must not be resent.
    let cursor = key_of(&h, base + 4).await;
    let to = window(10, Some(cursor), pb::WindowDirection::After);
    let frames_before = l.frames.len();
    let r = l.reanchor(&id, to.clone()).await.unwrap();
    assert_eq!(r.view_id, id, "the subscription keeps its id");
    assert_eq!((r.prev_epoch, r.prev_version), (s.epoch, s.version));
    let diffs: Vec<&pb::ViewFrame> = l.frames[frames_before..]
        .iter()
        .filter(|f| f.view_id == id)
        .collect();
    assert_eq!(diffs.len(), 1, "one frame moves the window");
    let Some(pb::view_frame::Body::Diff(d)) = &diffs[0].body else {
        panic!("a re-anchor sends a diff, not a snapshot: {:?}", diffs[0])
    };
    assert_eq!(diffs[0].prev_epoch, s.epoch);
    let sent: BTreeSet<String> = d.rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(sent.len(), 5, "only the five new rows travel: {sent:?}");
    assert!(sent.is_disjoint(&held));
    assert!(d.window.is_some(), "a re-anchor diff carries the edges");
    assert_window(&h, l.view(&id), &to).await;

    // The moved window stays live under its first id.
    let inside = base + 7;
    h.sql(&format!(
        "UPDATE tasks SET title = 'moved' WHERE id = {inside}"
    ))
    .await;
    l.wait_field(&id, "tasks", &inside.to_string(), "title", "moved")
        .await;
    h.sql(&format!("DELETE FROM tasks WHERE id = {}", base + 6))
        .await;
    let want = expected(&h, &to).await.0;
    l.wait_until(&id, |v| ids(v) == want).await;
    assert_window(&h, l.view(&id), &to).await;

    // A far jump: nothing in common, flat cost, and back to the start.
    let far = window(
        10,
        Some(key_of(&h, base + 180).await),
        pb::WindowDirection::Before,
    );
    l.reanchor(&id, far.clone()).await.unwrap();
    assert_window(&h, l.view(&id), &far).await;
    let start = window(10, None, pb::WindowDirection::After);
    l.reanchor(&id, start.clone()).await.unwrap();
    assert_window(&h, l.view(&id), &start).await;
    let fresh = h
        .fresh_window("dev-alice", "task_window", big(), start)
        .await;
    assert_eq!(l.view(&id).content(), fresh.content());

    // Unsubscribing by the first id lets go of the view it shows now.
    l.unsubscribe(&id).await.unwrap();
    l.ping().await;
    assert_eq!(h.app().engine.stats().views, 0);
}

#[tokio::test]
async fn a_reanchored_window_resumes_with_sync() {
    let h = Harness::wal().await;
    seed(&h, 100).await;
    let base = first_id(&h).await;
    let mut l = h.live("dev-alice").await;
    let s = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(10, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap();
    let to = window(
        10,
        Some(key_of(&h, base + 40).await),
        pb::WindowDirection::After,
    );
    l.reanchor(&s.view_id, to.clone()).await.unwrap();
    let held = l.view(&s.view_id).clone();
    // Someone else keeps the new window alive while this client is away.
    let mut keeper = h.live("dev-bob").await;
    let kept = keeper
        .subscribe_window("task_window", big(), Some(to.clone()))
        .await
        .unwrap();
    drop(l);
    h.sql(&format!(
        "UPDATE tasks SET title = 'away' WHERE id = {}",
        base + 45
    ))
    .await;
    keeper
        .wait_field(
            &kept.view_id,
            "tasks",
            &(base + 45).to_string(),
            "title",
            "away",
        )
        .await;
    let mut back = h.live("dev-alice").await;
    // The catch-up arrives ahead of the reply, under the shared view's id.
    back.views.insert(kept.view_id.clone(), held.clone());
    let r = back
        .sync(vec![pb::SyncView {
            graph: "task_window".into(),
            params: big(),
            epoch: held.epoch,
            version: held.version,
            window: Some(to.clone()),
        }])
        .await;
    let res = &r.results[0];
    assert!(res.error.is_none(), "{res:?}");
    assert_eq!(res.view_id, kept.view_id);
    assert_eq!(res.mode, pb::SyncMode::CatchUp as i32, "{res:?}");
    back.wait_field(
        &res.view_id,
        "tasks",
        &(base + 45).to_string(),
        "title",
        "away",
    )
    .await;
    assert_window(&h, back.view(&res.view_id), &to).await;
}

/// Random inserts, deletes and moves around a window's edges, with the
/// window re-anchored now and then: it always ends equal to the SQL.
#[tokio::test]
async fn a_window_stays_exact_under_writes_around_its_edges() {
    let h = Harness::wal().await;
    seed(&h, 120).await;
    let base = first_id(&h).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut l = h.live("dev-alice").await;
    let mut w = window(
        15,
        Some(key_of(&h, base + 50).await),
        pb::WindowDirection::After,
    );
    let id = l
        .subscribe_window("task_window", big(), Some(w.clone()))
        .await
        .unwrap()
        .view_id;
    for round in 0..30 {
        // Positions near the window's edges: 500 and 650 or so.
        let near = |rng: &mut Rng| {
            let edge = if rng.coin() { 510 } else { 660 };
            edge + rng.range(-25..25)
        };
        let mut sql = String::new();
        for _ in 0..rng.range(1..4) {
            match rng.range(0..3) {
                0 => sql.push_str(&format!(
                    "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', {BIG}, 'new', {});",
                    near(&mut rng)
                )),
                1 => sql.push_str(&format!(
                    "DELETE FROM tasks WHERE id = (SELECT id FROM tasks WHERE project_id = {BIG} AND position BETWEEN {} AND 700 ORDER BY position LIMIT 1);",
                    near(&mut rng)
                )),
                _ => sql.push_str(&format!(
                    "UPDATE tasks SET position = {} WHERE id = (SELECT id FROM tasks WHERE project_id = {BIG} AND position >= {} ORDER BY position LIMIT 1);",
                    near(&mut rng),
                    near(&mut rng)
                )),
            }
        }
        h.sql(&sql).await;
        if round % 7 == 6 {
            // Re-anchor on a row that exists now.
            let anchor = h
                .query_i64(&format!(
                    "SELECT id FROM tasks WHERE project_id = {BIG} ORDER BY position, id OFFSET {} LIMIT 1",
                    rng.range(30..80)
                ))
                .await;
            w = window(
                rng.range(5..20) as u32,
                Some(key_of(&h, anchor).await),
                if rng.coin() {
                    pb::WindowDirection::After
                } else {
                    pb::WindowDirection::Around
                },
            );
            l.reanchor(&id, w.clone()).await.unwrap();
        }
        let (want, before, after) = expected(&h, &w).await;
        l.wait_until(&id, |v| {
            ids(v) == want && v.window.map(|e| (e.has_before, e.has_after)) == Some((before, after))
        })
        .await;
    }
    let fresh = h.fresh_window("dev-alice", "task_window", big(), w).await;
    assert_eq!(l.view(&id).content(), fresh.content());
}

#[tokio::test]
async fn a_big_snapshot_goes_out_in_parts_applied_as_one() {
    let h = Harness::with(|c| c.server.snapshot_part_bytes = 4096).await;
    seed(&h, 3000).await;
    let mut l = h.live("dev-alice").await;
    let w = window(2500, None, pb::WindowDirection::After);
    let s = l
        .subscribe_window("task_window", big(), Some(w.clone()))
        .await
        .unwrap();
    let parts: Vec<&pb::ViewFrame> = l.frames.iter().filter(|f| f.view_id == s.view_id).collect();
    assert!(parts.len() > 10, "{} parts", parts.len());
    for (i, p) in parts.iter().enumerate() {
        let Some(pb::view_frame::Body::Snapshot(snap)) = &p.body else {
            panic!("part {i} is not a snapshot")
        };
        assert_eq!(snap.more, i + 1 < parts.len(), "part {i}");
        assert_eq!(p.version, s.version);
    }
    assert_window(&h, l.view(&s.view_id), &w).await;
    assert!(l.view(&s.view_id).pending.is_none());
    // Small snapshots are still one frame.
    let before = l.frames.len();
    let small = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(5, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap();
    let n = l.frames[before..]
        .iter()
        .filter(|f| f.view_id == small.view_id)
        .count();
    assert_eq!(n, 1);
}

/// The window statement is answered from the order-key index with a
/// bounded scan however deep the cursor: the plan has no full sort and no
/// OFFSET, and reads about a window's worth of rows.
#[tokio::test]
async fn a_deep_cursor_reads_only_a_window_of_rows() {
    let h = Harness::start().await;
    seed(&h, 50_000).await;
    h.sql("ANALYZE tasks").await;
    let order = arcana::engine::WindowOrder {
        order: vec!["position".into(), "id".into()],
        descending: false,
        default_limit: 50,
        max_limit: 5000,
    };
    let inner = "SELECT t.id, t.title, t.status, t.position FROM tasks t WHERE t.workspace_id = $1 AND t.project_id = $2";
    let (c, conn) = tokio_postgres::connect(&h.db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let base = first_id(&h).await;
    for at in [1, 25_000, 49_990] {
        let key = key_of(&h, base + at - 1).await;
        let w = arcana::engine::Window {
            limit: 50,
            cursor: vec![
                arcana::engine::Value::Int(key.0),
                arcana::engine::Value::Int(key.1),
            ],
            direction: arcana::engine::Direction::After,
            inclusive: false,
        };
        let q = arcana::postgres::window_sql::build(inner, 2, &order, &w);
        let literal = |v: &arcana::engine::Value| match v {
            arcana::engine::Value::Int(i) => i.to_string(),
            other => panic!("{other:?}"),
        };
        let mut sql = q
            .sql
            .replace("$1", "'acme'")
            .replace("$2", &BIG.to_string());
        for (i, v) in q.binds.iter().enumerate().rev() {
            sql = sql.replace(&format!("${}", i + 3), &literal(v));
        }
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN (ANALYZE, FORMAT TEXT) {sql}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let text = plan.join("\n");
        assert!(text.contains("Index"), "{text}");
        assert!(
            !text.contains("Sort"),
            "a sort means every row was read:\n{text}"
        );
        // Rows read by the scans stay near the window's size.
        let scanned: u64 = plan
            .iter()
            .filter(|l| l.contains("Index Scan") || l.contains("Index Only Scan"))
            .filter_map(|l| l.split("rows=").nth(2))
            .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        assert!(
            scanned <= 60,
            "scanned {scanned} rows at cursor {at}:\n{text}"
        );
    }
}

/// A change of rows outside what a window last read does not evaluate it:
/// the WAL carries the rows' order keys, and each window knows the keys its
/// evaluation read, probe rows included.
#[tokio::test]
async fn a_write_far_from_a_window_does_not_evaluate_it() {
    let h = Harness::wal().await;
    seed(&h, 400).await;
    let base = first_id(&h).await;
    let mut l = h.live("dev-alice").await;
    let near = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(10, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap()
        .view_id;
    let far_cursor = key_of(&h, base + 300).await;
    let far = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(10, Some(far_cursor), pb::WindowDirection::After)),
        )
        .await
        .unwrap()
        .view_id;
    let evaluations = |h: &Harness| {
        let stats = h.app().engine.stats();
        let of = |id: &str| {
            stats
                .view_info
                .iter()
                .find(|v| id.ends_with(&*v.params_hash))
                .map(|v| v.evaluations)
                .unwrap()
        };
        (of(&near), of(&far))
    };
    // The seed's own changes may still be on their way through the WAL
    // (too many rows to carry keys: every window re-evaluates for them). A
    // write seen after them marks where the stream has got to.
    let first = window(10, None, pb::WindowDirection::After);
    h.sql(&format!(
        "UPDATE tasks SET position = 25 WHERE id = {}",
        base + 4
    ))
    .await;
    let want = expected(&h, &first).await.0;
    l.wait_until(&near, |v| ids(v) == want).await;
    let (near0, far0) = evaluations(&h);
    // Move a row inside the first window: only that window runs its query.
    let inside = base + 3;
    h.sql(&format!(
        "UPDATE tasks SET position = 15 WHERE id = {inside}"
    ))
    .await;
    let want = expected(&h, &first).await.0;
    l.wait_until(&near, |v| ids(v) == want).await;
    let (near1, far1) = evaluations(&h);
    assert!(near1 > near0, "the window holding the row re-evaluates");
    assert_eq!(far1, far0, "a window 300 rows away is not evaluated");
    // And the other way round, with a row entering the far window.
    h.sql(&format!(
        "INSERT INTO tasks (workspace_id, project_id, title, position) VALUES ('acme', {BIG}, 'late', {})",
        far_cursor.0 + 5
    ))
    .await;
    let to = window(10, Some(far_cursor), pb::WindowDirection::After);
    let want = expected(&h, &to).await.0;
    l.wait_until(&far, |v| ids(v) == want).await;
    let (near2, far2) = evaluations(&h);
    assert!(far2 > far1);
    assert_eq!(near2, near1, "the first window is not evaluated for it");
    assert_window(&h, l.view(&far), &to).await;
}

/// The unary calls a browser uses: a window subscribed on an OpenSession
/// stream and moved with the unary Reanchor; its diff arrives on the stream
/// under the first view id.
#[tokio::test]
async fn the_unary_reanchor_moves_a_window_of_an_open_session() {
    let h = Harness::start().await;
    seed(&h, 100).await;
    let base = first_id(&h).await;
    let mut c = h.client("dev-alice").await;
    let mut stream = c
        .open_session(pb::OpenSessionRequest {})
        .await
        .unwrap()
        .into_inner();
    let session_id = match stream.message().await.unwrap().unwrap().kind {
        Some(pb::server_message::Kind::Opened(o)) => o.session_id,
        other => panic!("{other:?}"),
    };
    let s = c
        .subscribe(pb::SubscribeRequest {
            graph: "task_window".into(),
            params: big(),
            session_id: session_id.clone(),
            window: Some(window(5, None, pb::WindowDirection::After)),
        })
        .await
        .unwrap()
        .into_inner();
    let mut state = ViewState::default();
    let read = |state: &mut ViewState, frames: Vec<pb::ViewFrame>| {
        for f in frames {
            assert_eq!(f.view_id, s.view_id);
            state.apply(&f).unwrap();
        }
    };
    let next = |m: pb::ServerMessage| match m.kind {
        Some(pb::server_message::Kind::Frame(f)) => vec![f],
        Some(pb::server_message::Kind::Frames(b)) => b.frames,
        _ => vec![],
    };
    while state.version < s.version {
        read(&mut state, next(stream.message().await.unwrap().unwrap()));
    }
    let to = window(
        5,
        Some(key_of(&h, base + 50).await),
        pb::WindowDirection::Around,
    );
    let r = c
        .reanchor(pb::ReanchorRequest {
            view_id: s.view_id.clone(),
            window: Some(to.clone()),
            session_id: session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.view_id, s.view_id);
    while !(state.epoch == r.epoch && state.version >= r.version) {
        read(&mut state, next(stream.message().await.unwrap().unwrap()));
    }
    assert_window(&h, &state, &to).await;
    // Another session's id is refused.
    let e = h
        .client("dev-alice")
        .await
        .reanchor(pb::ReanchorRequest {
            view_id: s.view_id.clone(),
            window: Some(to),
            session_id: "0".repeat(32),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());
}

/// A window direction this server does not know is INVALID_ARGUMENT, on
/// Subscribe, Reanchor and Sync, not read as AFTER.
#[tokio::test]
async fn an_unknown_window_direction_is_an_invalid_argument() {
    let h = Harness::start().await;
    seed(&h, 10).await;
    let mut l = h.live("dev-alice").await;
    let odd = |direction: i32| pb::Window {
        direction,
        ..window(5, None, pb::WindowDirection::After)
    };
    for d in [7, -1] {
        let e = l
            .subscribe_window("task_window", big(), Some(odd(d)))
            .await
            .unwrap_err();
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
        assert!(e.message.contains(&format!("direction {d}")), "{e:?}");
    }
    let v = l
        .subscribe_window(
            "task_window",
            big(),
            Some(window(5, None, pb::WindowDirection::After)),
        )
        .await
        .unwrap();
    let e = l.reanchor(&v.view_id, odd(7)).await.unwrap_err();
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
    let e = l
        .request(pb::client_message::Kind::Sync(pb::SyncRequest {
            views: vec![pb::SyncView {
                graph: "task_window".into(),
                params: big(),
                window: Some(odd(7)),
                ..Default::default()
            }],
            session_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
    assert!(e.message.contains("views[0]"), "{e:?}");
    // Unset still reads as AFTER.
    l.subscribe_window("task_window", big(), Some(odd(0)))
        .await
        .unwrap();
}
