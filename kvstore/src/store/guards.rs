//! RAII guards that keep the store's index consistent when a caller gives up half-way:
//! pins, put reservations and evictions in progress.

use std::sync::Arc;

use tierkv_tiers::BlockKey;

use super::{Inner, lock};

/// Keeps blocks from being evicted while alive.
pub struct PinGuard {
    pub(super) inner: Arc<Inner>,
    pub(super) keys: Vec<BlockKey>,
}

impl std::fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinGuard")
            .field("blocks", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut ix = lock(&self.inner.index);
        for k in &self.keys {
            ix.unpin(k);
        }
    }
}

/// A put's room in a tier; released (not stored) if the put is abandoned half-way.
pub(super) struct Reservation<'a> {
    pub(super) inner: &'a Inner,
    pub(super) tier: usize,
    pub(super) key: BlockKey,
}

impl Reservation<'_> {
    pub(super) fn finish(self, stored: bool) {
        lock(&self.inner.index).finish_put(self.tier, self.key, stored);
        self.inner.room.notify_waiters();
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.inner.index).finish_put(self.tier, self.key, false);
        self.inner.room.notify_waiters();
    }
}

/// An eviction in progress; ended (block kept) if abandoned half-way.
pub(super) struct Eviction<'a> {
    pub(super) inner: &'a Inner,
    pub(super) tier: usize,
    pub(super) victim: BlockKey,
}

impl Eviction<'_> {
    pub(super) fn finish(self, removed: bool) {
        lock(&self.inner.index).end_eviction(self.tier, &self.victim, removed);
        self.inner.room.notify_waiters();
        std::mem::forget(self);
    }
}

impl Drop for Eviction<'_> {
    fn drop(&mut self) {
        lock(&self.inner.index).end_eviction(self.tier, &self.victim, false);
        self.inner.room.notify_waiters();
    }
}
