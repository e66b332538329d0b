//! KV blocks on a GPU (feature `cuda`, loaded at run time: the same wheel imports on
//! machines without one): an engine's KV cache tensors described per block
//! ([`PyGpuKv`], from vLLM's `kv_caches`), offloaded by the transfer engine straight
//! into staged slots of the store's (pinned) host tier, and onboarded back from
//! whatever tier holds the blocks, each transfer ordered after the work the engine
//! queued on its stream.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use pyo3::prelude::*;
use tierkv_kvstore::Namespace;
use tierkv_tiers::StagedSlot;
use tierkv_tiers::gpu::{
    DeviceBlocks, EngineKv, EngineStream, PieceGroup, TransferConfig, TransferEngine,
    cuda_available, device_context,
};

use crate::backend::Backend;
use crate::error::{PyTierkvError, Result};
use crate::runtime::runtime;

/// Whether a CUDA driver and a GPU are present (GPU copies work).
#[pyfunction]
pub fn gpu_available() -> bool {
    cuda_available()
}

/// One transfer engine per GPU in this process (its kernels are compiled once).
fn transfer_engine(device: usize) -> Result<Arc<TransferEngine>> {
    static ENGINES: Mutex<Vec<(usize, Arc<TransferEngine>)>> = Mutex::new(Vec::new());
    let mut engines = ENGINES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, e)) = engines.iter().find(|(d, _)| *d == device) {
        return Ok(Arc::clone(e));
    }
    let ctx = device_context(device).map_err(gpu)?;
    let engine = Arc::new(TransferEngine::new(&ctx, TransferConfig::default()).map_err(gpu)?);
    engines.push((device, Arc::clone(&engine)));
    Ok(engine)
}

fn gpu(e: tierkv_tiers::TierError) -> PyTierkvError {
    PyTierkvError::Gpu(e)
}

/// An engine's KV cache on GPU `device`: block `b` is `len(groups)` pieces of
/// `piece_bytes`, piece `j` at `groups[j][0] + b * groups[j][1]`; in the store's block
/// layout the pieces follow `groups` order. `owner` (the tensors) is kept alive as long
/// as this object, so the memory stays allocated. Every group's pieces are checked to
/// lie inside one allocation of that GPU.
#[pyclass(name = "GpuKv", module = "tierkv._tierkv", frozen)]
pub struct PyGpuKv {
    kv: Arc<EngineKv>,
    engine: Arc<TransferEngine>,
    _owner: Py<PyAny>,
}

#[pymethods]
impl PyGpuKv {
    #[new]
    fn new(
        device: usize,
        groups: Vec<(u64, u64)>,
        piece_bytes: usize,
        num_blocks: usize,
        owner: Py<PyAny>,
    ) -> PyResult<PyGpuKv> {
        let engine = transfer_engine(device)?;
        let groups = groups
            .into_iter()
            .map(|(base, block_stride)| PieceGroup { base, block_stride })
            .collect();
        // SAFETY: `owner` holds the tensors the groups point into, and this object holds
        // `owner` for as long as `kv` (and transfers, which borrow this object) live.
        let kv = unsafe { EngineKv::new(engine.context(), groups, piece_bytes, num_blocks) }
            .map_err(gpu)?;
        Ok(PyGpuKv {
            kv: Arc::new(kv),
            engine,
            _owner: owner,
        })
    }

    #[getter]
    pub(crate) fn block_bytes(&self) -> usize {
        self.kv.block_bytes()
    }

    #[getter]
    fn num_blocks(&self) -> usize {
        self.kv.num_blocks()
    }

    #[getter]
    fn pieces_per_block(&self) -> usize {
        self.kv.pieces_per_block()
    }

    fn __repr__(&self) -> String {
        format!(
            "GpuKv({} blocks of {} pieces of {} bytes)",
            self.kv.num_blocks(),
            self.kv.pieces_per_block(),
            self.kv.piece_bytes()
        )
    }
}

/// The namespace's block size is the engine's, and every block id names a block.
fn check_args(ns: &Namespace, kv: &PyGpuKv, blocks: &[(u128, u32)]) -> Result<()> {
    if let Some(&(_, b)) = blocks
        .iter()
        .find(|&&(_, b)| b as usize >= kv.kv.num_blocks())
    {
        return Err(PyTierkvError::Argument(format!(
            "block id {b} outside the GPU KV cache's {} blocks",
            kv.kv.num_blocks()
        )));
    }
    let expected = ns.layout().block_bytes();
    if kv.kv.block_bytes() != expected {
        return Err(PyTierkvError::RangeSize {
            namespace: ns.name().to_string(),
            expected,
            got: kv.kv.block_bytes(),
        });
    }
    Ok(())
}

/// Where an offloaded block lands: a staged slot of the host tier (adopted by the put,
/// no copy), or, without room there or with a sidecar, a buffer of its own.
enum Landing {
    Staged(StagedSlot),
    Owned(Vec<u8>),
}

impl Landing {
    fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        match self {
            // SAFETY: the slot is staged for this writer alone and holds at least
            // `len` bytes (checked against its capacity when it was taken).
            Landing::Staged(s) => unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr(), len) },
            Landing::Owned(v) => &mut v[..len],
        }
    }

    fn into_bytes(self, len: usize) -> Bytes {
        match self {
            Landing::Staged(s) => s.into_bytes(len),
            Landing::Owned(mut v) => {
                v.truncate(len);
                Bytes::from(v)
            }
        }
    }
}

/// Offloads blocks `[(hash, block_id)]` of `kv` and returns their bytes, ready to put
/// (staged host slots the put adopts, where there was room). Runs on the GPU after the
/// work queued so far on the engine's `stream`; the blocks may be reused when this
/// returns.
pub fn offload(
    backend: &Backend,
    ns: &Namespace,
    kv: &PyGpuKv,
    blocks: &[(u128, u32)],
    stream: usize,
) -> Result<Vec<(u128, Bytes)>> {
    check_args(ns, kv, blocks)?;
    // SAFETY: the caller passes its current stream of this GPU (or 0, the default one).
    let engine_stream = unsafe { EngineStream::from_raw(stream) };
    // Recorded now, in the engine's thread, in order with its launches.
    let after = engine_stream.record(kv.engine.context()).map_err(gpu)?;
    let len = kv.kv.block_bytes();
    let ids: Vec<u32> = blocks.iter().map(|&(_, b)| b).collect();
    let landed = runtime()?.block_on(async {
        let mut landings = Vec::with_capacity(ids.len());
        for _ in &ids {
            let staged = match backend {
                Backend::Embedded { store, .. } => store
                    .stage_top()
                    .await?
                    .filter(|slot| slot.capacity() >= len),
                Backend::Sidecar(_) => None,
            };
            landings.push(match staged {
                Some(slot) => Landing::Staged(slot),
                None => Landing::Owned(vec![0u8; len]),
            });
        }
        let mut dst: Vec<&mut [u8]> = landings.iter_mut().map(|l| l.as_mut_slice(len)).collect();
        kv.engine
            .offload_after(kv.kv.as_ref(), &ids, &mut dst, Some(&after))
            .await
            .map_err(gpu)?;
        Ok::<_, PyTierkvError>(landings)
    })?;
    Ok(blocks
        .iter()
        .zip(landed)
        .map(|(&(h, _), l)| (h, l.into_bytes(len)))
        .collect())
}

/// Onboards the leading blocks of `[(hash, block_id)]` the store holds into `kv` and
/// returns how many: a missing or untrusted block ends the run (the caller recomputes
/// from there). Runs on the GPU after the work queued so far on the engine's `stream`;
/// the blocks have landed when this returns.
pub fn onboard(
    backend: &Backend,
    ns: &Namespace,
    kv: &PyGpuKv,
    blocks: &[(u128, u32)],
    stream: usize,
) -> Result<usize> {
    check_args(ns, kv, blocks)?;
    // SAFETY: as in `offload`.
    let engine_stream = unsafe { EngineStream::from_raw(stream) };
    let after = engine_stream.record(kv.engine.context()).map_err(gpu)?;
    let hashes: Vec<u128> = blocks.iter().map(|&(h, _)| h).collect();
    let ids: Vec<u32> = blocks.iter().map(|&(_, b)| b).collect();
    runtime()?.block_on(async {
        // Only verified payloads of the namespace's block size come back as data.
        let fetched = backend.get_many(ns, &hashes).await?;
        let present: Vec<Bytes> = fetched.into_iter().map_while(|b| b).collect();
        if present.is_empty() {
            return Ok(0);
        }
        let src: Vec<&[u8]> = present.iter().map(|b| b.as_ref()).collect();
        kv.engine
            .onboard_after(kv.kv.as_ref(), &ids[..src.len()], &src, Some(&after))
            .await
            .map_err(gpu)?;
        Ok(src.len())
    })
}
