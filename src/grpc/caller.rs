//! Who is calling: the caller's credentials, checked once per call by
//! [`AuthLayer`] before any method runs (and before the request is
//! decoded), bound to the connection the call came on, and handed to the
//! method in the request's extensions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::MetadataMap;
use tonic::Status;

use super::holding::Holding;
use super::listener::{ConnInfo, ConnState};
use crate::auth::{identify, Authenticator, Credentials};

/// Authenticates every call to the services named (by their full gRPC
/// names), once, and puts the caller's [`Credentials`] in the request's
/// extensions; a call that fails is answered with its status and never
/// reaches the service. Other services (health, reflection) pass as they
/// are.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<dyn Authenticator>,
    /// `/<service>/` of each service whose calls need credentials.
    prefixes: Arc<[String]>,
}

impl AuthLayer {
    /// Authenticates calls to `services` with `auth`.
    pub fn new(auth: Arc<dyn Authenticator>, services: &[&str]) -> AuthLayer {
        AuthLayer {
            auth,
            prefixes: services.iter().map(|s| format!("/{s}/")).collect(),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if !self
            .layer
            .prefixes
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            return Box::pin(self.inner.call(req));
        }
        // The ready service goes with this call; its clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.layer.auth.clone();
        Box::pin(async move {
            let md = MetadataMap::from_headers(req.headers().clone());
            let conn = req.extensions().get::<ConnInfo>().map(|c| c.state.clone());
            let creds = bound(identify(&*auth, &md).await, conn.clone());
            // Counted for as long as the call's response streams.
            let slot = creds.and_then(|c| {
                let slot = conn.map(|conn| conn.call_as(&c.identity)).transpose()?;
                Ok((c, slot))
            });
            match slot {
                Ok((creds, slot)) => {
                    req.extensions_mut().insert(creds);
                    let resp = inner.call(req).await?;
                    Ok(match slot {
                        Some(slot) => resp.map(|body| Holding::wrap(body, slot)),
                        None => resp,
                    })
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Acts on the call's connection: a connection whose call failed
/// authentication is closed once its open calls end (GOAWAY), so a peer
/// cannot hold it with one refused request; a successful call counts the
/// connection against its identity (`server.max_connections_per_identity`).
fn bound(
    r: Result<Credentials, Status>,
    conn: Option<Arc<ConnState>>,
) -> Result<Credentials, Status> {
    let Some(conn) = conn else { return r };
    let r = r.and_then(|c| conn.bind_identity(&c.identity).map(|()| c));
    if r.is_err() {
        conn.close_when_done();
    }
    r
}

/// The caller's credentials: as [`AuthLayer`] found them, or, for a
/// service served without the layer (embedded in another server),
/// checked now like the layer would.
pub async fn credentials<T>(
    auth: &dyn Authenticator,
    req: &tonic::Request<T>,
) -> Result<Credentials, Status> {
    match req.extensions().get::<Credentials>() {
        Some(c) => Ok(c.clone()),
        None => identify_call(auth, req).await,
    }
}

/// Authenticates a call like [`identify`](crate::auth::identify), and acts on its connection: a
/// connection whose call failed authentication is closed once its open
/// calls end (GOAWAY), so a peer cannot hold it with one refused request;
/// a successful call counts the connection against its identity
/// (`server.max_connections_per_identity`).
pub async fn identify_call<T>(
    auth: &dyn Authenticator,
    req: &tonic::Request<T>,
) -> Result<Credentials, Status> {
    let conn = req.extensions().get::<ConnInfo>().map(|c| c.state.clone());
    bound(identify(auth, req.metadata()).await, conn)
}
