//! The codec of the session streams: prost encoding with small initial
//! buffers. Tonic's default gives every call an 8 KiB encode buffer and an
//! 8 KiB decode buffer up front; a long-lived, mostly idle session stream
//! would hold both for its whole life, which dominates the memory of a
//! subscription. The buffers still grow for large messages.
//!
//! Also the codecs that bound what decoding a request costs before it is
//! judged: small calls refuse large messages undecoded, and a Sync's views
//! are counted on the wire before any is decoded.

use std::marker::PhantomData;

use bytes::Buf;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial per-call buffer size, in bytes.
const INITIAL_BUFFER: usize = 256;
/// Bytes encoded before the stream yields them to the transport (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with small initial buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
    }
}

/// Most bytes of a request to the calls that take small messages
/// (Subscribe, Unsubscribe, Reanchor, Describe, Stats, OpenSession): a
/// larger one is refused before it is decoded.
pub const SMALL_REQUEST_BYTES: usize = 64 * 1024;

/// Prost encoding whose decoder refuses messages over
/// [`SMALL_REQUEST_BYTES`] before decoding them.
#[derive(Debug, Clone)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        SmallCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SmallDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SmallDecoder(PhantomData)
    }
}

/// See [`SmallCodec`].
#[derive(Debug)]
pub struct SmallDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SmallDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let n = buf.remaining();
        if n > SMALL_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the request is {n} bytes; this call takes at most {SMALL_REQUEST_BYTES}"
            )));
        }
        U::decode(buf).map(Some).map_err(invalid)
    }
}

fn invalid(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("the request is not a valid message: {e}"))
}

/// One field of an encoded message: its number, wire type, where it starts
/// (its tag) and where its value lies.
struct Field {
    number: u32,
    wire: u8,
    start: usize,
    value: std::ops::Range<usize>,
}

/// Calls `each` with the top-level fields of an encoded message in order,
/// without decoding any value or holding a list of them.
fn walk(buf: &[u8], mut each: impl FnMut(Field) -> Result<(), Status>) -> Result<(), Status> {
    let bad = || Status::invalid_argument("the request is not a valid message");
    let varint = |at: &mut usize| -> Result<u64, Status> {
        let mut s = &buf[*at..];
        let before = s.len();
        let v = prost::encoding::decode_varint(&mut s).map_err(|_| bad())?;
        *at += before - s.len();
        Ok(v)
    };
    let mut at = 0;
    while at < buf.len() {
        let start = at;
        let key = varint(&mut at)?;
        let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
        let len = match wire {
            0 => {
                varint(&mut at)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut at)?).map_err(|_| bad())?,
            5 => 4,
            _ => return Err(bad()),
        };
        let end = at
            .checked_add(len)
            .filter(|&e| e <= buf.len())
            .ok_or_else(bad)?;
        each(Field {
            number,
            wire,
            start,
            value: at..end,
        })?;
        at = end;
    }
    Ok(())
}

/// The views of a Sync, counted but not decoded: each decoded `SyncView`
/// costs far more memory than its two bytes on the wire, so the count is
/// judged (`server.max_sync_views`) before any is materialized.
#[derive(Debug, Default)]
pub struct LazyViews {
    count: usize,
    /// The encoded `SyncRequest` (or its parts, concatenated).
    raw: bytes::Bytes,
}

impl LazyViews {
    fn scan(raw: bytes::Bytes) -> Result<(LazyViews, String), Status> {
        let mut count = 0;
        let mut session_id = String::new();
        walk(&raw, |f| {
            match (f.number, f.wire) {
                (1, 2) => count += 1,
                (2, 2) => {
                    session_id = std::str::from_utf8(&raw[f.value])
                        .map_err(|_| Status::invalid_argument("session_id is not UTF-8"))?
                        .to_owned()
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok((LazyViews { count, raw }, session_id))
    }

    /// Views already decoded, encoded again (a Sync that did not come
    /// through the decoder).
    pub fn from_views(views: Vec<crate::proto::SyncView>) -> LazyViews {
        let count = views.len();
        let raw = crate::proto::SyncRequest {
            views,
            session_id: String::new(),
        }
        .encode_to_vec();
        LazyViews {
            count,
            raw: raw.into(),
        }
    }

    /// How many views the Sync names.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Decodes the views.
    pub fn decode(self) -> Result<Vec<crate::proto::SyncView>, Status> {
        crate::proto::SyncRequest::decode(self.raw)
            .map(|r| r.views)
            .map_err(invalid)
    }
}

/// A unary `Sync` request whose views are not yet decoded.
#[derive(Debug, Default)]
pub struct LazySync {
    /// The session the Sync is for.
    pub session_id: String,
    /// The views, counted.
    pub views: LazyViews,
}

/// A `Connect` request as decoded: a Sync's views are counted, not decoded.
#[derive(Debug)]
pub struct Inbound {
    /// The request; a Sync's `views` are left out (see `views`).
    pub msg: crate::proto::ClientMessage,
    /// A Sync's views, when the request is a Sync.
    pub views: Option<LazyViews>,
}

fn decode_client_message(bytes: bytes::Bytes) -> Result<Inbound, Status> {
    use crate::proto::{client_message::Kind, ClientMessage, SyncRequest};
    // The oneof's last field wins, as in any protobuf decoder.
    let mut last_kind = 0;
    let mut has_sync = false;
    walk(&bytes, |f| {
        if (2..=7).contains(&f.number) {
            last_kind = f.number;
        }
        has_sync |= f.number == 4;
        Ok(())
    })?;
    if !has_sync {
        let msg = ClientMessage::decode(bytes).map_err(invalid)?;
        return Ok(Inbound { msg, views: None });
    }
    // Decode everything but the Sync parts, which are kept encoded: the
    // one part as a slice of the request, several (merged, as protobuf
    // merges repeated occurrences) concatenated.
    let mut rest = Vec::new();
    let mut parts = Vec::new();
    walk(&bytes, |f| {
        if f.number == 4 {
            parts.push(f.value);
        } else {
            rest.extend_from_slice(&bytes[f.start..f.value.end]);
        }
        Ok(())
    })?;
    let sync: bytes::Bytes = match parts.as_slice() {
        [one] => bytes.slice(one.clone()),
        many => many
            .iter()
            .flat_map(|r| bytes[r.clone()].iter().copied())
            .collect::<Vec<u8>>()
            .into(),
    };
    let mut msg = ClientMessage::decode(rest.as_slice()).map_err(invalid)?;
    if last_kind == 4 {
        let (views, session_id) = LazyViews::scan(sync)?;
        msg.kind = Some(Kind::Sync(SyncRequest {
            views: Vec::new(),
            session_id,
        }));
        return Ok(Inbound {
            msg,
            views: Some(views),
        });
    }
    Ok(Inbound { msg, views: None })
}

/// The codec of `Connect`: lean buffers (see [`LeanCodec`]) and requests
/// decoded as [`Inbound`].
#[derive(Debug, Clone, Default)]
pub struct ConnectCodec;

impl Codec for ConnectCodec {
    type Encode = crate::wire::encoded::WireServerMessage;
    type Decode = Inbound;
    type Encoder = ProstEncoder<crate::wire::encoded::WireServerMessage>;
    type Decoder = InboundDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<crate::wire::encoded::WireServerMessage, crate::proto::ClientMessage>::raw_encoder(
            BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD),
        )
    }

    fn decoder(&mut self) -> Self::Decoder {
        InboundDecoder
    }
}

/// See [`ConnectCodec`].
#[derive(Debug)]
pub struct InboundDecoder;

impl Decoder for InboundDecoder {
    type Item = Inbound;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Inbound>, Status> {
        decode_client_message(buf.copy_to_bytes(buf.remaining())).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
    }
}

/// The codec of the unary `Sync`: requests decoded as [`LazySync`].
#[derive(Debug, Clone, Default)]
pub struct SyncCodec;

impl Codec for SyncCodec {
    type Encode = crate::proto::SyncResponse;
    type Decode = LazySync;
    type Encoder = ProstEncoder<crate::proto::SyncResponse>;
    type Decoder = LazySyncDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<crate::proto::SyncResponse, crate::proto::SyncRequest>::raw_encoder(
            BufferSettings::default(),
        )
    }

    fn decoder(&mut self) -> Self::Decoder {
        LazySyncDecoder
    }
}

/// See [`SyncCodec`].
#[derive(Debug)]
pub struct LazySyncDecoder;

impl Decoder for LazySyncDecoder {
    type Item = LazySync;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<LazySync>, Status> {
        let (views, session_id) = LazyViews::scan(buf.copy_to_bytes(buf.remaining()))?;
        Ok(Some(LazySync { session_id, views }))
    }
}
