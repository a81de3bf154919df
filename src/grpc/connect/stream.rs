//! Server-streaming Connect calls: one enveloped request message in, the
//! gRPC answer's messages out as envelopes in the same codec, ended by an
//! end-of-stream message (`{}` or `{"error": ...}`). Errors travel in that
//! message with HTTP 200, as the protocol asks of streams.

use std::convert::Infallible;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;
use http_body::Frame;
use http_body_util::BodyExt;
use prost_reflect::{MessageDescriptor, MethodDescriptor};
use tonic::body::Body;
use tonic::Code;

use super::unary::{read, ReadError};
use super::{
    envelope, grpc_request, json, uncompressed, Codec, ConnectLayer, Error, END_STREAM,
    MAX_ANSWER_BYTES,
};

/// Serves one server-streaming Connect call through `inner`.
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
    match open(inner, layer, &method, codec, req).await {
        Ok(body) => {
            let out = method.output();
            response(codec, relay(body, out, codec))
        }
        Err(e) => e.respond(true, codec),
    }
}

/// The HTTP 200 answer of a stream in `codec`, with `body`.
pub(super) fn response(codec: Codec, body: Body) -> http::Response<Body> {
    let mut r = http::Response::new(body);
    let ct = match codec {
        Codec::Json => "application/connect+json",
        Codec::Proto => "application/connect+proto",
    };
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// Sends the call's request and returns the gRPC answer's body once its
/// stream is open.
async fn open<S>(
    inner: S,
    layer: &ConnectLayer,
    method: &MethodDescriptor,
    codec: Codec,
    req: http::Request<Body>,
) -> Result<Body, Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    uncompressed(req.headers(), "connect-content-encoding")?;
    let limit = layer.body_limit(codec);
    let (parts, body) = req.into_parts();
    let mut body = read(body, limit + 5).await.map_err(|e| match e {
        ReadError::TooLarge => Error::new(
            Code::ResourceExhausted,
            format!(
                "the request message is over {limit} bytes, the limit (server.max_message_bytes)"
            ),
        ),
        ReadError::Failed(m) => Error::new(
            Code::InvalidArgument,
            format!("reading the request failed: {m}"),
        ),
    })?;
    if body.len() < 5 {
        return Err(Error::new(
            Code::InvalidArgument,
            "the request holds no enveloped message (1 flag byte, 4 length bytes, the message)"
                .to_owned(),
        ));
    }
    let flag = body.get_u8();
    let len = body.get_u32() as usize;
    if flag != 0 {
        return Err(Error::new(Code::InvalidArgument, format!("the request envelope has flags {flag:#04x}: send one uncompressed message (flags 0)")));
    }
    if body.len() != len {
        return Err(Error::new(
            Code::InvalidArgument,
            "a server-streaming call takes exactly one enveloped message".to_owned(),
        ));
    }
    let msg = match codec {
        Codec::Proto => body.to_vec(),
        Codec::Json => json::to_binary(&method.input(), &body)
            .map_err(|m| Error::new(Code::InvalidArgument, m))?,
    };
    let req = http::Request::from_parts(parts, Body::empty());
    let grpc = grpc_request(&req, &msg)?;
    let Ok(resp) = tower::util::ServiceExt::oneshot(inner, grpc).await;
    if let Some(s) = tonic::Status::from_header_map(resp.headers()).filter(|s| s.code() != Code::Ok)
    {
        return Err(Error::from_status(&s));
    }
    Ok(resp.into_body())
}

/// Relaying state: the gRPC body, bytes of a message not yet whole, and
/// whether the end-of-stream message went out.
struct Relay {
    body: Body,
    buf: BytesMut,
    out: MessageDescriptor,
    codec: Codec,
    done: bool,
}

/// The Connect body of a gRPC answer body: each gRPC message re-enveloped
/// (re-encoded as JSON for `Json`), then the end-of-stream message.
fn relay(body: Body, out: MessageDescriptor, codec: Codec) -> Body {
    let state = Relay {
        body,
        buf: BytesMut::new(),
        out,
        codec,
        done: false,
    };
    let s = futures_util::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match st.step().await {
                Ok(Some(chunk)) => return Some((Ok::<_, Infallible>(Frame::data(chunk)), st)),
                Ok(None) => continue,
                Err(end) => {
                    st.done = true;
                    return Some((Ok(Frame::data(end)), st));
                }
            }
        }
    });
    Body::new(http_body_util::StreamBody::new(s))
}

impl Relay {
    /// Reads one frame of the gRPC body: the whole messages it completes
    /// (`Some`), nothing yet (`None`), or the end of the stream (`Err`,
    /// holding the end-of-stream envelope).
    async fn step(&mut self) -> Result<Option<Bytes>, Bytes> {
        match self.body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => {
                    self.buf.extend_from_slice(&data);
                    self.messages().map(|b| (!b.is_empty()).then_some(b))
                }
                Err(f) => {
                    let status = f
                        .into_trailers()
                        .ok()
                        .and_then(|t| tonic::Status::from_header_map(&t));
                    Err(match status {
                        Some(s) if s.code() == Code::Ok => end(None),
                        Some(s) => end(Some(Error::from_status(&s))),
                        None => end(Some(Error::new(
                            Code::Internal,
                            "the stream ended without a status".to_owned(),
                        ))),
                    })
                }
            },
            Some(Err(s)) => Err(end(Some(Error::from_status(&s)))),
            None => Err(end(Some(Error::new(
                Code::Internal,
                "the stream ended without a status".to_owned(),
            )))),
        }
    }

    /// The whole messages at the head of the buffer, re-enveloped.
    fn messages(&mut self) -> Result<Bytes, Bytes> {
        let mut out = BytesMut::new();
        while self.buf.len() >= 5 {
            let len =
                u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > MAX_ANSWER_BYTES || self.buf[0] != 0 {
                return Err(end(Some(Error::new(
                    Code::Internal,
                    "a message of the stream is compressed or too large to relay".to_owned(),
                ))));
            }
            if self.buf.len() < 5 + len {
                break;
            }
            self.buf.advance(5);
            let msg = self.buf.split_to(len);
            let msg = match self.codec {
                Codec::Proto => msg.freeze(),
                Codec::Json => Bytes::from(
                    json::to_json(&self.out, &msg)
                        .map_err(|m| end(Some(Error::new(Code::Internal, m))))?,
                ),
            };
            out.extend_from_slice(&envelope(0, &msg));
        }
        Ok(out.freeze())
    }
}

/// The end-of-stream envelope: `{}`, or `{"error": ...}`.
fn end(error: Option<Error>) -> Bytes {
    let v = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({ "error": e.json() }),
    };
    envelope(END_STREAM, &serde_json::to_vec(&v).unwrap_or_default())
}
