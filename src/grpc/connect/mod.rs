//! The Connect protocol (<https://connectrpc.com/docs/protocol>) beside
//! gRPC on the same port: [`ConnectLayer`] rewrites a Connect call into a
//! gRPC call to the services behind it, so authentication, limits,
//! deadlines and the handlers are the gRPC ones, and rewrites the gRPC
//! answer back. Unary calls (`application/json`, `application/proto`) and
//! server-streaming calls (`application/connect+json`, `+proto`) are
//! served; client-streaming and bidirectional methods answer
//! `unimplemented` (use gRPC or gRPC-Web for `Connect` and `Push`).

pub(super) mod json;
mod stream;
mod unary;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use prost_reflect::{DescriptorPool, MethodDescriptor};
use tonic::body::Body;
use tonic::Code;

use crate::wire::status::shorten;

/// Largest answer relayed to a Connect client in one message: the server's
/// own messages, bounded so a runaway one cannot exhaust memory.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The codec of a Connect call's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Proto3 JSON.
    Json,
    /// The protobuf binary encoding.
    Proto,
}

/// What kind of Connect call a content type announces, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Unary(Codec),
    Streaming(Codec),
}

fn kind(headers: &HeaderMap) -> Option<Kind> {
    let ct = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let ct = ct.split(';').next()?.trim().to_ascii_lowercase();
    Some(match ct.as_str() {
        "application/json" => Kind::Unary(Codec::Json),
        "application/proto" => Kind::Unary(Codec::Proto),
        "application/connect+json" => Kind::Streaming(Codec::Json),
        "application/connect+proto" => Kind::Streaming(Codec::Proto),
        _ => return None,
    })
}

/// Whether a request is a Connect call (by its content type).
pub fn is_connect(headers: &HeaderMap) -> bool {
    kind(headers).is_some()
}

/// Serves Connect calls to the services of the server's descriptors in
/// front of the gRPC routes; other requests pass through unchanged.
#[derive(Clone)]
pub struct ConnectLayer {
    pool: DescriptorPool,
    max_message_bytes: usize,
}

impl ConnectLayer {
    /// A layer for the messages of `descriptors` (an encoded
    /// `FileDescriptorSet`), refusing request bodies over
    /// `max_message_bytes` (JSON: four times that, for its verbosity).
    pub fn new(descriptors: &[u8], max_message_bytes: usize) -> Result<ConnectLayer, String> {
        let pool = DescriptorPool::decode(descriptors)
            .map_err(|e| format!("reading the service descriptors for Connect: {e}"))?;
        Ok(ConnectLayer {
            pool,
            max_message_bytes,
        })
    }
}

impl<S> tower::Layer<S> for ConnectLayer {
    type Service = Connect<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Connect {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// The service [`ConnectLayer`] makes.
#[derive(Clone)]
pub struct Connect<S> {
    inner: S,
    layer: Arc<ConnectLayer>,
}

impl<S> tower::Service<http::Request<Body>> for Connect<S>
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
        let kind = match kind(req.headers()) {
            Some(k) if req.method() == http::Method::POST => k,
            _ => return Box::pin(self.inner.call(req)),
        };
        // The ready service goes with this call; its clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let streaming = matches!(kind, Kind::Streaming(_));
            let method = match layer.method(&req, streaming) {
                Ok(m) => m,
                Err(e) => return Ok(e.respond(streaming, kind_codec(kind))),
            };
            Ok(match kind {
                Kind::Unary(codec) => unary::call(inner, &layer, method, codec, req).await,
                Kind::Streaming(codec) => stream::call(inner, &layer, method, codec, req).await,
            })
        })
    }
}

fn kind_codec(k: Kind) -> Codec {
    match k {
        Kind::Unary(c) | Kind::Streaming(c) => c,
    }
}

impl ConnectLayer {
    /// The method a Connect call names, checked against the kind of call.
    fn method(
        &self,
        req: &http::Request<Body>,
        streaming: bool,
    ) -> Result<MethodDescriptor, Error> {
        let path = req.uri().path();
        let not_found = || {
            Error {
            code: Code::Unimplemented,
            message: format!("no method `{}`: call /<package>.<Service>/<Method>, e.g. /arcana.v1.ArcanaService/Describe", shorten(path)),
            status: Some(StatusCode::NOT_FOUND),
        }
        };
        let (service, name) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .ok_or_else(not_found)?;
        let method = self
            .pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == name))
            .ok_or_else(not_found)?;
        if method.is_client_streaming() {
            return Err(Error::new(
                Code::Unimplemented,
                format!("{path} streams requests, which Connect over this server does not serve: use gRPC, or gRPC-Web with OpenSession and the unary calls"),
            ));
        }
        if let Some(v) = req.headers().get("connect-protocol-version") {
            if v != "1" {
                return Err(Error::new(
                    Code::InvalidArgument,
                    "connect-protocol-version must be 1".to_owned(),
                ));
            }
        }
        match (method.is_server_streaming(), streaming) {
            (true, false) => Err(Error::new(
                Code::Unimplemented,
                format!("{path} streams its answer: call it with content-type application/connect+json or application/connect+proto"),
            )),
            (false, true) => Err(Error::new(
                Code::Unimplemented,
                format!("{path} is unary: call it with content-type application/json or application/proto"),
            )),
            _ => Ok(method),
        }
    }

    /// The largest request body accepted in `codec`.
    fn body_limit(&self, codec: Codec) -> usize {
        match codec {
            Codec::Proto => self.max_message_bytes,
            Codec::Json => self.max_message_bytes.saturating_mul(4),
        }
    }
}

/// A Connect error: a code, a message and, rarely, an HTTP status other
/// than the code's.
#[derive(Debug)]
pub(crate) struct Error {
    code: Code,
    message: String,
    status: Option<StatusCode>,
}

impl Error {
    fn new(code: Code, message: String) -> Error {
        Error {
            code,
            message,
            status: None,
        }
    }

    fn from_status(s: &tonic::Status) -> Error {
        Error::new(s.code(), s.message().to_owned())
    }

    /// The Connect error JSON: `{"code": ..., "message": ...}`.
    fn json(&self) -> serde_json::Value {
        serde_json::json!({ "code": code_name(self.code), "message": self.message })
    }

    /// The answer to a call that failed before its messages flowed: for a
    /// unary call, the error JSON with the code's HTTP status; for a
    /// streaming one, HTTP 200 and an end-of-stream message holding it.
    fn respond(&self, streaming: bool, codec: Codec) -> http::Response<Body> {
        if streaming {
            let end = serde_json::json!({ "error": self.json() });
            return stream::response(
                codec,
                Body::new(http_body_util::Full::new(envelope(
                    END_STREAM,
                    &serde_json::to_vec(&end).unwrap_or_default(),
                ))),
            );
        }
        let body = serde_json::to_vec(&self.json()).unwrap_or_default();
        let mut r = http::Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
        *r.status_mut() = self.status.unwrap_or_else(|| http_status(self.code));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// The flag of an envelope holding the end-of-stream message.
const END_STREAM: u8 = 0x02;

/// One enveloped message: a flag byte, the length (big-endian u32), the
/// bytes. gRPC frames have the same shape.
fn envelope(flag: u8, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(flag);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// The Connect name of a status code.
pub(super) fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status the Connect protocol gives a unary error of code `c`.
fn http_status(c: Code) -> StatusCode {
    let n = match c {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    };
    StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The gRPC request for a Connect call: the same path, headers (the
/// caller's credentials among them) and extensions (the connection), one
/// binary message framed, and the Connect timeout as `grpc-timeout`.
fn grpc_request(req: &http::Request<Body>, msg: &[u8]) -> Result<http::Request<Body>, Error> {
    let mut out = http::Request::new(Body::new(http_body_util::Full::new(envelope(0, msg))));
    *out.method_mut() = http::Method::POST;
    *out.uri_mut() = req.uri().clone();
    // gRPC is HTTP/2; a Connect call may come over HTTP/1.1.
    *out.version_mut() = http::Version::HTTP_2;
    *out.extensions_mut() = req.extensions().clone();
    let headers = out.headers_mut();
    for (name, value) in req.headers() {
        let n = name.as_str();
        if n.starts_with("connect-")
            || n.starts_with("grpc-")
            || matches!(
                n,
                "content-type"
                    | "content-length"
                    | "content-encoding"
                    | "accept-encoding"
                    | "te"
                    | "connection"
                    | "transfer-encoding"
            )
        {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Some(t) = req.headers().get("connect-timeout-ms") {
        let ms = t
            .to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::new(
                    Code::InvalidArgument,
                    "connect-timeout-ms must be a whole number of milliseconds, at most 10 digits"
                        .to_owned(),
                )
            })?;
        // grpc-timeout takes at most 8 digits.
        let v = if ms <= 99_999_999 {
            format!("{ms}m")
        } else {
            format!("{}S", ms / 1000)
        };
        headers.insert(
            "grpc-timeout",
            HeaderValue::from_str(&v).expect("digits and a unit"),
        );
    }
    Ok(out)
}

/// Checks a request's `content-encoding`: none is compressed.
fn uncompressed(headers: &HeaderMap, name: &str) -> Result<(), Error> {
    match headers.get(name) {
        None => Ok(()),
        Some(v) if v == "identity" => Ok(()),
        Some(v) => Err(Error::new(
            Code::Unimplemented,
            format!("{name} {v:?} is not supported: send the body uncompressed (identity)"),
        )),
    }
}

/// The Connect error answer (JSON, the code's HTTP status) for a status,
/// for plain HTTP endpoints that fail before they stream.
pub(super) fn error_response(s: &tonic::Status) -> http::Response<Body> {
    Error::from_status(s).respond(false, Codec::Json)
}

/// A refusal made before a call reaches the routes (a peer over its call
/// limit) in the form a Connect caller reads; `None` for other requests.
pub fn refusal(req: &http::Request<Body>, s: &tonic::Status) -> Option<http::Response<Body>> {
    match kind(req.headers()) {
        Some(k) if req.method() == http::Method::POST => {
            Some(Error::from_status(s).respond(matches!(k, Kind::Streaming(_)), kind_codec(k)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn content_types_name_the_kind_of_call() {
        let k = |ct: &str| kind(&headers(&[("content-type", ct)]));
        assert_eq!(k("application/json"), Some(Kind::Unary(Codec::Json)));
        assert_eq!(
            k("Application/JSON; charset=utf-8"),
            Some(Kind::Unary(Codec::Json))
        );
        assert_eq!(k("application/proto"), Some(Kind::Unary(Codec::Proto)));
        assert_eq!(
            k("application/connect+json"),
            Some(Kind::Streaming(Codec::Json))
        );
        assert_eq!(
            k("application/connect+proto"),
            Some(Kind::Streaming(Codec::Proto))
        );
        for other in ["application/grpc", "application/grpc-web", "text/plain"] {
            assert_eq!(k(other), None, "{other}");
        }
    }

    #[test]
    fn codes_map_to_the_connect_names_and_statuses() {
        assert_eq!(code_name(Code::Cancelled), "canceled");
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::ResourceExhausted).as_u16(), 429);
        assert_eq!(http_status(Code::Unimplemented).as_u16(), 501);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
    }

    #[test]
    fn the_timeout_becomes_a_grpc_timeout_within_eight_digits() {
        let t = |ms: &str| {
            let mut req = http::Request::new(Body::empty());
            req.headers_mut()
                .insert("connect-timeout-ms", ms.parse().unwrap());
            grpc_request(&req, b"")
                .map(|r| r.headers()["grpc-timeout"].to_str().unwrap().to_owned())
                .map_err(|e| e.code)
        };
        assert_eq!(t("250").unwrap(), "250m");
        assert_eq!(t("9999999999").unwrap(), "9999999S");
        assert_eq!(t("-1").unwrap_err(), Code::InvalidArgument);
        assert_eq!(t("12345678901").unwrap_err(), Code::InvalidArgument);
    }
}
