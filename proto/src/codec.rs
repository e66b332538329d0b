//! The block service's codec: prost messages with buffers sized for KV blocks.
//!
//! tonic's default 8 KiB codec buffers grow by doubling, copying a multi-MiB block
//! chunk several times on each side; these start at one chunk's size.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
