//! The admin HTTP/1.1 listener: `/metrics`, `/healthz`, `/readyz`. Bounded:
//! at most `admin.max_connections` connections, each closed
//! `admin.request_timeout_ms` after it was accepted.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::health::Readiness;
use super::metrics::Exporter;
use super::slot;
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
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, cfg: AdminConfig) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let limit = Duration::from_millis(cfg.request_timeout_ms.max(1));
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
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            // A slow or idle client loses its connection at the deadline.
            let _ = tokio::time::timeout(limit, conn).await;
            drop(permit);
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static parts are valid")
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".into(),
        );
    }
    match req.uri().path() {
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
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
