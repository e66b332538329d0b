//! The text side of a model, without its weights: the tokenizer and chat template
//! ([`TextCodec`]) and the shape ([`ModelConfig`]), read from a GGUF file's metadata
//! ([`gguf`]) or a Hugging Face directory's JSON files. The frontend needs nothing more;
//! the engine reads the same and then the weights.

mod codec;
pub mod gguf;
mod gguf_tokenizer;
mod model_config;

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use tokenizers::Tokenizer;

pub use codec::{ChatMessage, IncrementalDecoder, TextCodec};
pub use gguf::{GgufMetadata, GgufValue};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use model_config::{Architecture, EosIds, HfQwen3Config, ModelConfig, RopeStyle};

use crate::{Result, ServingError};

/// A model's tokenizer, chat template and shape, without its weights.
#[derive(Debug)]
pub struct ModelText {
    /// Its tokenizer and chat template.
    pub codec: TextCodec,
    /// Its shape and special tokens.
    pub config: ModelConfig,
    /// The name the API serves it under (the file or directory name).
    pub id: String,
}

/// Reads what a frontend needs from a `.gguf` file or a Hugging Face Qwen3 (or Llama)
/// directory: tokenizer, chat template, shape (no weights).
pub fn load_text(path: &Path) -> Result<ModelText> {
    if path.is_dir() {
        let hf: HfQwen3Config = read_json(&path.join("config.json"))?;
        hf_text(path, hf.to_text_config()?)
    } else if path.is_file() {
        let meta = read_gguf(path)?;
        gguf_text(&meta, path, model_config_from_gguf(&meta)?)
    } else {
        Err(ServingError::model(format!(
            "{} is neither a .gguf file nor a model directory",
            path.display()
        )))
    }
}

/// The metadata of the GGUF file at `path`.
pub fn read_gguf(path: &Path) -> Result<GgufMetadata> {
    let mut file = File::open(path)
        .map(BufReader::new)
        .map_err(|e| ServingError::model(format!("{}: {e}", path.display())))?;
    GgufMetadata::read(&mut file, &path.display().to_string())
}

/// The shape a GGUF file's metadata describes (Llama family).
pub fn model_config_from_gguf(meta: &GgufMetadata) -> Result<ModelConfig> {
    let arch = meta
        .str("general.architecture")
        .ok_or_else(|| ServingError::model("GGUF metadata has no `general.architecture`"))?;
    if arch != "llama" {
        return Err(ServingError::model(format!(
            "GGUF architecture `{arch}` is not supported (llama family only; Qwen3 loads from a Hugging Face directory)"
        )));
    }
    let p = |k: &str| format!("{arch}.{k}");
    let hidden = meta.usize(&p("embedding_length"))?;
    let heads = meta.usize(&p("attention.head_count"))?;
    let kv_heads = meta.usize(&p("attention.head_count_kv")).unwrap_or(heads);
    let vocab_tokens = meta.strings("tokenizer.ggml.tokens")?.len();
    let config = ModelConfig {
        architecture: Architecture::Llama,
        hidden_size: hidden,
        num_layers: meta.usize(&p("block_count"))?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: meta
            .usize(&p("rope.dimension_count"))
            .unwrap_or(hidden / heads.max(1)),
        intermediate_size: meta.usize(&p("feed_forward_length"))?,
        vocab_size: meta.usize(&p("vocab_size")).unwrap_or(vocab_tokens),
        rope_theta: meta.f64(&p("rope.freq_base")).unwrap_or(10_000.0) as f32,
        rms_norm_eps: meta
            .f64(&p("attention.layer_norm_rms_epsilon"))
            .map(|e| e as f32 as f64)
            .unwrap_or(1e-5_f32 as f64),
        max_context: meta.usize(&p("context_length")).unwrap_or(4096),
        bos_token_id: meta.u32("tokenizer.ggml.bos_token_id"),
        eos_token_ids: meta
            .u32("tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
        add_bos: meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(false),
    };
    config.validate()?;
    Ok(config)
}

fn gguf_text(meta: &GgufMetadata, path: &Path, config: ModelConfig) -> Result<ModelText> {
    let tokenizer = tokenizer_from_gguf(meta)?;
    let token = |key: &str| {
        meta.u32(key)
            .and_then(|id| tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    let (bos, eos) = (
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    );
    let template = meta.str("tokenizer.chat_template").map(str::to_string);
    let codec = TextCodec::new(tokenizer, template, bos, eos)?;
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok(ModelText { codec, config, id })
}

/// `path` as JSON of `T`; errors name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ServingError::model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| ServingError::model(format!("{}: {e}", path.display())))
}

/// The parts of `tokenizer_config.json` the engine uses.
#[derive(serde::Deserialize, Default)]
struct TokenizerConfig {
    chat_template: Option<String>,
    bos_token: Option<serde_json::Value>,
    eos_token: Option<serde_json::Value>,
}

fn token_text(v: &Option<serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The tokenizer and chat template of a Hugging Face directory (`tokenizer.json`,
/// `tokenizer_config.json`), with the shape `config` read from its `config.json`.
pub fn hf_text(dir: &Path, config: ModelConfig) -> Result<ModelText> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| ServingError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc: TokenizerConfig = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        TokenizerConfig::default()
    };
    let codec = TextCodec::new(
        tokenizer,
        tc.chat_template,
        token_text(&tc.bos_token),
        token_text(&tc.eos_token),
    )?;
    let id = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok(ModelText { codec, config, id })
}
