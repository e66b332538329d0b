//! Llama-family models from a GGUF file (llama.cpp's format): weights stay quantized
//! (Q4_0, Q4_1, Q8_0, K-quants...) and are multiplied by candle's quantized kernels.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};

use super::quant::{Q4_1, Q8_0, QuantMatrix};
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

pub(super) fn load_file(path: &Path) -> Result<LoadedModel> {
    // The text side (and the shape) from our metadata reader, exactly as a frontend
    // reads it; then the tensors through candle's reader.
    let ModelText { codec, config, id } = tierkv_serving::text::load_text(path)?;
    let (content, file) = read_tensor_index(path)?;
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
    let model = Model::new(config, embed, layers, final_norm, lm_head)?;
    Ok(LoadedModel { model, codec, id })
}

/// candle's view of the file (tensor names, types, offsets) and the open file.
fn read_tensor_index(path: &Path) -> Result<(Content, BufReader<File>)> {
    let mut file = File::open(path)
        .map(BufReader::new)
        .map_err(|e| EngineError::model(format!("{}: {e}", path.display())))?;
    // Our reader has checked the metadata already; candle's reader still panics on
    // some malformed files (libFuzzer found `general.alignment = 0` dividing by zero),
    // so a panic is an error like any other bad file. The reader is dropped with the
    // failed read, so nothing sees it after.
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(&mut file)))
        .map_err(|_| {
            EngineError::model(format!(
                "{} is not a GGUF file: its tensor index is malformed",
                path.display()
            ))
        })?;
    let content = read
        .map_err(|e| EngineError::model(format!("{} is not a GGUF file: {e}", path.display())))?;
    Ok((content, file))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    /// Found by libFuzzer (`gguf_metadata`): `general.alignment = 0` made candle's
    /// reader divide by zero; loading such a file is a clear error.
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
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zero.gguf");
        std::fs::write(&path, f).unwrap();
        let Err(err) = super::load_file(&path) else {
            panic!("a zero alignment was accepted")
        };
        assert!(err.to_string().contains("is not a GGUF file"), "{err}");
    }
}
