//! Every target in one binary, picked by `TIERKV_FUZZ_TARGET` (one instrumented build
//! to carry to a many-core machine and run a process per target there).
#![no_main]

use std::sync::OnceLock;

type Target = fn(&[u8]) -> bool;

fn target() -> Target {
    static PICKED: OnceLock<Target> = OnceLock::new();
    *PICKED.get_or_init(|| {
        let name = std::env::var("TIERKV_FUZZ_TARGET").unwrap_or_default();
        match name.as_str() {
            "block_header" => tierkv_tiers::fuzzing::block_header,
            "index_record" => tierkv_tiers::fuzzing::index_record,
            "store_config_toml" => tierkv_kvstore::fuzzing::store_config_toml,
            "block_service_message" => tierkv_kvstore::fuzzing::block_service_message,
            "data_channel_connection" => tierkv_kvstore::fuzzing::data_channel_connection,
            "publish_stream" => tierkv_kvstore::fuzzing::publish_stream,
            "openai_request_body" => tierkv_serving::fuzzing::openai_request_body,
            "internal_api_body" => tierkv_serving::fuzzing::internal_api_body,
            "gguf_metadata" => tierkv_serving::fuzzing::gguf_metadata,
            "trace_lines" => tierkv_serving::fuzzing::trace_lines,
            #[cfg(feature = "engine")]
            "engine_config_toml" => tierkv_engine::fuzzing::engine_config_toml,
            other => {
                eprintln!("TIERKV_FUZZ_TARGET={other:?} names no target");
                std::process::exit(2);
            }
        }
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = target()(data);
});
