//! Smooth weighted round robin (nginx's algorithm): exact proportions, evenly interleaved.

use std::sync::Mutex;

use super::{SelectCtx, Selector};

/// Smooth weighted round robin. Weights 5,1,1 give `a a b a c a a` (not `a a a a a b c`).
/// Unusable backends are skipped and do not accumulate credit; weight 0 is never picked.
#[derive(Debug)]
pub struct RoundRobin {
    weights: Vec<i64>,
    current: Mutex<Vec<i64>>,
}

impl RoundRobin {
    /// A selector over backends with these weights.
    pub fn new(weights: &[u32]) -> RoundRobin {
        RoundRobin { weights: weights.iter().map(|&w| i64::from(w)).collect(), current: Mutex::new(vec![0; weights.len()]) }
    }
}

impl Selector for RoundRobin {
    fn select(&self, _ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, &w) in self.weights.iter().enumerate() {
            if w == 0 || !usable(i) {
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
}
