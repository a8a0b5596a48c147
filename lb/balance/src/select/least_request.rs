//! Least request by power of two random choices: two candidates drawn in proportion to weight, the one with
//! fewer in-flight requests per unit of weight wins.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::{SelectCtx, Selector};

/// Attempts at drawing two distinct usable candidates before scanning.
const DRAWS: usize = 8;

/// Power-of-two-choices least request.
#[derive(Debug)]
pub struct LeastRequest {
    weights: Vec<u64>,
    /// Cumulative weights, for weighted draws.
    cumulative: Vec<u64>,
    in_flight: Vec<Arc<AtomicUsize>>,
}

impl LeastRequest {
    /// A selector over backends given as (weight, in-flight counter).
    pub fn new(backends: &[(u32, Arc<AtomicUsize>)]) -> LeastRequest {
        let weights: Vec<u64> = backends.iter().map(|(w, _)| u64::from(*w)).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        LeastRequest { weights, cumulative, in_flight: backends.iter().map(|(_, c)| c.clone()).collect() }
    }

    fn draw(&self) -> Option<usize> {
        let total = *self.cumulative.last()?;
        if total == 0 {
            return None;
        }
        let r = fastrand::u64(0..total);
        Some(self.cumulative.partition_point(|&c| c <= r))
    }

    /// Whether `a` is less loaded than `b`: (in-flight + 1) / weight, compared without division.
    fn lighter(&self, a: usize, b: usize) -> bool {
        let la = (self.in_flight[a].load(Relaxed) as u128 + 1) * u128::from(self.weights[b]);
        let lb = (self.in_flight[b].load(Relaxed) as u128 + 1) * u128::from(self.weights[a]);
        la <= lb
    }
}

impl Selector for LeastRequest {
    fn select(&self, _ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let ok = |i: usize| self.weights[i] > 0 && usable(i);
        let mut first = None;
        for _ in 0..DRAWS {
            let Some(i) = self.draw() else { break };
            if !ok(i) {
                continue;
            }
            match first {
                None => first = Some(i),
                Some(a) if a != i => return Some(if self.lighter(a, i) { a } else { i }),
                Some(_) => {}
            }
        }
        // Few usable backends (or unlucky draws): choose among all usable ones.
        let candidates: Vec<usize> = (0..self.weights.len()).filter(|&i| ok(i)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = candidates[fastrand::usize(0..n)];
                let mut b = candidates[fastrand::usize(0..n - 1)];
                if b == a {
                    b = candidates[n - 1];
                }
                Some(if self.lighter(a, b) { a } else { b })
            }
        }
    }
}
