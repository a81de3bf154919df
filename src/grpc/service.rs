//! The `arcana.v1.ArcanaService` implementation: authenticates each call,
//! converts messages, and hands work to the engine.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status, Streaming};

use super::caller::credentials;
use super::codec::{Inbound, LazySync};
use super::limits::{Limits, SessionCounts};
use super::requests::*;
use super::server::arcana_service_server::ArcanaService;
use super::stream::*;
use crate::auth::{same_rights, Authenticator, Credentials};
use crate::engine::{Engine, Identity, Session, PROTOCOL_VERSION};
use crate::ops::telemetry::SPANS;
use crate::proto::{self as pb, server_message};
use crate::wire::convert::{describe, encode_message, params_from_pb, stats_to_pb, window_from_pb};
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
        credentials(&*self.auth, req).await
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

    /// The response stream of `session`, batched and split as configured.
    fn stream(
        &self,
        session: Arc<Session>,
        lease: Lease,
        fail: Option<oneshot::Receiver<Status>>,
        reader: Option<tokio::task::JoinHandle<()>>,
    ) -> WireStream {
        let sizes = Sizes {
            batch_bytes: self.batch_bytes,
            part_bytes: self.part_bytes,
        };
        session_stream(&self.engine, sizes, session, lease, fail, reader)
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
        Ok(Response::new(self.stream(
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
        Ok(Response::new(self.stream(session, lease, None, None)))
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
