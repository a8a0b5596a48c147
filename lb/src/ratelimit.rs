//! Request rate limits of routes (`[route.rate_limit]`): a token bucket per client address (IPv6: its /64) or
//! one per route, as GCRA (the "theoretical arrival time" of the bucket, one number per bucket): `rate` requests
//! per `period` refill it, `burst` requests may come at once. A request over the limit is answered 429 with
//! `Retry-After` (the seconds until the bucket takes one again) and counted in
//! `padis_http_rate_limited_total{route}`. Clients in the route's `allow` networks are never limited.
//!
//! One table for the whole plane, shared by every worker thread and both request paths (the decision is taken
//! under the lock of the bucket's shard, so N threads see one bucket), kept across snapshots (a reload does not
//! refill the buckets). Memory is bounded whatever addresses the clients come from (a flood of spoofed or
//! rotating addresses): at most 256 x 1024 buckets (about 10 MiB). A bucket that is full again (its time is in the past) is
//! the same as no bucket and is dropped when its shard needs room; when a shard holds only buckets in use, the
//! fullest one (the one with the least debt) is forgotten for the new one, so a client that is being limited
//! keeps its debt and cannot shake it off by making the table churn. Keys are a keyed hash (random per process)
//! of the route and the client: a client cannot aim at another's bucket.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use padis_model::{RateLimit, RateLimitKey};

/// Shards of the table (a power of two).
const SHARDS: usize = 256;
/// Most buckets in one shard.
const PER_SHARD: usize = 1024;

/// A route's limit, compiled.
#[derive(Debug)]
pub(crate) struct RouteLimit {
    /// Time one request costs, ns.
    step: u64,
    /// How far ahead of now a bucket's time may run, ns (`burst` requests).
    depth: u64,
    per_client: bool,
    allow: Box<[IpNet]>,
    /// The route's name: the first part of its buckets' keys (a reload keeps the buckets of a route).
    route: Box<str>,
}

impl RouteLimit {
    /// The limit of route `route`.
    pub fn new(route: &str, l: &RateLimit) -> RouteLimit {
        let period = u64::try_from(l.period.as_nanos()).unwrap_or(u64::MAX);
        let step = (period / u64::from(l.rate.max(1))).max(1);
        let burst = u64::from(l.burst.unwrap_or(l.rate).max(1));
        RouteLimit {
            step,
            depth: step.saturating_mul(burst),
            per_client: l.per == RateLimitKey::Client,
            allow: l.allow.clone().into(),
            route: route.into(),
        }
    }

    /// Whether `client` is in the route's `allow` networks.
    fn exempt(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.iter().any(|n| n.contains(&client))
    }
}

/// One shard: bucket times (ns since the table's epoch) by key.
#[derive(Default)]
struct Shard {
    buckets: HashMap<u64, u64>,
}

/// The plane's buckets.
pub(crate) struct RateTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    epoch: Instant,
    per_shard: usize,
    /// `padis_http_rate_limited_total`.
    limited: prometheus::IntCounterVec,
}

impl RateTable {
    /// An empty table whose refusals count into `limited` (by route).
    pub fn new(limited: prometheus::IntCounterVec) -> Arc<RateTable> {
        Self::with_capacity(limited, PER_SHARD)
    }

    fn with_capacity(limited: prometheus::IntCounterVec, per_shard: usize) -> Arc<RateTable> {
        Arc::new(RateTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
            per_shard,
            limited,
        })
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard> {
        // Plain numbers behind the lock: a panic elsewhere does not make them unusable.
        self.shards[(key >> 56) as usize & (SHARDS - 1)].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one request of `client` from route `limit`'s bucket: `Err(retry_after)` when it is over the limit
    /// (counted).
    pub fn check(&self, limit: &RouteLimit, client: IpAddr) -> Result<(), Duration> {
        self.check_at(limit, client, Instant::now()).inspect_err(|_| {
            self.limited.with_label_values(&[&*limit.route]).inc();
        })
    }

    fn check_at(&self, limit: &RouteLimit, client: IpAddr, now: Instant) -> Result<(), Duration> {
        if limit.exempt(client) {
            return Ok(());
        }
        let key = if limit.per_client {
            self.hasher.hash_one((&*limit.route, crate::admission::client_key(client)))
        } else {
            self.hasher.hash_one(&*limit.route)
        };
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let mut shard = self.shard(key);
        let tat = shard.buckets.get(&key).copied().unwrap_or(0);
        let next = tat.max(now).saturating_add(limit.step);
        if next - now > limit.depth {
            // It takes one again once `next` is within `depth` of the time.
            return Err(Duration::from_nanos(next - now - limit.depth));
        }
        if !shard.buckets.contains_key(&key) && shard.buckets.len() >= self.per_shard {
            shard.make_room(now, self.per_shard);
        }
        shard.buckets.insert(key, next);
        Ok(())
    }

    /// Buckets held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.buckets.len()).unwrap_or(0)).sum()
    }
}

impl Shard {
    /// Makes room for one more bucket below `max`: drops the buckets that are full again; if none is, forgets
    /// the fullest one.
    fn make_room(&mut self, now: u64, max: usize) {
        self.buckets.retain(|_, tat| *tat > now);
        if self.buckets.len() >= max {
            if let Some((&k, _)) = self.buckets.iter().min_by_key(|(_, tat)| **tat) {
                self.buckets.remove(&k);
            }
        }
    }
}

/// `Retry-After` seconds for a wait of `d`: rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> prometheus::IntCounterVec {
        prometheus::IntCounterVec::new(prometheus::Opts::new("t", "t"), &["route"]).unwrap()
    }

    fn limit(rate: u32, burst: Option<u32>, per: RateLimitKey, allow: &[&str]) -> RouteLimit {
        let l = RateLimit {
            rate,
            period: Duration::from_secs(1),
            burst,
            per,
            allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
        };
        RouteLimit::new("r", &l)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_the_rate_per_client_and_retry_after() {
        let t = RateTable::new(counter());
        let l = limit(10, Some(5), RateLimitKey::Client, &[]);
        let t0 = Instant::now();
        let ok = (0..20).filter(|_| t.check_at(&l, ip("192.0.2.1"), t0).is_ok()).count();
        assert_eq!(ok, 5, "the burst");
        let wait = t.check_at(&l, ip("192.0.2.1"), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100), "one step of 1/rate");
        assert_eq!(retry_after_secs(wait), 1);
        assert!(t.check_at(&l, ip("192.0.2.1"), t0 + Duration::from_millis(99)).is_err());
        assert!(t.check_at(&l, ip("192.0.2.1"), t0 + Duration::from_millis(100)).is_ok());
        // Over ten seconds at full speed: the burst plus the rate.
        let mut n = 0;
        for ms in (101..10_101).step_by(1) {
            n += usize::from(t.check_at(&l, ip("192.0.2.1"), t0 + Duration::from_millis(ms)).is_ok());
        }
        assert_eq!(n, 100);
        // Another client, and the same client's /64 in IPv6.
        assert!(t.check_at(&l, ip("192.0.2.2"), t0).is_ok());
        let v6 = (0..10).filter(|i| t.check_at(&l, ip(&format!("2001:db8::{i}")), t0).is_ok()).count();
        assert_eq!(v6, 5, "one bucket per /64");
    }

    #[test]
    fn per_route_bucket_is_shared_and_allow_list_is_exempt() {
        let t = RateTable::new(counter());
        let l = limit(10, Some(3), RateLimitKey::Route, &["10.0.0.0/8"]);
        let t0 = Instant::now();
        let ok = (0..10).filter(|i| t.check_at(&l, ip(&format!("192.0.2.{i}")), t0).is_ok()).count();
        assert_eq!(ok, 3, "all clients share the route's bucket");
        assert!((0..1000).all(|_| t.check_at(&l, ip("10.1.2.3"), t0).is_ok()), "allow-listed");
        assert!(t.check_at(&l, ip("::ffff:10.1.2.3"), t0).is_ok(), "mapped IPv4 is IPv4");
    }

    #[test]
    fn spoofed_address_flood_stays_bounded_and_the_limited_keep_their_debt() {
        let t = RateTable::with_capacity(counter(), 8);
        let l = limit(1, Some(2), RateLimitKey::Client, &[]);
        let t0 = Instant::now();
        // A client that is being limited.
        assert!(t.check_at(&l, ip("198.51.100.1"), t0).is_ok() && t.check_at(&l, ip("198.51.100.1"), t0).is_ok());
        assert!(t.check_at(&l, ip("198.51.100.1"), t0).is_err());
        // 100,000 other addresses, one request each, within the same second.
        for i in 0..100_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = t.check_at(&l, a, t0 + Duration::from_nanos(u64::from(i)));
        }
        assert!(t.len() <= SHARDS * 8, "{} buckets", t.len());
        assert!(t.check_at(&l, ip("198.51.100.1"), t0 + Duration::from_millis(200)).is_err(), "debt kept");
    }
}
