//! [`NamespaceNames`]: namespace names by digest, bounded. Block keys carry only a
//! namespace's 64-bit digest; the block service (to name namespaces in events) and
//! [`crate::RemoteTier`] (to address a peer) need the name back. Clients choose the
//! names, so the map keeps the most recently used `capacity` of them, never every
//! name it was ever sent.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use crate::namespace_id;

/// Names kept by default.
pub(crate) const DEFAULT_NAMES: usize = 65_536;

pub(crate) struct NamespaceNames(Mutex<LruCache<u64, String>>);

impl NamespaceNames {
    pub(crate) fn new(capacity: usize) -> NamespaceNames {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        NamespaceNames(Mutex::new(LruCache::new(cap)))
    }

    /// Records `name` (as most recently used) and returns its digest.
    pub(crate) fn remember(&self, name: &str) -> u64 {
        let id = namespace_id(name);
        let mut names = tierkv_tiers::sync::lock(&self.0);
        if names.get(&id).is_none() {
            names.put(id, name.to_string());
        }
        id
    }

    /// The name of digest `id`, if it is among those kept.
    pub(crate) fn name(&self, id: u64) -> Option<String> {
        tierkv_tiers::sync::lock(&self.0).get(&id).cloned()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        tierkv_tiers::sync::lock(&self.0).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_names_only() {
        let names = NamespaceNames::new(2);
        let a = names.remember("a");
        let b = names.remember("b");
        assert_eq!(names.name(a).as_deref(), Some("a"));
        // `b` is now the least recently used.
        let c = names.remember("c");
        assert_eq!(names.len(), 2);
        assert_eq!(names.name(b), None);
        assert_eq!(names.name(a).as_deref(), Some("a"));
        assert_eq!(names.name(c).as_deref(), Some("c"));
        assert_eq!(a, namespace_id("a"));
    }
}
