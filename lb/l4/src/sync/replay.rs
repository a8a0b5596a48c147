//! Replay protection: a sliding window per sender over its signed (incarnation, sequence number) pairs, as
//! IPsec's anti-replay window (RFC 4303, 3.4.3). A datagram seen before, older than the window, or from an
//! incarnation older than the sender's current one is refused. A newer incarnation (the peer restarted) starts a
//! new window. An older incarnation is accepted only after the current one has been silent for
//! [`SILENCE_RESET`]: a peer restarted with a clock stepped back is not locked out for ever.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Sequence numbers accepted behind the highest one seen (datagrams reordered by the network or between the
/// live path and a dump).
pub const WINDOW: u64 = 128;

/// Silence of a sender's current incarnation after which an older incarnation is accepted again.
pub const SILENCE_RESET: Duration = Duration::from_secs(60);

/// Why a datagram was refused as a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Replay {
    /// This sequence number was accepted already.
    #[error("duplicate sequence number")]
    Duplicate,
    /// Older than the window.
    #[error("sequence number behind the window")]
    TooOld,
    /// From an incarnation older than the sender's current one.
    #[error("old incarnation")]
    OldIncarnation,
}

impl Replay {
    /// Label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Replay::Duplicate => "duplicate",
            Replay::TooOld => "too_old",
            Replay::OldIncarnation => "old_incarnation",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    incarnation: u64,
    top: u64,
    /// Bit `i`: `top - i` accepted.
    bits: u128,
    last: Instant,
}

impl Window {
    fn new(incarnation: u64, seq: u64, now: Instant) -> Window {
        Window { incarnation, top: seq, bits: 1, last: now }
    }
}

/// The windows of every sender (authenticated node ids only: the HMAC is checked first).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<u64, Window>,
}

impl ReplayGuard {
    /// Accepts (and records) or refuses `(incarnation, seq)` from `node` at `now`.
    pub fn check(&mut self, node: u64, incarnation: u64, seq: u64, now: Instant) -> Result<(), Replay> {
        let Some(w) = self.senders.get_mut(&node) else {
            self.senders.insert(node, Window::new(incarnation, seq, now));
            return Ok(());
        };
        if incarnation != w.incarnation {
            if incarnation < w.incarnation && now.saturating_duration_since(w.last) < SILENCE_RESET {
                return Err(Replay::OldIncarnation);
            }
            if incarnation < w.incarnation {
                tracing::warn!(node, "sync: peer restarted with an older incarnation (clock stepped back?): accepted");
            }
            *w = Window::new(incarnation, seq, now);
            return Ok(());
        }
        if seq > w.top {
            let shift = seq - w.top;
            w.bits = if shift >= WINDOW { 0 } else { w.bits << shift };
            w.bits |= 1;
            w.top = seq;
        } else {
            let behind = w.top - seq;
            if behind >= WINDOW {
                return Err(Replay::TooOld);
            }
            let bit = 1u128 << behind;
            if w.bits & bit != 0 {
                return Err(Replay::Duplicate);
            }
            w.bits |= bit;
        }
        w.last = now;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_reordered_and_duplicates() {
        let mut g = ReplayGuard::default();
        let t = Instant::now();
        for seq in 0..300 {
            assert_eq!(g.check(1, 10, seq, t), Ok(()), "seq {seq}");
        }
        assert_eq!(g.check(1, 10, 299, t), Err(Replay::Duplicate));
        assert_eq!(g.check(1, 10, 250, t), Err(Replay::Duplicate));
        assert_eq!(g.check(1, 10, 299 - WINDOW, t), Err(Replay::TooOld));
        assert_eq!(g.check(1, 10, 0, t), Err(Replay::TooOld));
        // A gap, then the missing ones late (reordered): accepted once each.
        assert_eq!(g.check(1, 10, 310, t), Ok(()));
        for seq in 300..310 {
            assert_eq!(g.check(1, 10, seq, t), Ok(()), "late seq {seq}");
            assert_eq!(g.check(1, 10, seq, t), Err(Replay::Duplicate), "replayed seq {seq}");
        }
        // A jump beyond the window forgets everything behind it.
        assert_eq!(g.check(1, 10, 1000, t), Ok(()));
        assert_eq!(g.check(1, 10, 310, t), Err(Replay::TooOld));
        assert_eq!(g.check(1, 10, 1000 - WINDOW + 1, t), Ok(()));
        // Other senders have their own windows.
        assert_eq!(g.check(2, 10, 0, t), Ok(()));
        assert_eq!(g.check(2, 10, 0, t), Err(Replay::Duplicate));
    }

    #[test]
    fn restarts_and_old_incarnations() {
        let mut g = ReplayGuard::default();
        let t = Instant::now();
        assert_eq!(g.check(1, 10, 50, t), Ok(()));
        // The peer restarted: a newer incarnation counts from 0 again.
        assert_eq!(g.check(1, 20, 0, t), Ok(()));
        assert_eq!(g.check(1, 20, 1, t), Ok(()));
        assert_eq!(g.check(1, 20, 0, t), Err(Replay::Duplicate));
        // Datagrams of the previous incarnation are replays now.
        assert_eq!(g.check(1, 10, 51, t), Err(Replay::OldIncarnation));
        assert_eq!(g.check(1, 10, 51, t + SILENCE_RESET / 2), Err(Replay::OldIncarnation));
        // After a long silence of the current incarnation, an older one is a peer restarted with its clock
        // stepped back: accepted, with a window of its own.
        assert_eq!(g.check(1, 5, 0, t + SILENCE_RESET), Ok(()));
        assert_eq!(g.check(1, 5, 0, t + SILENCE_RESET), Err(Replay::Duplicate));
        assert_eq!(g.check(1, 20, 2, t + SILENCE_RESET), Ok(()), "newer incarnation always accepted");
        assert_eq!(Replay::OldIncarnation.label(), "old_incarnation");
    }
}
