//! Failpoints: named places in the I/O paths where a test makes the operation fail, as
//! a broken disk, a full disk, a failing object store or a dropped connection would.
//!
//! They exist only with the `failpoints` feature, which the test suites turn on
//! through their dev-dependencies; without it [`check`] is an inlined `Ok(())`. Even
//! with it nothing is armed unless a test calls `arm`: no environment variable or
//! input can reach them. Names in use (grep `failpoint::check`):
//! `disk.write`, `disk.read`, `index.write`, `object.put`, `object.get`, `net.send`,
//! `net.recv`.

/// What an armed failpoint does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The `errno` of the error it returns (e.g. `libc::EIO`, `libc::ENOSPC`).
    pub errno: i32,
    /// Fails this many times, then disarms itself; `None`: until `disarm`.
    pub times: Option<u32>,
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::Failure;

    static ANY: AtomicBool = AtomicBool::new(false);
    static TABLE: Mutex<Option<HashMap<String, Failure>>> = Mutex::new(None);

    fn table() -> std::sync::MutexGuard<'static, Option<HashMap<String, Failure>>> {
        crate::sync::lock(&TABLE)
    }

    pub(super) fn arm(name: &str, failure: Failure) {
        table()
            .get_or_insert_with(HashMap::new)
            .insert(name.to_string(), failure);
        ANY.store(true, Ordering::SeqCst);
    }

    pub(super) fn disarm(name: &str) {
        if let Some(t) = table().as_mut() {
            t.remove(name);
        }
    }

    pub(super) fn check(name: &str) -> std::io::Result<()> {
        if !ANY.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut t = table();
        let Some(map) = t.as_mut() else {
            return Ok(());
        };
        let Some(f) = map.get_mut(name) else {
            return Ok(());
        };
        let errno = f.errno;
        match &mut f.times {
            Some(0) => {
                map.remove(name);
                return Ok(());
            }
            Some(n) => *n -= 1,
            None => {}
        }
        Err(std::io::Error::from_raw_os_error(errno))
    }
}

/// Arms failpoint `name` (process-wide).
#[cfg(feature = "failpoints")]
pub fn arm(name: &str, failure: Failure) {
    armed::arm(name, failure)
}

/// Disarms failpoint `name`.
#[cfg(feature = "failpoints")]
pub fn disarm(name: &str) {
    armed::disarm(name)
}

/// `Err` when failpoint `name` is armed.
#[cfg(feature = "failpoints")]
pub fn check(name: &str) -> std::io::Result<()> {
    armed::check(name)
}

/// Always `Ok`: failpoints are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn check(_name: &str) -> std::io::Result<()> {
    Ok(())
}
