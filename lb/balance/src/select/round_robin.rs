//! Smooth weighted round robin (nginx's algorithm): exact proportions, evenly interleaved.
//!
//! The smooth sequence of one cycle (sum of weights / gcd picks) is computed once per group and walked with an
//! atomic counter, so picking is lock-free and O(1); an unusable backend's turn goes to the next entry of the
//! sequence. Groups whose cycle would be too long to precompute run nginx's algorithm live under a small mutex.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use super::{SelectCtx, Selector};

/// Longest precomputed cycle.
const MAX_CYCLE: u64 = 1 << 16;
/// Most work (cycle length x backends) spent precomputing a cycle.
const MAX_WORK: u64 = 20_000_000;

/// Smooth weighted round robin. Weights 5,1,1 give `a a b a c a a` (not `a a a a a b c`).
/// Weight 0 is never picked.
#[derive(Debug)]
pub struct RoundRobin {
    weights: Vec<i64>,
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    /// One precomputed cycle, walked by an atomic counter.
    Cycle { order: Vec<u32>, next: AtomicUsize },
    /// nginx's algorithm run per pick (unusable backends do not accumulate credit).
    Live { current: Mutex<Vec<i64>> },
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One step of nginx's smooth weighted round robin over the backends for which `ok` holds.
fn smooth_step(weights: &[i64], current: &mut [i64], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0 || !ok(i) {
            continue;
        }
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

impl RoundRobin {
    /// A selector over backends with these weights.
    pub fn new(weights: &[u32]) -> RoundRobin {
        let divisor = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w))).max(1);
        let cycle: u64 = weights.iter().map(|&w| u64::from(w) / divisor).sum();
        let reduced: Vec<i64> = weights.iter().map(|&w| (u64::from(w) / divisor) as i64).collect();
        let mode = if cycle <= MAX_CYCLE && cycle.saturating_mul(weights.len() as u64) <= MAX_WORK {
            let mut current = vec![0i64; weights.len()];
            let order =
                (0..cycle).filter_map(|_| smooth_step(&reduced, &mut current, &|_| true)).map(|i| i as u32).collect();
            Mode::Cycle { order, next: AtomicUsize::new(0) }
        } else {
            Mode::Live { current: Mutex::new(vec![0; weights.len()]) }
        };
        RoundRobin { weights: reduced, mode }
    }
}

impl Selector for RoundRobin {
    fn select(&self, _ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        match &self.mode {
            Mode::Cycle { order, next } => {
                if order.is_empty() {
                    return None;
                }
                let n = self.weights.len();
                // Skip the turns of unusable backends in the shared cycle (each miss consumes a turn, so the
                // others keep their exact proportions); after n misses, the first usable backend from there.
                let mut turn = next.fetch_add(1, Relaxed);
                for _ in 0..n.min(order.len()) {
                    let i = order[turn % order.len()] as usize;
                    if usable(i) {
                        return Some(i);
                    }
                    turn = next.fetch_add(1, Relaxed);
                }
                (0..n).map(|k| turn.wrapping_add(k) % n).find(|&i| self.weights[i] > 0 && usable(i))
            }
            Mode::Live { current } => {
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                smooth_step(&self.weights, &mut current, usable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(rr: &RoundRobin, count: usize, usable: &dyn Fn(usize) -> bool) -> Vec<usize> {
        let h = http::HeaderMap::new();
        let ctx = SelectCtx { client_ip: [127, 0, 0, 1].into(), headers: &h };
        (0..count).map(|_| rr.select(&ctx, usable).unwrap()).collect()
    }

    #[test]
    fn cycle_and_live_modes_agree_when_all_usable() {
        let rr = RoundRobin::new(&[10, 2, 2]); // gcd 2: cycle 5,1,1
        assert!(matches!(rr.mode, Mode::Cycle { .. }));
        assert_eq!(picks(&rr, 7, &|_| true), [0, 0, 1, 0, 2, 0, 0]);
        let live = RoundRobin { weights: vec![5, 1, 1], mode: Mode::Live { current: Mutex::new(vec![0; 3]) } };
        assert_eq!(picks(&live, 14, &|_| true), picks(&rr, 14, &|_| true));
    }

    #[test]
    fn huge_cycles_run_live_with_exact_proportions() {
        let rr = RoundRobin::new(&[100_000, 1]);
        assert!(matches!(rr.mode, Mode::Live { .. }));
        let p = picks(&rr, 100_001, &|_| true);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 1);
    }

    #[test]
    fn unusable_turns_go_to_others() {
        let rr = RoundRobin::new(&[1, 1, 1, 0]);
        let p = picks(&rr, 300, &|i| i != 1);
        assert_eq!(p.iter().filter(|&&i| i == 0).count(), 150);
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 150);
        assert_eq!(
            rr.select(&SelectCtx { client_ip: [127, 0, 0, 1].into(), headers: &http::HeaderMap::new() }, &|i| i == 3),
            None
        );
        assert_eq!(
            RoundRobin::new(&[0, 0])
                .select(&SelectCtx { client_ip: [127, 0, 0, 1].into(), headers: &http::HeaderMap::new() }, &|_| true),
            None
        );
    }
}
