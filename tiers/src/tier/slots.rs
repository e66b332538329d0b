//! Slot bookkeeping shared by the slotted tiers (host memory, disk and GPU): which key sits
//! in which slot, which slots are free, and who is reading or writing a slot.
//!
//! A slot goes `Free -> Writing -> Ready`; `remove` of a slot that is being read or
//! written retires it, and it is recycled only when its last user leaves, so a slot is
//! never rewritten under a reader.
//!
//! A host slot can also be *staged*: handed to an outside writer (a same-host client
//! writing into the shared slab) before it has a key, `Free -> Staged`, then adopted
//! under a key (`Staged -> Ready`, no copy) or given back. The stager counts as a
//! reader from staging until it lets go, so an adopted slot is not recycled under it.

use crate::{BlockKey, BlockKeyMap};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SlotState {
    Free,
    Writing,
    Ready,
    Retired,
    Staged,
}

#[derive(Clone, Copy, Debug)]
struct SlotMeta {
    state: SlotState,
    len: u64,
    readers: u32,
}

/// Outcome of [`SlotTable::reserve`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// The key is present or being written.
    Present,
    /// No free slot.
    Full,
    /// This slot is now owned by the caller, who must `commit` or `abort` it.
    Reserved(u32),
}

pub(crate) struct SlotTable {
    index: BlockKeyMap<u32>,
    slots: Vec<SlotMeta>,
    free: Vec<u32>,
    used_bytes: u64,
}

impl SlotTable {
    pub(crate) fn new(slots: u32) -> SlotTable {
        SlotTable {
            index: BlockKeyMap::default(),
            slots: vec![
                SlotMeta {
                    state: SlotState::Free,
                    len: 0,
                    readers: 0,
                };
                slots as usize
            ],
            free: (0..slots).rev().collect(),
            used_bytes: 0,
        }
    }

    /// Marks `slot` as holding `key` (used when reloading a persistent index). Returns
    /// false, changing nothing, if the slot is out of range or already taken or the key
    /// is already placed.
    pub(crate) fn insert_ready(&mut self, key: BlockKey, slot: u32, len: u64) -> bool {
        match self.slots.get(slot as usize) {
            Some(meta) if meta.state == SlotState::Free && !self.index.contains_key(&key) => {}
            _ => return false,
        }
        self.slots[slot as usize] = SlotMeta {
            state: SlotState::Ready,
            len,
            readers: 0,
        };
        self.index.insert(key, slot);
        self.used_bytes += len;
        self.free.retain(|&s| s != slot);
        true
    }

    pub(crate) fn reserve(&mut self, key: BlockKey) -> Reservation {
        if self.index.contains_key(&key) {
            return Reservation::Present;
        }
        let Some(slot) = self.free.pop() else {
            return Reservation::Full;
        };
        self.slots[slot as usize].state = SlotState::Writing;
        self.index.insert(key, slot);
        Reservation::Reserved(slot)
    }

    /// Whether `key` is being written (reserved, not yet committed or aborted).
    pub(crate) fn is_writing(&self, key: BlockKey) -> bool {
        self.index
            .get(&key)
            .is_some_and(|&s| self.slots[s as usize].state == SlotState::Writing)
    }

    /// The write into a reserved slot finished. Returns false if the block was removed
    /// meanwhile (the slot is then recycled and the caller must forget the block).
    pub(crate) fn commit(&mut self, slot: u32, len: u64) -> bool {
        let meta = &mut self.slots[slot as usize];
        if meta.state == SlotState::Retired {
            self.release(slot);
            return false;
        }
        meta.state = SlotState::Ready;
        meta.len = len;
        self.used_bytes += len;
        true
    }

    /// The write into a reserved slot failed: forget the key and recycle the slot.
    pub(crate) fn abort(&mut self, key: BlockKey, slot: u32) {
        if self.index.get(&key) == Some(&slot) {
            self.index.remove(&key);
        }
        self.release(slot);
    }

    /// Registers a reader of `key`'s slot, if the block is ready: `(slot, len)`.
    pub(crate) fn acquire(&mut self, key: BlockKey) -> Option<(u32, u64)> {
        let slot = *self.index.get(&key)?;
        let meta = &mut self.slots[slot as usize];
        if meta.state != SlotState::Ready {
            return None;
        }
        meta.readers += 1;
        Some((slot, meta.len))
    }

    pub(crate) fn release_reader(&mut self, slot: u32) {
        let meta = &mut self.slots[slot as usize];
        meta.readers = meta.readers.saturating_sub(1);
        if meta.readers == 0 && meta.state == SlotState::Retired {
            self.release(slot);
        }
    }

    /// A free slot for an outside writer, held until [`SlotTable::unstage`].
    pub(crate) fn stage(&mut self) -> Option<u32> {
        let slot = self.free.pop()?;
        let meta = &mut self.slots[slot as usize];
        meta.state = SlotState::Staged;
        meta.readers = 1;
        Some(slot)
    }

    /// Whether `slot` is staged (written by an outside writer, not adopted yet).
    pub(crate) fn is_staged(&self, slot: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|m| m.state == SlotState::Staged)
    }

    /// Makes a staged slot hold `key` (its bytes are already there). `Present` if the
    /// key is held elsewhere (the slot stays staged), `Reserved(slot)` once adopted.
    pub(crate) fn adopt(&mut self, slot: u32, key: BlockKey, len: u64) -> Reservation {
        if self.index.contains_key(&key) {
            return Reservation::Present;
        }
        if !self.is_staged(slot) {
            return Reservation::Full;
        }
        let meta = &mut self.slots[slot as usize];
        meta.state = SlotState::Ready;
        meta.len = len;
        self.used_bytes += len;
        self.index.insert(key, slot);
        Reservation::Reserved(slot)
    }

    /// The stager lets go of `slot`: recycled if it was never adopted, else its hold
    /// ends like a reader's.
    pub(crate) fn unstage(&mut self, slot: u32) {
        if self.is_staged(slot) {
            self.release(slot);
        } else {
            self.release_reader(slot);
        }
    }

    /// Forgets `key`; its slot is recycled now, or when its last reader or writer leaves.
    /// Returns the slot if the key was present.
    pub(crate) fn remove(&mut self, key: BlockKey) -> Option<u32> {
        let slot = self.index.remove(&key)?;
        let meta = self.slots[slot as usize];
        if meta.state == SlotState::Ready {
            self.used_bytes -= meta.len;
        }
        if meta.readers > 0 || meta.state == SlotState::Writing {
            self.slots[slot as usize].state = SlotState::Retired;
        } else {
            self.release(slot);
        }
        Some(slot)
    }

    pub(crate) fn contains(&self, key: BlockKey) -> bool {
        self.index.contains_key(&key)
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.slots.len() as u64
    }

    pub(crate) fn len(&self) -> u64 {
        self.index.len() as u64
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Ready blocks with their lengths.
    pub(crate) fn ready_keys(&self) -> Vec<(BlockKey, u64)> {
        self.index
            .iter()
            .filter_map(|(k, &slot)| {
                let meta = self.slots[slot as usize];
                (meta.state == SlotState::Ready).then_some((*k, meta.len))
            })
            .collect()
    }

    fn release(&mut self, slot: u32) {
        self.slots[slot as usize] = SlotMeta {
            state: SlotState::Free,
            len: 0,
            readers: 0,
        };
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_never_recycled_under_a_reader() {
        let mut t = SlotTable::new(1);
        let a = BlockKey::new(1, 1);
        let Reservation::Reserved(slot) = t.reserve(a) else {
            panic!("expected a slot")
        };
        assert_eq!(t.reserve(a), Reservation::Present);
        assert_eq!(t.acquire(a), None, "not readable while being written");
        assert!(t.commit(slot, 10));
        assert_eq!(t.acquire(a), Some((slot, 10)));
        assert_eq!(t.remove(a), Some(slot));
        assert_eq!(t.used_bytes(), 0);
        // Still being read: the only slot is not free yet.
        assert_eq!(t.reserve(BlockKey::new(1, 2)), Reservation::Full);
        t.release_reader(slot);
        assert!(matches!(
            t.reserve(BlockKey::new(1, 2)),
            Reservation::Reserved(_)
        ));
    }

    #[test]
    fn a_staged_slot_is_adopted_without_recycling_it_under_its_stager() {
        let mut t = SlotTable::new(2);
        let a = BlockKey::new(1, 1);
        let s = t.stage().unwrap();
        assert!(t.is_staged(s));
        assert_eq!(t.adopt(s, a, 10), Reservation::Reserved(s));
        assert!(!t.is_staged(s));
        assert_eq!(t.acquire(a), Some((s, 10)));
        t.release_reader(s);
        // Removed while the stager still holds it: not free until it lets go.
        assert_eq!(t.remove(a), Some(s));
        let other = t.stage().unwrap();
        assert_ne!(other, s);
        assert_eq!(t.stage(), None, "the adopted slot is still held");
        t.unstage(s);
        assert_eq!(t.stage(), Some(s));
        // A key already present is not adopted twice; an unadopted slot goes back free.
        assert_eq!(t.adopt(other, a, 5), Reservation::Reserved(other));
        assert_eq!(t.adopt(s, a, 5), Reservation::Present);
        t.unstage(s);
        assert!(!t.is_staged(s));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn removal_during_a_write_recycles_on_commit() {
        let mut t = SlotTable::new(1);
        let a = BlockKey::new(1, 1);
        let Reservation::Reserved(slot) = t.reserve(a) else {
            panic!("expected a slot")
        };
        assert_eq!(t.remove(a), Some(slot));
        assert!(!t.commit(slot, 10));
        assert!(!t.contains(a));
        assert!(matches!(t.reserve(a), Reservation::Reserved(_)));
    }

    #[test]
    fn reload_rejects_bad_and_duplicate_slots() {
        let mut t = SlotTable::new(2);
        assert!(t.insert_ready(BlockKey::new(0, 1), 1, 5));
        assert!(!t.insert_ready(BlockKey::new(0, 2), 1, 5), "slot taken");
        assert!(!t.insert_ready(BlockKey::new(0, 3), 9, 5), "out of range");
        assert_eq!(t.len(), 1);
        assert_eq!(t.reserve(BlockKey::new(0, 4)), Reservation::Reserved(0));
        assert_eq!(t.reserve(BlockKey::new(0, 5)), Reservation::Full);
    }
}
