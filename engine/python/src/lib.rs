//! `tierkv._tierkv`: the native half of the `tierkv` Python package.
//!
//! - `namespace::PyNamespace`: `Namespace` and the block-hash chain, exactly as the Rust
//!   side computes them.
//! - `store::PyStore`: a `TieredStore` opened in this process (`Store.open`) or a
//!   `tierkv serve` sidecar (`Store.connect`), with the same methods: put / get /
//!   contains / lookup / stats, whole-block copies to and from caller memory, and
//!   background saves.
//! - `gpu` (feature `cuda`): an engine's KV cache tensors on a GPU (`GpuKv`), offloaded
//!   into the host tier and onboarded back by the transfer engine (`save_gpu`,
//!   `load_gpu`).
//! - `memory`: caller memory regions (e.g. a KV cache tensor) registered once, so that
//!   every copy to or from an address is bounds-checked instead of trusted.
//!
//! Every call that does I/O releases the GIL; errors are `tierkv.TierkvError` with the
//! Rust message.

mod backend;
mod counters;
mod error;
#[cfg(feature = "cuda")]
mod gpu;
mod logging;
mod memory;
mod namespace;
mod runtime;
mod saver;
mod store;

use pyo3::prelude::*;

#[pymodule]
fn _tierkv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TierkvError", m.py().get_type::<error::TierkvError>())?;
    m.add_class::<namespace::PyNamespace>()?;
    m.add_class::<store::PyStore>()?;
    m.add_function(wrap_pyfunction!(memory::register_memory, m)?)?;
    m.add_function(wrap_pyfunction!(memory::unregister_memory, m)?)?;
    m.add_function(wrap_pyfunction!(namespace::namespace_id, m)?)?;
    m.add_function(wrap_pyfunction!(logging::init_logging, m)?)?;
    #[cfg(feature = "cuda")]
    {
        m.add_class::<gpu::PyGpuKv>()?;
        m.add_class::<gpu::PyLayeredSave>()?;
        m.add_function(wrap_pyfunction!(gpu::gpu_available, m)?)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
