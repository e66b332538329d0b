//! A cluster worker's internal API bodies and replies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_serving::fuzzing::internal_api_body(data);
});
