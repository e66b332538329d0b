//! A Publish stream's body (gRPC frames of chunks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_kvstore::fuzzing::publish_stream(data);
});
