//! Qwen3 from a Hugging Face directory: `config.json`, `*.safetensors` (any float
//! dtype, kept as f32), `tokenizer.json` and `tokenizer_config.json` (chat template).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use tokenizers::Tokenizer;

use super::config::HfQwen3Config;
use super::tokenizer::TextCodec;
use super::{Layer, Linear, LoadedModel, Model, ModelConfig, ModelText};
use crate::{EngineError, Result};

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EngineError::model(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| EngineError::model(format!("{}: {e}", path.display())))
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

/// config.json and the tokenizer files: what a frontend needs, without the weights.
pub(super) fn load_text(dir: &Path) -> Result<ModelText> {
    let hf: HfQwen3Config = read_json(&dir.join("config.json"))?;
    text(dir, hf.to_text_config()?)
}

pub(super) fn load_dir(dir: &Path) -> Result<LoadedModel> {
    let hf: HfQwen3Config = read_json(&dir.join("config.json"))?;
    let config = hf.to_model_config()?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::model(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::model(format!(
            "no .safetensors file in {}",
            dir.display()
        )));
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        let part = candle_core::safetensors::load(f, &Device::Cpu)
            .map_err(|e| EngineError::model(format!("{}: {e}", f.display())))?;
        tensors.extend(part);
    }
    let mut take = |name: &str| -> Result<Tensor> {
        let t = tensors
            .remove(name)
            .ok_or_else(|| EngineError::model(format!("{}: no tensor `{name}`", dir.display())))?;
        Ok(t.to_dtype(DType::F32)?)
    };
    let embed_t = take("model.embed_tokens.weight")?;
    let (vocab, hidden) = embed_t.dims2()?;
    if vocab != config.vocab_size || hidden != config.hidden_size {
        return Err(EngineError::model(
            "embed_tokens shape does not match config.json",
        ));
    }
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let n = |s: &str| format!("model.layers.{i}.{s}.weight");
        layers.push(Layer {
            attn_norm: take(&n("input_layernorm"))?,
            wq: Linear::Candle(QMatMul::Tensor(take(&n("self_attn.q_proj"))?)),
            wk: Linear::Candle(QMatMul::Tensor(take(&n("self_attn.k_proj"))?)),
            wv: Linear::Candle(QMatMul::Tensor(take(&n("self_attn.v_proj"))?)),
            wo: Linear::Candle(QMatMul::Tensor(take(&n("self_attn.o_proj"))?)),
            q_norm: Some(take(&n("self_attn.q_norm"))?),
            k_norm: Some(take(&n("self_attn.k_norm"))?),
            ffn_norm: take(&n("post_attention_layernorm"))?,
            gate: Linear::Candle(QMatMul::Tensor(take(&n("mlp.gate_proj"))?)),
            up: Linear::Candle(QMatMul::Tensor(take(&n("mlp.up_proj"))?)),
            down: Linear::Candle(QMatMul::Tensor(take(&n("mlp.down_proj"))?)),
        });
    }
    let final_norm = take("model.norm.weight")?;
    let lm_head = if hf.tie_word_embeddings {
        embed_t.clone()
    } else {
        take("lm_head.weight")?
    };
    let embed = embed_t.flatten_all()?.to_vec1::<f32>()?;
    let ModelText { codec, config, id } = text(dir, config)?;
    let model = Model::new(
        config,
        embed,
        layers,
        final_norm,
        Linear::Candle(QMatMul::Tensor(lm_head)),
    )?;
    Ok(LoadedModel { model, codec, id })
}

fn text(dir: &Path, config: ModelConfig) -> Result<ModelText> {
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tok_path)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
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
