//! An OpenAI request body.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_serving::fuzzing::openai_request_body(data);
});
