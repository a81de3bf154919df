//! The codec of the session streams: prost encoding with small initial
//! buffers. Tonic's default gives every call an 8 KiB encode buffer and an
//! 8 KiB decode buffer up front; a long-lived, mostly idle session stream
//! would hold both for its whole life, which dominates the memory of a
//! subscription. The buffers still grow for large messages.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
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
