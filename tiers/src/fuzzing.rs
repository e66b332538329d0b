//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are, and says whether the decoder
//! accepted it (the corpus test checks that valid inputs reach it). Not an API.

use crate::BlockKey;
use crate::header::{HEADER_LEN, encode, verify};

/// A block as read back from a disk slot or an object: header, then payload.
pub fn block_header(data: &[u8]) -> bool {
    let key = BlockKey::new(7, 42);
    let accepted = verify(data, key, None).is_ok();
    for expected in [None, Some(data.len().saturating_sub(HEADER_LEN) as u64)] {
        if let Ok(len) = verify(data, key, expected) {
            // What passes is exactly what `encode` writes for that payload.
            let payload = &data[HEADER_LEN..HEADER_LEN + len];
            assert_eq!(&data[..HEADER_LEN], &encode(key, payload)[..]);
        }
    }
    accepted
}

/// A record of the disk tier's RocksDB index: a key length byte, the key, the value.
pub fn index_record(data: &[u8]) -> bool {
    // The first byte is the key's length; the rest is the key, then the value.
    let Some((&key_len, rest)) = data.split_first() else {
        return false;
    };
    let (key, value) = rest.split_at((key_len as usize).min(rest.len()));
    crate::tier::disk_index::fuzz_record(key, value)
}
