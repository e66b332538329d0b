//! Locking, one way for the whole workspace. Every critical section in tierkv leaves its
//! data consistent before anything in it can panic, so a lock poisoned by a thread that
//! panicked is taken over as it is, instead of spreading the panic to every later user
//! (a server must not die of one bad request).

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking over a poisoned lock.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks `l`, taking over a poisoned lock.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks `l`, taking over a poisoned lock.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, RwLock};

    #[test]
    fn a_lock_poisoned_by_a_panic_is_taken_over_with_its_data() {
        let m = Arc::new(Mutex::new(5));
        let l = Arc::new(RwLock::new(7));
        let (m2, l2) = (Arc::clone(&m), Arc::clone(&l));
        let panicked = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(panicked.is_err() && m.is_poisoned() && l.is_poisoned());
        *super::lock(&m) += 1;
        assert_eq!(*super::lock(&m), 6);
        *super::write(&l) += 1;
        assert_eq!(*super::read(&l), 8);
    }
}
