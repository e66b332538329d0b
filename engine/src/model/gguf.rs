//! Llama-family models from a GGUF file (llama.cpp's format): weights stay quantized
//! (Q4_0, Q4_1, Q8_0, K-quants...) and are multiplied by candle's quantized kernels.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use super::config::{Architecture, ModelConfig};
use super::quant::{Q4_1, Q8_0, QuantMatrix};
use super::tokenizer::TextCodec;
use super::{Layer, Linear, LoadedModel, Model, ModelText};
use crate::{EngineError, Result};

struct Reader<'a> {
    content: &'a Content,
    file: BufReader<File>,
    path: &'a Path,
}

impl Reader<'_> {
    fn tensor(&mut self, name: &str) -> Result<QTensor> {
        self.content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| EngineError::model(format!("{}: tensor {name}: {e}", self.path.display())))
    }
    fn matmul(&mut self, name: &str) -> Result<Linear> {
        let t = self.tensor(name)?;
        linear(t)
    }
    fn vector(&mut self, name: &str) -> Result<candle_core::Tensor> {
        Ok(self.tensor(name)?.dequantize(&Device::Cpu)?)
    }
}

/// Q4_1 and Q8_0 go to our kernels, every other type to candle's.
fn linear(t: QTensor) -> Result<Linear> {
    let (rows, cols) = t.shape().dims2()?;
    Ok(match t.dtype() {
        GgmlDType::Q4_1 => Linear::Q4_1(QuantMatrix::<Q4_1>::from_ggml(&t.data()?, rows, cols)?),
        GgmlDType::Q8_0 => Linear::Q8_0(QuantMatrix::<Q8_0>::from_ggml(&t.data()?, rows, cols)?),
        _ => Linear::Candle(QMatMul::from_qtensor(t)?),
    })
}

fn meta<'a>(c: &'a Content, key: &str) -> Result<&'a Value> {
    c.metadata
        .get(key)
        .ok_or_else(|| EngineError::model(format!("GGUF metadata has no `{key}`")))
}

fn meta_usize(c: &Content, key: &str) -> Result<usize> {
    let v = meta(c, key)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| EngineError::model(format!("`{key}`: {e}")))
}

fn meta_f32(c: &Content, key: &str) -> Option<f32> {
    c.metadata.get(key).and_then(|v| v.to_f32().ok())
}

fn meta_u32(c: &Content, key: &str) -> Option<u32> {
    c.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// The GGUF's metadata, tokenizer and chat template: what a frontend needs, without
/// reading the weights.
pub(super) fn load_text(path: &Path) -> Result<ModelText> {
    let (content, _file, config) = read_header(path)?;
    text(&content, path, config)
}

pub(super) fn load_file(path: &Path) -> Result<LoadedModel> {
    let (content, file, config) = read_header(path)?;
    let mut r = Reader {
        content: &content,
        file,
        path,
    };
    let embed_q = r.tensor("token_embd.weight")?;
    let embed = embed_q
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let lm_head = if content.tensor_infos.contains_key("output.weight") {
        r.matmul("output.weight")?
    } else {
        linear(embed_q)?
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        layers.push(Layer {
            attn_norm: r.vector(&n("attn_norm"))?,
            wq: r.matmul(&n("attn_q"))?,
            wk: r.matmul(&n("attn_k"))?,
            wv: r.matmul(&n("attn_v"))?,
            wo: r.matmul(&n("attn_output"))?,
            q_norm: None,
            k_norm: None,
            ffn_norm: r.vector(&n("ffn_norm"))?,
            gate: r.matmul(&n("ffn_gate"))?,
            up: r.matmul(&n("ffn_up"))?,
            down: r.matmul(&n("ffn_down"))?,
        });
    }
    let final_norm = r.vector("output_norm.weight")?;
    let ModelText { codec, config, id } = text(&content, path, config)?;
    let model = Model::new(config, embed, layers, final_norm, lm_head)?;
    Ok(LoadedModel { model, codec, id })
}

type Header = (Content, BufReader<File>, ModelConfig);

fn read_header(path: &Path) -> Result<Header> {
    let mut file = File::open(path)
        .map(BufReader::new)
        .map_err(|e| EngineError::model(format!("{}: {e}", path.display())))?;
    let (content, config) = parse_header(&mut file, &path.display().to_string())?;
    Ok((content, file, config))
}

/// The metadata of the GGUF file `name` read from `reader`, and the model
/// configuration it describes.
pub(crate) fn parse_header<R: std::io::Read + std::io::Seek>(
    reader: &mut R,
    name: &str,
) -> Result<(Content, ModelConfig)> {
    // candle's reader panics on some malformed files (found by libFuzzer: a
    // `general.alignment` of 0 divides by zero); such a file is an error like any other
    // bad file. The reader is dropped with the failed read, so nothing sees it after.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(reader)))
        .map_err(|_| {
            EngineError::model(format!(
                "{name} is not a GGUF file: its metadata is malformed (the GGUF reader failed)"
            ))
        })?;
    let content =
        read.map_err(|e| EngineError::model(format!("{name} is not a GGUF file: {e}")))?;
    let arch = meta(&content, "general.architecture")?
        .to_string()
        .map_err(|e| EngineError::model(e.to_string()))?
        .clone();
    if arch != "llama" {
        return Err(EngineError::model(format!(
            "GGUF architecture `{arch}` is not supported (llama family only; Qwen3 loads from a Hugging Face directory)"
        )));
    }
    let p = |k: &str| format!("{arch}.{k}");
    let hidden = meta_usize(&content, &p("embedding_length"))?;
    let heads = meta_usize(&content, &p("attention.head_count"))?;
    let kv_heads = meta_usize(&content, &p("attention.head_count_kv")).unwrap_or(heads);
    let vocab_tokens = meta(&content, "tokenizer.ggml.tokens")?
        .to_vec()
        .map_err(|e| EngineError::model(e.to_string()))?
        .len();
    let config = ModelConfig {
        architecture: Architecture::Llama,
        hidden_size: hidden,
        num_layers: meta_usize(&content, &p("block_count"))?,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: meta_usize(&content, &p("rope.dimension_count")).unwrap_or(hidden / heads.max(1)),
        intermediate_size: meta_usize(&content, &p("feed_forward_length"))?,
        vocab_size: meta_usize(&content, &p("vocab_size")).unwrap_or(vocab_tokens),
        rope_theta: meta_f32(&content, &p("rope.freq_base")).unwrap_or(10_000.0),
        rms_norm_eps: meta_f32(&content, &p("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5)
            as f64,
        max_context: meta_usize(&content, &p("context_length")).unwrap_or(4096),
        bos_token_id: meta_u32(&content, "tokenizer.ggml.bos_token_id"),
        eos_token_ids: meta_u32(&content, "tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
        add_bos: content
            .metadata
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
    };
    config.validate()?;
    Ok((content, config))
}

fn text(content: &Content, path: &Path, config: ModelConfig) -> Result<ModelText> {
    let mut tokenizer = Tokenizer::from_gguf(content)
        .map_err(|e| EngineError::Tokenizer(format!("tokenizer from GGUF metadata: {e}")))?;
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if matches!(
        pre.as_str(),
        "smollm" | "starcoder" | "refact" | "gpt2" | ""
    ) {
        // llama.cpp's split for these: single digits, then GPT-2's byte-level regex,
        // no space added in front of the text.
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
    }
    let token = |key: &str| {
        meta_u32(content, key)
            .and_then(|id| tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    let (bos, eos) = (
        token("tokenizer.ggml.bos_token_id"),
        token("tokenizer.ggml.eos_token_id"),
    );
    let template = content
        .metadata
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .cloned();
    let codec = TextCodec::new(tokenizer, template, bos, eos)?;
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    Ok(ModelText { codec, config, id })
}

#[cfg(test)]
mod tests {
    /// Found by libFuzzer (`gguf_metadata`): `general.alignment = 0` made candle's
    /// reader divide by zero; now a clear error.
    #[test]
    fn a_zero_alignment_is_an_error_not_a_panic() {
        let mut f = b"GGUF\x03\0\0\0".to_vec();
        f.extend_from_slice(&0u64.to_le_bytes()); // tensors
        f.extend_from_slice(&1u64.to_le_bytes()); // one metadata entry
        let key = b"general.alignment";
        f.extend_from_slice(&(key.len() as u64).to_le_bytes());
        f.extend_from_slice(key);
        f.extend_from_slice(&4u32.to_le_bytes()); // u32
        f.extend_from_slice(&0u32.to_le_bytes());
        let Err(err) = super::parse_header(&mut std::io::Cursor::new(f), "zero.gguf") else {
            panic!("a zero alignment was accepted")
        };
        assert!(
            err.to_string().contains("zero.gguf is not a GGUF file"),
            "{err}"
        );
    }
}
