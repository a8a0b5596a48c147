//! The Maglev consistent-hash lookup table (Eisenbud et al., NSDI 2016), with weights.
//!
//! The table is shared by L7 (`maglev` groups) and L4 (copied into a BPF array map), so it must be identical on
//! every node and across restarts: backends are ordered by their identity bytes and the permutations come from
//! xxh3 with fixed seeds.

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Default table size: a prime comfortably above 100 x the backends of any ordinary group or VIP.
pub const DEFAULT_TABLE_SIZE: usize = 65537;

/// Seed of the hash giving a backend's first slot ("offset").
const OFFSET_SEED: u64 = 0x5041_4449_535f_4f46; // "PADIS_OF"
/// Seed of the hash giving a backend's stride ("skip").
const SKIP_SEED: u64 = 0x5041_4449_535f_534b; // "PADIS_SK"
/// Marker of an unfilled slot while populating.
const EMPTY: u32 = u32::MAX;

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MaglevError {
    /// The size is not a prime number (the permutations would not cover the table).
    #[error("Maglev table size {0} is not a prime number")]
    NotPrime(usize),
    /// Fewer slots than weighted backends.
    #[error("Maglev table size {size} is smaller than the number of weighted backends ({backends})")]
    TooSmall {
        /// Requested size.
        size: usize,
        /// Backends with a weight above 0.
        backends: usize,
    },
    /// Two backends have the same identity (their order, hence the table, would be ambiguous).
    #[error("backends #{first} and #{second} have the same identity")]
    Duplicate {
        /// Index of the first occurrence in the caller's slice.
        first: usize,
        /// Index of the second occurrence.
        second: usize,
    },
    /// More backends than a `u32` index can address (or than the empty-slot marker allows).
    #[error("too many backends for a Maglev table: {0}")]
    TooManyBackends(usize),
}

/// A populated Maglev table: each slot holds an index into the caller's backend slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u32>,
    /// Number of distinct backends present in the table.
    distinct: usize,
}

impl Maglev {
    /// Builds the table for `backends` (identity bytes, weight) with `size` slots.
    ///
    /// Deterministic: backends are identified by their bytes (sorted by identity inside, fixed seeds), so the same
    /// set in any input order gives the same table. A backend gets slots in proportion to its weight; weight 0 keeps
    /// it out of the table. `size` must be prime (>= 100 x backends recommended for a balance within ~1%).
    /// With no weighted backend the table is empty and [`Maglev::lookup`] returns `None`.
    pub fn new<I: AsRef<[u8]>>(backends: &[(I, u32)], size: usize) -> Result<Maglev, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::NotPrime(size));
        }
        if backends.len() >= EMPTY as usize {
            return Err(MaglevError::TooManyBackends(backends.len()));
        }
        let mut order: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].1 > 0).collect();
        order.sort_by(|&a, &b| backends[a].0.as_ref().cmp(backends[b].0.as_ref()).then(a.cmp(&b)));
        for pair in order.windows(2) {
            if backends[pair[0]].0.as_ref() == backends[pair[1]].0.as_ref() {
                let (first, second) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                return Err(MaglevError::Duplicate { first, second });
            }
        }
        if order.is_empty() {
            return Ok(Maglev { table: Vec::new(), distinct: 0 });
        }
        if size < order.len() {
            return Err(MaglevError::TooSmall { size, backends: order.len() });
        }
        Ok(Maglev { table: populate(backends, &order, size), distinct: order.len() })
    }

    /// The backend (index into the slice given to [`Maglev::new`]) for `hash`; `None` when the table is empty.
    pub fn lookup(&self, hash: u64) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[(hash % self.table.len() as u64) as usize])
    }

    /// Like [`Maglev::lookup`], but when the chosen backend is not `usable`, walks the following slots to the next
    /// distinct usable backend. Deterministic for a given table and usable set; `None` when none is usable.
    pub fn lookup_usable(&self, hash: u64, usable: &dyn Fn(u32) -> bool) -> Option<u32> {
        let len = self.table.len();
        if len == 0 {
            return None;
        }
        let start = (hash % len as u64) as usize;
        let first = self.table[start];
        if usable(first) {
            return Some(first);
        }
        let mut rejected = vec![first];
        for step in 1..len {
            let idx = self.table[(start + step) % len];
            if rejected.contains(&idx) {
                continue;
            }
            if usable(idx) {
                return Some(idx);
            }
            rejected.push(idx);
            if rejected.len() >= self.distinct {
                return None;
            }
        }
        None
    }

    /// The raw table: slot -> backend index (L4 copies it into a BPF array map). Empty when no backend is weighted.
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Number of slots (0 when empty).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table has no slots (no weighted backend).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Fills the table: backends take turns (in identity order) claiming the next free slot of their permutation;
/// a backend claims on a turn once its accumulated weight reaches the largest weight, so slots follow weights.
fn populate<I: AsRef<[u8]>>(backends: &[(I, u32)], order: &[usize], size: usize) -> Vec<u32> {
    let size64 = size as u64;
    let mut pos = Vec::with_capacity(order.len());
    let mut skip = Vec::with_capacity(order.len());
    for &i in order {
        let id = backends[i].0.as_ref();
        pos.push(xxh3_64_with_seed(id, OFFSET_SEED) % size64);
        skip.push(xxh3_64_with_seed(id, SKIP_SEED) % (size64 - 1) + 1);
    }
    let weights: Vec<u64> = order.iter().map(|&i| u64::from(backends[i].1)).collect();
    let max_weight = weights.iter().copied().max().unwrap_or(1);
    let mut credit = vec![0u64; order.len()];
    let mut table = vec![EMPTY; size];
    let mut filled = 0usize;
    loop {
        for (k, &i) in order.iter().enumerate() {
            credit[k] += weights[k];
            if credit[k] < max_weight {
                continue;
            }
            credit[k] -= max_weight;
            loop {
                let slot = pos[k] as usize;
                pos[k] = (pos[k] + skip[k]) % size64;
                if table[slot] == EMPTY {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                return table;
            }
        }
    }
}

/// Whether `n` is a prime number.
#[allow(clippy::manual_is_multiple_of)] // workspace rust-version is 1.85
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let mut d = 5usize;
    while d.saturating_mul(d) <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// The smallest prime `>= n` (2 for `n <= 2`), e.g. to size a table at 100 x the backends.
pub fn next_prime_at_least(n: usize) -> usize {
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}
