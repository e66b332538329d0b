//! A store configuration file (TOML).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tierkv_kvstore::fuzzing::store_config_toml(data);
});
