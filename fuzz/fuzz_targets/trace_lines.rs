//! Lines of a trace or request log.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_serving::fuzzing::trace_lines(data);
});
