//! The block service's codec: prost messages with buffers sized for KV blocks.
//!
//! tonic's default 8 KiB codec buffers grow by doubling, copying a multi-MiB block
//! chunk several times on each side; these start at one chunk's size.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer: a default 4 MiB chunk plus its framing.
pub const BUFFER_BYTES: usize = (4 << 20) + (64 << 10);

/// A [`tonic_prost::ProstCodec`] with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct BlockCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BlockCodec<T, U> {
    fn default() -> Self {
        BlockCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, BUFFER_BYTES)
}

impl<T, U> Codec for BlockCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BlockDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BlockDecoder(ProstDecoder::new(settings()))
    }
}

/// prost's decoder, except that bytes that are not a valid message are the sender's
/// fault: `INVALID_ARGUMENT`, not tonic's `INTERNAL`.
#[derive(Debug)]
pub struct BlockDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for BlockDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| match s.code() {
            Code::Internal => {
                Status::invalid_argument(format!("malformed message: {}", s.message()))
            }
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
