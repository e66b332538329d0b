//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are. Not an API.

use crate::BlockKey;
use crate::header::{HEADER_LEN, encode, verify};

/// A block as read back from a disk slot or an object: header, then payload.
pub fn block_header(data: &[u8]) {
    let key = BlockKey::new(7, 42);
    for expected in [None, Some(data.len().saturating_sub(HEADER_LEN) as u64)] {
        if let Ok(len) = verify(data, key, expected) {
            // What passes is exactly what `encode` writes for that payload.
            let payload = &data[HEADER_LEN..HEADER_LEN + len];
            assert_eq!(&data[..HEADER_LEN], &encode(key, payload)[..]);
        }
    }
}

/// A record of the disk tier's RocksDB index: key bytes, then value bytes.
pub fn index_record(data: &[u8]) {
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let (key, value) = data.split_at(split);
    crate::tier::disk_index::fuzz_record(key, value);
}
