//! The reference: plain tonic server streaming with no engine. The same
//! `Connect` streams and HTTP/2 connections as the engine run, and frames
//! of the same size, pushed by one broadcaster into every stream's bounded
//! channel as fast as the streams take them. Its deliveries per second are
//! the ceiling the engine's fan-out is compared with.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arcana::grpc::server::arcana_service_server::{ArcanaService, ArcanaServiceServer};
use arcana::proto as pb;
use arcana::wire::encoded::WireServerMessage;
use futures_util::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Out = Pin<Box<dyn Stream<Item = Result<WireServerMessage, Status>> + Send>>;

struct Raw {
    snapshot: bytes::Bytes,
    streams: Arc<Mutex<Vec<mpsc::Sender<WireServerMessage>>>>,
}

fn frame(body: pb::view_frame::Body) -> bytes::Bytes {
    pb::ServerMessage {
        kind: Some(pb::server_message::Kind::Frame(pb::ViewFrame {
            view_id: "bucket/0000000000000000".into(),
            epoch: 0,
            version: 0,
            prev_version: 0,
            body: Some(body),
            prev_epoch: 0,
        })),
    }
    .encode_to_vec()
    .into()
}

/// A diff frame of about `bytes` encoded bytes (one patched text field).
fn diff_of_size(bytes: usize) -> bytes::Bytes {
    let make = |pad: usize| {
        frame(pb::view_frame::Body::Diff(pb::ViewDiff {
            patches: vec![pb::RowPatch {
                table: "items".into(),
                id: "1".into(),
                ops: vec![pb::FieldOp {
                    op: pb::PatchOp::Replace as i32,
                    path: "/title".into(),
                    value: Some(pb::Value {
                        kind: Some(pb::value::Kind::String("x".repeat(pad))),
                    }),
                }],
            }],
            ..Default::default()
        }))
    };
    let base = make(0).len();
    make(bytes.saturating_sub(base))
}

fn only_streams<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("the reference server only streams"))
}

#[tonic::async_trait]
impl ArcanaService for Raw {
    type ConnectStream = Out;
    type OpenSessionStream = Out;

    async fn connect(
        &self,
        _req: Request<Streaming<arcana::grpc::codec::Inbound>>,
    ) -> Result<Response<Out>, Status> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(WireServerMessage::One(self.snapshot.clone()))
            .await
            .expect("fresh channel");
        self.streams.lock().expect("lock").push(tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }

    async fn open_session(
        &self,
        _: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<Out>, Status> {
        Err(Status::unimplemented("use Connect"))
    }

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        only_streams()
    }

    async fn unsubscribe(
        &self,
        _: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        only_streams()
    }

    async fn sync(
        &self,
        _: Request<arcana::grpc::codec::LazySync>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        only_streams()
    }

    async fn reanchor(
        &self,
        _: Request<pb::ReanchorRequest>,
    ) -> Result<Response<pb::ReanchorResponse>, Status> {
        only_streams()
    }

    async fn mutate(
        &self,
        _: Request<pb::MutateRequest>,
    ) -> Result<Response<pb::MutateResponse>, Status> {
        only_streams()
    }

    async fn notify(
        &self,
        _: Request<pb::NotifyRequest>,
    ) -> Result<Response<pb::NotifyResponse>, Status> {
        only_streams()
    }

    async fn describe(
        &self,
        _: Request<pb::DescribeRequest>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        only_streams()
    }

    async fn stats(
        &self,
        _: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        only_streams()
    }
}

/// Serves on `port`; once `streams` streams are open, broadcasts diff frames
/// of `frame_bytes` bytes to all of them for `seconds`, then idles.
pub async fn serve(port: u16, streams: usize, frame_bytes: usize, seconds: f64) {
    let list = Arc::new(Mutex::new(Vec::new()));
    let raw = Raw {
        snapshot: frame(pb::view_frame::Body::Snapshot(pb::Snapshot {
            graph: "bucket".into(),
            ..Default::default()
        })),
        streams: list.clone(),
    };
    let diff = WireServerMessage::One(diff_of_size(frame_bytes));
    tokio::spawn(async move {
        loop {
            if list.lock().expect("lock").len() >= streams {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let senders: Vec<_> = list.lock().expect("lock").clone();
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            for tx in &senders {
                let _ = tx.send(diff.clone()).await;
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tonic::transport::Server::builder()
        .add_service(ArcanaServiceServer::new(raw))
        .serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        )
        .await
        .expect("serve");
}
