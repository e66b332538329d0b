//! The block header of disk and object tiers: any bytes read back from a medium.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_tiers::fuzzing::block_header(data);
});
