//! A segmented LRU: entries start in probation, and entries with evidence
//! move to a protected segment that only entries with as much evidence can
//! push them out of, as caches keep a hot set safe from a scan. A flood of
//! new one-packet keys churns probation alone.
//!
//! The source table keeps [`super::SourceState`]s in one; the stages' side
//! tables ([`SideTable`]) keep theirs in one per shard.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use lru::{DefaultHasher, LruCache};

use super::SourceKey;
use crate::time::Timestamp;

/// How much an entry has shown: entries with more are evicted last.
pub trait Evidence {
    /// The entry's evidence at `now`, judged over `horizon`.
    fn evidence(&self, now: Timestamp, horizon: Duration) -> u32;
}

/// Evidence that moves an entry from probation to the protected segment.
const PROTECT_AT: u32 = 2;

/// Protected entries a promotion looks at, from the least recently used,
/// for one with no more evidence than the newcomer.
const PROTECT_TRIES: usize = 4;

/// Sizes and counters of one segmented LRU, or of many summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentStats {
    /// Entries held now.
    pub len: usize,
    /// Of `len`, those in the protected segment.
    pub protected: usize,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Entries moved from probation to the protected segment.
    pub promotions: u64,
    /// Entries with evidence kept in probation: the protected segment was
    /// full of entries with more.
    pub promotions_refused: u64,
}

impl std::ops::AddAssign for SegmentStats {
    fn add_assign(&mut self, o: Self) {
        self.len += o.len;
        self.protected += o.protected;
        self.evictions += o.evictions;
        self.promotions += o.promotions;
        self.promotions_refused += o.promotions_refused;
    }
}

/// Probation and protected segments over one capacity.
#[derive(Debug)]
pub struct Segmented<K: Hash + Eq, V> {
    probation: LruCache<K, V>,
    protected: LruCache<K, V>,
    evictions: u64,
    promotions: u64,
    promotions_refused: u64,
}

impl<K: Hash + Eq + Copy, V: Evidence> Segmented<K, V> {
    /// Room for `capacity` entries, half of them protected.
    pub fn new(capacity: usize) -> Self {
        Self::split(capacity - capacity / 2, capacity / 2)
    }

    /// Room for `capacity` entries in probation alone: a plain LRU, for
    /// state that never holds evidence.
    pub fn plain(capacity: usize) -> Self {
        Self::split(capacity, 1)
    }

    fn split(probation: usize, protected: usize) -> Self {
        Self {
            probation: bounded_lru(probation),
            protected: bounded_lru(protected),
            evictions: 0,
            promotions: 0,
            promotions_refused: 0,
        }
    }

    /// The entry of `key`, made by `make` in probation if there is none;
    /// an eviction to make room is counted.
    pub fn get_or_insert(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if self.protected.contains(&key) {
            return self.protected.get_or_insert_mut(key, make);
        }
        let full = self.probation.len() == self.probation.cap().get();
        let mut created = false;
        let entry = self.probation.get_or_insert_mut(key, || {
            created = true;
            make()
        });
        if created && full {
            self.evictions += 1;
        }
        entry
    }

    /// The entry of `key`, if held, marked as just used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if self.protected.contains(key) {
            return self.protected.get_mut(key);
        }
        self.probation.get_mut(key)
    }

    /// The entry of `key`, if held; changes nothing.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.protected.peek(key).or_else(|| self.probation.peek(key))
    }

    /// Moves `key`, holding `evidence` at `now` (judged over `horizon`),
    /// from probation to the protected segment. When that is full, its
    /// least recently used entry with no more evidence than the newcomer
    /// goes back to probation; entries with more get a second chance. With
    /// none among the first few, the newcomer stays in probation, counted.
    pub fn protect(&mut self, key: K, evidence: u32, now: Timestamp, horizon: Duration) {
        if evidence < PROTECT_AT || self.protected.contains(&key) {
            return;
        }
        let Some(entry) = self.probation.pop(&key) else { return };
        if self.protected.len() < self.protected.cap().get() {
            self.protected.put(key, entry);
            self.promotions += 1;
            return;
        }
        for _ in 0..PROTECT_TRIES {
            let Some((tail, tail_entry)) = self.protected.peek_lru() else { break };
            let tail = *tail;
            if tail_entry.evidence(now, horizon) <= evidence {
                if let Some((old, old_entry)) = self.protected.pop_lru() {
                    if self.probation.push(old, old_entry).is_some() {
                        self.evictions += 1;
                    }
                }
                self.protected.put(key, entry);
                self.promotions += 1;
                return;
            }
            self.protected.promote(&tail);
        }
        self.probation.put(key, entry);
        self.promotions_refused += 1;
    }

    /// Drops the least recently used entries of each segment for which
    /// `stale` holds; returns how many.
    pub fn expire(&mut self, stale: impl Fn(&V) -> bool) -> usize {
        let mut n = 0;
        for segment in [&mut self.probation, &mut self.protected] {
            while segment.peek_lru().is_some_and(|(_, v)| stale(v)) {
                segment.pop_lru();
                n += 1;
            }
        }
        n
    }

    /// Sizes and counters.
    pub fn stats(&self) -> SegmentStats {
        SegmentStats {
            len: self.probation.len() + self.protected.len(),
            protected: self.protected.len(),
            evictions: self.evictions,
            promotions: self.promotions,
            promotions_refused: self.promotions_refused,
        }
    }
}

/// An LRU that holds at most `cap` entries (at least one) and allocates as
/// it fills: no room is reserved up front, so memory follows use, up to
/// what the cap allows, and a table that stays small never costs the pages
/// of a full one. Its hash table grows by doubling, never past the size a
/// full table needs.
pub fn bounded_lru<K: std::hash::Hash + Eq, V>(cap: usize) -> LruCache<K, V> {
    let mut lru = LruCache::unbounded();
    lru.resize(NonZeroUsize::new(cap.max(1)).unwrap_or(NonZeroUsize::MIN));
    lru
}

/// A stage's own per-source state, beside the source table: sharded by
/// source, bounded, segmented by the state's evidence, and made only by a
/// stage that is on (the gate with a hidden port, a persona that keeps
/// per-peer counters). A caller that holds a source-table shard may lock a
/// side-table shard, never the other way round.
#[derive(Debug)]
pub struct SideTable<V> {
    shards: Box<[Mutex<Segmented<SourceKey, V>>]>,
    hasher: DefaultHasher,
    mask: usize,
    capacity: usize,
}

impl<V: Evidence> SideTable<V> {
    /// Room for `capacity` entries over `shards` shards (rounded up to a
    /// power of two), half of each shard protected.
    pub fn new(capacity: usize, shards: usize) -> Self {
        Self::build(capacity, shards, Segmented::new)
    }

    /// The same, as plain LRUs: for state that never holds evidence.
    pub fn plain(capacity: usize, shards: usize) -> Self {
        Self::build(capacity, shards, Segmented::plain)
    }

    fn build(capacity: usize, shards: usize, make: fn(usize) -> Segmented<SourceKey, V>) -> Self {
        let n = shards.clamp(1, 1 << 16).next_power_of_two();
        let per = capacity.div_ceil(n).max(1);
        let shards = (0..n).map(|_| Mutex::new(make(per))).collect();
        Self { shards, hasher: DefaultHasher::default(), mask: n - 1, capacity: per * n }
    }

    /// Locks the shard that holds `key`.
    pub fn lock(&self, key: &SourceKey) -> MutexGuard<'_, Segmented<SourceKey, V>> {
        let i = (self.hasher.hash_one(key) as usize) & self.mask;
        // `i` is masked below the shard count, and there is at least one.
        let shard = self.shards.get(i).or_else(|| self.shards.first());
        match shard {
            Some(m) => m.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            None => super::unreachable_shard(),
        }
    }

    /// Entries it can hold.
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now, and [`SideTable::capacity`].
    pub fn fill(&self) -> (usize, usize) {
        (self.stats().len, self.capacity)
    }

    /// Sizes and counters, summed over shards.
    pub fn stats(&self) -> SegmentStats {
        let mut s = SegmentStats::default();
        for m in self.shards.iter() {
            s += m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stats();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Shown(u32);

    impl Evidence for Shown {
        fn evidence(&self, _: Timestamp, _: Duration) -> u32 {
            self.0
        }
    }

    const H: Duration = Duration::from_secs(60);

    #[test]
    fn a_flood_of_new_keys_churns_probation_alone() {
        let mut s: Segmented<u32, Shown> = Segmented::new(8);
        let now = Timestamp::from_secs(1);
        for k in 0..4 {
            s.get_or_insert(k, || Shown(5));
            s.protect(k, 5, now, H);
        }
        for k in 100..10_000 {
            s.get_or_insert(k, || Shown(0));
            s.protect(k, 0, now, H);
        }
        assert!((0..4).all(|k| s.peek(&k).is_some()), "the protected keys survive");
        let st = s.stats();
        assert_eq!((st.len, st.protected, st.promotions), (8, 4, 4));
        assert_eq!(st.evictions, 9900 - 4);
    }

    #[test]
    fn only_as_much_evidence_pushes_a_protected_entry_out() {
        let mut s: Segmented<u32, Shown> = Segmented::new(4);
        let now = Timestamp::from_secs(1);
        for k in 0..2 {
            s.get_or_insert(k, || Shown(9));
            s.protect(k, 9, now, H);
        }
        s.get_or_insert(7, || Shown(3));
        s.protect(7, 3, now, H);
        assert_eq!(s.stats().promotions_refused, 1, "less evidence stays in probation");
        s.get_or_insert(8, || Shown(9));
        s.protect(8, 9, now, H);
        assert_eq!(s.stats().protected, 2);
        assert!(
            s.peek(&8).is_some() && s.peek(&0).is_some(),
            "the pushed-out entry waits in probation"
        );
        assert_eq!(s.expire(|v| v.0 == 3), 1, "expiry takes stale entries from the tail");
    }

    #[test]
    fn side_tables_are_bounded() {
        let t: SideTable<Shown> = SideTable::new(100, 4);
        for i in 0..1000u32 {
            let key = SourceKey::new(std::net::IpAddr::from(i.to_be_bytes()), 64);
            t.lock(&key).get_or_insert(key, || Shown(0));
        }
        let s = t.stats();
        assert!(s.len <= t.capacity() && t.capacity() == 100, "{s:?}");
        assert_eq!(s.len as u64 + s.evictions, 1000);
    }
}
