//! A GGUF file's metadata.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_serving::fuzzing::gguf_metadata(data);
});
