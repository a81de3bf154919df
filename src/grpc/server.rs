//! Serving: the Arcana service with grpc-web (tonic-web), CORS, health and
//! reflection on one listener with bounded connections and streams, plus
//! the oversized-request status fix. Each connection is served by its own
//! task, which closes it (HTTP/2 GOAWAY) when a call asks for that, when it
//! has had no open call for `server.idle_timeout_ms`, or on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, Method};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::service::Routes;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::holding::Holding;
use super::limits::{canonical, Limits};
use super::listener::{incoming, Conn, ConnInfo, ConnState, Peers};
use super::service::Service;
use crate::auth::Authenticator;
use crate::engine::Engine;

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/arcana.v1.ArcanaService.rs"));
}
pub use generated::arcana_service_server;
use generated::arcana_service_server::ArcanaServiceServer;

/// Listener-level options.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Browser origins allowed for grpc-web; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Queued frames sent as one batch message, up to this many bytes.
    pub max_batch_bytes: usize,
    /// Snapshots bigger than this go out in parts of about this size.
    pub snapshot_part_bytes: usize,
    /// Connection, stream and session limits.
    pub limits: Limits,
    /// Statuses of the `grpc.health.v1` service, kept by the caller
    /// (readiness); none: the server reports itself serving.
    pub health: Option<tonic_health::server::HealthReporter>,
    /// Serve over TLS with this certificate; plain when `None`.
    pub tls: Option<crate::config::ServerTls>,
    /// More services served next to the Arcana service, behind the same
    /// listener, limits, CORS and grpc-web (the offline service).
    pub mounts: Vec<Mount>,
}

/// Adds one service to the server's routes, given the largest request
/// message the server accepts. The layers above `grpc` (the offline
/// service) mount themselves through this, so `grpc` needs none of them.
/// Its calls are authenticated like the Arcana service's.
#[derive(Clone)]
pub struct Mount {
    add: Arc<dyn Fn(Routes, usize) -> Routes + Send + Sync>,
    /// The full gRPC name of the service it adds.
    service: &'static str,
}

impl Mount {
    /// A mount of the service named `service` (its full gRPC name), from
    /// the function that adds it.
    pub fn new(
        service: &'static str,
        add: impl Fn(Routes, usize) -> Routes + Send + Sync + 'static,
    ) -> Mount {
        Mount {
            add: Arc::new(add),
            service,
        }
    }
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mount")
    }
}

/// The defaults of `[server]`.
impl Default for ServeOptions {
    fn default() -> Self {
        let server = crate::config::ServerConfig::default();
        ServeOptions {
            max_message_bytes: server.max_message_bytes,
            cors_origins: server.cors_origins.clone(),
            max_batch_bytes: server.max_batch_bytes,
            snapshot_part_bytes: server.snapshot_part_bytes,
            limits: Limits::default(),
            health: None,
            tls: None,
            mounts: Vec::new(),
        }
    }
}

fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::mirror_request()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let h = |s: &'static str| http::HeaderName::from_static(s);
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers([
            h("content-type"),
            h("authorization"),
            h("x-grpc-web"),
            h("x-user-agent"),
            h("grpc-timeout"),
            h("connect-protocol-version"),
            h("connect-timeout-ms"),
            h("last-event-id"),
        ])
        .expose_headers([
            h("grpc-status"),
            h("grpc-message"),
            h("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(3600))
}

/// Rewrites tonic's OUT_OF_RANGE for an oversized request (sent before the
/// handler runs, so in the response headers) into RESOURCE_EXHAUSTED.
#[derive(Clone)]
struct OversizedLayer;

impl<S> tower::Layer<S> for OversizedLayer {
    type Service = Oversized<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Oversized(inner)
    }
}

#[derive(Clone)]
struct Oversized<S>(S);

impl<S, Req, B> tower::Service<Req> for Oversized<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if resp.headers().get("grpc-status").is_some_and(|v| v == "11") {
                if let Ok(status) = tonic::Status::from_header_map(resp.headers()).ok_or(()) {
                    let fixed = super::service::oversized(status);
                    if fixed.code() != tonic::Code::OutOfRange {
                        let _ = fixed.add_header(resp.headers_mut());
                    }
                }
            }
            Ok(resp)
        })
    }
}

/// Counts each call against its connection (for the idle timeout) and its
/// peer address (`server.max_calls_per_peer`; with a trusted proxy, the
/// address it forwards), and refuses calls past the peer's limit.
#[derive(Clone)]
struct CallLimit<S> {
    inner: S,
    peers: Peers,
    limits: Arc<Limits>,
}

/// The client's address as the trusted proxy saw it: the last entry of
/// `x-forwarded-for` (earlier ones are the client's to write).
fn forwarded(headers: &http::HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let ip = last.to_str().ok()?.rsplit(',').next()?.trim();
    ip.parse().ok().map(canonical)
}

/// Whether a call's content type is one this server speaks: gRPC
/// (`application/grpc`, `+proto`), gRPC-Web (`application/grpc-web`,
/// `-text`, `+proto`) or Connect (`application/json`, `application/proto`,
/// `application/connect+json`, `+proto`).
fn speaks(headers: &http::HeaderMap) -> bool {
    super::connect::is_connect(headers)
        || headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.trim().to_ascii_lowercase();
                ct == "application/grpc"
                    || ct.starts_with("application/grpc+")
                    || ct.starts_with("application/grpc;")
                    || ct.starts_with("application/grpc-web")
            })
}

/// HTTP 415 for a call in a content type this server does not speak.
fn unsupported_media_type() -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from_static(
        b"unsupported content-type: send gRPC (application/grpc), gRPC-Web (application/grpc-web, application/grpc-web-text) or Connect (application/json, application/proto, application/connect+json, application/connect+proto)\n",
    ))));
    *r.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    r.headers_mut().insert(
        http::HeaderName::from_static("accept-post"),
        HeaderValue::from_static(
            "application/grpc, application/grpc-web, application/grpc-web-text, application/json, application/proto, application/connect+json, application/connect+proto",
        ),
    );
    r
}

/// A refusal in the form the caller reads: the Connect error for Connect
/// calls and `/sse/` streams, a gRPC status otherwise.
fn refusal(req: &http::Request<Body>, st: tonic::Status) -> http::Response<Body> {
    if let Some(r) = super::connect::refusal(req, &st) {
        return r;
    }
    if req.method() == Method::GET && req.uri().path().starts_with(super::sse::PREFIX) {
        return super::connect::error_response(&st);
    }
    st.into_http()
}

impl<S> CallLimit<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn call(
        &self,
        req: http::Request<Body>,
        state: Arc<ConnState>,
        remote: Option<IpAddr>,
    ) -> impl Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static {
        let unsupported = req.method() == Method::POST && !speaks(req.headers());
        let guard = state.call();
        let ip = if state.via_proxy {
            forwarded(req.headers()).or(remote)
        } else {
            remote
        };
        let slot = ip.map(|ip| self.peers.call(ip, self.limits.max_calls_per_peer));
        let inner = self.inner.clone();
        let max = self.limits.max_calls_per_peer;
        async move {
            if unsupported {
                return Ok(unsupported_media_type());
            }
            let slot = match slot {
                Some(Some(s)) => s,
                // No address: nothing to count against.
                None => return tower::util::ServiceExt::oneshot(inner, req).await,
                Some(None) => {
                    let st = tonic::Status::resource_exhausted(format!(
                        "this address already has {max} open calls, the limit (server.max_calls_per_peer); retry when some end"
                    ));
                    return Ok(refusal(&req, st));
                }
            };
            let resp = tower::util::ServiceExt::oneshot(inner, req).await?;
            Ok(resp.map(|body| Holding::wrap(body, (guard, slot))))
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    engine: Engine,
    auth: Arc<dyn Authenticator>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let limits = Arc::new(opts.limits.clone());
    let tls = match &opts.tls {
        Some(t) => Some(super::tls::watch(t)?),
        None => None,
    };
    // Stops watching the certificate files when serving ends.
    let _reloader = tls
        .as_ref()
        .map(|(_, task)| AbortOnDrop(task.abort_handle()));
    let svc = ArcanaServiceServer::new(
        Service::new(engine, auth.clone())
            .with_batch_bytes(opts.max_batch_bytes)
            .with_part_bytes(opts.snapshot_part_bytes)
            .with_limits(opts.limits),
    )
    .max_decoding_message_size(opts.max_message_bytes);
    let health = match opts.health.clone() {
        Some(h) => h,
        None => {
            let h = tonic_health::server::HealthReporter::new();
            h.set_serving::<ArcanaServiceServer<Service>>().await;
            h
        }
    };
    let health_svc = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health),
    );
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| e.to_string())?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| e.to_string())?;
    let mut routes = Routes::new(svc);
    let mut authenticated = vec![crate::proto::ARCANA_SERVICE];
    for m in &opts.mounts {
        routes = (m.add)(routes, opts.max_message_bytes);
        authenticated.push(m.service);
    }
    let routes = routes
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .prepare();
    let connect = super::connect::ConnectLayer::new(
        crate::proto::FILE_DESCRIPTOR_SET,
        opts.max_message_bytes,
    )?;
    let layered = tower::ServiceBuilder::new()
        .layer(cors(&opts.cors_origins))
        .layer(super::sse::SseLayer::new(
            crate::proto::FILE_DESCRIPTOR_SET,
        )?)
        .layer(connect)
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(crate::ops::metrics::GrpcCodesLayer)
        .layer(OversizedLayer)
        .layer(super::deadline::DeadlineLayer)
        .layer(super::caller::AuthLayer::new(auth.clone(), &authenticated))
        .service(routes);
    let svc = CallLimit {
        inner: BoxInner::new(layered),
        peers: Peers::default(),
        limits: limits.clone(),
    };

    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // A call's window is kept small next to the connection's: a client
    // whose requests wait unread (the server stopped reading a session
    // that does not read its replies, or is busy with an earlier request)
    // can then buffer at most one window of small frames, well within
    // HTTP/2's flood protection budget (half the connection window), so
    // it is held back by flow control instead of losing the connection.
    http.http2()
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(
            limits
                .connection_window_bytes
                .max(limits.stream_window_bytes),
        )
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection));
    // hyper enforces its HTTP/1 header read timeout only with a timer.
    http.http1().timer(TokioTimer::new());

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    {
        // Dropped when accepting stops, which closes the listening socket.
        let mut conns = pin!(incoming(
            listener,
            limits.clone(),
            svc.peers.clone(),
            tls.map(|(source, _)| source),
        ));
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                c = conns.next() => match c {
                    Some(Ok(conn)) => {
                        tokio::spawn(serve_conn(conn, svc.clone(), http.clone(), stop_rx.clone(), limits.idle_timeout));
                    }
                    Some(Err(e)) => tracing::debug!("accepting a connection failed: {e}"),
                    None => break,
                },
            }
        }
    }
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // Every connection task holds a receiver until its connection closes.
    stop_tx.closed().await;
    Ok(())
}

/// The layered routes with one nameable type.
#[derive(Clone)]
struct BoxInner(
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>,
);

impl BoxInner {
    fn new<S, B>(s: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        let s = tower::util::ServiceExt::map_response(s, |r: http::Response<B>| r.map(Body::new));
        BoxInner(tower::util::BoxCloneSyncService::new(s))
    }
}

impl tower::Service<http::Request<Body>> for BoxInner {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.call(req)
    }
}

/// Serves one connection until it closes, closing it gracefully (GOAWAY,
/// then the open calls finish) when asked to, when idle, or on shutdown.
async fn serve_conn(
    conn: Conn,
    svc: CallLimit<BoxInner>,
    http: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    idle: Duration,
) {
    let info: ConnInfo = tonic::transport::server::Connected::connect_info(&conn);
    let state = info.state.clone();
    let remote = info.remote.map(|a| canonical(a.ip()));
    let hyper_svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(info.clone());
        svc.call(req, info.state.clone(), remote)
    });
    let served = http.serve_connection_with_upgrades(TokioIo::new(conn), hyper_svc);
    let mut served = pin!(served);
    let mut closing = false;
    loop {
        let idle_at = state
            .idle_since()
            .map(|t| tokio::time::Instant::from_std(t + idle));
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("serving a connection ended: {e}");
                }
                break;
            }
            _ = stop.changed(), if !closing => {
                served.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = state.wake.notified(), if !closing => {
                if state.closing() {
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(tokio::time::Instant::now)), if idle_at.is_some() && !closing => {
                if state.idle_since().is_some_and(|t| t + idle <= std::time::Instant::now()) {
                    tracing::debug!("closing a connection idle for server.idle_timeout_ms");
                    served.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_proto_module_names_the_service_as_the_generated_server_does() {
        assert_eq!(
            crate::proto::ARCANA_SERVICE,
            super::arcana_service_server::SERVICE_NAME
        );
    }
}
