//! `WireServerMessage`: an already encoded `arcana.v1.ServerMessage`.
//!
//! The streaming methods send these instead of `ServerMessage` so a view
//! frame is serialized once and its bytes are copied into every subscriber's
//! stream. The bytes are a complete `ServerMessage`, so what goes on the wire
//! is exactly what encoding the message would have produced.
//!
//! A batch (`ServerMessage.frames`) is assembled from frames that are each
//! already encoded as `ServerMessage { frame }`: an element of
//! `FrameBatch.frames` is the same length-delimited `ViewFrame`, under field
//! 1 instead of field 3, so only the first byte of each piece differs.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{encode_varint, encoded_len_varint, skip_field, DecodeContext, WireType};
use prost::DecodeError;

/// The key byte of `ServerMessage.frame` (field 3, length-delimited).
const FRAME_KEY: u8 = 3 << 3 | 2;
/// The key byte of `ServerMessage.frames` (field 4, length-delimited).
const BATCH_KEY: u8 = 4 << 3 | 2;
/// The key byte of `FrameBatch.frames` (field 1, length-delimited).
const ELEMENT_KEY: u8 = 1 << 3 | 2;

/// Pre-encoded `ServerMessage` bytes, or several encoded frames sent as one
/// `FrameBatch`.
#[derive(Clone, Debug, PartialEq)]
pub enum WireServerMessage {
    /// A complete `ServerMessage`.
    One(Bytes),
    /// Encoded `ServerMessage { frame }` messages, sent as one batch.
    Batch(Vec<Bytes>),
}

impl Default for WireServerMessage {
    fn default() -> Self {
        WireServerMessage::One(Bytes::new())
    }
}

impl WireServerMessage {
    /// Frames from `encoded` (each a `ServerMessage { frame }`): one as
    /// itself, several as a batch.
    pub fn frames(mut encoded: Vec<Bytes>) -> Self {
        if encoded.len() == 1 {
            return WireServerMessage::One(encoded.pop().expect("one"));
        }
        debug_assert!(encoded.iter().all(|b| b.first() == Some(&FRAME_KEY)));
        WireServerMessage::Batch(encoded)
    }

    fn batch_body_len(pieces: &[Bytes]) -> usize {
        pieces.iter().map(Bytes::len).sum()
    }
}

/// The key byte of `ViewFrame.view_id` (field 1, length-delimited).
const VIEW_ID_KEY: u8 = 1 << 3 | 2;

/// An encoded `ServerMessage { frame }` with its frame's `view_id` replaced
/// by `view_id`: a protobuf reader takes the last value of a field, so the
/// new id is appended to the shared bytes rather than re-encoding the frame.
/// For a window the session re-anchored onto another view, which keeps the
/// id the client first knew it by.
pub fn with_view_id(encoded: &Bytes, view_id: &str) -> Bytes {
    debug_assert_eq!(encoded.first(), Some(&FRAME_KEY));
    let mut rest = &encoded[1..];
    let len = prost::encoding::decode_varint(&mut rest).expect("an encoded frame") as usize;
    let extra = 1 + encoded_len_varint(view_id.len() as u64) + view_id.len();
    let mut out = bytes::BytesMut::with_capacity(encoded.len() + extra + 2);
    out.put_u8(FRAME_KEY);
    encode_varint((len + extra) as u64, &mut out);
    out.put_slice(&rest[..len]);
    out.put_u8(VIEW_ID_KEY);
    encode_varint(view_id.len() as u64, &mut out);
    out.put_slice(view_id.as_bytes());
    out.freeze()
}

impl prost::Message for WireServerMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WireServerMessage::One(b) => buf.put_slice(b),
            WireServerMessage::Batch(pieces) => {
                buf.put_u8(BATCH_KEY);
                encode_varint(Self::batch_body_len(pieces) as u64, buf);
                for p in pieces {
                    buf.put_u8(ELEMENT_KEY);
                    buf.put_slice(&p[1..]);
                }
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Never decoded by the server; skip rather than misread.
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            WireServerMessage::One(b) => b.len(),
            WireServerMessage::Batch(pieces) => {
                let body = Self::batch_body_len(pieces);
                1 + encoded_len_varint(body as u64) + body
            }
        }
    }

    fn clear(&mut self) {
        *self = WireServerMessage::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use prost::Message;

    #[test]
    fn wire_bytes_decode_as_the_message_they_came_from() {
        let msg = proto::ServerMessage {
            kind: Some(proto::server_message::Kind::Opened(proto::SessionOpened {
                session_id: "s1".into(),
                protocol_version: 1,
                user_id: "u".into(),
                workspace_id: "w".into(),
            })),
        };
        let wire = WireServerMessage::One(msg.encode_to_vec().into());
        let bytes = wire.encode_to_vec();
        assert_eq!(proto::ServerMessage::decode(bytes.as_slice()).unwrap(), msg);
    }

    fn frame(version: u64, view: &str) -> proto::ViewFrame {
        proto::ViewFrame {
            view_id: view.into(),
            epoch: 7,
            version,
            prev_version: version - 1,
            prev_epoch: 0,
            body: Some(proto::view_frame::Body::Diff(proto::ViewDiff {
                total: Some(version as i64 * 1000),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_batch_decodes_as_frame_batch_in_order() {
        // One frame large enough that its length takes a two-byte varint.
        let big = "v".repeat(300);
        let frames = vec![frame(2, "a/1"), frame(3, &big), frame(4, "a/1")];
        let encoded: Vec<Bytes> = frames
            .iter()
            .map(|f| {
                proto::ServerMessage {
                    kind: Some(proto::server_message::Kind::Frame(f.clone())),
                }
                .encode_to_vec()
                .into()
            })
            .collect();
        let wire = WireServerMessage::frames(encoded);
        let bytes = wire.encode_to_vec();
        assert_eq!(bytes.len(), wire.encoded_len());
        let got = proto::ServerMessage::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            got.kind,
            Some(proto::server_message::Kind::Frames(proto::FrameBatch {
                frames
            }))
        );
    }

    #[test]
    fn an_appended_view_id_replaces_the_frame_s_own() {
        let msg = proto::ServerMessage {
            kind: Some(proto::server_message::Kind::Frame(frame(9, "w/aaaa"))),
        };
        let bytes: Bytes = msg.encode_to_vec().into();
        let renamed = with_view_id(&bytes, "w/first");
        let got = proto::ServerMessage::decode(renamed.as_ref()).unwrap();
        let mut want = frame(9, "w/first");
        want.view_id = "w/first".into();
        assert_eq!(
            got.kind,
            Some(proto::server_message::Kind::Frame(want.clone()))
        );
        // Still a frame a batch can carry.
        let batch = WireServerMessage::frames(vec![renamed, bytes]).encode_to_vec();
        let got = proto::ServerMessage::decode(batch.as_slice()).unwrap();
        let Some(proto::server_message::Kind::Frames(b)) = got.kind else {
            panic!("not a batch")
        };
        assert_eq!(b.frames[0], want);
        assert_eq!(b.frames[1].view_id, "w/aaaa");
    }

    #[test]
    fn a_single_frame_is_sent_as_itself() {
        let msg = proto::ServerMessage {
            kind: Some(proto::server_message::Kind::Frame(frame(5, "b/2"))),
        };
        let wire = WireServerMessage::frames(vec![msg.encode_to_vec().into()]);
        let bytes = wire.encode_to_vec();
        assert_eq!(proto::ServerMessage::decode(bytes.as_slice()).unwrap(), msg);
    }
}
