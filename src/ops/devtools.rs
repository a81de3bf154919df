//! DevTools: a page on the admin listener (`/devtools`) showing graphs,
//! live views, sessions, the WAL position, a feed of recent change batches
//! and frames, and mutations, kept current by a server stream.
//!
//! The page itself carries no data. Its data endpoints take the same bearer
//! tokens as the gRPC service and need `arcana:admin`; such a token sees its
//! own workspace only, unless it also holds `arcana:global-admin`.
//!
//! - `GET /devtools/api/snapshot`: the data, as JSON.
//! - `GET /devtools/api/stream`: Server-Sent Events, a `snapshot` event
//!   whenever the data changed (at most every [`THROTTLE`]). At most
//!   `admin.devtools_streams` at once; each ends after
//!   `admin.devtools_stream_secs` and the page reconnects.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value as Json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::admin::{text, AdminState, Body, PLAIN};
use super::slot;
use crate::auth::{ADMIN_PERMISSION, GLOBAL_ADMIN_PERMISSION};
use crate::config::AdminConfig;
use crate::engine::stats::{Event, EventKind};
use crate::engine::{Engine, EngineStats, Identity};

/// Shortest time between two snapshots on one stream: bursts coalesce.
pub const THROTTLE: Duration = Duration::from_millis(250);

/// A quiet stream re-reads the data (the WAL position moves on its own)
/// and sends a keepalive this often.
const QUIET: Duration = Duration::from_secs(5);

/// Longest wait for the replication slot's numbers.
const SLOT_WAIT: Duration = Duration::from_secs(1);

const PAGE: &str = include_str!("devtools/index.html");

/// The live-stream budget of one admin listener.
pub struct Streams {
    permits: Arc<Semaphore>,
    lifetime: Duration,
}

impl Streams {
    /// From `admin.devtools_streams` and `admin.devtools_stream_secs`.
    pub fn new(cfg: &AdminConfig) -> Self {
        Streams {
            permits: Arc::new(Semaphore::new(cfg.devtools_streams)),
            lifetime: Duration::from_secs(cfg.devtools_stream_secs.max(1)),
        }
    }

    /// How long a stream stays open.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// Answers a request under `/devtools`.
pub async fn route<B>(
    state: &Arc<AdminState>,
    streams: &Arc<Streams>,
    streaming: &AtomicBool,
    req: &Request<B>,
) -> Response<Body> {
    match req.uri().path() {
        "/devtools" | "/devtools/" => text(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        "/devtools/api/snapshot" => match authorize(state, req).await {
            Ok(who) => text(
                StatusCode::OK,
                "application/json",
                snapshot(state, &who).await.to_string(),
            ),
            Err(r) => r,
        },
        "/devtools/api/stream" => {
            let who = match authorize(state, req).await {
                Ok(who) => who,
                Err(r) => return r,
            };
            let Ok(permit) = streams.permits.clone().try_acquire_owned() else {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "too many DevTools streams are open (admin.devtools_streams); close one\n"
                        .into(),
                );
            };
            streaming.store(true, Ordering::Release);
            stream(state.clone(), who, permit, streams.lifetime)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /devtools, /devtools/api/snapshot or /devtools/api/stream\n".into(),
        ),
    }
}

/// Who asks, and which workspace they may see (`None`: every one).
#[derive(Clone)]
pub struct Viewer {
    identity: Identity,
    workspace: Option<Arc<str>>,
}

fn refuse(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = text(status, PLAIN, format!("{msg}\n"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// The bearer token's identity, if it may use DevTools.
async fn authorize<B>(state: &AdminState, req: &Request<B>) -> Result<Viewer, Response<Body>> {
    let Some(auth) = &state.auth else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "DevTools is off: this server has no authenticator",
        ));
    };
    let header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "missing `Authorization: Bearer <token>`",
            )
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be `Bearer <token>`",
            )
        })?;
    let identity = auth
        .authenticate(token.trim())
        .await
        .map_err(|m| refuse(StatusCode::UNAUTHORIZED, &m))?
        .identity;
    let workspace = if identity.has_permission(GLOBAL_ADMIN_PERMISSION) {
        None
    } else if identity.has_permission(ADMIN_PERMISSION) {
        Some(identity.workspace_id.clone())
    } else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!("DevTools needs the `{ADMIN_PERMISSION}` permission (its workspace) or `{GLOBAL_ADMIN_PERMISSION}` (every workspace)"),
        ));
    };
    Ok(Viewer {
        identity,
        workspace,
    })
}

/// Stops the feed recording when the stream ends.
struct Watching(Engine);

impl Watching {
    fn new(engine: &Engine) -> Self {
        engine.feed().watch();
        Watching(engine.clone())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.feed().unwatch();
    }
}

struct Live {
    state: Arc<AdminState>,
    who: Viewer,
    deadline: Instant,
    /// The feed's sequence number when the last snapshot was taken.
    seen: Option<u64>,
    /// Take a snapshot even if the sequence did not move.
    refresh: bool,
    last: String,
    _permit: OwnedSemaphorePermit,
    _watching: Watching,
}

fn stream(
    state: Arc<AdminState>,
    who: Viewer,
    permit: OwnedSemaphorePermit,
    lifetime: Duration,
) -> Response<Body> {
    let live = Live {
        _watching: Watching::new(&state.engine),
        state,
        who,
        deadline: Instant::now() + lifetime,
        seen: None,
        refresh: true,
        last: String::new(),
        _permit: permit,
    };
    let events = futures_util::stream::unfold(live, next_event);
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(StreamBody::new(events).boxed_unsync())
        .expect("static parts are valid")
}

type Chunk = Result<http_body::Frame<Bytes>, Infallible>;

fn chunk(s: String) -> Chunk {
    Ok(http_body::Frame::data(Bytes::from(s)))
}

/// The stream's next piece: a changed snapshot, or a keepalive after a
/// quiet spell; `None` at the deadline.
async fn next_event(mut live: Live) -> Option<(Chunk, Live)> {
    let mut first = live.seen.is_none();
    loop {
        let now = Instant::now();
        if now >= live.deadline {
            return None;
        }
        let state = live.state.clone();
        let feed = state.engine.feed();
        let changed = feed.changed();
        tokio::pin!(changed);
        // Registered before reading the sequence: no touch slips between.
        changed.as_mut().enable();
        let seq = feed.seq();
        if live.refresh || live.seen != Some(seq) {
            if !first {
                tokio::time::sleep(THROTTLE).await;
            }
            first = false;
            let keepalive = std::mem::take(&mut live.refresh);
            live.seen = Some(feed.seq());
            let body = snapshot(&state, &live.who).await.to_string();
            if body != live.last {
                let out = format!("event: snapshot\ndata: {body}\n\n");
                live.last = body;
                return Some((chunk(out), live));
            }
            if keepalive {
                return Some((chunk(": quiet\n\n".into()), live));
            }
            continue;
        }
        let until = live.deadline.min(now + QUIET);
        if tokio::time::timeout_at(until.into(), changed)
            .await
            .is_err()
        {
            live.refresh = true;
        }
    }
}

fn ms(t: Option<std::time::SystemTime>) -> Json {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| json!(d.as_millis() as u64))
        .unwrap_or(Json::Null)
}

/// Everything the page shows, as `who` may see it.
pub async fn snapshot(state: &AdminState, who: &Viewer) -> Json {
    let engine = &state.engine;
    let stats = match &who.workspace {
        None => engine.stats(),
        Some(w) => engine.workspace_stats(w),
    };
    json!({
        "viewer": {
            "user": &*who.identity.user_id,
            "workspace": &*who.identity.workspace_id,
            "all_workspaces": who.workspace.is_none(),
            "scope": scope(who),
        },
        "counters": counters(&stats, who.workspace.is_none()),
        "graphs": graphs(engine),
        "mutations": mutations(engine),
        "views": stats.view_info.iter().map(|v| json!({
            "id": format!("{}/{}", v.graph, v.params_hash),
            "graph": &*v.graph,
            "params": &v.params,
            "workspace": &*v.workspace_id,
            "user": v.user_id.as_deref(),
            "version": v.version,
            "subscribers": v.subscribers,
            "evaluations": v.evaluations,
            "refs": v.refs,
            "last_evaluated_ms": ms(v.last_evaluated),
            "last_error": v.last_error,
        })).collect::<Vec<_>>(),
        "sessions": stats.session_info.iter().map(|s| json!({
            // Enough to tell sessions apart; the full id is not shown.
            "id": s.id.get(..8).unwrap_or(&s.id),
            "user": &*s.identity.user_id,
            "workspace": &*s.identity.workspace_id,
            "role": &s.identity.role,
            "queued": s.queued,
            "resyncs": s.resyncs,
            "subscriptions": s.subscriptions,
        })).collect::<Vec<_>>(),
        "wal": wal(state).await,
        "feed": engine.feed().recent().iter().rev()
            .filter(|e| visible(e, who.workspace.as_deref()))
            .map(event).collect::<Vec<_>>(),
        "feed_skipped": engine.feed().skipped(),
    })
}

/// What the page shows, in words: `all workspaces` or `workspace W`.
fn scope(who: &Viewer) -> String {
    match &who.workspace {
        None => "all workspaces".into(),
        Some(w) => format!("workspace {w}"),
    }
}

/// The counters of the viewer's scope. The engine keeps rounds, patches,
/// errors, changes, batches, frames and resyncs for all workspaces together,
/// so a workspace admin gets none of them: a `0` there would read as
/// "nothing happened" next to a feed full of frames.
fn counters(s: &EngineStats, all_workspaces: bool) -> Json {
    let mut c = json!({
        "sessions": s.sessions,
        "views": s.views,
        "subscriptions": s.subscriptions,
        "store_rows": s.store_rows,
        "evaluations": s.evaluations,
        "session_queue_max": s.session_queue_max,
        "session_queue_total": s.session_queue_total,
    });
    if all_workspaces {
        let global = json!({
            "evaluation_rounds": s.evaluation_rounds,
            "patches": s.patches,
            "eval_errors": s.eval_errors,
            "changes": s.changes,
            "batches": s.batches,
            "frames": s.frames,
            "resyncs": s.resyncs,
        });
        if let (Some(c), Json::Object(g)) = (c.as_object_mut(), global) {
            c.extend(g);
        }
    }
    c
}

fn params(schema: &crate::engine::ParamSchema) -> Json {
    schema
        .iter()
        .map(|(name, p)| {
            json!({
                "name": name,
                "type": format!("{:?}", p.ty).to_lowercase(),
                "required": p.required,
            })
        })
        .collect()
}

fn graphs(engine: &Engine) -> Json {
    engine
        .registry()
        .graphs()
        .map(|g| {
            json!({
                "name": g.name,
                "description": g.description,
                "params": params(&g.params),
                "deps": g.deps.iter().map(|d| json!({"table": d.table, "columns": d.columns})).collect::<Vec<_>>(),
                "routes": g.routes.iter().map(|r| json!({"table": r.table, "column": r.column, "param": r.param})).collect::<Vec<_>>(),
                "patchable": g.patchable,
                "per_user": g.per_user,
                "permissions": g.permissions,
            })
        })
        .collect()
}

fn mutations(engine: &Engine) -> Json {
    engine
        .registry()
        .mutations()
        .map(|m| {
            json!({
                "name": m.name,
                "description": m.description,
                "params": params(&m.params),
                "permissions": m.permissions,
                "changes": m.changes.iter().map(|d| &d.table).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The replication slot's position and lag (WAL mode), as `/metrics` reads them.
async fn wal(state: &AdminState) -> Json {
    let Some(name) = &state.slot else {
        return json!({"mode": "not WAL"});
    };
    match tokio::time::timeout(SLOT_WAIT, slot::status(state.readiness.pool(), name)).await {
        Ok(Ok(Some(s))) => json!({
            "mode": "WAL",
            "slot": s.name,
            "active": s.active,
            "confirmed_flush": s.confirmed_flush,
            "lag_bytes": s.lag_bytes,
            "retained_bytes": s.retained_bytes,
        }),
        Ok(Ok(None)) => json!({"mode": "WAL", "slot": name, "error": "the slot does not exist"}),
        Ok(Err(e)) => json!({"mode": "WAL", "slot": name, "error": e}),
        Err(_) => {
            json!({"mode": "WAL", "slot": name, "error": "the database did not answer in time"})
        }
    }
}

/// Whether a viewer limited to `workspace` may see `e`: a frame of its
/// workspace, or a batch known to touch its workspace only.
fn visible(e: &Event, workspace: Option<&str>) -> bool {
    let Some(mine) = workspace else {
        return true;
    };
    match &e.kind {
        EventKind::Frame { workspace, .. } => &**workspace == mine,
        EventKind::Batch { workspaces, .. } => workspaces.len() == 1 && workspaces[0] == mine,
    }
}

fn event(e: &Event) -> Json {
    match &e.kind {
        EventKind::Batch {
            changes,
            tables,
            workspaces,
            views,
        } => json!({
            "at_ms": e.at_ms,
            "kind": "batch",
            "changes": changes,
            "tables": tables,
            "workspaces": workspaces,
            "views": views,
        }),
        EventKind::Frame {
            view,
            workspace,
            version,
            subscribers,
        } => json!({
            "at_ms": e.at_ms,
            "kind": "frame",
            "view": &**view,
            "workspace": &**workspace,
            "version": version,
            "subscribers": subscribers,
        }),
    }
}
