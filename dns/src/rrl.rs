//! Response rate limiting per client prefix (token bucket), against reflection/amplification over UDP.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use padis_model::dns::RrlConfig;

use crate::zone::FastMap;

const SHARDS: usize = 16;
const MAX_ENTRIES_PER_SHARD: usize = 16_384;

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send a truncated (TC) answer instead, so a real client retries over TCP.
    Slip,
    /// Drop it.
    Drop,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    limited: u32,
}

/// The rate limiter.
pub struct Rrl {
    cfg: RrlConfig,
    shards: Vec<Mutex<FastMap<u128, Bucket>>>,
}

impl Rrl {
    /// A limiter with `cfg` (rate 0 = off).
    pub fn new(cfg: RrlConfig) -> Rrl {
        Rrl { cfg, shards: (0..SHARDS).map(|_| Mutex::new(FastMap::default())).collect() }
    }

    /// Whether limiting is on.
    pub fn enabled(&self) -> bool {
        self.cfg.responses_per_second > 0
    }

    fn prefix(&self, ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let p = self.cfg.ipv4_prefix.min(32) as u32;
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u128::from(bits & mask) | (1u128 << 127)
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let p = self.cfg.ipv6_prefix.min(128) as u32;
                if p == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - p))
                }
            }
        }
    }

    /// Accounts one response to `ip`.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        if !self.enabled() {
            return Verdict::Send;
        }
        let key = self.prefix(ip);
        let shard = &self.shards[(key as usize ^ (key >> 64) as usize) % SHARDS];
        let Ok(mut map) = shard.lock() else { return Verdict::Send };
        let now = Instant::now();
        let rate = f64::from(self.cfg.responses_per_second);
        let burst = rate * f64::from(self.cfg.window.max(1));
        if map.len() >= MAX_ENTRIES_PER_SHARD && !map.contains_key(&key) {
            map.retain(|_, b| now.duration_since(b.last).as_secs_f64() * rate < burst);
        }
        let b = map.entry(key).or_insert(Bucket { tokens: burst, last: now, limited: 0 });
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Verdict::Send;
        }
        b.limited = b.limited.wrapping_add(1);
        if self.cfg.slip > 0 && b.limited % self.cfg.slip == 0 {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_prefix() {
        let r = Rrl::new(RrlConfig { responses_per_second: 10, window: 1, slip: 2, ipv4_prefix: 24, ipv6_prefix: 56 });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.200".parse().unwrap();
        let sent = (0..100).filter(|i| r.check(if i % 2 == 0 { a } else { b }) == Verdict::Send).count();
        assert!((10..=12).contains(&sent), "{sent}");
        assert_eq!(r.check("198.51.100.1".parse().unwrap()), Verdict::Send);
    }
}
