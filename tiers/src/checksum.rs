//! The block checksum: CRC-32C (Castagnoli), the one used in block headers and on the
//! wire. Computed with `crc-fast` (PCLMULQDQ / AVX-512 folding, about 60 GB/s on the
//! development VM against 28 GB/s for the SSE4.2 `crc32` instruction loop).

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    // A CRC-32 fits in 32 bits; the library returns it widened to u64.
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_the_castagnoli_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(super::crc32c(b""), 0);
    }
}
