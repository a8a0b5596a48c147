//! The `naive` scheduler: the benchmark control case (LVS without sync). Each VIP's lookup table holds every
//! backend in proportion to its weight, shuffled by a seed from this node's name and the backend set: tables
//! differ between nodes, and any change of the set reshuffles the whole table. Never for production.

use std::hash::{Hash, Hasher};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Seed of a node's naive tables.
pub fn node_seed(node_name: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    node_name.hash(&mut h);
    h.finish()
}

/// A lookup table of `size` entries over `members` (identity, weight; weights > 0), as member indexes.
pub fn table(members: &[([u8; 16], u32)], size: usize, seed: u64) -> Vec<u32> {
    let total: u64 = members.iter().map(|(_, w)| *w as u64).sum();
    if total == 0 || size == 0 {
        return Vec::new();
    }
    // Slot i goes to the member whose cumulative weight range holds i * total / size.
    let mut out = Vec::with_capacity(size);
    let mut m = 0usize;
    let mut upto = members[0].1 as u64;
    for i in 0..size as u64 {
        let at = i * total / size as u64;
        while at >= upto && m + 1 < members.len() {
            m += 1;
            upto += members[m].1 as u64;
        }
        out.push(m as u32);
    }
    let mut h = std::hash::DefaultHasher::new();
    (seed, members).hash(&mut h);
    out.shuffle(&mut StdRng::seed_from_u64(h.finish()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u8) -> Vec<([u8; 16], u32)> {
        (0..n).map(|i| (padis_ebpf_common::v4_mapped([10, 0, 0, i]), 1 + (i % 2) as u32)).collect()
    }

    #[test]
    fn weighted_per_node_and_reshuffled() {
        let a = table(&set(4), 1009, node_seed("gw1"));
        assert_eq!(a.len(), 1009);
        // Weights 1,2,1,2: shares of 1/6 and 2/6.
        let count = |t: &[u32], m: u32| t.iter().filter(|x| **x == m).count();
        assert!((count(&a, 1) as i64 - 336).abs() <= 1 && (count(&a, 0) as i64 - 168).abs() <= 1);
        // Deterministic per node, different between nodes.
        assert_eq!(a, table(&set(4), 1009, node_seed("gw1")));
        let b = table(&set(4), 1009, node_seed("gw2"));
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 1009 / 2, "two nodes agree on {same}/1009 slots");
        // Growing 4 -> 8 keeps only about the chance share of slots on their backend (no consistency).
        let c = table(&set(8), 1009, node_seed("gw1"));
        let kept = a.iter().zip(&c).filter(|(x, y)| x == y).count();
        assert!(kept < 1009 / 4, "{kept}/1009 slots kept their member");
    }
}
