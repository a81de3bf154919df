//! Requests on a session stream (`Connect`): each answered on the stream by
//! request id, and the conversions the unary calls share with them.

use std::sync::Arc;

use tonic::Status;

use super::codec::{Inbound, LazyViews};
use super::limits::Limits;
use crate::engine::{Change, Engine, QueueError, Session, Subscribed, SyncMode, SyncView};
use crate::ops::telemetry::SPANS;
use crate::proto::{self as pb, reply, server_message};
use crate::wire::convert::{encode_message, params_from_pb, window_from_pb};
use crate::wire::status::to_status;

pub(super) fn subscribed(s: &Subscribed) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        view_id: s.view_id.to_string(),
        epoch: s.epoch,
        version: s.version,
        params_hash: s.params_hash.to_string(),
    }
}

pub(super) fn sync_views(views: Vec<pb::SyncView>) -> Result<Vec<SyncView>, Status> {
    views
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = |e: Status| Status::new(e.code(), format!("views[{i}]: {}", e.message()));
            Ok(SyncView {
                graph: v.graph,
                params: params_from_pb(v.params).map_err(at)?,
                epoch: v.epoch,
                version: v.version,
                window: window_from_pb(v.window).map_err(at)?,
            })
        })
        .collect()
}

pub(super) async fn run_sync(
    engine: &Engine,
    session: &Arc<Session>,
    views: LazyViews,
    max_views: usize,
) -> Result<pb::SyncResponse, Status> {
    // Each view costs a result entry and an attach: cap the amplification.
    // Counted before decoding, which alone costs far more than the bytes.
    if views.count() > max_views {
        return Err(Status::resource_exhausted(format!(
            "Sync names {} views; at most {max_views} per request (server.max_sync_views): split it",
            views.count()
        )));
    }
    let views = views.decode()?;
    let results = engine
        .sync(session, sync_views(views)?)
        .await
        .into_iter()
        .map(|o| match o.result {
            Ok((mode, epoch, version)) => {
                let (mode, frames) = match mode {
                    SyncMode::CatchUp(n) => (pb::SyncMode::CatchUp, n),
                    SyncMode::Snapshot => (pb::SyncMode::Snapshot, 0),
                    SyncMode::Current => (pb::SyncMode::Current, 0),
                };
                pb::SyncResult {
                    view_id: o.view_id.to_string(),
                    mode: mode as i32,
                    epoch,
                    version,
                    error: None,
                    frames,
                }
            }
            Err(e) => pb::SyncResult {
                view_id: o.view_id.to_string(),
                error: Some(error_reply(&to_status(e))),
                ..Default::default()
            },
        })
        .collect();
    Ok(pb::SyncResponse { results })
}

pub(super) fn notify_changes(changes: Vec<pb::Change>) -> Result<Vec<Change>, Status> {
    if changes.is_empty() {
        return Err(Status::invalid_argument(
            "changes is empty: name at least one table",
        ));
    }
    changes
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            if c.table.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "changes[{i}].table is empty"
                )));
            }
            Ok(Change {
                table: c.table,
                id: c.id,
                columns: c.columns,
                workspace: (!c.workspace_id.is_empty()).then_some(c.workspace_id),
                ..Change::default()
            })
        })
        .collect()
}

/// `Some` session id for a span field, unless empty.
pub(super) fn session_field(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
}

/// The method of one request of a `Connect` stream, for its span.
pub(super) fn connect_method(msg: &pb::ClientMessage) -> &'static str {
    use pb::client_message::Kind;
    match &msg.kind {
        Some(Kind::Subscribe(_)) => "Connect/Subscribe",
        Some(Kind::Unsubscribe(_)) => "Connect/Unsubscribe",
        Some(Kind::Sync(_)) => "Connect/Sync",
        Some(Kind::Mutate(_)) => "Connect/Mutate",
        Some(Kind::Ping(_)) => "Connect/Ping",
        Some(Kind::Reanchor(_)) => "Connect/Reanchor",
        None => "Connect",
    }
}

/// Handles one request of the bidirectional stream, in a span of its own.
/// Errors end the stream.
#[tracing::instrument(
    target = SPANS, level = "debug", name = "rpc", skip_all,
    fields(otel.name = connect_method(&inbound.msg), rpc.method = connect_method(&inbound.msg), session.id = &*session.id),
)]
pub(super) async fn handle(
    engine: &Engine,
    session: &Arc<Session>,
    limits: &Limits,
    inbound: Inbound,
) -> Result<(), Status> {
    let Inbound { msg, views } = inbound;
    let rid = msg.request_id;
    let reply = |r: reply::Result| {
        encode_message(server_message::Kind::Reply(pb::Reply {
            request_id: rid,
            result: Some(r),
        }))
    };
    let error = |s: Status| reply(reply::Result::Error(error_reply(&s)));
    let out = match msg.kind {
        None => error(Status::invalid_argument(
            "empty ClientMessage: set one of subscribe, unsubscribe, sync, mutate or ping",
        )),
        Some(pb::client_message::Kind::Subscribe(req)) => {
            let (params, window) = match params_from_pb(req.params)
                .and_then(|p| Ok((p, window_from_pb(req.window)?)))
            {
                Ok(pw) => pw,
                Err(e) => return session.push_message(error(e)).map_err(queue_status),
            };
            let r = engine
                .subscribe(session, &req.graph, params, window, |s| {
                    Some(reply(reply::Result::Subscribe(subscribed(s))))
                })
                .await;
            match r {
                Ok(_) => return Ok(()), // the reply went out ahead of the snapshot
                Err(e) => error(to_status(e)),
            }
        }
        Some(pb::client_message::Kind::Unsubscribe(req)) => {
            match engine.unsubscribe(session, &req.view_id) {
                Ok(()) => reply(reply::Result::Unsubscribe(pb::UnsubscribeResponse {})),
                Err(e) => error(to_status(e)),
            }
        }
        Some(pb::client_message::Kind::Sync(req)) => {
            // The decoder keeps a Sync's views encoded; a Sync built in
            // process has them decoded.
            let views = match views {
                Some(v) => v,
                None => LazyViews::from_views(req.views),
            };
            match run_sync(engine, session, views, limits.max_sync_views).await {
                Ok(r) => reply(reply::Result::Sync(r)),
                Err(s) => error(s),
            }
        }
        Some(pb::client_message::Kind::Mutate(req)) => match params_from_pb(req.params) {
            Err(e) => error(e),
            Ok(params) => match engine
                .mutate(&session.identity, &req.mutation, params)
                .await
            {
                Ok(out) => reply(reply::Result::Mutate(mutate_response(out, Some(session)))),
                Err(e) => error(to_status(e)),
            },
        },
        Some(pb::client_message::Kind::Reanchor(req)) => {
            match run_reanchor(engine, session, req).await {
                Ok(r) => reply(reply::Result::Reanchor(r)),
                Err(s) => error(s),
            }
        }
        Some(pb::client_message::Kind::Ping(_)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            reply(reply::Result::Ping(pb::PingResponse {
                server_time_unix_ms: now,
            }))
        }
    };
    session.push_message(out).map_err(queue_status)
}

/// Why a reply could not be queued, as the status that ends the stream.
pub(super) fn queue_status(e: QueueError) -> Status {
    match e {
        QueueError::Full => Status::resource_exhausted(
            "too many unread replies: the client must read the stream; session closed",
        ),
        QueueError::Closed => Status::cancelled("the session was closed"),
    }
}

/// Moves a windowed subscription; the re-anchor diff is queued on the
/// session stream.
pub(super) async fn run_reanchor(
    engine: &Engine,
    session: &Arc<Session>,
    req: pb::ReanchorRequest,
) -> Result<pb::ReanchorResponse, Status> {
    let window = window_from_pb(req.window)?
        .ok_or_else(|| Status::invalid_argument("Reanchor needs a window: at least a limit"))?;
    let r = engine
        .reanchor(session, &req.view_id, window)
        .await
        .map_err(to_status)?;
    Ok(pb::ReanchorResponse {
        view_id: r.view_id.to_string(),
        epoch: r.epoch,
        version: r.version,
        prev_version: r.prev_version,
        prev_epoch: r.prev_epoch,
    })
}

/// The response, with the versions of `session`'s views: the mutation waited
/// for invalidation, so these versions include its effects.
pub(super) fn mutate_response(
    out: crate::engine::MutationOutput,
    session: Option<&Session>,
) -> pb::MutateResponse {
    pb::MutateResponse {
        data: crate::wire::convert::fields_to_pb(&out.data),
        changes: out
            .changes
            .into_iter()
            .map(|c| pb::Change {
                table: c.table,
                id: c.id,
                columns: c.columns,
                workspace_id: c.workspace.unwrap_or_default(),
            })
            .collect(),
        view_versions: session
            .map(|s| {
                s.views()
                    .iter()
                    .map(|(id, v)| (id.to_string(), v.version()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// A status as an `Error` reply on the session stream, counted in the
/// reply error metrics.
pub(super) fn error_reply(s: &Status) -> crate::proto::Error {
    crate::ops::metrics::count_reply_error(s.code());
    crate::wire::status::to_pb_error(s)
}
