//! A hash map split into shards behind `Arc`s: cloning it copies 1024 pointers, and changing a few keys copies
//! only their shards. Zone versions share everything that did not change.

use std::hash::BuildHasher;
use std::sync::Arc;

use crate::wire::WireName;
use crate::zone::FastMap;

const SHARDS: usize = 1024;

/// A copy-on-write map from wire names to `V`.
#[derive(Debug, Clone)]
pub struct Sharded<V: Clone> {
    shards: Vec<Arc<FastMap<WireName, V>>>,
    len: usize,
}

impl<V: Clone> Default for Sharded<V> {
    fn default() -> Self {
        // One shared empty shard: a shard gets its own map on its first insert.
        Sharded { shards: std::iter::repeat_with(|| Arc::new(FastMap::default())).take(SHARDS).collect(), len: 0 }
    }
}

fn shard(key: &[u8]) -> usize {
    (foldhash::fast::FixedState::with_seed(0x5a4d).hash_one(key) >> 54) as usize % SHARDS
}

impl<V: Clone> Sharded<V> {
    /// The value of `key`.
    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.shards[shard(key)].get(key)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Mutable access (copies the shard if it is shared).
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        Arc::make_mut(&mut self.shards[shard(key)]).get_mut(key)
    }

    /// Inserts, returning the previous value.
    pub fn insert(&mut self, key: WireName, value: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[shard(&key)]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let s = &mut self.shards[shard(key)];
        if !s.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(s).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// The value of `key`, inserted with `f` if missing.
    pub fn entry_or_insert_with(&mut self, key: WireName, f: impl FnOnce() -> V) -> &mut V {
        let s = Arc::make_mut(&mut self.shards[shard(&key)]);
        let mut added = false;
        let v = s.entry(key).or_insert_with(|| {
            added = true;
            f()
        });
        if added {
            self.len += 1;
        }
        v
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// All entries.
    pub fn iter(&self) -> impl Iterator<Item = (&WireName, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// All values.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_on_write() {
        let mut a: Sharded<u32> = Sharded::default();
        for i in 0..1000u32 {
            a.insert(i.to_be_bytes().to_vec().into(), i);
        }
        let b = a.clone();
        a.insert(5u32.to_be_bytes().to_vec().into(), 99);
        a.remove(&7u32.to_be_bytes());
        assert_eq!(b.get(&5u32.to_be_bytes()), Some(&5));
        assert_eq!(a.get(&5u32.to_be_bytes()), Some(&99));
        assert_eq!((a.len(), b.len()), (999, 1000));
        assert!(b.contains_key(&7u32.to_be_bytes()) && !a.contains_key(&7u32.to_be_bytes()));
    }
}
