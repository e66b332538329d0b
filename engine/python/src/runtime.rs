//! The tokio runtime shared by every store and client of the process.

use std::sync::{Arc, OnceLock};

use crate::error::{PyTierkvError, Result};

static RUNTIME: OnceLock<std::result::Result<tokio::runtime::Runtime, Arc<std::io::Error>>> =
    OnceLock::new();

/// The process-wide runtime: two worker threads (the stores' own I/O runs on their
/// dedicated threads), created on first use, free to run on every core.
pub(crate) fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("tierkv-py")
                .on_thread_start(run_on_every_core)
                .enable_all()
                .build()
                .map_err(Arc::new)
        })
        .as_ref()
        .map_err(|e| PyTierkvError::Runtime(Arc::clone(e)))
}

/// Lets the calling thread run on every core of the machine (the kernel keeps it within
/// the process's cpuset).
///
/// vLLM's CPU backend binds each OpenMP thread, its main thread among them, to one core,
/// and threads started from there inherit that one core. The runtime's threads then
/// share it with the engine's busy threads (seen: two vLLM workers on 2 cores, a block
/// service thread runnable for 30 s without running, and a decode worker's fetch timing
/// out four times).
fn run_on_every_core() {
    // SAFETY: sysconf only reads a system setting.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    let cpus = usize::try_from(cpus)
        .unwrap_or(1)
        .clamp(1, libc::CPU_SETSIZE as usize);
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes bit `cpu` inside
    // it (cpu < CPU_SETSIZE); sched_setaffinity(0, ...) changes the calling thread only,
    // and a refusal leaves it as it was.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "runtime thread affinity left as it was");
        }
    }
}
