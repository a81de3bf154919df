//! The client's `grpc-timeout`: a unary call still running when it passes
//! ends with DEADLINE_EXCEEDED from the server, while a session stream
//! opened with a deadline keeps running past it. Calls go over a raw
//! HTTP/2 connection, so no client library enforces the deadline itself.

mod common;

use std::time::{Duration, Instant};

use arcana::proto as pb;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use prost::Message;

/// One gRPC call on a raw HTTP/2 connection.
struct Call {
    send: h2::SendStream<Bytes>,
    body: h2::RecvStream,
    /// Response bytes not yet parsed into messages.
    buf: BytesMut,
    /// `grpc-status` and `grpc-message` of a trailers-only response.
    status: Option<(String, String)>,
}

async fn h2_connect(h: &Harness) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(h.app().addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn frame(msg: &impl Message) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut b).unwrap();
    b.freeze()
}

impl Call {
    /// Starts `path` with `grpc-timeout` set to `timeout` and sends `first`;
    /// ends the request when `end`.
    async fn start(
        conn: &h2::client::SendRequest<Bytes>,
        path: &str,
        timeout: &str,
        first: &impl Message,
        end: bool,
    ) -> Call {
        let req = http::Request::post(format!("http://arcana{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", "Bearer dev-alice")
            .header("grpc-timeout", timeout)
            .body(())
            .unwrap();
        let mut sender = conn.clone().ready().await.unwrap();
        let (resp, mut send) = sender.send_request(req, false).unwrap();
        send.send_data(frame(first), end).unwrap();
        let resp = tokio::time::timeout(WAIT, resp)
            .await
            .expect("response headers in time")
            .unwrap();
        assert_eq!(resp.status(), 200);
        let header = |k: &str| {
            resp.headers()
                .get(k)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let status = header("grpc-status").map(|s| (s, header("grpc-message").unwrap_or_default()));
        Call {
            send,
            body: resp.into_body(),
            buf: BytesMut::new(),
            status,
        }
    }

    /// The next response message, or `None` when the response ended.
    async fn message<M: Message + Default>(&mut self) -> Option<M> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let msg = self.buf.split_to(len);
                    return Some(M::decode(msg).unwrap());
                }
            }
            let data = tokio::time::timeout(WAIT, self.body.data())
                .await
                .expect("a response message in time")?
                .unwrap();
            let _ = self.body.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(&data);
        }
    }

    /// The call's `grpc-status` and `grpc-message`, once it ended.
    async fn status(mut self) -> (String, String) {
        if let Some(s) = self.status.take() {
            return s;
        }
        while self.message::<pb::MutateResponse>().await.is_some() {}
        let trailers = tokio::time::timeout(WAIT, self.body.trailers())
            .await
            .expect("trailers in time")
            .unwrap()
            .expect("trailers");
        let get = |k: &str| {
            trailers
                .get(k)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        (get("grpc-status"), get("grpc-message"))
    }
}

fn slow_rename(title: &str, secs: f64) -> pb::MutateRequest {
    pb::MutateRequest {
        mutation: "slow_rename".into(),
        params: params(&[
            ("title", text(title)),
            (
                "secs",
                pb::Value {
                    kind: Some(pb::value::Kind::Float(secs)),
                },
            ),
        ]),
        ..Default::default()
    }
}

const MUTATE: &str = "/arcana.v1.ArcanaService/Mutate";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_past_its_grpc_timeout_is_deadline_exceeded() {
    let h = Harness::with_extra("", SLOW_MUTATION, |_| {}).await;
    let conn = h2_connect(&h).await;

    // Sleeps 5 s; the deadline is 300 ms.
    let start = Instant::now();
    let call = Call::start(&conn, MUTATE, "300m", &slow_rename("late", 5.0), true).await;
    let (code, message) = call.status().await;
    let took = start.elapsed();
    assert_eq!(code, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(message.contains("grpc-timeout"), "{message}");
    assert!(
        took < Duration::from_secs(4),
        "answered after {took:?}, not at the deadline"
    );

    // With room to spare the same mutation completes and commits.
    let call = Call::start(&conn, MUTATE, "20S", &slow_rename("in time", 0.2), true).await;
    let (code, message) = call.status().await;
    assert_eq!(code, "0", "{message}");
    assert_eq!(
        h.query_i64("SELECT count(*) FROM tasks WHERE id = 1 AND title = 'in time'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_outlives_its_grpc_timeout() {
    let h = Harness::with_extra("", SLOW_MUTATION, |_| {}).await;
    let conn = h2_connect(&h).await;

    // A session opened with a 200 ms deadline.
    let ping = |id: u64| pb::ClientMessage {
        request_id: id,
        kind: Some(pb::client_message::Kind::Ping(pb::PingRequest {})),
    };
    let opened_at = Instant::now();
    let mut session = Call::start(
        &conn,
        "/arcana.v1.ArcanaService/Connect",
        "200m",
        &ping(1),
        false,
    )
    .await;
    assert_eq!(session.status, None, "the session opened");
    let mut replies = 0;
    while replies < 1 {
        let m: pb::ServerMessage = session.message().await.expect("session open");
        if matches!(m.kind, Some(pb::server_message::Kind::Reply(_))) {
            replies += 1;
        }
    }

    // A unary call with a longer deadline ends at its deadline: by then
    // the session's has passed too.
    let call = Call::start(&conn, MUTATE, "400m", &slow_rename("late", 5.0), true).await;
    let (code, message) = call.status().await;
    assert_eq!(code, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(opened_at.elapsed() > Duration::from_millis(400));

    // The session still answers.
    session.send.send_data(frame(&ping(2)), false).unwrap();
    loop {
        let m: pb::ServerMessage = session
            .message()
            .await
            .expect("the session is still open past its deadline");
        if let Some(pb::server_message::Kind::Reply(r)) = m.kind {
            if r.request_id == 2 {
                break;
            }
        }
    }
}
