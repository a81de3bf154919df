//! Server-Sent Events: `GET /sse/<graph>?<param>=<value>...` streams one
//! view as `snapshot`, `diff` and `error` events whose data is the view
//! frame in proto3 JSON and whose id is `<epoch>:<version>`; a reconnect
//! with `Last-Event-ID` resumes like `Sync` (the missed diffs, or a fresh
//! snapshot). The token comes from `authorization: Bearer`, or from
//! `?access_token=` for `EventSource`, which cannot set headers.
//!
//! It is served through the gRPC routes (an `OpenSession` call, then
//! `Describe` for the parameter types and `Subscribe` or `Sync`), so
//! authentication, per-identity session limits and the handlers are the
//! gRPC ones, and the session ends when the client goes away.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{DescriptorPool, MessageDescriptor};
use tonic::body::Body;
use tonic::{Code, Status};

use super::connect::{code_name, error_response, json};
use crate::proto as pb;
use crate::wire::status::shorten;

/// The path prefix of the SSE endpoint.
pub const PREFIX: &str = "/sse/";
/// How often an idle event stream gets a comment, so proxies keep it open.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Largest gRPC message relayed (the server's own, bounded all the same).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
const SERVICE: &str = "/arcana.v1.ArcanaService/";

/// Serves `GET /sse/...` in front of the gRPC routes; other requests pass.
#[derive(Clone)]
pub struct SseLayer {
    frame: MessageDescriptor,
}

impl SseLayer {
    /// A layer reading view frames with the descriptors in `descriptors`
    /// (an encoded `FileDescriptorSet` holding `arcana.v1.ViewFrame`).
    pub fn new(descriptors: &[u8]) -> Result<SseLayer, String> {
        let pool = DescriptorPool::decode(descriptors)
            .map_err(|e| format!("reading the service descriptors for SSE: {e}"))?;
        let frame = pool
            .get_message_by_name("arcana.v1.ViewFrame")
            .ok_or("the descriptors lack arcana.v1.ViewFrame")?;
        Ok(SseLayer { frame })
    }
}

impl<S> tower::Layer<S> for SseLayer {
    type Service = Sse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Sse {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// The service [`SseLayer`] makes.
#[derive(Clone)]
pub struct Sse<S> {
    inner: S,
    layer: Arc<SseLayer>,
}

impl<S> tower::Service<http::Request<Body>> for Sse<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.method() != http::Method::GET || !req.uri().path().starts_with(PREFIX) {
            return Box::pin(self.inner.call(req));
        }
        let inner = self.inner.clone();
        let frame = self.layer.frame.clone();
        Box::pin(async move {
            let (parts, _) = req.into_parts();
            Ok(match open(inner, &parts).await {
                Ok(session) => events(session, frame),
                Err(s) => error_response(&s),
            })
        })
    }
}

/// What the request asks for.
struct Ask {
    graph: String,
    params: Vec<(String, String)>,
    /// From `Last-Event-ID`: the epoch and version the client holds.
    resume: Option<(u64, u64)>,
    /// The request the internal calls are made from (headers, connection).
    base: http::Request<()>,
}

fn ask(req: &http::request::Parts) -> Result<Ask, Status> {
    let graph = req.uri.path()[PREFIX.len()..].to_owned();
    if graph.is_empty() || graph.contains('/') {
        return Err(Status::not_found(
            "name one graph: GET /sse/<graph>?<param>=<value>",
        ));
    }
    let mut base = http::Request::new(());
    *base.extensions_mut() = req.extensions.clone();
    if let Some(a) = req.headers.get(http::header::AUTHORIZATION) {
        base.headers_mut()
            .insert(http::header::AUTHORIZATION, a.clone());
    }
    let mut params = Vec::new();
    for (k, v) in form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()) {
        if k == "access_token" {
            let v = HeaderValue::from_str(&format!("Bearer {v}")).map_err(|_| {
                Status::unauthenticated("access_token holds characters a token cannot")
            })?;
            base.headers_mut()
                .entry(http::header::AUTHORIZATION)
                .or_insert(v);
        } else {
            params.push((k.into_owned(), v.into_owned()));
        }
    }
    let resume = match req.headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.split_once(':'))
                .and_then(|(e, v)| Some((e.parse().ok()?, v.parse().ok()?)))
                .ok_or_else(|| Status::invalid_argument("Last-Event-ID must be <epoch>:<version>, as the event ids this endpoint sends"))?,
        ),
    };
    Ok(Ask {
        graph,
        params,
        resume,
        base,
    })
}

/// Opens a session subscribed to (or resuming) the view asked for, and
/// returns its stream once the view's first frames are due on it.
async fn open<S>(inner: S, req: &http::request::Parts) -> Result<Frames, Status>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone,
{
    let ask = ask(req)?;
    let info: pb::DescribeResponse = unary(
        inner.clone(),
        &ask.base,
        "Describe",
        &pb::DescribeRequest::default(),
    )
    .await?;
    let graph = info
        .graphs
        .iter()
        .find(|g| g.name == ask.graph)
        .ok_or_else(|| {
            Status::not_found(format!(
                "no graph `{}`; Describe lists the graphs",
                shorten(&ask.graph)
            ))
        })?;
    let mut params = std::collections::HashMap::new();
    for (k, v) in &ask.params {
        let p = graph.params.iter().find(|p| &p.name == k).ok_or_else(|| {
            Status::invalid_argument(format!(
                "graph {} has no param `{}`",
                graph.name,
                shorten(k)
            ))
        })?;
        params.insert(k.clone(), value(p, v)?);
    }
    let open = grpc(&ask.base, "OpenSession", &pb::OpenSessionRequest::default());
    let resp = call(inner.clone(), open).await;
    let mut frames = Frames::new(resp)?;
    let session_id = match frames.message().await? {
        Some(m) => match pb::ServerMessage::decode(m).map(|m| m.kind) {
            Ok(Some(pb::server_message::Kind::Opened(o))) => o.session_id,
            _ => return Err(Status::internal("the session did not open")),
        },
        None => return Err(Status::internal("the session ended before it opened")),
    };
    match ask.resume {
        None => {
            let sub = pb::SubscribeRequest {
                graph: ask.graph,
                params,
                session_id,
                window: None,
            };
            let _: pb::SubscribeResponse = unary(inner, &ask.base, "Subscribe", &sub).await?;
        }
        Some((epoch, version)) => {
            let sync = pb::SyncRequest {
                views: vec![pb::SyncView {
                    graph: ask.graph,
                    params,
                    epoch,
                    version,
                    window: None,
                }],
                session_id,
            };
            let r: pb::SyncResponse = unary(inner, &ask.base, "Sync", &sync).await?;
            if let Some(e) = r.results.first().and_then(|r| r.error.as_ref()) {
                return Err(Status::new(Code::from_i32(e.code), e.message.clone()));
            }
        }
    }
    Ok(frames)
}

/// A query-string value as the param's type.
fn value(p: &pb::ParamInfo, v: &str) -> Result<pb::Value, Status> {
    use pb::value::Kind;
    let bad = |ty: &str| {
        Status::invalid_argument(format!(
            "param `{}` must be {ty}, got `{}`",
            p.name,
            shorten(v)
        ))
    };
    let kind = match pb::ParamType::try_from(p.r#type).unwrap_or_default() {
        pb::ParamType::Int => Kind::Int(v.parse().map_err(|_| bad("an int"))?),
        pb::ParamType::Float => Kind::Float(v.parse().map_err(|_| bad("a float"))?),
        pb::ParamType::Bool => Kind::Bool(v.parse().map_err(|_| bad("true or false"))?),
        pb::ParamType::Uuid => Kind::Uuid(v.to_owned()),
        pb::ParamType::Timestamp => Kind::Timestamp(
            prost_types::Timestamp::from_str(v).map_err(|_| bad("an RFC 3339 timestamp"))?,
        ),
        pb::ParamType::String | pb::ParamType::Unspecified => Kind::String(v.to_owned()),
    };
    Ok(pb::Value { kind: Some(kind) })
}

/// A gRPC request for `method` of the Arcana service, as the SSE client.
fn grpc<M: Message>(base: &http::Request<()>, method: &str, msg: &M) -> http::Request<Body> {
    let mut frame = BytesMut::with_capacity(5 + msg.encoded_len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg.encode_to_vec());
    let mut req = http::Request::new(Body::new(http_body_util::Full::new(frame.freeze())));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = format!("{SERVICE}{method}").parse().expect("a path");
    *req.version_mut() = http::Version::HTTP_2;
    *req.headers_mut() = base.headers().clone();
    *req.extensions_mut() = base.extensions().clone();
    let h = req.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(http::header::TE, HeaderValue::from_static("trailers"));
    req
}

/// One call through the routes, which never fail (errors are statuses).
async fn call<S>(inner: S, req: http::Request<Body>) -> http::Response<Body>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let Ok(r) = tower::util::ServiceExt::oneshot(inner, req).await;
    r
}

/// One unary call through the routes.
async fn unary<S, M: Message, R: Message + Default>(
    inner: S,
    base: &http::Request<()>,
    method: &str,
    msg: &M,
) -> Result<R, Status>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let mut frames = Frames::new(call(inner, grpc(base, method, msg)).await)?;
    let m = frames
        .message()
        .await?
        .ok_or_else(|| Status::internal(format!("{method} answered nothing")))?;
    // Reads the status that ends the answer.
    frames.message().await?;
    R::decode(m).map_err(|e| Status::internal(format!("{method} answered garbage: {e}")))
}

/// The messages of a gRPC answer.
struct Frames {
    body: Body,
    buf: BytesMut,
}

impl Frames {
    fn new(resp: http::Response<Body>) -> Result<Frames, Status> {
        if let Some(s) = Status::from_header_map(resp.headers()).filter(|s| s.code() != Code::Ok) {
            return Err(s);
        }
        Ok(Frames {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// The next message; `None` when the answer ended well.
    async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE_BYTES || self.buf[0] != 0 {
                    return Err(Status::internal(
                        "a message is compressed or too large to relay",
                    ));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            match self.body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => {
                        let t = f.into_trailers().unwrap_or_default();
                        return match Status::from_header_map(&t) {
                            Some(s) if s.code() == Code::Ok => Ok(None),
                            Some(s) => Err(s),
                            None => Err(Status::internal("the answer ended without a status")),
                        };
                    }
                },
                Some(Err(s)) => return Err(s),
                None => return Err(Status::internal("the answer ended without a status")),
            }
        }
    }
}

/// The event stream of an open session.
fn events(frames: Frames, desc: MessageDescriptor) -> http::Response<Body> {
    let heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    let s = futures_util::stream::unfold(Some((frames, heartbeat)), move |state| {
        let desc = desc.clone();
        async move {
            let (mut frames, mut heartbeat) = state?;
            loop {
                tokio::select! {
                    _ = heartbeat.tick() => {
                        return Some((Ok::<_, Infallible>(Frame::data(Bytes::from_static(b": heartbeat\n\n"))), Some((frames, heartbeat))));
                    }
                    m = frames.message() => {
                        let end = |s: Status| {
                            let data = serde_json::json!({ "code": code_name(s.code()), "message": s.message() });
                            Some((Ok(Frame::data(Bytes::from(format!("event: error\ndata: {data}\n\n")))), None))
                        };
                        match m {
                            Ok(Some(m)) => match render(&m, &desc) {
                                Ok(b) if b.is_empty() => continue,
                                Ok(b) => return Some((Ok(Frame::data(b)), Some((frames, heartbeat)))),
                                Err(s) => return end(s),
                            },
                            Ok(None) => return end(Status::unavailable("the session ended; reconnect to resume")),
                            Err(s) => return end(s),
                        }
                    }
                }
            }
        }
    });
    let mut r = http::Response::new(Body::new(http_body_util::StreamBody::new(s)));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    // Proxies that buffer responses (nginx) would hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    *r.status_mut() = StatusCode::OK;
    r
}

/// The events of one session message: one per view frame; none for others.
fn render(msg: &[u8], desc: &MessageDescriptor) -> Result<Bytes, Status> {
    use pb::server_message::Kind;
    let frames = match pb::ServerMessage::decode(msg).map(|m| m.kind) {
        Ok(Some(Kind::Frame(f))) => vec![f],
        Ok(Some(Kind::Frames(b))) => b.frames,
        Ok(_) => return Ok(Bytes::new()),
        Err(e) => {
            return Err(Status::internal(format!(
                "a session message is garbage: {e}"
            )))
        }
    };
    let mut out = String::new();
    for f in frames {
        use pb::view_frame::Body as B;
        let (event, whole) = match &f.body {
            Some(B::Snapshot(s)) => ("snapshot", !s.more),
            Some(B::Diff(_)) => ("diff", true),
            Some(B::Error(_)) | None => ("error", false),
        };
        let data = json::to_json(desc, &f.encode_to_vec()).map_err(Status::internal)?;
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
        // Only a frame the client can resume from gets an id: not a part
        // of a snapshot still coming, nor an error.
        if whole {
            out.push_str(&format!("id: {}:{}\n", f.epoch, f.version));
        }
        out.push_str("data: ");
        out.push_str(&String::from_utf8_lossy(&data));
        out.push_str("\n\n");
    }
    Ok(Bytes::from(out))
}
