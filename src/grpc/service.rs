//! The `arcana.v1.ArcanaService` implementation: authenticates each call,
//! converts messages, and hands work to the engine.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status, Streaming};

use super::caller::identify_call;
use super::codec::{Inbound, LazySync, LazyViews};
use super::limits::{Limits, SessionCounts, SessionSlot};
use super::server::arcana_service_server::ArcanaService;
use crate::auth::{same_rights, Authenticator, Credentials};
use crate::engine::{
    Change, Engine, Frame, FrameBody, Identity, Outbound, QueueError, Session, Subscribed,
    SyncMode, SyncView, PROTOCOL_VERSION,
};
use crate::ops::telemetry::SPANS;
use crate::proto::{self as pb, reply, server_message};
use crate::wire::convert::{
    describe, encode_message, encoded_frame, params_from_pb, stats_to_pb, window_from_pb,
};
use crate::wire::encoded::WireServerMessage;
use crate::wire::parts::SnapshotParts;
use crate::wire::status::{status, to_status};

/// The permission the Notify call needs.
pub const NOTIFY_PERMISSION: &str = "arcana:notify";
pub use crate::auth::{ADMIN_PERMISSION, GLOBAL_ADMIN_PERMISSION};

pub use crate::config::DEFAULT_BATCH_BYTES;

/// The gRPC service.
#[derive(Clone)]
pub struct Service {
    engine: Engine,
    auth: Arc<dyn Authenticator>,
    batch_bytes: usize,
    part_bytes: usize,
    limits: Arc<Limits>,
    sessions: SessionCounts,
}

type WireStream = Pin<Box<dyn Stream<Item = Result<WireServerMessage, Status>> + Send>>;

impl Service {
    /// A service over `engine`, authenticating with `auth`.
    pub fn new(engine: Engine, auth: Arc<dyn Authenticator>) -> Self {
        Service {
            engine,
            auth,
            batch_bytes: DEFAULT_BATCH_BYTES,
            part_bytes: crate::config::DEFAULT_PART_BYTES,
            limits: Arc::new(Limits::default()),
            sessions: SessionCounts::default(),
        }
    }

    /// Sets the session and request limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// Sets how many bytes of queued frames may go out as one batch message
    /// (0: every frame on its own).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }

    /// Sets the size above which a snapshot goes out in parts of about
    /// this many bytes.
    pub fn with_part_bytes(mut self, bytes: usize) -> Self {
        self.part_bytes = bytes;
        self
    }

    async fn credentials<T>(&self, req: &Request<T>) -> Result<Credentials, Status> {
        identify_call(&*self.auth, req).await
    }

    async fn identity<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        Ok(self.credentials(req).await?.identity)
    }

    /// Authenticates and finds the caller's session for the unary calls. The
    /// call's token must carry exactly the rights of the token that opened
    /// the session (user, workspace, role, permissions): a session serves
    /// only the credentials it was opened with.
    async fn session_of<T>(
        &self,
        req: &Request<T>,
        session_id: &str,
    ) -> Result<Arc<Session>, Status> {
        let id = self.identity(req).await?;
        if session_id.is_empty() {
            return Err(Status::invalid_argument(
                "session_id is required: open a session with OpenSession first",
            ));
        }
        let s = self.engine.session(session_id).ok_or_else(|| {
            status(Code::NotFound, format!(
                "no open session `{session_id}`; it may have ended: open a new one with OpenSession and Sync your views"
            ))
        })?;
        if !same_rights(&s.identity, &id) {
            return Err(status(
                Code::PermissionDenied,
                format!(
                    "session `{session_id}` was opened with other credentials: call it with the token that opened it"
                ),
            ));
        }
        Ok(s)
    }

    fn open(&self, creds: Credentials) -> Result<(Arc<Session>, Lease), Status> {
        if creds.expires_at.is_some_and(|t| t <= SystemTime::now()) {
            return Err(expired());
        }
        if let Some(why) = self.engine.away() {
            return Err(Status::unavailable(why.to_string()));
        }
        let slot = self.sessions.take(&creds.identity, &self.limits)?;
        let session = self.engine.open_session(creds.identity);
        let opened = encode_message(server_message::Kind::Opened(pb::SessionOpened {
            session_id: session.id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            user_id: session.identity.user_id.to_string(),
            workspace_id: session.identity.workspace_id.to_string(),
        }));
        let _ = session.push_message(opened);
        let lease = Lease {
            _slot: slot,
            expires_at: creds.expires_at,
        };
        Ok((session, lease))
    }
}

/// What a session holds besides the engine's state: its slot in the session
/// count, and when its token expires.
struct Lease {
    _slot: SessionSlot,
    expires_at: Option<SystemTime>,
}

fn expired() -> Status {
    Status::unauthenticated(
        "the token of this session has expired: reconnect with a fresh token and Sync your views",
    )
}

/// Closes the session when the response stream is dropped (client gone).
/// Also stops the request reader, so a closed session releases the whole
/// call even while the client keeps its side open.
struct Guard {
    engine: Engine,
    session: Arc<Session>,
    batch_bytes: usize,
    part_bytes: usize,
    /// A snapshot going out in parts, ahead of anything else.
    parts: Option<SnapshotParts>,
    fail: Option<oneshot::Receiver<Status>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// When the session's token expires.
    deadline: Option<tokio::time::Instant>,
    _lease: Lease,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.engine.close_session(&self.session.id);
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

fn session_stream(
    svc: &Service,
    session: Arc<Session>,
    lease: Lease,
    fail: Option<oneshot::Receiver<Status>>,
    reader: Option<tokio::task::JoinHandle<()>>,
) -> WireStream {
    let deadline = lease.expires_at.map(|t| {
        let left = t
            .duration_since(SystemTime::now())
            .unwrap_or(std::time::Duration::ZERO);
        tokio::time::Instant::now() + left
    });
    let guard = Guard {
        engine: svc.engine.clone(),
        session,
        batch_bytes: svc.batch_bytes,
        part_bytes: svc.part_bytes,
        parts: None,
        fail,
        reader,
        deadline,
        _lease: lease,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(guard, |mut g| async move {
        if g.done {
            return None;
        }
        if let Some(parts) = g.parts.as_mut() {
            match parts.next_part() {
                Some(b) => return Some((Ok(sent(WireServerMessage::One(b))), g)),
                None => g.parts = None,
            }
        }
        let item = loop {
            let deadline = g.deadline;
            let expiry = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let fail = &mut g.fail;
            let failed = async move {
                match fail.as_mut() {
                    Some(rx) => rx.await.map_err(|_| ()),
                    None => std::future::pending().await,
                }
            };
            let session = &g.session;
            tokio::select! {
                biased;
                () = expiry => break Err(expired()),
                r = failed => if let Ok(status) = r { break Err(status) },
                item = session.next() => break Ok(item),
            }
            // The reader finished without an error: stop watching it.
            g.fail = None;
        };
        let item = match item {
            Ok(item) => item,
            Err(status) => {
                g.done = true;
                return Some((Err(status), g));
            }
        };
        let Some(item) = item else {
            // Closed by the server, not by the client: tell it to go elsewhere.
            if let Some(why) = g.session.ended() {
                g.done = true;
                return Some((Err(Status::unavailable(why.to_string())), g));
            }
            if g.engine.is_shutting_down() {
                g.done = true;
                return Some((Err(shutting_down()), g));
            }
            return None;
        };
        let msg = match item {
            Outbound::Message(b) => WireServerMessage::One(b),
            // A catch-up goes out whole, whatever the batch size, so the
            // client applies it as one step.
            Outbound::CatchUp(frames, alias) => WireServerMessage::frames(
                frames
                    .iter()
                    .map(|f| encoded_for(f, alias.as_deref()))
                    .collect(),
            ),
            Outbound::Frame(f, alias) if matches!(f.body, FrameBody::Snapshot(_)) => {
                let mut parts = SnapshotParts::new(f, alias, g.part_bytes);
                let first = parts.next_part().expect("a snapshot has a first part");
                g.parts = Some(parts);
                WireServerMessage::One(first)
            }
            Outbound::Frame(f, alias) => {
                // Frames that queued up while the client was reading go out
                // as one message: per-message costs dominate fan-out.
                let first = encoded_for(&f, alias.as_deref());
                let next = (first.len() < g.batch_bytes)
                    .then(|| g.session.try_next_frame())
                    .flatten();
                match next {
                    // The common case allocates nothing: the bytes are shared.
                    None => WireServerMessage::One(first),
                    Some((second, alias)) => {
                        let mut pieces = vec![first, encoded_for(&second, alias.as_deref())];
                        let mut size: usize = pieces.iter().map(|b| b.len()).sum();
                        while size < g.batch_bytes {
                            let Some((f, alias)) = g.session.try_next_frame() else {
                                break;
                            };
                            let b = encoded_for(&f, alias.as_deref());
                            size += b.len();
                            pieces.push(b);
                        }
                        WireServerMessage::frames(pieces)
                    }
                }
            }
        };
        Some((Ok(sent(msg)), g))
    }))
}

/// Counts a message on its way out.
fn sent(msg: WireServerMessage) -> WireServerMessage {
    let hooks = crate::ops::metrics::hooks();
    hooks.sent_messages.inc();
    hooks
        .sent_bytes
        .inc_by(prost::Message::encoded_len(&msg) as u64);
    msg
}

/// A frame's shared encoding, under the id the session knows its view by.
fn encoded_for(f: &Frame, alias: Option<&str>) -> bytes::Bytes {
    let bytes = encoded_frame(f);
    match alias {
        Some(id) => crate::wire::encoded::with_view_id(&bytes, id),
        None => bytes,
    }
}

/// How a session stream ends when the server shuts down: clients retry
/// UNAVAILABLE, reconnecting to another instance.
fn shutting_down() -> Status {
    Status::unavailable(
        "the server is shutting down: reconnect (to another instance) and Sync your views",
    )
}

fn subscribed(s: &Subscribed) -> pb::SubscribeResponse {
    pb::SubscribeResponse {
        view_id: s.view_id.to_string(),
        epoch: s.epoch,
        version: s.version,
        params_hash: s.params_hash.to_string(),
    }
}

fn sync_views(views: Vec<pb::SyncView>) -> Result<Vec<SyncView>, Status> {
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

async fn run_sync(
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

fn notify_changes(changes: Vec<pb::Change>) -> Result<Vec<Change>, Status> {
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
fn session_field(id: &str) -> Option<&str> {
    (!id.is_empty()).then_some(id)
}

/// The method of one request of a `Connect` stream, for its span.
fn connect_method(msg: &pb::ClientMessage) -> &'static str {
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
async fn handle(
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
fn queue_status(e: QueueError) -> Status {
    match e {
        QueueError::Full => Status::resource_exhausted(
            "too many unread replies: the client must read the stream; session closed",
        ),
        QueueError::Closed => Status::cancelled("the session was closed"),
    }
}

/// Moves a windowed subscription; the re-anchor diff is queued on the
/// session stream.
async fn run_reanchor(
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
fn mutate_response(
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

/// Rewrites tonic's status for an oversized request to RESOURCE_EXHAUSTED.
pub fn oversized(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        Status::resource_exhausted(format!(
            "{}; send smaller messages or raise server.max_message_bytes",
            status.message().trim_start_matches("Error, ")
        ))
    } else {
        status
    }
}

#[tonic::async_trait]
impl ArcanaService for Service {
    type ConnectStream = WireStream;
    type OpenSessionStream = WireStream;

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Connect", rpc.method = "Connect", session.id = tracing::field::Empty),
    )]
    async fn connect(
        &self,
        req: Request<Streaming<Inbound>>,
    ) -> Result<Response<WireStream>, Status> {
        let creds = self.credentials(&req).await?;
        let (session, lease) = self.open(creds)?;
        tracing::Span::current().record("session.id", &*session.id);
        let (fail_tx, fail_rx) = oneshot::channel();
        let mut inbound = req.into_inner();
        let (engine, s, limits) = (self.engine.clone(), session.clone(), self.limits.clone());
        // Replies wait in the session's queue; past this many, stop reading
        // requests until the client reads (HTTP/2 flow control then holds
        // the client back) rather than failing the session.
        let room = engine.config().session_queue.saturating_sub(1).max(1);
        let reader = tokio::spawn(async move {
            loop {
                s.message_room(room).await;
                if s.is_closed() {
                    break;
                }
                match inbound.message().await {
                    Ok(Some(msg)) => {
                        // Boxed: the request futures are large, and an idle
                        // session's task should not carry their space.
                        if let Err(status) = Box::pin(handle(&engine, &s, &limits, msg)).await {
                            let _ = fail_tx.send(status);
                            break;
                        }
                    }
                    Ok(None) => break, // half-closed: keep streaming until the client leaves
                    Err(status) => {
                        let _ = fail_tx.send(oversized(status));
                        break;
                    }
                }
            }
        });
        Ok(Response::new(session_stream(
            self,
            session,
            lease,
            Some(fail_rx),
            Some(reader),
        )))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "OpenSession", rpc.method = "OpenSession", session.id = tracing::field::Empty),
    )]
    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<WireStream>, Status> {
        let creds = self.credentials(&req).await?;
        let (session, lease) = self.open(creds)?;
        tracing::Span::current().record("session.id", &*session.id);
        Ok(Response::new(session_stream(
            self, session, lease, None, None,
        )))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Subscribe", rpc.method = "Subscribe", session.id = session_field(&req.get_ref().session_id)),
    )]
    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let session = self.session_of(&req, &req.get_ref().session_id).await?;
        let r = req.into_inner();
        let s = self
            .engine
            .subscribe(
                &session,
                &r.graph,
                params_from_pb(r.params)?,
                window_from_pb(r.window)?,
                |_| None,
            )
            .await
            .map_err(to_status)?;
        Ok(Response::new(subscribed(&s)))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Unsubscribe", rpc.method = "Unsubscribe", session.id = session_field(&req.get_ref().session_id)),
    )]
    async fn unsubscribe(
        &self,
        req: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let session = self.session_of(&req, &req.get_ref().session_id).await?;
        self.engine
            .unsubscribe(&session, &req.get_ref().view_id)
            .map_err(to_status)?;
        Ok(Response::new(pb::UnsubscribeResponse {}))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Sync", rpc.method = "Sync", session.id = session_field(&req.get_ref().session_id)),
    )]
    async fn sync(&self, req: Request<LazySync>) -> Result<Response<pb::SyncResponse>, Status> {
        let session = self.session_of(&req, &req.get_ref().session_id).await?;
        Ok(Response::new(
            run_sync(
                &self.engine,
                &session,
                req.into_inner().views,
                self.limits.max_sync_views,
            )
            .await?,
        ))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Reanchor", rpc.method = "Reanchor", session.id = session_field(&req.get_ref().session_id)),
    )]
    async fn reanchor(
        &self,
        req: Request<pb::ReanchorRequest>,
    ) -> Result<Response<pb::ReanchorResponse>, Status> {
        let session = self.session_of(&req, &req.get_ref().session_id).await?;
        Ok(Response::new(
            run_reanchor(&self.engine, &session, req.into_inner()).await?,
        ))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Mutate", rpc.method = "Mutate", session.id = session_field(&req.get_ref().session_id)),
    )]
    async fn mutate(
        &self,
        req: Request<pb::MutateRequest>,
    ) -> Result<Response<pb::MutateResponse>, Status> {
        let (identity, session) = match req.get_ref().session_id.as_str() {
            "" => (self.identity(&req).await?, None),
            id => {
                // The session's own identity, which the token matches exactly.
                let s = self.session_of(&req, id).await?;
                (s.identity.clone(), Some(s))
            }
        };
        let r = req.into_inner();
        let out = self
            .engine
            .mutate(&identity, &r.mutation, params_from_pb(r.params)?)
            .await
            .map_err(to_status)?;
        Ok(Response::new(mutate_response(out, session.as_deref())))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Notify", rpc.method = "Notify", session.id = tracing::field::Empty),
    )]
    async fn notify(
        &self,
        req: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::NotifyResponse>, Status> {
        let identity = self.identity(&req).await?;
        if !identity.has_permission(NOTIFY_PERMISSION) {
            return Err(Status::permission_denied(format!(
                "Notify needs the `{NOTIFY_PERMISSION}` permission"
            )));
        }
        let changes = notify_changes(req.into_inner().changes)?;
        let registry = self.engine.registry();
        if let Some(c) = changes.iter().find(|c| {
            !registry
                .graphs()
                .any(|g| g.deps.iter().any(|d| d.table == c.table))
        }) {
            return Err(status(
                Code::NotFound,
                format!(
                    "no graph reads table `{}`; Notify only tables named in a graph's deps",
                    c.table
                ),
            ));
        }
        self.engine
            .notify_everywhere(changes)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::NotifyResponse {}))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Describe", rpc.method = "Describe", session.id = tracing::field::Empty),
    )]
    async fn describe(
        &self,
        req: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        self.identity(&req).await?;
        Ok(Response::new(describe(self.engine.registry())))
    }

    #[tracing::instrument(
        target = SPANS, level = "debug", name = "rpc", skip_all,
        fields(otel.name = "Stats", rpc.method = "Stats", session.id = tracing::field::Empty),
    )]
    async fn stats(
        &self,
        req: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let identity = self.identity(&req).await?;
        let stats = if identity.has_permission(GLOBAL_ADMIN_PERMISSION) {
            self.engine.stats()
        } else if identity.has_permission(ADMIN_PERMISSION) {
            self.engine.workspace_stats(&identity.workspace_id)
        } else {
            return Err(Status::permission_denied(format!(
                "Stats needs the `{ADMIN_PERMISSION}` permission (its workspace) or `{GLOBAL_ADMIN_PERMISSION}` (every workspace)"
            )));
        };
        Ok(Response::new(stats_to_pb(stats)))
    }
}

/// A status as an `Error` reply on the session stream, counted in the
/// reply error metrics.
fn error_reply(s: &Status) -> crate::proto::Error {
    crate::ops::metrics::count_reply_error(s.code());
    crate::wire::status::to_pb_error(s)
}
