//! The shape of a model: what the forward pass and the KV layout need to know.

use serde::Deserialize;

use crate::{Result, ServingError};

/// Which family a model belongs to; decides the rotary embedding and the per-head norms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama family from GGUF (SmolLM2, Llama 2/3, Mistral...). llama.cpp's converter
    /// permutes Q/K rows, so rotary pairs are interleaved (`x[2i], x[2i+1]`).
    Llama,
    /// Qwen3 from a Hugging Face directory: per-head RMSNorm on Q and K, rotary pairs
    /// split in halves (`x[i], x[i + d/2]`).
    Qwen3,
}

/// How rotary position embedding pairs up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `2i` and `2i+1` rotate together (Llama, as GGUF stores it).
    Interleaved,
    /// Dimension `i` rotates with `i + head_dim/2` (Qwen3, Hugging Face's layout).
    HalfSplit,
}

/// A model's shape and special tokens, from GGUF metadata or `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The model family.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// Epsilon of the RMS norms.
    pub rms_norm_eps: f64,
    /// Longest sequence (prompt + generated) the model accepts.
    pub max_context: usize,
    /// The beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Tokens that end a generation.
    pub eos_token_ids: Vec<u32>,
    /// Prepend `bos_token_id` to raw completions prompts.
    pub add_bos: bool,
}

impl ModelConfig {
    /// How this architecture applies RoPE.
    pub fn rope_style(&self) -> RopeStyle {
        match self.architecture {
            Architecture::Llama => RopeStyle::Interleaved,
            Architecture::Qwen3 => RopeStyle::HalfSplit,
        }
    }

    /// An error unless the shape is consistent (non-zero, heads divide evenly, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(ServingError::model(format!("bad model shape: {m}")));
        if self.num_layers == 0 || self.hidden_size == 0 || self.vocab_size == 0 {
            return bad("zero layers, hidden size or vocabulary");
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad("heads must be a positive multiple of kv heads");
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 512 {
            return bad("head_dim must be even, positive and at most 512");
        }
        let group = self.num_heads / self.num_kv_heads;
        if group > 64 || group * self.head_dim > 2048 {
            return bad("at most 64 query heads (2048 values) per KV head");
        }
        if self.max_context == 0 {
            return bad("zero context length");
        }
        Ok(())
    }
}

/// `config.json` of a Hugging Face Qwen3 directory (the fields the engine uses).
#[derive(Clone, Debug, Deserialize)]
pub struct HfQwen3Config {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// KV heads.
    pub num_key_value_heads: usize,
    /// Elements per head. Default `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// RoPE base frequency. Default 1,000,000.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    /// Epsilon of the RMS norms. Default 1e-6.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// Longest sequence. Default 40,960.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// The output projection is the embedding. Default false.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// The beginning-of-sequence token, if any.
    pub bos_token_id: Option<u32>,
    /// The end token(s), if any.
    pub eos_token_id: Option<EosIds>,
    /// The model classes the directory is for (`Qwen3ForCausalLM`). Default none.
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// One end token or several.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum EosIds {
    /// One token.
    One(u32),
    /// Several tokens.
    Many(Vec<u32>),
}

fn default_rope_theta() -> f32 {
    1_000_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    40_960
}

impl HfQwen3Config {
    /// The shape of a directory whose text side alone is needed (a frontend tokenizes
    /// and counts; it never runs the model): Llama directories are read too.
    pub fn to_text_config(&self) -> Result<ModelConfig> {
        if self.architectures.iter().any(|a| a == "LlamaForCausalLM") {
            let mut c = Self {
                architectures: Vec::new(),
                ..self.clone()
            }
            .to_model_config()?;
            c.architecture = Architecture::Llama;
            return Ok(c);
        }
        self.to_model_config()
    }

    /// The shape of a Qwen3 directory the engine runs; an error for other
    /// architectures or an inconsistent shape.
    pub fn to_model_config(&self) -> Result<ModelConfig> {
        if !self.architectures.is_empty()
            && !self.architectures.iter().any(|a| a == "Qwen3ForCausalLM")
        {
            return Err(ServingError::model(format!(
                "unsupported architecture {:?} (this engine reads Qwen3ForCausalLM directories)",
                self.architectures
            )));
        }
        let eos_token_ids = match &self.eos_token_id {
            Some(EosIds::One(id)) => vec![*id],
            Some(EosIds::Many(ids)) => ids.clone(),
            None => Vec::new(),
        };
        let c = ModelConfig {
            architecture: Architecture::Qwen3,
            hidden_size: self.hidden_size,
            num_layers: self.num_hidden_layers,
            num_heads: self.num_attention_heads,
            num_kv_heads: self.num_key_value_heads,
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            intermediate_size: self.intermediate_size,
            vocab_size: self.vocab_size,
            rope_theta: self.rope_theta,
            rms_norm_eps: self.rms_norm_eps,
            max_context: self.max_position_embeddings,
            bos_token_id: self.bos_token_id,
            eos_token_ids,
            add_bos: false,
        };
        c.validate()?;
        Ok(c)
    }
}
