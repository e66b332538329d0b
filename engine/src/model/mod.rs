//! The model: Llama-family transformers (GGUF, quantized) and Qwen3 (Hugging Face
//! safetensors), run on the CPU with candle for the matrix products and our own
//! paged attention over the KV pool.

mod attention;
mod gguf;
mod quant;
mod rope;
mod safetensors;

use std::path::Path;

use candle_core::quantized::QMatMul;
use candle_core::{Device, Module, Tensor};

pub use attention::{AttnSeq, AttnShape, paged_attention};
pub use tierkv_serving::text::{
    Architecture, ChatMessage, IncrementalDecoder, ModelConfig, ModelText, RopeStyle, TextCodec,
    load_text,
};

use crate::kv::KvPool;
use crate::{EngineError, Result};
use rope::Rope;

/// A loaded model with its tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    /// The weights and the forward pass.
    pub model: Model,
    /// Its tokenizer and chat template.
    pub codec: TextCodec,
    /// The name the API serves it under (the file or directory name).
    pub id: String,
}

/// Loads a `.gguf` file (Llama family) or a Hugging Face Qwen3 directory.
pub fn load(path: &Path) -> Result<LoadedModel> {
    if path.is_dir() {
        safetensors::load_dir(path)
    } else if path.is_file() {
        gguf::load_file(path)
    } else {
        Err(EngineError::model(format!(
            "{} is neither a .gguf file nor a model directory",
            path.display()
        )))
    }
}

/// A weight matrix: Q4_1 and Q8_0 through our kernels, anything else through candle.
pub(crate) enum Linear {
    Candle(QMatMul),
    Q4_1(quant::QuantMatrix<quant::Q4_1>),
    Q8_0(quant::QuantMatrix<quant::Q8_0>),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out, ys) = match self {
            Linear::Candle(m) => return Ok(m.forward(x)?),
            Linear::Q4_1(w) => (
                w.out_features(),
                w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, x.dims2()?.0),
            ),
            Linear::Q8_0(w) => (
                w.out_features(),
                w.matmul(&x.flatten_all()?.to_vec1::<f32>()?, x.dims2()?.0),
            ),
        };
        let m = ys.len() / out;
        Ok(Tensor::from_vec(ys, (m, out), &Device::Cpu)?)
    }
}

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    /// Qwen3's per-head RMSNorm of queries and keys.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub ffn_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// A Llama or Qwen3 model's weights (quantized or f32) and its forward pass over the
/// paged KV pool.
pub struct Model {
    config: ModelConfig,
    /// Token embeddings, `[vocab][hidden]`, dequantized once.
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Tensor,
    lm_head: Linear,
    rope: Rope,
}

/// One sequence's part of a forward step.
#[derive(Debug)]
pub struct SeqStep<'a> {
    /// Tokens to compute, at positions `start_pos..start_pos + tokens.len()`.
    pub tokens: &'a [u32],
    /// Position of the first of `tokens`.
    pub start_pos: usize,
    /// Block table covering every position up to the last new token.
    pub blocks: &'a [u32],
    /// Return the logits of the last new token.
    pub want_logits: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Model {
    pub(crate) fn new(
        config: ModelConfig,
        embed: Vec<f32>,
        layers: Vec<Layer>,
        final_norm: Tensor,
        lm_head: Linear,
    ) -> Result<Model> {
        config.validate()?;
        if embed.len() != config.vocab_size * config.hidden_size
            || layers.len() != config.num_layers
        {
            return Err(EngineError::model(
                "embedding or layer count does not match the config",
            ));
        }
        let rope = Rope::new(
            config.rope_style(),
            config.head_dim,
            config.rope_theta,
            config.max_context,
        );
        Ok(Model {
            config,
            embed,
            layers,
            final_norm,
            lm_head,
            rope,
        })
    }

    /// Its shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs one step: computes the KV of every sequence's new tokens into `pool` and
    /// returns the logits of the last new token of each sequence that wants them.
    pub fn forward(&self, steps: &[SeqStep<'_>], pool: &mut KvPool) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        let (hid, d) = (c.hidden_size, c.head_dim);
        let (qw, kw) = (c.num_heads * d, c.num_kv_heads * d);
        let block = pool.layout().block_size as usize;
        let total: usize = steps.iter().map(|s| s.tokens.len()).sum();
        if total == 0 {
            return Ok(Vec::new());
        }
        let mut positions = Vec::with_capacity(total);
        let mut x = Vec::with_capacity(total * hid);
        for s in steps {
            let end = s.start_pos + s.tokens.len();
            if end > self.rope.max_positions() || s.blocks.len() * block < end {
                return Err(EngineError::InvalidRequest(format!(
                    "position {end} is past the context or the block table"
                )));
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                let t = t as usize;
                if t >= c.vocab_size {
                    return Err(EngineError::InvalidRequest(format!(
                        "token id {t} is outside the vocabulary of {}",
                        c.vocab_size
                    )));
                }
                x.extend_from_slice(&self.embed[t * hid..(t + 1) * hid]);
                let pos = s.start_pos + i;
                positions.push((pos, s.blocks[pos / block]));
            }
        }
        let dev = Device::Cpu;
        let mut xt = Tensor::from_vec(x, (total, hid), &dev)?;
        let eps = c.rms_norm_eps as f32;
        let shape = AttnShape {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: d,
            block_size: block,
        };
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&xt, &layer.attn_norm, eps)?;
            let mut q = layer.wq.forward(&h)?;
            let mut k = layer.wk.forward(&h)?;
            let v = layer.wv.forward(&h)?;
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                q = candle_nn::ops::rms_norm(&q.reshape((total * c.num_heads, d))?, qn, eps)?;
                k = candle_nn::ops::rms_norm(&k.reshape((total * c.num_kv_heads, d))?, kn, eps)?;
            }
            let mut q = q.flatten_all()?.to_vec1::<f32>()?;
            // K and V are kept at f16 precision, as llama.cpp's default f16 KV cache.
            let mut k = k.flatten_all()?.to_vec1::<f32>()?;
            let mut v = v.flatten_all()?.to_vec1::<f32>()?;
            round_to_f16(&mut v);
            for (i, &(pos, b)) in positions.iter().enumerate() {
                self.rope.apply(&mut q[i * qw..(i + 1) * qw], pos);
                self.rope.apply(&mut k[i * kw..(i + 1) * kw], pos);
                round_to_f16(&mut k[i * kw..(i + 1) * kw]);
                pool.write_token(
                    b,
                    li,
                    pos % block,
                    &k[i * kw..(i + 1) * kw],
                    &v[i * kw..(i + 1) * kw],
                );
            }
            let mut seqs = Vec::with_capacity(steps.len());
            let mut off = 0;
            for s in steps {
                let n = s.tokens.len() * qw;
                seqs.push(AttnSeq {
                    q: &q[off..off + n],
                    start_pos: s.start_pos,
                    blocks: s.blocks,
                });
                off += n;
            }
            let mut attn = vec![0.0f32; total * qw];
            paged_attention(pool, li, &seqs, &shape, &mut attn);
            let o = layer
                .wo
                .forward(&Tensor::from_vec(attn, (total, qw), &dev)?)?;
            xt = (xt + o)?;
            let h = candle_nn::ops::rms_norm(&xt, &layer.ffn_norm, eps)?;
            let g = layer.gate.forward(&h)?.silu()?;
            let u = layer.up.forward(&h)?;
            let f = layer.down.forward(&(g * u)?)?;
            xt = (xt + f)?;
        }
        let mut rows = Vec::new();
        let mut off = 0;
        for s in steps {
            off += s.tokens.len();
            if s.want_logits {
                rows.push(off as u32 - 1);
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let idx = Tensor::new(rows.as_slice(), &dev)?;
        let last = xt.index_select(&idx, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.final_norm, eps)?;
        Ok(self.lm_head.forward(&last)?.to_vec2::<f32>()?)
    }
}

/// Rounds values to the nearest f16 (kept in f32).
pub(crate) fn round_to_f16(xs: &mut [f32]) {
    for x in xs {
        *x = half::f16::from_f32(*x).to_f32();
    }
}
