//! Caller memory that copies may read and write: regions (e.g. a KV cache tensor's
//! storage) are registered once; every copy to or from an address is checked to lie
//! inside one of them, so a wrong address from Python is an error, not a crash.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard};

use bytes::{Bytes, BytesMut};
use pyo3::prelude::*;

use crate::error::{PyTierkvError, Result};

/// Registered regions: start address -> length.
static REGIONS: RwLock<BTreeMap<usize, usize>> = RwLock::new(BTreeMap::new());

/// One piece of a block in caller memory: `(address, length)`.
pub(crate) type Range = (usize, usize);

/// Registers `[addr, addr + nbytes)` as memory that copies may read and write.
///
/// The caller promises the memory stays allocated until `unregister_memory(addr)` (for
/// a tensor: keep a reference to it). Overlapping registrations are refused.
#[pyfunction]
pub(crate) fn register_memory(addr: usize, nbytes: usize) -> PyResult<()> {
    let end = addr
        .checked_add(nbytes)
        .filter(|_| addr != 0 && nbytes != 0)
        .ok_or_else(|| PyTierkvError::Argument(format!("memory {addr:#x}+{nbytes}")))?;
    let mut regions = tierkv_kvstore::sync::write(&REGIONS);
    let before = regions.range(..end).next_back();
    if let Some((&start, &len)) = before
        && start + len > addr
    {
        if start == addr && len == nbytes {
            return Ok(()); // the same region again
        }
        return Err(PyTierkvError::Argument(format!(
            "memory {addr:#x}+{nbytes} overlaps the registered {start:#x}+{len}"
        ))
        .into());
    }
    regions.insert(addr, nbytes);
    Ok(())
}

/// Forgets the region registered at `addr` (after copies in flight finish); returns
/// whether there was one.
#[pyfunction]
pub(crate) fn unregister_memory(addr: usize) -> bool {
    tierkv_kvstore::sync::write(&REGIONS)
        .remove(&addr)
        .is_some()
}

/// The registry, read-locked for the duration of a copy (an unregister waits for it).
pub(crate) struct Checked {
    regions: RwLockReadGuard<'static, BTreeMap<usize, usize>>,
}

impl Checked {
    pub(crate) fn lock() -> Checked {
        Checked {
            regions: tierkv_kvstore::sync::read(&REGIONS),
        }
    }

    fn check(&self, (addr, len): Range) -> Result<()> {
        let inside = addr.checked_add(len).is_some_and(|end| {
            self.regions
                .range(..=addr)
                .next_back()
                .is_some_and(|(&start, &rlen)| end <= start + rlen)
        });
        if inside && len > 0 {
            Ok(())
        } else {
            Err(PyTierkvError::Unregistered { addr, len })
        }
    }

    /// Checks every range and returns their total length.
    pub(crate) fn total(&self, ranges: &[Range]) -> Result<usize> {
        let mut total = 0usize;
        for &r in ranges {
            self.check(r)?;
            total = total
                .checked_add(r.1)
                .ok_or_else(|| PyTierkvError::Argument("ranges overflow".into()))?;
        }
        Ok(total)
    }

    /// The bytes of `ranges`, concatenated (one copy).
    pub(crate) fn gather(&self, ranges: &[Range]) -> Result<Bytes> {
        let total = self.total(ranges)?;
        let mut out = BytesMut::with_capacity(total);
        for &(addr, len) in ranges {
            // SAFETY: `check` proved [addr, addr+len) lies inside a registered region,
            // which its owner keeps allocated while registered; the read lock held by
            // `self` keeps it registered for this copy.
            let src = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
            out.extend_from_slice(src);
        }
        Ok(out.freeze())
    }

    /// Copies `data` into `ranges` in order (one copy); their total must equal its length.
    pub(crate) fn scatter(&self, data: &[u8], ranges: &[Range]) -> Result<()> {
        let total = self.total(ranges)?;
        if total != data.len() {
            return Err(PyTierkvError::PayloadSize {
                namespace: "the ranges".into(),
                expected: total,
                got: data.len(),
            });
        }
        let mut at = 0;
        for &(addr, len) in ranges {
            // SAFETY: as in `gather`; the destination is caller memory registered for
            // writing, distinct from `data` (a store-owned buffer), and `at + len <=
            // data.len()` because the totals are equal.
            unsafe {
                std::ptr::copy_nonoverlapping(data[at..].as_ptr(), addr as *mut u8, len);
            }
            at += len;
        }
        Ok(())
    }
}
