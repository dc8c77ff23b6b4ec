//! A fixed-size set-associative cache with expiry, for the small per-worker
//! tables (fragments, MAC addresses) where giving up an entry of a full set
//! is acceptable: the one expiring first, or, in a cache shared by owners
//! ([`SetAssoc::insert_shared`]), the one expiring first of the owner that
//! holds most of the set. Every operation touches one set of [`WAYS`]
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

    /// Inserts or updates `key`, live until `expires`. A full set gives up
    /// the entry expiring first.
    #[inline]
    pub(crate) fn insert(&mut self, key: K, val: V, expires: u64, now: u64) -> Inserted {
        self.insert_shared(key, val, expires, now, |_| 0)
    }

    /// [`SetAssoc::insert`] for a cache that several owners share (`owner`
    /// tells whose an entry is). A full set gives up the entry expiring first
    /// among those of the owners holding most of the set, except that the
    /// newcomer's owner gives up its own when it holds half the set or more,
    /// or as many as the largest holder. So an owner inserting at any rate
    /// takes free and expired slots, but a live entry of another owner only
    /// while it holds fewer than half the set and fewer than that owner: a
    /// flood from one owner replaces its own entries once it holds one more
    /// than anyone else's share (at most half the set), and the others keep
    /// theirs. With one owner this is [`SetAssoc::insert`].
    #[inline]
    pub(crate) fn insert_shared(
        &mut self,
        key: K,
        val: V,
        expires: u64,
        now: u64,
        owner: impl Fn(&V) -> u32,
    ) -> Inserted {
        let (a, b) = self.set_range(&key);
        let Some(set) = self.slots.get_mut(a..b) else {
            return Inserted::Fresh;
        };
        if let Some(s) = set.iter_mut().find(|s| s.used && s.key == key) {
            s.val = val;
            s.expires = expires;
            return Inserted::Updated;
        }
        let (victim, outcome) = match set.iter().position(|s| !s.used || s.expires <= now) {
            Some(free) => (free, Inserted::Fresh),
            None => (Self::victim(set, owner(&val), &owner), Inserted::Evicted),
        };
        if let Some(s) = set.get_mut(victim) {
            if !s.used {
                self.used += 1;
            }
            *s = Slot { key, val, expires, used: true };
        }
        outcome
    }

    /// The entry of a full set to give up for a newcomer of `new_owner`: the
    /// one expiring first among those of the owners that lose one.
    fn victim(set: &[Slot<K, V>], new_owner: u32, owner: &impl Fn(&V) -> u32) -> usize {
        let held = |o: u32| set.iter().filter(|s| owner(&s.val) == o).count();
        let own = held(new_owner);
        let most = set.iter().map(|s| held(owner(&s.val))).max().unwrap_or(0);
        let loses = |o: u32| if own >= WAYS / 2 || own == most { o == new_owner } else { held(o) == most };
        let mut victim: Option<(usize, u64)> = None;
        for (i, s) in set.iter().enumerate() {
            if loses(owner(&s.val)) && victim.is_none_or(|(_, e)| s.expires < e) {
                victim = Some((i, s.expires));
            }
        }
        victim.map_or(0, |(i, _)| i)
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

    #[test]
    fn shared_sets_give_up_the_largest_holders_entry() {
        // One set of 4; values are owners.
        let mut c: SetAssoc<u32, u32> = SetAssoc::new(4);
        let owner = |&o: &u32| o;
        // Owner 1 fills the set (free slots are anyone's).
        for k in 0..4 {
            assert_eq!(c.insert_shared(k, 1, 100 + u64::from(k), 0, owner), Inserted::Fresh);
        }
        // Owner 2 takes from owner 1, who holds most: its entry expiring first.
        assert_eq!(c.insert_shared(10, 2, 500, 0, owner), Inserted::Evicted);
        assert_eq!(c.get(&0, 0), None);
        assert_eq!(c.insert_shared(11, 2, 500, 0, owner), Inserted::Evicted);
        assert_eq!(c.get(&1, 0), None);
        // Two each now: a third of owner 2 replaces its own entry expiring first.
        assert_eq!(c.insert_shared(12, 2, 600, 0, owner), Inserted::Evicted);
        assert_eq!((c.get(&10, 0), c.get(&11, 0), c.get(&12, 0)), (None, Some(2), Some(2)));
        // Owner 1, at half the set, does the same, however early its entries expire.
        for k in 20..30 {
            assert_eq!(c.insert_shared(k, 1, 50, 0, owner), Inserted::Evicted);
            assert_eq!((c.get(&11, 0), c.get(&12, 0)), (Some(2), Some(2)));
        }
        // Owners 3 and 4, one entry each, take from the two holders.
        assert_eq!(c.insert_shared(30, 3, 700, 0, owner), Inserted::Evicted);
        assert_eq!(c.insert_shared(40, 4, 700, 0, owner), Inserted::Evicted);
        let held = |c: &SetAssoc<u32, u32>, o: u32| {
            [3, 11, 12, 29, 30, 40].iter().filter(|k| c.get(k, 0) == Some(o)).count()
        };
        assert_eq!([held(&c, 1), held(&c, 2), held(&c, 3), held(&c, 4)], [1, 1, 1, 1]);
        // Everyone at one entry: a new owner takes the entry expiring first
        // (owner 1's key 3, at 103); an owner already at one replaces its own.
        assert_eq!(c.insert_shared(50, 5, 800, 0, owner), Inserted::Evicted);
        assert_eq!(held(&c, 1), 0);
        for k in 60..70 {
            assert_eq!(c.insert_shared(k, 5, 900, 0, owner), Inserted::Evicted);
        }
        assert_eq!([held(&c, 2), held(&c, 3), held(&c, 4)], [1, 1, 1]);
        assert_eq!(c.used(), 4);
    }

    #[test]
    fn a_flood_keeps_to_one_entry_among_single_entry_owners() {
        // Owners 1, 2, 3 hold one entry each; owner 9 floods.
        let mut c: SetAssoc<u32, u32> = SetAssoc::new(4);
        let owner = |&o: &u32| o;
        for o in 1..4 {
            c.insert_shared(o, o, 100, 0, owner);
        }
        for k in 100..1100 {
            c.insert_shared(k, 9, 200 + u64::from(k), 0, owner);
        }
        for o in 1..4 {
            assert_eq!(c.get(&o, 0), Some(o), "owner {o}'s entry");
        }
        assert_eq!(c.get(&1099, 0), Some(9));
    }
}
