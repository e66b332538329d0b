//! A record of the disk tier's RocksDB index.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_tiers::fuzzing::index_record(data);
});
