//! `WireServerMessage`: an already encoded `arcana.v1.ServerMessage`.
//!
//! The streaming methods send these instead of `ServerMessage` so a view
//! frame is serialized once and its bytes are copied into every subscriber's
//! stream. The bytes are a complete `ServerMessage`, so what goes on the wire
//! is exactly what encoding the message would have produced.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{skip_field, DecodeContext, WireType};
use prost::DecodeError;

/// Pre-encoded `ServerMessage` bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireServerMessage(pub Bytes);

impl prost::Message for WireServerMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
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
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
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
        let wire = WireServerMessage(msg.encode_to_vec().into());
        let bytes = wire.encode_to_vec();
        assert_eq!(proto::ServerMessage::decode(bytes.as_slice()).unwrap(), msg);
    }
}
