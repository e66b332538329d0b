//! The header stored in front of every block on persistent media (disk slots and
//! objects), so that a torn, stale or corrupted block is detected on read and never
//! returned as data.
//!
//! Layout (64 bytes, little-endian):
//!
//! | bytes  | field                                                         |
//! |--------|---------------------------------------------------------------|
//! | 0..4   | magic `TKVB`                                                  |
//! | 4..6   | format version (1)                                            |
//! | 6..8   | reserved, zero                                                |
//! | 8..16  | payload length in bytes                                       |
//! | 16..20 | crc32c of the payload                                         |
//! | 20..24 | reserved, zero                                                |
//! | 24..32 | namespace digest: model, KV layout signature, TP rank, salt   |
//! | 32..48 | block hash                                                    |
//! | 48..60 | reserved, zero                                                |
//! | 60..64 | crc32c of bytes 0..60                                         |
//!
//! The namespace digest covers the KV layout signature, so a block written under one
//! layout can never be read back under another.

use crate::BlockKey;

/// Size of the header in bytes.
pub const HEADER_LEN: usize = 64;
/// `TKVB`.
pub const MAGIC: [u8; 4] = *b"TKVB";
/// Current format version.
pub const FORMAT_VERSION: u16 = 1;

/// Why a stored block was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Corruption {
    /// Fewer bytes than the header (or the header's length) needs.
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// A format version this build cannot read.
    UnsupportedVersion(u16),
    /// A reserved byte is not zero (version 1 writes zeros there).
    ReservedNotZero,
    /// The header's own crc32c does not match it.
    HeaderChecksum,
    /// An intact header of another block (a stale or misplaced slot).
    WrongKey {
        /// The key the header names.
        found: BlockKey,
    },
    /// The header's payload length is not the one expected.
    WrongLength {
        /// The header's length.
        found: u64,
        /// The length the index (or the caller) expects.
        expected: u64,
    },
    /// The payload's crc32c does not match the header's.
    PayloadChecksum {
        /// The payload's crc32c.
        found: u32,
        /// The header's.
        expected: u32,
    },
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Corruption::Truncated { have, need } => {
                write!(f, "truncated block: {have} bytes, need {need}")
            }
            Corruption::BadMagic => write!(f, "bad magic"),
            Corruption::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Corruption::ReservedNotZero => write!(f, "reserved header bytes are not zero"),
            Corruption::HeaderChecksum => write!(f, "header checksum mismatch"),
            Corruption::WrongKey { found } => write!(f, "slot holds another block ({found})"),
            Corruption::WrongLength { found, expected } => {
                write!(f, "length {found} in header, expected {expected}")
            }
            Corruption::PayloadChecksum { found, expected } => {
                write!(f, "payload crc32c {found:08x}, header says {expected:08x}")
            }
        }
    }
}

/// Encodes the header of `payload` stored under `key`.
pub fn encode(key: BlockKey, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[16..20].copy_from_slice(&crate::checksum::crc32c(payload).to_le_bytes());
    h[24..32].copy_from_slice(&key.namespace.to_le_bytes());
    h[32..48].copy_from_slice(&key.hash.to_le_bytes());
    let crc = crate::checksum::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// What a well-formed header says: the block's key, payload length and payload crc32c.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The block's key.
    pub key: BlockKey,
    /// The payload's length in bytes.
    pub len: u64,
    /// The payload's crc32c (Castagnoli).
    pub crc: u32,
}

/// Decodes the header at the start of `stored`: magic, header checksum, version and
/// reserved bytes checked; the payload is not.
pub fn read_header(stored: &[u8]) -> Result<Header, Corruption> {
    if stored.len() < HEADER_LEN {
        return Err(Corruption::Truncated {
            have: stored.len(),
            need: HEADER_LEN,
        });
    }
    let h = &stored[..HEADER_LEN];
    if h[0..4] != MAGIC {
        return Err(Corruption::BadMagic);
    }
    if le_u32(&h[60..64]) != crate::checksum::crc32c(&h[..60]) {
        return Err(Corruption::HeaderChecksum);
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != FORMAT_VERSION {
        return Err(Corruption::UnsupportedVersion(version));
    }
    // Found by fuzzing: a header with a valid checksum over nonzero reserved bytes is
    // not one this version wrote.
    if [&h[6..8], &h[20..24], &h[48..60]]
        .iter()
        .any(|r| r.iter().any(|&b| b != 0))
    {
        return Err(Corruption::ReservedNotZero);
    }
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&h[32..48]);
    Ok(Header {
        key: BlockKey::new(le_u64(&h[24..32]), u128::from_le_bytes(hash)),
        len: le_u64(&h[8..16]),
        crc: le_u32(&h[16..20]),
    })
}

/// Checks `stored` (header followed by at least the payload) against the key and,
/// when known, the expected payload length. Returns the payload length.
pub fn verify(
    stored: &[u8],
    key: BlockKey,
    expected_len: Option<u64>,
) -> Result<usize, Corruption> {
    let header = read_header(stored)?;
    if header.key != key {
        return Err(Corruption::WrongKey { found: header.key });
    }
    let len = header.len;
    if let Some(expected) = expected_len
        && expected != len
    {
        return Err(Corruption::WrongLength {
            found: len,
            expected,
        });
    }
    let need = HEADER_LEN as u64 + len;
    if (stored.len() as u64) < need {
        return Err(Corruption::Truncated {
            have: stored.len(),
            need: usize::try_from(need).unwrap_or(usize::MAX),
        });
    }
    // `need` fits in usize: it is at most stored.len().
    let payload = &stored[HEADER_LEN..need as usize];
    let expected = header.crc;
    let found = crate::checksum::crc32c(payload);
    if found != expected {
        return Err(Corruption::PayloadChecksum { found, expected });
    }
    Ok(payload.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: BlockKey, payload: &[u8]) -> Vec<u8> {
        let mut v = encode(key, payload).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let key = BlockKey::new(7, 99);
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
        let good = stored(key, &payload);
        assert_eq!(verify(&good, key, Some(1000)), Ok(1000));
        assert_eq!(verify(&good, key, None), Ok(1000));

        let mut flipped = good.clone();
        flipped[HEADER_LEN + 500] ^= 1;
        assert!(matches!(
            verify(&flipped, key, None),
            Err(Corruption::PayloadChecksum { .. })
        ));

        let mut bad_header = good.clone();
        bad_header[9] ^= 0x10;
        assert_eq!(
            verify(&bad_header, key, None),
            Err(Corruption::HeaderChecksum)
        );

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(verify(&bad_magic, key, None), Err(Corruption::BadMagic));

        assert!(matches!(
            verify(&good, BlockKey::new(7, 100), None),
            Err(Corruption::WrongKey { .. })
        ));
        assert!(matches!(
            verify(&good, key, Some(999)),
            Err(Corruption::WrongLength { .. })
        ));
        assert!(matches!(
            verify(&good[..HEADER_LEN + 10], key, None),
            Err(Corruption::Truncated { .. })
        ));
        assert!(matches!(
            verify(&[0u8; 10], key, None),
            Err(Corruption::Truncated { .. })
        ));
        // An all-zero slot (never written) is not a block.
        assert_eq!(verify(&[0u8; 4096], key, None), Err(Corruption::BadMagic));
        // A reserved byte set, the header checksum recomputed (found by fuzzing).
        for at in [6, 21, 57] {
            let mut crafted = good.clone();
            crafted[at] = 1;
            let crc = crate::checksum::crc32c(&crafted[..60]);
            crafted[60..64].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(
                verify(&crafted, key, None),
                Err(Corruption::ReservedNotZero),
                "byte {at}"
            );
        }
    }
}
