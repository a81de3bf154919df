//! Serving: the Arcana service with grpc-web (tonic-web), CORS, health and
//! reflection on one listener with bounded connections and streams, plus
//! the oversized-request status fix.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Method};
use tokio::net::TcpListener;
use tonic::transport::Server;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::auth::Authenticator;
use super::limits::Limits;
use super::listener::{incoming, MarkServedLayer};
use super::service::Service;
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
    /// Connection, stream and session limits.
    pub limits: Limits,
    /// Statuses of the `grpc.health.v1` service, kept by the caller
    /// (readiness); none: the server reports itself serving.
    pub health: Option<tonic_health::server::HealthReporter>,
    /// Serve over TLS with this certificate; plain when `None`.
    pub tls: Option<crate::config::ServerTls>,
    /// The offline sync service, mounted next to the Arcana service when
    /// `[offline]` has tables.
    pub offline: Option<crate::offline::Offline>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_message_bytes: 1 << 20,
            cors_origins: vec!["*".into()],
            max_batch_bytes: super::service::DEFAULT_BATCH_BYTES,
            limits: Limits::default(),
            health: None,
            tls: None,
            offline: None,
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
        .allow_methods([Method::POST, Method::OPTIONS])
        .allow_headers([
            h("content-type"),
            h("authorization"),
            h("x-grpc-web"),
            h("x-user-agent"),
            h("grpc-timeout"),
            h("connect-protocol-version"),
            h("connect-timeout-ms"),
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

/// Serves until `shutdown` resolves, then drains in-flight calls.
pub async fn serve(
    engine: Engine,
    auth: Arc<dyn Authenticator>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let limits = opts.limits.clone();
    let tls = match &opts.tls {
        Some(t) => Some(super::tls::watch(t)?),
        None => None,
    };
    // Stops watching the certificate files when serving ends.
    let _reloader = tls
        .as_ref()
        .map(|(_, task)| AbortOnDrop(task.abort_handle()));
    let offline = opts.offline.clone().map(|o| {
        crate::offline::offline_service_server::OfflineServiceServer::new(o)
            .max_decoding_message_size(opts.max_message_bytes)
    });
    let svc = ArcanaServiceServer::new(
        Service::new(engine, auth)
            .with_batch_bytes(opts.max_batch_bytes)
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
    Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(limits.max_streams_per_connection))
        .layer(MarkServedLayer)
        .layer(cors(&opts.cors_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(crate::ops::metrics::GrpcCodesLayer)
        .layer(OversizedLayer)
        .add_service(svc)
        .add_optional_service(offline)
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .serve_with_incoming_shutdown(
            incoming(
                listener,
                limits.max_connections,
                limits.handshake_timeout,
                tls.map(|(source, _)| source),
            ),
            shutdown,
        )
        .await
        .map_err(|e| e.to_string())
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
