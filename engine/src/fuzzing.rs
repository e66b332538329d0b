//! Entry points for the fuzz targets (`fuzz/`): each takes bytes from outside the
//! process and must never panic, whatever they are, and says whether the decoder
//! accepted it. Those that need no model code are `tierkv_serving::fuzzing`'s,
//! re-exported here. Not an API.

pub use tierkv_serving::fuzzing::{
    gguf_metadata, internal_api_body, openai_request_body, trace_lines,
};

/// An engine or frontend configuration file (`tierkv engine --config`, `tierkv
/// frontend --config`): its `[engine]`, `[disagg]`, `[store]` and `[frontend]` tables,
/// parsed and validated as the binaries do; accepted when it parses.
pub fn engine_config_toml(data: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        engine: crate::EngineConfig,
        #[serde(default)]
        disagg: crate::pd::DisaggConfig,
        store: Option<tierkv_kvstore::StoreConfig>,
        #[serde(default)]
        frontend: tierkv_serving::frontend::FrontendConfig,
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(file) = toml::from_str::<File>(text) else {
        return false;
    };
    let _ = file.engine.validate();
    let _ = file.disagg.validate();
    let _ = file.frontend.validate();
    if let Some(store) = &file.store {
        let _ = store.validate();
    }
    true
}
