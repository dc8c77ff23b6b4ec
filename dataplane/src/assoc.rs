//! A fixed-size set-associative cache with expiry, for the small per-worker
//! tables (fragments, MAC addresses) where evicting the oldest entry of a
//! full set is acceptable. Every operation touches one set of [`WAYS`]
//! slots: O(1), no allocation after construction. Keys are hashed with
//! foldhash and a per-cache random seed, so an attacker cannot choose keys
//! that all land in one set.

use std::hash::{BuildHasher, Hash};

use hashbrown::DefaultHashBuilder;

/// Slots per set.
pub(crate) const WAYS: usize = 4;

#[derive(Clone, Copy)]
struct Slot<K, V> {
    key: K,
    val: V,
    expires: u64,
    used: bool,
}

/// What [`SetAssoc::insert`] had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inserted {
    /// The key was present: updated in place.
    Updated,
    /// Took an empty or expired slot.
    Fresh,
    /// Evicted a live entry (the one expiring first in the set).
    Evicted,
}

pub(crate) struct SetAssoc<K, V> {
    slots: Box<[Slot<K, V>]>,
    set_mask: usize,
    hasher: DefaultHashBuilder,
    used: usize,
}

impl<K: Copy + Eq + Hash + Default, V: Copy + Default> SetAssoc<K, V> {
    /// Room for at least `capacity` entries (rounded up to a power-of-two number of sets).
    pub(crate) fn new(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        let empty = Slot { key: K::default(), val: V::default(), expires: 0, used: false };
        SetAssoc {
            slots: vec![empty; sets * WAYS].into_boxed_slice(),
            set_mask: sets - 1,
            hasher: DefaultHashBuilder::default(),
            used: 0,
        }
    }

    /// Total slots.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding an entry (expired ones count until reused).
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    #[inline]
    fn set_range(&self, key: &K) -> (usize, usize) {
        let set = (self.hasher.hash_one(key) as usize) & self.set_mask;
        (set * WAYS, set * WAYS + WAYS)
    }

    /// The live value for `key`.
    #[inline]
    pub(crate) fn get(&self, key: &K, now: u64) -> Option<V> {
        let (a, b) = self.set_range(key);
        self.slots.get(a..b)?.iter().find(|s| s.used && s.key == *key && s.expires > now).map(|s| s.val)
    }

    /// Inserts or updates `key`, live until `expires`.
    #[inline]
    pub(crate) fn insert(&mut self, key: K, val: V, expires: u64, now: u64) -> Inserted {
        let (a, b) = self.set_range(&key);
        let Some(set) = self.slots.get_mut(a..b) else {
            return Inserted::Fresh;
        };
        if let Some(s) = set.iter_mut().find(|s| s.used && s.key == key) {
            s.val = val;
            s.expires = expires;
            return Inserted::Updated;
        }
        let mut victim = 0;
        let mut outcome = Inserted::Evicted;
        for (i, s) in set.iter().enumerate() {
            if !s.used || s.expires <= now {
                victim = i;
                outcome = Inserted::Fresh;
                break;
            }
            if set.get(victim).is_some_and(|v| s.expires < v.expires) {
                victim = i;
            }
        }
        if let Some(s) = set.get_mut(victim) {
            if !s.used {
                self.used += 1;
            }
            *s = Slot { key, val, expires, used: true };
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_insert_expire_evict() {
        let mut c: SetAssoc<u32, u8> = SetAssoc::new(4); // one set of 4
        assert_eq!(c.capacity(), 4);
        for k in 0..4u32 {
            assert_eq!(c.insert(k, k as u8, 100 + u64::from(k), 0), Inserted::Fresh);
        }
        assert_eq!(c.get(&2, 50), Some(2));
        assert_eq!(c.get(&2, 102), None); // expired
        assert_eq!(c.insert(1, 9, 200, 0), Inserted::Updated);
        assert_eq!(c.get(&1, 150), Some(9));
        // Full and live: the entry expiring first (key 0 at 100) goes.
        assert_eq!(c.insert(7, 7, 300, 50), Inserted::Evicted);
        assert_eq!(c.get(&0, 50), None);
        assert_eq!(c.get(&7, 50), Some(7));
        // At time 103 keys 2 and 3 are expired: reused without eviction.
        assert_eq!(c.insert(8, 8, 300, 103), Inserted::Fresh);
        assert_eq!(c.used(), 4);
    }
}
