//! Unary Connect calls: the request body is the message, the answer is
//! HTTP 200 with the response message in the same codec, or the Connect
//! error JSON with the HTTP status of its code.

use std::convert::Infallible;

use bytes::{Buf, Bytes};
use http::HeaderValue;
use http_body_util::BodyExt;
use prost_reflect::MethodDescriptor;
use tonic::body::Body;
use tonic::Code;

use super::{grpc_request, json, uncompressed, Codec, ConnectLayer, Error, MAX_ANSWER_BYTES};

/// Serves one unary Connect call through `inner`.
pub(super) async fn call<S>(
    inner: S,
    layer: &ConnectLayer,
    method: MethodDescriptor,
    codec: Codec,
    req: http::Request<Body>,
) -> http::Response<Body>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    match answer(inner, layer, method, codec, req).await {
        Ok(r) => r,
        Err(e) => e.respond(false, codec),
    }
}

async fn answer<S>(
    inner: S,
    layer: &ConnectLayer,
    method: MethodDescriptor,
    codec: Codec,
    req: http::Request<Body>,
) -> Result<http::Response<Body>, Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    uncompressed(req.headers(), "content-encoding")?;
    let limit = layer.body_limit(codec);
    let (parts, body) = req.into_parts();
    let body = read(body, limit).await.map_err(|e| match e {
        ReadError::TooLarge => Error::new(
            Code::ResourceExhausted,
            format!("the request body is over {limit} bytes, the limit (server.max_message_bytes)"),
        ),
        ReadError::Failed(m) => Error::new(
            Code::InvalidArgument,
            format!("reading the request body failed: {m}"),
        ),
    })?;
    let msg = match codec {
        Codec::Proto => body.to_vec(),
        Codec::Json => json::to_binary(&method.input(), &body)
            .map_err(|m| Error::new(Code::InvalidArgument, m))?,
    };
    let req = http::Request::from_parts(parts, Body::empty());
    let grpc = grpc_request(&req, &msg)?;
    let Ok(resp) = tower::util::ServiceExt::oneshot(inner, grpc).await;
    let (parts, body) = resp.into_parts();
    if let Some(s) = tonic::Status::from_header_map(&parts.headers).filter(|s| s.code() != Code::Ok)
    {
        return Err(Error::from_status(&s));
    }
    let collected = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| Error::new(Code::Internal, format!("the answer failed: {e}")))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    match tonic::Status::from_header_map(&trailers) {
        Some(s) if s.code() == Code::Ok => {}
        Some(s) => return Err(Error::from_status(&s)),
        None => {
            return Err(Error::new(
                Code::Internal,
                "the answer ended without a status".to_owned(),
            ))
        }
    }
    let mut data = collected.to_bytes();
    if data.len() < 5 || data[0] != 0 {
        return Err(Error::new(
            Code::Internal,
            "the answer holds no uncompressed message".to_owned(),
        ));
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    if data.len() != len {
        return Err(Error::new(
            Code::Internal,
            "the answer is not one whole message".to_owned(),
        ));
    }
    let (body, ct) = match codec {
        Codec::Proto => (data, "application/proto"),
        Codec::Json => (
            Bytes::from(
                json::to_json(&method.output(), &data)
                    .map_err(|m| Error::new(Code::Internal, m))?,
            ),
            "application/json",
        ),
    };
    let mut out = http::Response::new(Body::new(http_body_util::Full::new(body)));
    let headers = out.headers_mut();
    for (name, value) in &parts.headers {
        if !name.as_str().starts_with("grpc-")
            && !matches!(name.as_str(), "content-type" | "content-length")
        {
            headers.append(name.clone(), value.clone());
        }
    }
    // Connect sends a unary call's trailers as `trailer-` headers.
    for (name, value) in &trailers {
        if !name.as_str().starts_with("grpc-") {
            if let Ok(n) = http::HeaderName::from_bytes(format!("trailer-{name}").as_bytes()) {
                headers.append(n, value.clone());
            }
        }
    }
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    Ok(out)
}

/// Why a body could not be read.
pub(super) enum ReadError {
    TooLarge,
    Failed(String),
}

/// A whole request body of at most `limit` bytes.
pub(super) async fn read(body: Body, limit: usize) -> Result<Bytes, ReadError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Err(e) => Err(ReadError::Failed(e.to_string())),
    }
}
