//! The fast path's data: for every name of a zone one [`FastRecord`] — a single allocation holding the name and
//! the pre-rendered answers of all its query types — in a copy-on-write table of 1,024 shards.
//!
//! A lookup hashes the query name once (the shard comes from middle bits of the same hash the shard's table
//! uses) and then touches the shard's table and one contiguous record: the name compared, the type index and the
//! answer bytes follow each other in memory. On a busy machine each separate allocation on that path is a cache
//! miss, which is what a query costs in user space.

use std::hash::BuildHasher;
use std::sync::Arc;

use crate::zone::Rendered;

const SHARDS: usize = 1024;
/// Bytes per query-type header: qtype (2), rcode | AA << 7 (1), variant count (1), counts (3 x 2), offset of
/// the variant offset table (4).
const TYPE_HDR: usize = 14;
const FLAG_SLOW: u8 = 1;
const FLAG_CNAME: u8 = 2;

/// Why a record could not be built (the name then takes the general path).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// More than 255 query types or shuffle variants, or a name longer than 255 bytes.
    #[error("too many types, variants or name bytes for a fast record")]
    TooMany,
    /// A query type has no variant.
    #[error("a query type has no rendered answer")]
    Empty,
}

/// One name's fast-path data (immutable, shared between zone versions while the name is unchanged).
///
/// Layout: name length, name (lowercase wire form), flags, type count, one header per type, then per type its
/// variant offset table (variant count + 1 `u32`s) and the variants' bytes.
#[derive(Debug, Clone)]
pub struct FastRecord(Arc<[u8]>);

/// A pre-rendered answer picked from a [`FastRecord`].
#[derive(Debug, Clone, Copy)]
pub struct FastAnswer<'a> {
    /// Response code (low 4 bits).
    pub rcode: u8,
    /// Authoritative answer bit.
    pub aa: bool,
    /// Answer, authority and additional counts.
    pub counts: [u16; 3],
    /// Everything after the question (compression pointers refer to the question at offset 12).
    pub bytes: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

impl FastRecord {
    /// A record that sends every query for `name` to the general path (delegations, special names).
    pub fn slow(name: &[u8]) -> Result<FastRecord, RecordError> {
        let n = u8::try_from(name.len()).map_err(|_| RecordError::TooMany)?;
        let mut b = Vec::with_capacity(name.len() + 3);
        b.push(n);
        b.extend_from_slice(name);
        b.extend_from_slice(&[FLAG_SLOW, 0]);
        Ok(FastRecord(b.into()))
    }

    /// A record answering the listed query types from their rendered answers; `cname`: the name holds a CNAME
    /// (types not listed then take the general path instead of NODATA).
    pub fn data(name: &[u8], cname: bool, types: &[(u16, Rendered)]) -> Result<FastRecord, RecordError> {
        let n = u8::try_from(name.len()).map_err(|_| RecordError::TooMany)?;
        let k = u8::try_from(types.len()).map_err(|_| RecordError::TooMany)?;
        let head = 3 + name.len() + TYPE_HDR * types.len();
        let body: usize = types
            .iter()
            .map(|(_, r)| 4 * (r.variants.len() + 1) + r.variants.iter().map(|v| v.len()).sum::<usize>())
            .sum();
        let total = head + body;
        if u32::try_from(total).is_err() {
            return Err(RecordError::TooMany);
        }
        let mut b = Vec::with_capacity(total);
        b.push(n);
        b.extend_from_slice(name);
        b.extend_from_slice(&[if cname { FLAG_CNAME } else { 0 }, k]);
        let mut table = head;
        for (qtype, r) in types {
            let nvar = u8::try_from(r.variants.len()).map_err(|_| RecordError::TooMany)?;
            if nvar == 0 {
                return Err(RecordError::Empty);
            }
            b.extend_from_slice(&qtype.to_be_bytes());
            b.push((r.rcode & 0x0F) | if r.aa { 0x80 } else { 0 });
            b.push(nvar);
            for c in r.counts {
                b.extend_from_slice(&c.to_be_bytes());
            }
            b.extend_from_slice(&(table as u32).to_be_bytes());
            table += 4 * (r.variants.len() + 1) + r.variants.iter().map(|v| v.len()).sum::<usize>();
        }
        for (_, r) in types {
            let mut at = b.len() + 4 * (r.variants.len() + 1);
            for v in r.variants.iter() {
                b.extend_from_slice(&(at as u32).to_be_bytes());
                at += v.len();
            }
            b.extend_from_slice(&(at as u32).to_be_bytes());
            for v in r.variants.iter() {
                b.extend_from_slice(v);
            }
        }
        debug_assert_eq!(b.len(), total);
        Ok(FastRecord(b.into()))
    }

    /// The owner name (lowercase wire form).
    #[inline]
    pub fn name(&self) -> &[u8] {
        let n = self.0.first().copied().unwrap_or(0) as usize;
        self.0.get(1..1 + n).unwrap_or_default()
    }

    #[inline]
    fn flags(&self) -> u8 {
        let n = self.0.first().copied().unwrap_or(0) as usize;
        self.0.get(1 + n).copied().unwrap_or(FLAG_SLOW)
    }

    /// Every query for this name takes the general path.
    #[inline]
    pub fn is_slow(&self) -> bool {
        self.flags() & FLAG_SLOW != 0
    }

    /// The name holds a CNAME (unlisted types take the general path).
    #[inline]
    pub fn has_cname(&self) -> bool {
        self.flags() & FLAG_CNAME != 0
    }

    /// The answer for `qtype`, variant `pick` modulo the number of variants (`None`: type not listed).
    #[inline]
    pub fn answer(&self, qtype: u16, pick: usize) -> Option<FastAnswer<'_>> {
        let b = &self.0[..];
        let n = *b.first()? as usize;
        let k = *b.get(2 + n)? as usize;
        let mut h = 3 + n;
        for _ in 0..k {
            if u16_at(b, h)? == qtype {
                let rc = *b.get(h + 2)?;
                let nvar = (*b.get(h + 3)?).max(1) as usize;
                let counts = [u16_at(b, h + 4)?, u16_at(b, h + 6)?, u16_at(b, h + 8)?];
                let table = u32_at(b, h + 10)?;
                let v = pick % nvar;
                let (start, end) = (u32_at(b, table + 4 * v)?, u32_at(b, table + 4 * v + 4)?);
                return Some(FastAnswer { rcode: rc & 0x0F, aa: rc & 0x80 != 0, counts, bytes: b.get(start..end)? });
            }
            h += TYPE_HDR;
        }
        None
    }

    /// The listed query types with all their variants (tests compare zone builds with them).
    #[cfg(test)]
    pub fn types(&self) -> Vec<(u16, Vec<&[u8]>)> {
        let b = &self.0[..];
        let n = b.first().copied().unwrap_or(0) as usize;
        let k = b.get(2 + n).copied().unwrap_or(0) as usize;
        (0..k)
            .filter_map(|i| {
                let h = 3 + n + i * TYPE_HDR;
                let qtype = u16_at(b, h)?;
                let nvar = *b.get(h + 3)? as usize;
                let variants = (0..nvar).filter_map(|v| self.answer(qtype, v).map(|a| a.bytes)).collect();
                Some((qtype, variants))
            })
            .collect()
    }

    /// Whether two records are the same allocation (unchanged between zone versions).
    #[cfg(test)]
    pub fn ptr_eq(&self, other: &FastRecord) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// A change for [`FastTable::apply`], made by [`FastTable::change`]: a name's new record, or its removal.
#[derive(Debug)]
pub struct Change {
    hash: u64,
    rec: Option<FastRecord>,
    name: Box<[u8]>,
}

/// One slot of a shard: empty, or a record with its name's full hash (compared before the name).
#[derive(Debug, Clone, Default)]
struct Slot {
    hash: u64,
    rec: Option<FastRecord>,
}

/// Copy-on-write map from lowercase wire names to their [`FastRecord`]s: cloning copies 1,024 pointers,
/// changing names rebuilds only their shards.
///
/// Each shard is one open-addressing array (linear probing, at most half full) of hash + record pointer, so a
/// lookup touches the shard's slots and then the record -- no table header, control bytes or key allocation
/// in between. Shards are small (a few dozen names each for 10,000 services) and immutable: a change builds
/// the shard's array anew.
#[derive(Debug, Clone)]
pub struct FastTable {
    hasher: foldhash::fast::RandomState,
    shards: Vec<Arc<[Slot]>>,
}

impl Default for FastTable {
    fn default() -> Self {
        // One shared empty shard: a shard gets its own array on its first insert.
        let empty: Arc<[Slot]> = Arc::from(Vec::new());
        FastTable { hasher: Default::default(), shards: vec![empty; SHARDS] }
    }
}

/// The shard of a hash: bits independent of the low bits that pick the slot inside the shard.
#[inline]
fn shard_of(hash: u64) -> usize {
    (hash >> 32) as usize & (SHARDS - 1)
}

/// Hints the CPU to load the cache line at `p` (no effect on other architectures). Answering a batch first
/// warms every query's lines this way, so the misses of one query overlap those of the others instead of
/// stalling the answer path one after the other.
#[inline]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults and reads nothing the program sees, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A shard array holding `entries` (unique names).
fn build_shard(entries: Vec<(u64, FastRecord)>) -> Arc<[Slot]> {
    if entries.is_empty() {
        return Arc::from(Vec::new());
    }
    let cap = (entries.len() * 2).next_power_of_two().max(4);
    let mut slots = vec![Slot::default(); cap];
    for (hash, rec) in entries {
        let mut i = hash as usize & (cap - 1);
        while slots[i].rec.is_some() {
            i = (i + 1) & (cap - 1);
        }
        slots[i] = Slot { hash, rec: Some(rec) };
    }
    slots.into()
}

impl FastTable {
    /// The record of `name`.
    #[inline]
    pub fn get(&self, name: &[u8]) -> Option<&FastRecord> {
        let h = self.hasher.hash_one(name);
        let slots = &self.shards[shard_of(h)];
        let mask = slots.len().checked_sub(1)?;
        let mut i = h as usize & mask;
        // At most half the slots are used: the probe ends on an empty one.
        loop {
            let slot = &slots[i];
            match &slot.rec {
                None => return None,
                Some(r) if slot.hash == h && r.name() == name => return Some(r),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// Starts loading the slot line a lookup of `name` reads first (see [`prefetch`]).
    #[inline]
    pub fn prefetch_slot(&self, name: &[u8]) {
        let h = self.hasher.hash_one(name);
        let slots = &self.shards[shard_of(h)];
        if let Some(mask) = slots.len().checked_sub(1) {
            prefetch(std::ptr::from_ref(&slots[h as usize & mask]).cast());
        }
    }

    /// Starts loading the first lines of `name`'s record (its name, type headers and usually its answers).
    /// Matches on the hash alone: comparing the name would wait for the very line being prefetched.
    #[inline]
    pub fn prefetch_record(&self, name: &[u8]) {
        let h = self.hasher.hash_one(name);
        let slots = &self.shards[shard_of(h)];
        let Some(mask) = slots.len().checked_sub(1) else { return };
        let mut i = h as usize & mask;
        while let Some(r) = &slots[i].rec {
            if slots[i].hash == h {
                let p = r.0.as_ptr();
                prefetch(p);
                prefetch(p.wrapping_add(64));
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Applies changes: each name gets its new record (`Some`) or is removed (`None`). Each shard touched is
    /// rebuilt once (not at all when nothing in it changes).
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) {
        let mut by_shard: std::collections::BTreeMap<usize, Vec<Change>> = Default::default();
        for c in changes {
            by_shard.entry(shard_of(c.hash)).or_default().push(c);
        }
        for (shard, changes) in by_shard {
            let mut entries: Vec<(u64, FastRecord)> =
                self.shards[shard].iter().filter_map(|s| s.rec.clone().map(|r| (s.hash, r))).collect();
            let mut changed = false;
            for Change { hash, rec, name } in changes {
                let before = entries.len();
                entries.retain(|(h, r)| *h != hash || r.name() != &name[..]);
                changed |= entries.len() != before || rec.is_some();
                if let Some(r) = rec {
                    entries.push((hash, r));
                }
            }
            if changed {
                self.shards[shard] = build_shard(entries);
            }
        }
    }

    /// The change that gives `name` the record `rec` (`None`: removes it), for [`FastTable::apply`].
    pub fn change(&self, name: &[u8], rec: Option<FastRecord>) -> Change {
        Change { hash: self.hasher.hash_one(name), rec, name: name.into() }
    }

    /// Number of names.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.iter().filter(|s| s.rec.is_some()).count()).sum()
    }

    /// All records.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &FastRecord> {
        self.shards.iter().flat_map(|s| s.iter().filter_map(|s| s.rec.as_ref()))
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        *self = FastTable::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(rcode: u8, variants: &[&[u8]]) -> Rendered {
        Rendered {
            rcode,
            aa: true,
            counts: [variants.len() as u16, 0, 1],
            variants: variants.iter().map(|v| (*v).into()).collect(),
        }
    }

    #[test]
    fn record_layout() {
        let name = b"\x03www\x04test\x00";
        let r = FastRecord::data(name, false, &[(1, rendered(0, &[b"aaaa", b"bbbbbb"])), (28, rendered(3, &[b"x"]))])
            .unwrap();
        assert_eq!(r.name(), name);
        assert!(!r.is_slow() && !r.has_cname());
        let a = r.answer(1, 0).unwrap();
        assert_eq!((a.bytes, a.rcode, a.aa, a.counts), (&b"aaaa"[..], 0, true, [2, 0, 1]));
        assert_eq!(r.answer(1, 3).unwrap().bytes, b"bbbbbb");
        assert_eq!(r.answer(28, 7).unwrap().bytes, b"x");
        assert_eq!(r.answer(28, 0).unwrap().rcode, 3);
        assert!(r.answer(16, 0).is_none());
        assert_eq!(r.types(), vec![(1, vec![&b"aaaa"[..], b"bbbbbb"]), (28, vec![&b"x"[..]])]);
        let s = FastRecord::slow(name).unwrap();
        assert!(s.is_slow() && s.answer(1, 0).is_none() && s.name() == name);
        assert_eq!(FastRecord::data(name, true, &[(1, rendered(0, &[]))]).unwrap_err(), RecordError::Empty);
    }

    #[test]
    fn copy_on_write() {
        let key = |i: u32| {
            let mut k = vec![4u8];
            k.extend_from_slice(&i.to_be_bytes());
            k.push(0);
            k
        };
        let mut a = FastTable::default();
        let all: Vec<_> = (0..5000u32).map(|i| a.change(&key(i), Some(FastRecord::slow(&key(i)).unwrap()))).collect();
        a.apply(all);
        let b = a.clone();
        let changes = [
            a.change(&key(5), Some(FastRecord::data(&key(5), true, &[]).unwrap())),
            a.change(&key(7), None),
            a.change(&key(99_999), None),
        ];
        a.apply(changes);
        assert!(b.get(&key(5)).unwrap().is_slow() && a.get(&key(5)).unwrap().has_cname());
        assert_eq!((a.len(), b.len(), a.iter().count()), (4999, 5000, 4999));
        assert!(b.get(&key(7)).is_some() && a.get(&key(7)).is_none());
        assert!(a.get(&key(8)).unwrap().ptr_eq(b.get(&key(8)).unwrap()));
        // Shards are spread: no shard holds more than a small multiple of the mean.
        let fullest = a.shards.iter().map(|s| s.iter().filter(|s| s.rec.is_some()).count()).max();
        assert!(fullest < Some(30), "{fullest:?}");
        // Shards not touched by a change stay shared.
        let shared = a.shards.iter().zip(&b.shards).filter(|(x, y)| Arc::ptr_eq(x, y)).count();
        assert!(shared >= SHARDS - 2, "{shared}");
    }
}
