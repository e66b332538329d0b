//! A gRPC message body of the block service.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_kvstore::fuzzing::block_service_message(data);
});
