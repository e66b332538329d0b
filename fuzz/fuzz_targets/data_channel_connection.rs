//! A data-channel connection's bytes (hello, then requests).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_kvstore::fuzzing::data_channel_connection(data);
});
