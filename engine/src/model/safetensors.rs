//! Qwen3 from a Hugging Face directory: `config.json`, `*.safetensors` (any float
//! dtype, kept as f32), `tokenizer.json` and `tokenizer_config.json` (chat template).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};
use tierkv_serving::text::{HfQwen3Config, hf_text, read_json};

use super::{Layer, Linear, LoadedModel, Model, ModelText};
use crate::{EngineError, Result};

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
    let ModelText { codec, config, id } = hf_text(dir, config)?;
    let model = Model::new(
        config,
        embed,
        layers,
        final_norm,
        Linear::Candle(QMatMul::Tensor(lm_head)),
    )?;
    Ok(LoadedModel { model, codec, id })
}
