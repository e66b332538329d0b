//! An engine or frontend configuration file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_engine::fuzzing::engine_config_toml(data);
});
