//! The admin HTTP/1.1 listener: `/metrics`, `/healthz`, `/readyz` and the
//! DevTools page (`/devtools`, see [`super::devtools`]). Bounded: at most
//! `admin.max_connections` connections, each closed
//! `admin.request_timeout_ms` after it was accepted, except one carrying a
//! DevTools live stream, which that stream bounds.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::devtools::{self, Streams};
use super::health::Readiness;
use super::metrics::Exporter;
use super::slot;
use crate::auth::Authenticator;
use crate::config::AdminConfig;
use crate::engine::Engine;

/// What the admin handlers read.
pub struct AdminState {
    /// The engine.
    pub engine: Engine,
    /// Readiness (also holds the pool).
    pub readiness: Readiness,
    /// The metrics registry.
    pub exporter: Exporter,
    /// The replication slot to report on (WAL mode).
    pub slot: Option<String>,
    /// Checks DevTools tokens, as the gRPC service does; `None` turns
    /// DevTools off.
    pub auth: Option<Arc<dyn Authenticator>>,
}

/// A response body: whole, or a DevTools live stream.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, cfg: AdminConfig) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let limit = Duration::from_millis(cfg.request_timeout_ms.max(1));
    let streams = Arc::new(Streams::new(&cfg));
    state.engine.feed().set_capacity(cfg.devtools_feed);
    loop {
        // Wait for a free slot before accepting: extra connections queue
        // in the kernel's backlog.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let streaming = Arc::new(AtomicBool::new(false));
            let flag = streaming.clone();
            let lifetime = streams.lifetime();
            let svc = hyper::service::service_fn(move |req| {
                let (state, streams, flag) = (state.clone(), streams.clone(), flag.clone());
                async move { Ok::<_, Infallible>(route(&state, &streams, &flag, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            // A slow or idle client loses its connection at the deadline;
            // a live stream ends by itself at its own.
            if tokio::time::timeout(limit, conn.as_mut()).await.is_err()
                && streaming.load(Ordering::Acquire)
            {
                let _ = tokio::time::timeout(lifetime, conn).await;
            }
            drop(permit);
        });
    }
}

/// A whole response.
pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("static parts are valid")
}

/// Plain text.
pub(crate) const PLAIN: &str = "text/plain; charset=utf-8";

async fn route(
    state: &Arc<AdminState>,
    streams: &Arc<Streams>,
    streaming: &AtomicBool,
    req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
    }
    let path = req.uri().path();
    if path == "/devtools" || path.starts_with("/devtools/") {
        return devtools::route(state, streams, streaming, &req).await;
    }
    match path {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match state.readiness.refresh().await {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let ready = state.readiness.check().await.is_ok();
            let numbers = match &state.slot {
                Some(name) if ready => slot::numbers(state.readiness.pool(), name).await,
                _ => None,
            };
            let body = state.exporter.render(
                &state.engine,
                state.readiness.pool(),
                numbers,
                state.readiness.streaming(),
                ready,
            );
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body,
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz, /readyz or /devtools\n".into(),
        ),
    }
}
