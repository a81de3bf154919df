//! A session's response stream: frames and replies from its queue,
//! batched up to `server.max_batch_bytes`, snapshots in parts, and the
//! session closed when the stream is dropped or its token expires.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;
use tokio::sync::oneshot;
use tonic::Status;

use super::limits::SessionSlot;
use crate::engine::{Engine, Frame, FrameBody, Outbound, Session};
use crate::wire::convert::encoded_frame;
use crate::wire::encoded::WireServerMessage;
use crate::wire::parts::SnapshotParts;

/// What a session holds besides the engine's state: its slot in the session
/// count, and when its token expires.
pub(super) struct Lease {
    pub(super) _slot: SessionSlot,
    pub(super) expires_at: Option<SystemTime>,
}

pub(super) fn expired() -> Status {
    Status::unauthenticated(
        "the token of this session has expired: reconnect with a fresh token and Sync your views",
    )
}

/// Closes the session when the response stream is dropped (client gone).
/// Also stops the request reader, so a closed session releases the whole
/// call even while the client keeps its side open.
struct Guard {
    engine: Engine,
    session: Arc<Session>,
    batch_bytes: usize,
    part_bytes: usize,
    /// A snapshot going out in parts, ahead of anything else.
    parts: Option<SnapshotParts>,
    fail: Option<oneshot::Receiver<Status>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// When the session's token expires.
    deadline: Option<tokio::time::Instant>,
    _lease: Lease,
    done: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.engine.close_session(&self.session.id);
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

/// A session's response stream.
pub(super) type WireStream = Pin<Box<dyn Stream<Item = Result<WireServerMessage, Status>> + Send>>;

/// What a session stream batches and splits by.
pub(super) struct Sizes {
    /// Queued frames sent as one batch message, up to this many bytes.
    pub(super) batch_bytes: usize,
    /// Snapshots bigger than this go out in parts of about this size.
    pub(super) part_bytes: usize,
}

pub(super) fn session_stream(
    engine: &Engine,
    sizes: Sizes,
    session: Arc<Session>,
    lease: Lease,
    fail: Option<oneshot::Receiver<Status>>,
    reader: Option<tokio::task::JoinHandle<()>>,
) -> WireStream {
    let deadline = lease.expires_at.map(|t| {
        let left = t
            .duration_since(SystemTime::now())
            .unwrap_or(std::time::Duration::ZERO);
        tokio::time::Instant::now() + left
    });
    let guard = Guard {
        engine: engine.clone(),
        session,
        batch_bytes: sizes.batch_bytes,
        part_bytes: sizes.part_bytes,
        parts: None,
        fail,
        reader,
        deadline,
        _lease: lease,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(guard, |mut g| async move {
        if g.done {
            return None;
        }
        if let Some(parts) = g.parts.as_mut() {
            match parts.next_part() {
                Some(b) => return Some((Ok(sent(WireServerMessage::One(b))), g)),
                None => g.parts = None,
            }
        }
        let item = loop {
            let deadline = g.deadline;
            let expiry = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let fail = &mut g.fail;
            let failed = async move {
                match fail.as_mut() {
                    Some(rx) => rx.await.map_err(|_| ()),
                    None => std::future::pending().await,
                }
            };
            let session = &g.session;
            tokio::select! {
                biased;
                () = expiry => break Err(expired()),
                r = failed => if let Ok(status) = r { break Err(status) },
                item = session.next() => break Ok(item),
            }
            // The reader finished without an error: stop watching it.
            g.fail = None;
        };
        let item = match item {
            Ok(item) => item,
            Err(status) => {
                g.done = true;
                return Some((Err(status), g));
            }
        };
        let Some(item) = item else {
            // Closed by the server, not by the client: tell it to go elsewhere.
            if let Some(why) = g.session.ended() {
                g.done = true;
                return Some((Err(Status::unavailable(why.to_string())), g));
            }
            if g.engine.is_shutting_down() {
                g.done = true;
                return Some((Err(shutting_down()), g));
            }
            return None;
        };
        let msg = match item {
            Outbound::Message(b) => WireServerMessage::One(b),
            // A catch-up goes out whole, whatever the batch size, so the
            // client applies it as one step.
            Outbound::CatchUp(frames, alias) => WireServerMessage::frames(
                frames
                    .iter()
                    .map(|f| encoded_for(f, alias.as_deref()))
                    .collect(),
            ),
            Outbound::Frame(f, alias) if matches!(f.body, FrameBody::Snapshot(_)) => {
                let mut parts = SnapshotParts::new(f, alias, g.part_bytes);
                let first = parts.next_part().expect("a snapshot has a first part");
                g.parts = Some(parts);
                WireServerMessage::One(first)
            }
            Outbound::Frame(f, alias) => {
                // Frames that queued up while the client was reading go out
                // as one message: per-message costs dominate fan-out.
                let first = encoded_for(&f, alias.as_deref());
                let next = (first.len() < g.batch_bytes)
                    .then(|| g.session.try_next_frame())
                    .flatten();
                match next {
                    // The common case allocates nothing: the bytes are shared.
                    None => WireServerMessage::One(first),
                    Some((second, alias)) => {
                        let mut pieces = vec![first, encoded_for(&second, alias.as_deref())];
                        let mut size: usize = pieces.iter().map(|b| b.len()).sum();
                        while size < g.batch_bytes {
                            let Some((f, alias)) = g.session.try_next_frame() else {
                                break;
                            };
                            let b = encoded_for(&f, alias.as_deref());
                            size += b.len();
                            pieces.push(b);
                        }
                        WireServerMessage::frames(pieces)
                    }
                }
            }
        };
        Some((Ok(sent(msg)), g))
    }))
}

/// Counts a message on its way out.
pub(super) fn sent(msg: WireServerMessage) -> WireServerMessage {
    let hooks = crate::ops::metrics::hooks();
    hooks.sent_messages.inc();
    hooks
        .sent_bytes
        .inc_by(prost::Message::encoded_len(&msg) as u64);
    msg
}

/// A frame's shared encoding, under the id the session knows its view by.
pub(super) fn encoded_for(f: &Frame, alias: Option<&str>) -> bytes::Bytes {
    let bytes = encoded_frame(f);
    match alias {
        Some(id) => crate::wire::encoded::with_view_id(&bytes, id),
        None => bytes,
    }
}

/// How a session stream ends when the server shuts down: clients retry
/// UNAVAILABLE, reconnecting to another instance.
pub(super) fn shutting_down() -> Status {
    Status::unavailable(
        "the server is shutting down: reconnect (to another instance) and Sync your views",
    )
}
