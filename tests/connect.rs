//! Connect protocol (unary and server streaming) and Server-Sent Events
//! against the real server, over plain HTTP/1.1 and HTTP/2.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use arcana::proto as pb;
use bytes::{Buf, Bytes, BytesMut};
use common::{Harness, SLOW_MUTATION, WAIT};
use prost::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DESCRIBE: &str = "/arcana.v1.ArcanaService/Describe";
const MUTATE: &str = "/arcana.v1.ArcanaService/Mutate";
const SUBSCRIBE: &str = "/arcana.v1.ArcanaService/Subscribe";
const OPEN_SESSION: &str = "/arcana.v1.ArcanaService/OpenSession";

/// An HTTP/1.1 response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on its own connection, read to its end.
async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut rest = &raw[split + 4..];
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        let mut out = Vec::new();
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            rest = &rest[eol + 2..];
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    Response {
        status: status.parse().unwrap(),
        headers,
        body,
    }
}

/// A unary Connect call in JSON as `token`.
async fn json_call(addr: SocketAddr, path: &str, token: &str, body: Value) -> Response {
    let auth = format!("Bearer {token}");
    http1(
        addr,
        "POST",
        path,
        &[
            ("content-type", "application/json"),
            ("connect-protocol-version", "1"),
            ("authorization", &auth),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

fn envelope(flag: u8, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.extend_from_slice(&[flag]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// A streaming call's answer over HTTP/2, read envelope by envelope.
struct Envelopes {
    body: h2::RecvStream,
    buf: BytesMut,
}

impl Envelopes {
    /// The next envelope: (flags, message JSON).
    async fn next(&mut self) -> (u8, Value) {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    let flag = self.buf[0];
                    self.buf.advance(5);
                    let msg = self.buf.split_to(len);
                    return (flag, serde_json::from_slice(&msg).unwrap());
                }
            }
            let data = tokio::time::timeout(WAIT, self.body.data())
                .await
                .expect("a message in time")
                .expect("the stream is open")
                .unwrap();
            let _ = self.body.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(&data);
        }
    }

    /// The next message that is not a batch-free empty one, as JSON.
    async fn message(&mut self) -> Value {
        let (flag, v) = self.next().await;
        assert_eq!(flag, 0, "a message, not the end of the stream: {v}");
        v
    }
}

/// Opens a server-streaming Connect call in JSON over HTTP/2.
async fn open_stream(addr: SocketAddr, path: &str, token: &str, msg: Value) -> (u16, Envelopes) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post(format!("http://arcana{path}"))
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(envelope(0, msg.to_string().as_bytes()), true)
        .unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (
        status,
        Envelopes {
            body: resp.into_body(),
            buf: BytesMut::new(),
        },
    )
}

#[tokio::test]
async fn json_describe_answers_the_graphs() {
    let h = Harness::start().await;
    let r = json_call(h.app().addr, DESCRIBE, "dev-alice", json!({})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.json();
    let graphs: Vec<&str> = v["graphs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(graphs.contains(&"project_tasks"), "{v}");
    // Without connect-protocol-version too, as Connect servers accept.
    let r = http1(
        h.app().addr,
        "POST",
        DESCRIBE,
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("authorization", "Bearer dev-alice"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn binary_describe_answers_the_proto() {
    let h = Harness::start().await;
    let r = http1(
        h.app().addr,
        "POST",
        DESCRIBE,
        &[
            ("content-type", "application/proto"),
            ("authorization", "Bearer dev-alice"),
        ],
        &pb::DescribeRequest::default().encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/proto");
    let d = pb::DescribeResponse::decode(&r.body[..]).unwrap();
    assert!(d.graphs.iter().any(|g| g.name == "project_tasks"));
}

#[tokio::test]
async fn errors_answer_the_connect_error_json() {
    let h = Harness::start().await;
    let addr = h.app().addr;
    let r = json_call(addr, DESCRIBE, "nope", json!({})).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["code"], "unauthenticated", "{}", r.json());
    assert!(!r.json()["message"].as_str().unwrap().is_empty());

    let r = json_call(
        addr,
        "/arcana.v1.ArcanaService/Nope",
        "dev-alice",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "unimplemented");

    // Bidirectional and streaming methods are not unary Connect calls.
    for m in ["Connect", "OpenSession"] {
        let r = json_call(
            addr,
            &format!("/arcana.v1.ArcanaService/{m}"),
            "dev-alice",
            json!({}),
        )
        .await;
        assert_eq!(r.status, 501, "{m}");
        assert_eq!(r.json()["code"], "unimplemented");
    }

    let r = json_call(addr, MUTATE, "dev-alice", json!({"mutation": 5})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "invalid_argument");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("arcana.v1.MutateRequest"));

    let r = http1(
        addr,
        "POST",
        DESCRIBE,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer dev-alice"),
            ("connect-timeout-ms", "soon"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("connect-timeout-ms"));

    // Over server.max_message_bytes (JSON may take four times that).
    let big = json!({ "mutation": "x".repeat(5 << 20) });
    let r = json_call(addr, MUTATE, "dev-alice", big).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "resource_exhausted");
}

#[tokio::test]
async fn json_mutate_changes_the_row() {
    let h = Harness::start().await;
    let r = json_call(
        h.app().addr,
        MUTATE,
        "dev-alice",
        json!({"mutation": "update_task", "params": {"id": {"int": "1"}, "title": {"string": "Renamed over Connect"}}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["data"]["title"]["string"], "Renamed over Connect");
    let n = h
        .query_i64("SELECT count(*) FROM tasks WHERE id = 1 AND title = 'Renamed over Connect'")
        .await;
    assert_eq!(n, 1);
}

#[tokio::test]
async fn curl_describes_in_json() {
    let h = Harness::start().await;
    let url = format!("http://{}{DESCRIBE}", h.app().addr);
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--fail-with-body",
            "-H",
            "content-type: application/json",
        ])
        .args(["-H", "authorization: Bearer dev-alice", "-d", "{}", &url])
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["graphs"].as_array().is_some_and(|g| !g.is_empty()), "{v}");
}

#[tokio::test]
async fn server_streaming_delivers_a_snapshot_then_a_diff() {
    let h = Harness::start().await;
    let addr = h.app().addr;
    let (status, mut s) = open_stream(addr, OPEN_SESSION, "dev-alice", json!({})).await;
    assert_eq!(status, 200);
    let opened = s.message().await;
    let session = opened["opened"]["sessionId"].as_str().unwrap().to_owned();
    let r = json_call(
        addr,
        SUBSCRIBE,
        "dev-alice",
        json!({"graph": "project_tasks", "params": {"project_id": {"int": "1"}}, "sessionId": session}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let f = frame(s.message().await);
    assert!(
        f["snapshot"]["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{f}"
    );
    let r = json_call(
        addr,
        MUTATE,
        "dev-alice",
        json!({"mutation": "update_task", "params": {"id": {"int": "1"}, "status": {"string": "done"}}}),
    )
    .await;
    assert_eq!(r.status, 200);
    let f = frame(s.message().await);
    assert!(f.get("diff").is_some(), "{f}");
}

#[tokio::test]
async fn streams_refused_end_with_an_error_message() {
    let h = Harness::start().await;
    let (status, mut s) = open_stream(h.app().addr, OPEN_SESSION, "nope", json!({})).await;
    assert_eq!(status, 200);
    let (flag, end) = s.next().await;
    assert_eq!(flag, 2, "{end}");
    assert_eq!(end["error"]["code"], "unauthenticated", "{end}");
    let (_, mut s) = open_stream(
        h.app().addr,
        "/arcana.v1.ArcanaService/Connect",
        "dev-alice",
        json!({}),
    )
    .await;
    let (flag, end) = s.next().await;
    assert_eq!(flag, 2);
    assert_eq!(end["error"]["code"], "unimplemented", "{end}");
}

/// The first view frame of a session message (a frame or a batch).
fn frame(msg: Value) -> Value {
    if let Some(f) = msg.get("frame") {
        return f.clone();
    }
    msg["frames"]["frames"][0].clone()
}

/// An SSE stream over HTTP/2, read event by event.
struct Events {
    body: h2::RecvStream,
    buf: String,
}

/// One server-sent event: (event, id, data).
type Event = (String, Option<String>, Value);

impl Events {
    async fn next(&mut self) -> Event {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !event.is_empty() {
                    return (event, id, serde_json::from_str(&data).unwrap());
                }
            }
            let data = tokio::time::timeout(WAIT, self.body.data())
                .await
                .expect("an event in time")
                .expect("the stream is open")
                .unwrap();
            let _ = self.body.flow_control().release_capacity(data.len());
            self.buf.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

/// `GET path` over HTTP/2 with extra headers: (status, events).
async fn sse(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Events) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::get(format!("http://arcana{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (
        status,
        Events {
            body: resp.into_body(),
            buf: String::new(),
        },
    )
}

const TASKS_SSE: &str = "/sse/project_tasks?project_id=1";

#[tokio::test]
async fn sse_sends_a_snapshot_then_diffs_and_resumes_from_last_event_id() {
    let h = Harness::start().await;
    let addr = h.app().addr;
    let (status, mut ev) = sse(addr, TASKS_SSE, &[("authorization", "Bearer dev-alice")]).await;
    assert_eq!(status, 200);
    let (event, snap_id, data) = ev.next().await;
    assert_eq!(event, "snapshot", "{data}");
    assert!(
        data["snapshot"]["rows"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{data}"
    );
    let snap_id = snap_id.expect("a snapshot has an id");
    assert_eq!(
        snap_id,
        format!(
            "{}:{}",
            data["epoch"].as_str().unwrap(),
            data["version"].as_str().unwrap()
        )
    );

    h.sql("UPDATE tasks SET title = 'Changed in SQL' WHERE id = 1")
        .await;
    h.notify("tasks", "1", &["title"]).await;
    let (event, diff_id, data) = ev.next().await;
    assert_eq!(event, "diff", "{data}");
    let diff_id = diff_id.unwrap();
    assert_ne!(diff_id, snap_id);
    drop(ev);

    // Back from the snapshot's id: the missed diff (or a snapshot), never
    // the snapshot it already holds.
    let (status, mut ev) = sse(
        addr,
        TASKS_SSE,
        &[
            ("authorization", "Bearer dev-alice"),
            ("last-event-id", &snap_id),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let (event, id, data) = ev.next().await;
    assert!(event == "diff" || event == "snapshot", "{event} {data}");
    assert_ne!(id.as_deref(), Some(snap_id.as_str()), "{data}");
    if event == "diff" {
        assert_eq!(id.as_deref(), Some(diff_id.as_str()), "{data}");
    }
}

#[tokio::test]
async fn sse_refusals_are_connect_errors() {
    let h = Harness::start().await;
    let addr = h.app().addr;
    let r = http1(
        addr,
        "GET",
        TASKS_SSE,
        &[("authorization", "Bearer nope")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthenticated");
    let r = http1(addr, "GET", "/sse/nope?access_token=dev-alice", &[], b"").await;
    assert_eq!(r.status, 404, "{}", r.json());
    let r = http1(
        addr,
        "GET",
        "/sse/project_tasks?project_id=one&access_token=dev-alice",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"].as_str().unwrap().contains("project_id"),
        "{}",
        r.json()
    );
    let r = http1(
        addr,
        "GET",
        "/sse/project_tasks?project_id=1&access_token=dev-alice",
        &[("last-event-id", "yesterday")],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
}

/// `curl -N` with the token in the query, as an `EventSource` sends it.
#[tokio::test]
async fn curl_streams_events_with_a_query_token() {
    let h = Harness::start().await;
    let url = format!("http://{}{TASKS_SSE}&access_token=dev-alice", h.app().addr);
    let out = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "2", &url])
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("event: snapshot\nid: "), "{text}");
}

/// A quiet stream gets a `: heartbeat` comment every 15 s.
#[tokio::test]
async fn sse_sends_heartbeats_when_quiet() {
    let h = Harness::start().await;
    let (status, mut ev) = sse(
        h.app().addr,
        TASKS_SSE,
        &[("authorization", "Bearer dev-alice")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ev.next().await.0, "snapshot");
    let data = tokio::time::timeout(std::time::Duration::from_secs(20), ev.body.data())
        .await
        .expect("a heartbeat within 20 s")
        .unwrap()
        .unwrap();
    assert_eq!(&data[..], b": heartbeat\n\n");
}

/// An SSE stream is a session of its caller's, held to the same limit.
#[tokio::test]
async fn sse_streams_count_as_sessions() {
    let h = Harness::with(|c| c.server.max_sessions_per_identity = 1).await;
    let addr = h.app().addr;
    let (status, mut first) = sse(addr, TASKS_SSE, &[("authorization", "Bearer dev-alice")]).await;
    assert_eq!(status, 200);
    assert_eq!(first.next().await.0, "snapshot");
    let r = http1(
        addr,
        "GET",
        &format!("{TASKS_SSE}&access_token=dev-alice"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "resource_exhausted");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("server.max_sessions_per_identity"));
}

/// Browsers may call Connect and open event streams from allowed origins.
#[tokio::test]
async fn cors_allows_connect_and_sse_from_allowed_origins() {
    let h = Harness::with(|c| c.server.cors_origins = vec!["https://app.example".into()]).await;
    let addr = h.app().addr;
    let r = preflight(
        addr,
        DESCRIBE,
        "POST",
        "content-type,authorization,connect-protocol-version",
        "https://app.example",
    )
    .await;
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://app.example")
    );
    let r = preflight(
        addr,
        TASKS_SSE,
        "GET",
        "last-event-id",
        "https://app.example",
    )
    .await;
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("https://app.example")
    );
    assert!(r.headers["access-control-allow-methods"].contains("GET"));
    let r = preflight(
        addr,
        DESCRIBE,
        "POST",
        "content-type",
        "https://evil.example",
    )
    .await;
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = http1(
        addr,
        "POST",
        DESCRIBE,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer dev-alice"),
            ("origin", "https://app.example"),
        ],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
}

/// A CORS preflight for `method` on `path` from `origin`.
async fn preflight(
    addr: SocketAddr,
    path: &str,
    method: &str,
    headers: &str,
    origin: &str,
) -> Response {
    http1(
        addr,
        "OPTIONS",
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", headers),
        ],
        b"",
    )
    .await
}

/// Connect and SSE over TLS, as curl speaks them (HTTP/2 by ALPN).
#[tokio::test]
async fn curl_speaks_connect_and_sse_over_tls() {
    use rcgen::{CertificateParams, KeyPair};
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("arcana-connect-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, pem) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    let tls = arcana::config::ServerTls {
        cert: crt.clone(),
        key: pem,
        client_ca: None,
        reload_interval_ms: 1000,
    };
    let h = Harness::with(move |c| c.server.tls = Some(tls)).await;
    let port = h.app().addr.port();
    let resolve = format!("localhost:{port}:127.0.0.1");
    let curl = |args: &[&str]| {
        let mut c = tokio::process::Command::new("curl");
        c.args([
            "-sS",
            "--cacert",
            crt.to_str().unwrap(),
            "--resolve",
            &resolve,
        ]);
        c.args(args);
        c
    };
    let out = curl(&[
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer dev-alice",
        "-d",
        "{}",
        &format!("https://localhost:{port}{DESCRIBE}"),
    ])
    .output()
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(v["graphs"].as_array().is_some_and(|g| !g.is_empty()), "{v}");
    let out = curl(&[
        "-N",
        "--max-time",
        "2",
        &format!("https://localhost:{port}{TASKS_SSE}&access_token=dev-alice"),
    ])
    .output()
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("event: snapshot\n"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `buf` CLI: from `PATH`, or installed from npm (`@bufbuild/buf`, the
/// version the TS client builds with) under the target directory, which
/// takes seconds where building it with Go takes minutes.
async fn buf() -> std::path::PathBuf {
    const PACKAGE: &str = "@bufbuild/buf@1.74.0";
    if let Ok(out) = tokio::process::Command::new("buf")
        .arg("--version")
        .output()
        .await
    {
        if out.status.success() {
            return "buf".into();
        }
    }
    let prefix = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("buf");
    let bin = prefix.join("node_modules/.bin/buf");
    if !bin.exists() {
        let st = tokio::process::Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(PACKAGE)
            .status()
            .await
            .expect("buf is on PATH, or npm is there to install it");
        assert!(st.success(), "npm install {PACKAGE} failed");
    }
    bin
}

/// `buf curl` (a Connect client of the Connect authors) calls Describe and
/// Mutate in JSON over HTTP/1.1, from the protos in `proto/`, reads a
/// refusal, and opens a session stream.
#[tokio::test]
async fn buf_curl_calls_unary_and_streaming_methods() {
    let h = Harness::start().await;
    let buf = buf().await;
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let call = |path: &str, data: &str| {
        let mut c = tokio::process::Command::new(&buf);
        c.args(["curl", "--schema", schema, "--protocol", "connect"])
            .args(["-H", "authorization: Bearer dev-alice", "-d", data])
            .arg(format!("http://{}{path}", h.app().addr));
        c
    };
    let out = call(DESCRIBE, "{}").output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["graphs"].as_array().is_some_and(|g| !g.is_empty()), "{v}");
    let out = call(
        MUTATE,
        r#"{"mutation": "update_task", "params": {"id": {"int": "2"}, "status": {"string": "done"}}}"#,
    )
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = h
        .query_i64("SELECT count(*) FROM tasks WHERE id = 2 AND status = 'done'")
        .await;
    assert_eq!(n, 1);
    let out = tokio::process::Command::new(&buf)
        .args(["curl", "--schema", schema, "--protocol", "connect"])
        .args(["-H", "authorization: Bearer nope", "-d", "{}"])
        .arg(format!("http://{}{DESCRIBE}", h.app().addr))
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Server streaming: the session opens and its first message arrives.
    let mut child = tokio::process::Command::new(&buf)
        .args(["curl", "--schema", schema, "--protocol", "connect"])
        .args(["-H", "authorization: Bearer dev-alice", "-d", "{}"])
        .arg(format!("http://{}{OPEN_SESSION}", h.app().addr))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 1024];
        while !seen.contains("sessionId") {
            let n = stdout.read(&mut chunk).await.unwrap();
            assert!(n > 0, "buf curl ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no opened message: {seen}"));
    child.kill().await.unwrap();
}

/// A peer over its call limit is refused in the form each caller reads.
#[tokio::test]
async fn refusals_before_the_routes_are_connect_errors() {
    let h = Harness::with(|c| c.server.max_calls_per_peer = 1).await;
    let addr = h.app().addr;
    let (status, mut held) = sse(addr, TASKS_SSE, &[("authorization", "Bearer dev-alice")]).await;
    assert_eq!(status, 200);
    assert_eq!(held.next().await.0, "snapshot");
    let r = json_call(addr, DESCRIBE, "dev-alice", json!({})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "resource_exhausted");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("server.max_calls_per_peer"));
    let r = http1(
        addr,
        "GET",
        &format!("{TASKS_SSE}&access_token=dev-alice"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 429);
    let (status, mut s) = open_stream(addr, OPEN_SESSION, "dev-alice", json!({})).await;
    assert_eq!(status, 200);
    let (flag, end) = s.next().await;
    assert_eq!(flag, 2);
    assert_eq!(end["error"]["code"], "resource_exhausted", "{end}");
}

/// `connect-timeout-ms` is the call's deadline: past it the answer is 504
/// `deadline_exceeded` and the mutation's work is dropped.
#[tokio::test]
async fn connect_timeout_ms_is_the_deadline() {
    let h = Harness::with_extra("", SLOW_MUTATION, |_| {}).await;
    let r = http1(
        h.app().addr,
        "POST",
        MUTATE,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer dev-alice"),
            ("connect-timeout-ms", "300"),
        ],
        json!({"mutation": "slow_rename", "params": {"title": {"string": "late"}, "secs": {"float": 3}}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "deadline_exceeded");
    assert!(
        r.json()["message"].as_str().unwrap().contains("300 ms"),
        "{}",
        r.json()
    );
    // Its transaction rolled back.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let n = h
        .query_i64("SELECT count(*) FROM tasks WHERE title = 'late'")
        .await;
    assert_eq!(n, 0);
}

/// The offline service's unary methods speak Connect too; its client
/// streaming `Push` does not.
#[tokio::test]
async fn offline_unary_methods_speak_connect() {
    const SCHEMA: &str = r#"
CREATE TABLE notes (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    title        text NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO arcana_eval;
"#;
    const CONFIG: &str = r#"
[offline]
min_app_version = "1.0.0"

[[offline.tables]]
table = "notes"
scope = "workspace"
"#;
    let h = Harness::with_extra(SCHEMA, CONFIG, |_| {}).await;
    let addr = h.app().addr;
    let r = json_call(
        addr,
        "/arcana.v1.OfflineService/Capabilities",
        "dev-alice",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["tables"].as_array().is_some_and(|t| !t.is_empty()),
        "{}",
        r.json()
    );
    let r = json_call(
        addr,
        "/arcana.v1.OfflineService/RegisterClient",
        "dev-alice",
        json!({"clientId": "device-1", "platform": "web", "appVersion": "0.9.0"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.json());
    assert_eq!(r.json()["code"], "failed_precondition");
    let r = json_call(
        addr,
        "/arcana.v1.OfflineService/Push",
        "dev-alice",
        json!({}),
    )
    .await;
    assert_eq!(r.status, 501);
}
