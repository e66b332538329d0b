//! `tierkv.Namespace` and the block-hash chain, computed by the Rust code the store and
//! the tierkv engine use, so Python and Rust agree on every hash.

use pyo3::prelude::*;
use tierkv_kvstore::{BlockHash, DType, KvLayout, Namespace, hash_blocks, hash_next};

use crate::error::PyTierkvError;

fn parse_dtype(s: &str) -> Result<DType, PyTierkvError> {
    Ok(match s.trim_start_matches("torch.") {
        "f32" | "float32" | "float" => DType::F32,
        "f16" | "float16" | "half" => DType::F16,
        "bf16" | "bfloat16" => DType::Bf16,
        "f8e4m3" | "fp8" | "fp8_e4m3" | "float8_e4m3fn" => DType::F8e4m3,
        other => {
            return Err(PyTierkvError::Argument(format!(
                "unknown KV dtype {other:?} (f32, f16, bf16, fp8)"
            )));
        }
    })
}

/// What makes KV payloads incompatible or private: model, KV geometry (layers, KV
/// heads, head dim, dtype, block size), tensor-parallel rank and size, an outside
/// engine's block packing and a tenant's cache salt. It seeds the hash chain.
#[pyclass(name = "Namespace", module = "tierkv._tierkv", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PyNamespace {
    pub ns: Namespace,
}

#[pymethods]
impl PyNamespace {
    #[new]
    #[pyo3(signature = (model_id, num_layers, num_kv_heads, head_dim, dtype, block_size, tp_rank = 0, tp_size = 1, engine_layout = None, cache_salt = None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature, keyword arguments
    fn new(
        model_id: String,
        num_layers: u32,
        num_kv_heads: u32,
        head_dim: u32,
        dtype: &str,
        block_size: u32,
        tp_rank: u32,
        tp_size: u32,
        engine_layout: Option<String>,
        cache_salt: Option<String>,
    ) -> PyResult<Self> {
        let layout = KvLayout::new(
            num_layers,
            num_kv_heads,
            head_dim,
            parse_dtype(dtype)?,
            block_size,
        )
        .map_err(PyTierkvError::from)?;
        let mut ns = Namespace::with_parts(model_id, layout, tp_rank, tp_size, cache_salt)
            .map_err(PyTierkvError::from)?;
        if let Some(engine) = engine_layout {
            ns = ns.with_engine_layout(engine).map_err(PyTierkvError::from)?;
        }
        Ok(PyNamespace { ns })
    }

    /// The canonical name (the block service's namespace string).
    #[getter]
    fn name(&self) -> &str {
        self.ns.name()
    }
    /// The 64-bit digest of the name (the namespace part of a block key).
    #[getter]
    fn id(&self) -> u64 {
        self.ns.id()
    }
    /// The seed of the hash chain.
    #[getter]
    fn seed(&self) -> u128 {
        self.ns.seed()
    }
    #[getter]
    fn model_id(&self) -> &str {
        self.ns.model_id()
    }
    #[getter]
    fn block_size(&self) -> u32 {
        self.ns.layout().block_size
    }
    /// Bytes of one block (all layers, K and V).
    #[getter]
    fn block_bytes(&self) -> usize {
        self.ns.layout().block_bytes()
    }
    #[getter]
    fn tp_rank(&self) -> u32 {
        self.ns.tp_rank()
    }
    #[getter]
    fn tp_size(&self) -> u32 {
        self.ns.tp_size()
    }
    #[getter]
    fn engine_layout(&self) -> Option<&str> {
        self.ns.engine_layout()
    }

    /// The same namespace with a tenant salt (two salts never share a block).
    fn salted(&self, salt: String) -> PyResult<PyNamespace> {
        Ok(PyNamespace {
            ns: self.ns.salted(salt).map_err(PyTierkvError::from)?,
        })
    }

    /// Hashes of the full blocks of `tokens` (a trailing partial block is not hashed).
    fn hash_blocks(&self, tokens: Vec<u32>) -> Vec<u128> {
        hash_blocks(&self.ns, &tokens)
            .into_iter()
            .map(|h| h.0)
            .collect()
    }

    /// The next link of the chain: the hash of the block of `tokens` (exactly
    /// `block_size` of them) after the block hashed `prev` (`None`: the first block).
    #[pyo3(signature = (prev, tokens))]
    fn hash_next(&self, prev: Option<u128>, tokens: Vec<u32>) -> PyResult<u128> {
        let block = self.ns.layout().block_size as usize;
        if tokens.len() != block {
            return Err(PyTierkvError::Argument(format!(
                "hash_next takes one full block of {block} tokens, got {}",
                tokens.len()
            ))
            .into());
        }
        Ok(hash_next(&self.ns, prev.map(BlockHash), &tokens).0)
    }

    fn __repr__(&self) -> String {
        format!("Namespace({:?})", self.ns.name())
    }
}

/// The 64-bit digest of a namespace name, as the block service maps names to keys.
#[pyfunction]
pub(crate) fn namespace_id(name: &str) -> u64 {
    tierkv_kvstore::namespace_id(name)
}
