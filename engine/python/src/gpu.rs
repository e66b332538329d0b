//! KV blocks on a GPU (feature `cuda`, loaded at run time: the same wheel imports on
//! machines without one): an engine's KV cache tensors described per block
//! ([`PyGpuKv`], from vLLM's `kv_caches`), offloaded by the transfer engine straight
//! into staged slots of the store's (pinned) host tier, and onboarded back from
//! whatever tier holds the blocks, each transfer ordered after the work the engine
//! queued on its stream.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pyo3::prelude::*;
use tierkv_kvstore::Namespace;
use tierkv_tiers::StagedSlot;
use tierkv_tiers::gpu::{
    DeviceBlocks, EngineKv, EngineStream, LayeredOffload, PieceGroup, TransferConfig,
    TransferEngine, cuda_available, device_context,
};

use crate::backend::Backend;
use crate::error::{PyTierkvError, Result};
use crate::runtime::runtime;
use crate::saver::Saver;

/// Whether a CUDA driver and a GPU are present (GPU copies work).
#[pyfunction]
pub(crate) fn gpu_available() -> bool {
    cuda_available()
}

/// One transfer engine per GPU in this process (its kernels are compiled once).
fn transfer_engine(device: usize) -> Result<Arc<TransferEngine>> {
    static ENGINES: Mutex<Vec<(usize, Arc<TransferEngine>)>> = Mutex::new(Vec::new());
    let mut engines = tierkv_kvstore::sync::lock(&ENGINES);
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
    /// Pieces of one layer (a block's pieces are its layers' in order).
    pieces_per_layer: usize,
    _owner: Py<PyAny>,
}

impl std::fmt::Debug for PyGpuKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyGpuKv")
            .field("pieces_per_layer", &self.pieces_per_layer)
            .finish_non_exhaustive()
    }
}

#[pymethods]
impl PyGpuKv {
    #[new]
    #[pyo3(signature = (device, groups, piece_bytes, num_blocks, owner, pieces_per_layer = None))]
    fn new(
        device: usize,
        groups: Vec<(u64, u64)>,
        piece_bytes: usize,
        num_blocks: usize,
        owner: Py<PyAny>,
        pieces_per_layer: Option<usize>,
    ) -> PyResult<PyGpuKv> {
        let pieces_per_layer = pieces_per_layer.unwrap_or(groups.len());
        if pieces_per_layer == 0 || !groups.len().is_multiple_of(pieces_per_layer) {
            return Err(PyTierkvError::Argument(format!(
                "{} pieces per block do not split into layers of {pieces_per_layer}",
                groups.len()
            ))
            .into());
        }
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
            pieces_per_layer,
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

    /// Layers of a block (saved one by one by a `LayeredSave`).
    #[getter]
    fn layers(&self) -> usize {
        self.kv.pieces_per_block() / self.pieces_per_layer
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

/// Where `n` blocks of `len` bytes land: staged host-tier slots while there is room.
async fn landings(backend: &Backend, n: usize, len: usize) -> Result<Vec<Landing>> {
    let mut landings = Vec::with_capacity(n);
    for _ in 0..n {
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
    Ok(landings)
}

/// Offloads blocks `[(hash, block_id)]` of `kv` and returns their bytes, ready to put
/// (staged host slots the put adopts, where there was room). Runs on the GPU after the
/// work queued so far on the engine's `stream`; the blocks may be reused when this
/// returns.
pub(crate) fn offload(
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
        let started = std::time::Instant::now();
        let mut landings = landings(backend, ids.len(), len).await?;
        let staged_in = started.elapsed();
        let mut dst: Vec<&mut [u8]> = landings.iter_mut().map(|l| l.as_mut_slice(len)).collect();
        let moved = kv
            .engine
            .offload_after(kv.kv.as_ref(), &ids, &mut dst, Some(&after))
            .await
            .map_err(gpu)?;
        tracing::trace!(
            blocks = ids.len(),
            landings_us = staged_in.as_micros() as u64,
            transfer_us = moved.elapsed.as_micros() as u64,
            zero_copy = moved.zero_copy,
            "GPU offload"
        );
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
pub(crate) fn onboard(
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
        let moved = kv
            .engine
            .onboard_after(kv.kv.as_ref(), &ids[..src.len()], &src, Some(&after))
            .await
            .map_err(gpu)?;
        tracing::trace!(
            blocks = src.len(),
            transfer_us = moved.elapsed.as_micros() as u64,
            zero_copy = moved.zero_copy,
            "GPU onboard"
        );
        Ok(src.len())
    })
}

/// A layer-wise save being built: the job and what its blocks are.
struct LayeredState {
    job: LayeredOffload,
    hashes: Vec<u128>,
    ns: Namespace,
    block_bytes: usize,
    context: Arc<tierkv_tiers::gpu::CudaContext>,
}

/// Copies to host in flight and the memory they land in, dropped in that order.
struct CopyInFlight {
    in_flight: Option<tierkv_tiers::gpu::OffloadInFlight>,
    landings: Vec<Landing>,
}

/// One step's GPU save, layer by layer (`Store.begin_save_gpu`): `layer(i, stream)`
/// queues the copy of layer `i` of every block as soon as the forward pass queued on
/// `stream` has written it, without waiting; `finish(stream)` queues the rest and the
/// copy to host memory, makes `stream` wait on the GPU until the blocks have been read
/// (so later work may overwrite them), and hands the blocks to the background saver.
/// Dropped unfinished, it waits for its copies and saves nothing.
#[pyclass(name = "LayeredSave", module = "tierkv._tierkv")]
pub struct PyLayeredSave {
    state: Option<LayeredState>,
    backend: Arc<Backend>,
    saver: Arc<Saver>,
}

impl std::fmt::Debug for PyLayeredSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyLayeredSave")
            .field("in_progress", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) fn begin_layered(
    backend: &Arc<Backend>,
    ns: &Namespace,
    kv: &PyGpuKv,
    blocks: &[(u128, u32)],
    saver: Arc<Saver>,
) -> Result<Option<PyLayeredSave>> {
    check_args(ns, kv, blocks)?;
    if kv.kv.pieces_per_block() < 2 || matches!(backend.as_ref(), Backend::Sidecar(_)) {
        return Ok(None);
    }
    let ids: Vec<u32> = blocks.iter().map(|&(_, b)| b).collect();
    // SAFETY: `kv` (its tensors) is kept by the PyGpuKv the caller holds for as long
    // as it runs the engine; the job's copies finish within the step that uses it.
    let begun = runtime()?.block_on(unsafe {
        kv.engine
            .begin_layered_offload(kv.kv.as_ref(), &ids, kv.pieces_per_layer)
    });
    let job = match begun {
        Ok(job) => job,
        Err(e) => {
            tracing::debug!(error = %e, "no layer-wise save; saving at the end of the step");
            return Ok(None);
        }
    };
    Ok(Some(PyLayeredSave {
        state: Some(LayeredState {
            job,
            hashes: blocks.iter().map(|&(h, _)| h).collect(),
            ns: ns.clone(),
            block_bytes: kv.kv.block_bytes(),
            context: Arc::clone(kv.engine.context()),
        }),
        backend: Arc::clone(backend),
        saver,
    }))
}

impl PyLayeredSave {
    fn state(&mut self) -> Result<&mut LayeredState> {
        self.state
            .as_mut()
            .ok_or_else(|| PyTierkvError::Argument("this layer-wise save is finished".into()))
    }
}

#[pymethods]
impl PyLayeredSave {
    /// Layers of a block.
    #[getter]
    fn layers(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.job.layers())
    }

    /// Queues the copy of layer `layer` of every block after the work queued so far on
    /// `stream` (the forward pass that wrote it). Returns at once.
    #[pyo3(signature = (layer, stream = 0))]
    fn layer(&mut self, layer: usize, stream: usize) -> PyResult<()> {
        let state = self.state()?;
        // SAFETY: the caller passes its current stream of this GPU (or 0).
        let engine_stream = unsafe { EngineStream::from_raw(stream) };
        let after = engine_stream.record(&state.context).map_err(gpu)?;
        state.job.layer(layer, &after).map_err(gpu)?;
        Ok(())
    }

    /// Queues the layers not yet copied and the copy to host (into staged host-tier
    /// slots); `stream` waits (on the GPU) until the blocks have been read. Returns how
    /// many blocks were handed to the saver (0 when its queue was full: they are then
    /// dropped once copied).
    #[pyo3(signature = (stream = 0))]
    fn finish(&mut self, py: Python<'_>, stream: usize) -> PyResult<usize> {
        let state = self
            .state
            .take()
            .ok_or_else(|| PyTierkvError::Argument("this layer-wise save is finished".into()))?;
        let LayeredState {
            job,
            hashes,
            ns,
            block_bytes,
            context,
        } = state;
        let n = hashes.len();
        // SAFETY: as in `layer`.
        let engine_stream = unsafe { EngineStream::from_raw(stream) };
        // Recorded first, in order with the engine's launches; the landings are taken
        // after (the forward pass is queued: this host work overlaps it).
        let after = engine_stream.record(&context).map_err(gpu)?;
        let mut landings =
            py.detach(|| runtime()?.block_on(landings(&self.backend, n, block_bytes)))?;
        let host: Vec<usize> = landings
            .iter_mut()
            .map(|l| l.as_mut_slice(block_bytes).as_mut_ptr() as usize)
            .collect();
        // SAFETY: each address is one block of a landing that travels with the copy
        // (CopyInFlight drops the copy, which waits for it, before the landings); on
        // error the job is dropped (and waited for) inside `finish`, before `landings`.
        let in_flight = unsafe { job.finish(&after, &engine_stream, &host) }.map_err(gpu)?;
        let copy = CopyInFlight {
            in_flight: Some(in_flight),
            landings,
        };
        // The landings travel with the copy: released only after it completed (or,
        // dropped early, after the job's Drop waited for it).
        let blocks: crate::saver::Deferred = Box::pin(async move {
            let mut copy = copy;
            if let Some(in_flight) = copy.in_flight.take() {
                in_flight.wait().await.map_err(|e| e.to_string())?;
            }
            let landings = std::mem::take(&mut copy.landings);
            Ok(hashes
                .into_iter()
                .zip(landings)
                .map(|(h, l)| (h, l.into_bytes(block_bytes)))
                .collect())
        });
        Ok(
            match self.saver.enqueue_deferred(ns, blocks, n, n * block_bytes) {
                Ok(()) => n,
                Err(blocks) => {
                    runtime()?.spawn(async move {
                        let _ = blocks.await;
                    });
                    0
                }
            },
        )
    }
}
