//! `tierkv.Store`: a tiered store in this process (`Store.open`) or a `tierkv serve`
//! sidecar (`Store.connect`), with one set of methods.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use tierkv_kvstore::metrics::Metrics;
use tierkv_kvstore::{StoreConfig, TieredStore, service};

use crate::backend::{Backend, Served, SidecarOptions};
use crate::counters::IoCounters;
use crate::error::{PyTierkvError, Result};
use crate::memory::{Checked, Range};
use crate::namespace::PyNamespace;
use crate::runtime::runtime;
use crate::saver::Saver;

/// Bytes of copied blocks `save` may keep waiting for storage by default (256 MiB).
const DEFAULT_SAVE_QUEUE_BYTES: usize = 256 << 20;

/// A block to copy from or into caller memory: its hash and where its bytes are.
type BlockRanges = (u128, Vec<Range>);

/// A tiered KV block store: embedded in this process or a sidecar's.
#[pyclass(name = "Store", module = "tierkv._tierkv", frozen)]
#[derive(Debug)]
pub struct PyStore {
    backend: Arc<Backend>,
    saver: Arc<Saver>,
    counters: Arc<IoCounters>,
}

/// Runs `fut` on the shared runtime with the GIL released.
fn block_on<T: Send>(
    py: Python<'_>,
    fut: impl std::future::Future<Output = Result<T>> + Send,
) -> PyResult<T> {
    let rt = runtime()?;
    Ok(py.detach(|| rt.block_on(fut))?)
}

fn json_to_py(py: Python<'_>, value: &serde_json::Value) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("json")?
        .call_method1("loads", (value.to_string(),))?
        .unbind())
}

/// The store configuration from a TOML file path or a JSON text (the Python wrapper
/// turns a dict into JSON), with the block size raised to hold `min_slot_bytes`.
fn load_config(
    path: Option<String>,
    json: Option<String>,
    min_slot_bytes: u64,
    data_subdir: Option<String>,
) -> Result<StoreConfig> {
    let mut config = match (path, json) {
        (Some(_), Some(_)) => {
            return Err(PyTierkvError::Argument(
                "give a config path or a config dict, not both".into(),
            ));
        }
        (Some(path), None) => StoreConfig::from_file(std::path::Path::new(&path))?,
        (None, Some(json)) => serde_json::from_str::<StoreConfig>(&json)
            .map_err(|e| PyTierkvError::Argument(format!("store config: {e}")))?,
        (None, None) => StoreConfig::default(),
    };
    if let Some(sub) = data_subdir {
        config.data_dir = config.data_dir.join(sub);
    }
    if config.slot_bytes.0 < min_slot_bytes {
        tracing::info!(
            from = config.slot_bytes.0,
            to = min_slot_bytes,
            "store slot size raised to hold one KV block"
        );
        config.slot_bytes.0 = min_slot_bytes;
    }
    // The Python package is a binary edge: S3 credentials and peer tokens left out of
    // the file come from the environment, as for the `tierkv` binary.
    config.fill_secrets(|name| std::env::var(name).ok());
    config.validate()?;
    Ok(config)
}

impl PyStore {
    fn new(backend: Backend, save_queue_bytes: usize) -> PyResult<PyStore> {
        let backend = Arc::new(backend);
        let counters = Arc::new(IoCounters::default());
        let saver = Arc::new(Saver::start(
            runtime()?,
            Arc::downgrade(&backend),
            Arc::clone(&counters),
            save_queue_bytes,
        ));
        Ok(PyStore {
            backend,
            saver,
            counters,
        })
    }

    /// Copies and checks `blocks` out of caller memory (one copy each).
    fn gather(ns: &PyNamespace, blocks: &[BlockRanges]) -> Result<Vec<(u128, Bytes)>> {
        let expected = ns.ns.layout().block_bytes();
        let memory = Checked::lock();
        blocks
            .iter()
            .map(|(h, ranges)| {
                let total = memory.total(ranges)?;
                if total != expected {
                    return Err(PyTierkvError::RangeSize {
                        namespace: ns.ns.name().to_string(),
                        expected,
                        got: total,
                    });
                }
                Ok((*h, memory.gather(ranges)?))
            })
            .collect()
    }
}

#[pymethods]
impl PyStore {
    /// Opens a tiered store in this process. `config`: a TOML file path (the format of
    /// `tierkv serve --config`); `config_json`: the same as JSON; neither: the default
    /// (host 512 MiB -> disk 4 GiB -> object dir 16 GiB under `./tierkv-data`).
    /// `min_slot_bytes` raises `slot_bytes` to hold one block of the caller's model;
    /// `data_subdir` puts the tiers under `data_dir/data_subdir` (one store per
    /// tensor-parallel rank).
    #[staticmethod]
    #[pyo3(signature = (config = None, config_json = None, min_slot_bytes = 0, save_queue_bytes = DEFAULT_SAVE_QUEUE_BYTES, data_subdir = None))]
    fn open(
        py: Python<'_>,
        config: Option<String>,
        config_json: Option<String>,
        min_slot_bytes: u64,
        save_queue_bytes: usize,
        data_subdir: Option<String>,
    ) -> PyResult<PyStore> {
        let config = load_config(config, config_json, min_slot_bytes, data_subdir)?;
        let store = block_on(py, async move { Ok(TieredStore::open(&config).await?) })?;
        Self::new(
            Backend::Embedded {
                store,
                served: std::sync::Mutex::new(None),
            },
            save_queue_bytes,
        )
    }

    /// A client of a `tierkv serve` block service at `addr` (`host:port` or
    /// `http(s)://host:port`). Connects on first use.
    #[staticmethod]
    #[pyo3(signature = (addr, token = None, timeout_s = 60.0, retries = 3, save_queue_bytes = DEFAULT_SAVE_QUEUE_BYTES))]
    fn connect(
        addr: &str,
        token: Option<String>,
        timeout_s: f64,
        retries: u32,
        save_queue_bytes: usize,
    ) -> PyResult<PyStore> {
        let timeout = Duration::try_from_secs_f64(timeout_s)
            .map_err(|e| PyTierkvError::Argument(format!("timeout_s = {timeout_s}: {e}")))?;
        // A runtime must exist before the client's lazy channel is made.
        let rt = runtime()?;
        let _guard = rt.enter();
        let backend = Backend::sidecar(
            addr,
            SidecarOptions {
                token,
                timeout,
                retries,
            },
        )?;
        Self::new(backend, save_queue_bytes)
    }

    /// `"embedded"` or `"sidecar"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Stores one block (`bytes` or `bytearray`-like data of exactly the namespace's
    /// block size); returns whether it was new.
    fn put(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        hash: u128,
        data: PyBackedBytes,
    ) -> PyResult<bool> {
        let data = Bytes::from_owner(data);
        let ns = ns.ns.clone();
        let backend = Arc::clone(&self.backend);
        block_on(py, async move {
            Ok(backend.put_many(&ns, vec![(hash, data)]).await? == 1)
        })
    }

    /// Stores many blocks `[(hash, data)]` concurrently; returns how many were new.
    fn put_many(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        blocks: Vec<(u128, PyBackedBytes)>,
    ) -> PyResult<u64> {
        let blocks = blocks
            .into_iter()
            .map(|(h, d)| (h, Bytes::from_owner(d)))
            .collect();
        let ns = ns.ns.clone();
        let backend = Arc::clone(&self.backend);
        block_on(py, async move { backend.put_many(&ns, blocks).await })
    }

    /// The block's bytes, or `None` when no tier holds it (or it failed its checksum).
    fn get(&self, py: Python<'_>, ns: &PyNamespace, hash: u128) -> PyResult<Option<Py<PyBytes>>> {
        let mut got = self.get_many(py, ns, vec![hash])?;
        Ok(got.pop().flatten())
    }

    /// The bytes of each block, `None` where missing.
    fn get_many(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        hashes: Vec<u128>,
    ) -> PyResult<Vec<Option<Py<PyBytes>>>> {
        let ns = ns.ns.clone();
        let backend = Arc::clone(&self.backend);
        let blocks = block_on(py, async move { backend.get_many(&ns, &hashes).await })?;
        Ok(blocks
            .into_iter()
            .map(|b| b.map(|d| PyBytes::new(py, &d).unbind()))
            .collect())
    }

    /// Whether the store holds the block (no payload I/O).
    fn contains(&self, py: Python<'_>, ns: &PyNamespace, hash: u128) -> PyResult<bool> {
        Ok(self.lookup(py, ns, vec![hash])? == 1)
    }

    /// How many leading blocks of the hash chain `hashes` the store holds (no payload
    /// I/O: an in-memory walk for an embedded store, one RPC for a sidecar).
    fn lookup(&self, py: Python<'_>, ns: &PyNamespace, hashes: Vec<u128>) -> PyResult<usize> {
        let ns = ns.ns.clone();
        let backend = Arc::clone(&self.backend);
        block_on(py, async move { backend.lookup(&ns, &hashes).await })
    }

    /// Stores one block read from caller memory `ranges` `[(address, length)]`
    /// (registered with `register_memory`), concatenated in order; returns whether new.
    fn put_from(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        hash: u128,
        ranges: Vec<Range>,
    ) -> PyResult<bool> {
        let block = vec![(hash, ranges)];
        let backend = Arc::clone(&self.backend);
        let ns_owned = ns.ns.clone();
        let ns_ref = ns.clone();
        block_on(py, async move {
            let blocks = PyStore::gather(&ns_ref, &block)?;
            Ok(backend.put_many(&ns_owned, blocks).await? == 1)
        })
    }

    /// Copies one block into caller memory `ranges`; returns false (writing nothing)
    /// when the block is missing or unusable.
    fn get_into(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        hash: u128,
        ranges: Vec<Range>,
    ) -> PyResult<bool> {
        Ok(self.load(py, ns, vec![(hash, ranges)])? == 1)
    }

    /// Saves blocks `[(hash, ranges)]` in the background: their bytes are copied out of
    /// caller memory before this returns (the memory may be reused at once), then
    /// stored by a background task. Returns how many blocks were queued; when the queue
    /// is full the blocks are skipped and counted (`stats()["io"]["save_skipped"]`).
    fn save(&self, py: Python<'_>, ns: &PyNamespace, blocks: Vec<BlockRanges>) -> PyResult<usize> {
        let n = blocks.len();
        if n == 0 {
            return Ok(0);
        }
        let gathered = py.detach(|| PyStore::gather(ns, &blocks))?;
        Ok(if self.saver.enqueue(ns.ns.clone(), gathered) {
            n
        } else {
            0
        })
    }

    /// Loads blocks `[(hash, ranges)]` into caller memory, in order, and returns how many
    /// leading blocks were loaded: it stops at the first block that is missing, has the
    /// wrong size, failed its checksum or could not be read, so a caller recomputes
    /// from there and never uses a block it cannot trust.
    fn load(&self, py: Python<'_>, ns: &PyNamespace, blocks: Vec<BlockRanges>) -> PyResult<usize> {
        if blocks.is_empty() {
            return Ok(0);
        }
        let ns = ns.ns.clone();
        let backend = Arc::clone(&self.backend);
        let counters = Arc::clone(&self.counters);
        block_on(py, async move {
            let t0 = Instant::now();
            let hashes: Vec<u128> = blocks.iter().map(|(h, _)| *h).collect();
            let fetched = match backend.get_many(&ns, &hashes).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(namespace = %ns.name(), error = %e, "load failed");
                    counters.load_failed.fetch_add(blocks.len() as u64, Relaxed);
                    return Ok(0);
                }
            };
            let memory = Checked::lock();
            let mut loaded = 0;
            for ((_, ranges), data) in blocks.iter().zip(&fetched) {
                let Some(data) = data else { break };
                memory.scatter(data, ranges)?;
                loaded += 1;
                counters.loaded_bytes.fetch_add(data.len() as u64, Relaxed);
            }
            counters.loaded_blocks.fetch_add(loaded as u64, Relaxed);
            counters
                .load_failed
                .fetch_add((blocks.len() - loaded) as u64, Relaxed);
            IoCounters::add_time(&counters.load_nanos, t0.elapsed());
            Ok(loaded)
        })
    }

    /// GPU `save`: offloads blocks `[(hash, block_id)]` of `kv` (an engine's KV cache on
    /// a GPU) and stores them in the background. The copies run on the GPU after the
    /// work queued so far on `stream` (the engine's current CUDA stream; 0: the default
    /// stream) and have finished when this returns, so the blocks may be reused; with an
    /// embedded store they land straight in (pinned) host-tier slots. Returns how many
    /// blocks were queued, as `save`.
    #[cfg(feature = "cuda")]
    #[pyo3(signature = (ns, kv, blocks, stream = 0))]
    fn save_gpu(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        kv: &crate::gpu::PyGpuKv,
        blocks: Vec<(u128, u32)>,
        stream: usize,
    ) -> PyResult<usize> {
        let n = blocks.len();
        if n == 0 {
            return Ok(0);
        }
        let t0 = Instant::now();
        let landed =
            py.detach(|| crate::gpu::offload(&self.backend, &ns.ns, kv, &blocks, stream))?;
        IoCounters::add_time(&self.counters.save_nanos, t0.elapsed());
        Ok(if self.saver.enqueue(ns.ns.clone(), landed) {
            n
        } else {
            0
        })
    }

    /// Starts a layer-wise GPU save of `[(hash, block_id)]` (see `LayeredSave`): call
    /// `layer(i, stream)` right after layer `i` wrote its K/V, then `finish(stream)`.
    /// `None` when it cannot be done layer by layer (a layout whose blocks are one run,
    /// more blocks than the layer-wise staging holds, a sidecar): use `save_gpu` at the
    /// end of the step then.
    #[cfg(feature = "cuda")]
    fn begin_save_gpu(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        kv: &crate::gpu::PyGpuKv,
        blocks: Vec<(u128, u32)>,
    ) -> PyResult<Option<crate::gpu::PyLayeredSave>> {
        if blocks.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let job = py.detach(|| {
            crate::gpu::begin_layered(&self.backend, &ns.ns, kv, &blocks, Arc::clone(&self.saver))
        })?;
        IoCounters::add_time(&self.counters.save_nanos, t0.elapsed());
        Ok(job)
    }

    /// GPU `load`: onboards the leading blocks of `[(hash, block_id)]` the store holds
    /// into `kv` and returns how many, as `load` (a missing or untrusted block ends the
    /// run; the caller recomputes from there). The copies run on the GPU after the work
    /// queued so far on `stream` and have landed when this returns.
    #[cfg(feature = "cuda")]
    #[pyo3(signature = (ns, kv, blocks, stream = 0))]
    fn load_gpu(
        &self,
        py: Python<'_>,
        ns: &PyNamespace,
        kv: &crate::gpu::PyGpuKv,
        blocks: Vec<(u128, u32)>,
        stream: usize,
    ) -> PyResult<usize> {
        if blocks.is_empty() {
            return Ok(0);
        }
        let t0 = Instant::now();
        let loaded =
            match py.detach(|| crate::gpu::onboard(&self.backend, &ns.ns, kv, &blocks, stream)) {
                Ok(n) => n,
                // Bad arguments are the caller's to see; a failed fetch or copy is a miss.
                Err(e @ (PyTierkvError::RangeSize { .. } | PyTierkvError::Argument(_))) => {
                    return Err(e.into());
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns.ns.name(), error = %e, "GPU load failed");
                    0
                }
            };
        let c = &self.counters;
        c.loaded_blocks.fetch_add(loaded as u64, Relaxed);
        c.loaded_bytes
            .fetch_add((loaded * kv.block_bytes()) as u64, Relaxed);
        c.load_failed
            .fetch_add((blocks.len() - loaded) as u64, Relaxed);
        IoCounters::add_time(&c.load_nanos, t0.elapsed());
        Ok(loaded)
    }

    /// Waits until every block `save` queued before this call is stored; returns false
    /// if `timeout_s` passed first.
    #[pyo3(signature = (timeout_s = None))]
    fn flush(&self, py: Python<'_>, timeout_s: Option<f64>) -> PyResult<bool> {
        let wait = self.saver.flush();
        let timeout = match timeout_s {
            Some(t) => Some(
                Duration::try_from_secs_f64(t)
                    .map_err(|e| PyTierkvError::Argument(format!("timeout_s = {t}: {e}")))?,
            ),
            None => None,
        };
        block_on(py, async move {
            Ok(match timeout {
                Some(t) => matches!(tokio::time::timeout(t, wait).await, Ok(Ok(()))),
                None => wait.await.is_ok(),
            })
        })
    }

    /// Serves the block service on this embedded store (`listen` `host:port`; port 0
    /// picks a free one) and returns the address it listens on; the same store then
    /// answers other processes (a scheduler's lookups, a peer's fetches). With `token`,
    /// only callers presenting it (as a bearer token) are served.
    #[pyo3(signature = (listen = "127.0.0.1:0", token = None))]
    fn serve(&self, py: Python<'_>, listen: &str, token: Option<String>) -> PyResult<String> {
        let Backend::Embedded { store, served } = &*self.backend else {
            return Err(
                PyTierkvError::Unsupported("serve: only an embedded store can serve").into(),
            );
        };
        let mut served = tierkv_kvstore::sync::lock(served);
        if let Some(s) = &*served {
            return Ok(s.addr.clone());
        }
        let rt = runtime()?;
        let listen = listen.to_string();
        let listener = py.detach(|| {
            rt.block_on(tokio::net::TcpListener::bind(listen.clone()))
                .map_err(|e| PyTierkvError::Argument(format!("binding {listen}: {e}")))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| PyTierkvError::Argument(format!("listener address: {e}")))?
            .to_string();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let store = store.clone();
        let mut service_config = tierkv_kvstore::service::ServiceConfig::default();
        if let Some(token) = token {
            service_config
                .tokens
                .push(tierkv_kvstore::service::TokenConfig {
                    token,
                    namespaces: vec!["*".into()],
                });
        }
        service_config
            .validate()
            .map_err(|e| PyTierkvError::Argument(format!("block service: {e}")))?;
        let task = rt.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let metrics = Arc::new(Metrics::new());
            if let Err(e) =
                service::serve(store, &service_config, listener, metrics, shutdown).await
            {
                tracing::error!(error = %e, "block service stopped");
            }
        });
        *served = Some(Served {
            addr: addr.clone(),
            stop,
            task,
        });
        Ok(addr)
    }

    /// The store's figures: `tiers` (per tier: name, kind, capacity, used, blocks,
    /// hits, misses, bytes, evictions, corrupt blocks), `blocks`, and `io` (this
    /// handle's saves and loads: blocks, bytes, seconds, skipped, failed) and
    /// `save_queue_bytes` (bytes waiting to be stored).
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let backend = Arc::clone(&self.backend);
        let mut value = block_on(py, async move { backend.stats().await })?;
        value["io"] = self.counters.to_json();
        value["save_queue_bytes"] = self.saver.pending_bytes().into();
        json_to_py(py, &value)
    }

    /// Finishes queued saves and stops the block service started by `serve` (waiting up
    /// to 10 s for its clients to go), so that once the last reference to this handle is
    /// dropped the store's files are released at once.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.flush(py, None)?;
        if let Backend::Embedded { served, .. } = &*self.backend
            && let Some(s) = tierkv_kvstore::sync::lock(served).take()
        {
            let _ = s.stop.send(true);
            let rt = runtime()?;
            let stopped = py.detach(|| {
                rt.block_on(
                    async move { tokio::time::timeout(Duration::from_secs(10), s.task).await },
                )
            });
            if stopped.is_err() {
                tracing::warn!(addr = %s.addr, "the block service did not stop within 10 s");
            }
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("Store({:?})", self.backend)
    }
}
