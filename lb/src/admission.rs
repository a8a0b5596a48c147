//! Per-client-address admission at accept: concurrent connections and new connections per second per client
//! address, counted over every listener and worker of the plane, checked before any TLS or HTTP work.
//!
//! Memory stays bounded whatever the clients do: the concurrent counts live in a sharded map whose entries go
//! away when their count falls to zero (so it holds at most one entry per open connection), and the rates in a
//! fixed table of GCRA cells (a token bucket in one word) indexed by a keyed hash of the address. Addresses whose
//! hashes collide share a cell; the key is random per process, so a client cannot aim at another's cell. The
//! concurrent counts are keyed by the whole 64-bit keyed hash (a collision is as unlikely as guessing the key).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Shards of the concurrent-connection map (a power of two).
const SHARDS: usize = 64;
/// Cells of the rate table (a power of two): 512 KiB.
const RATE_CELLS: usize = 1 << 16;

/// Why a connection was refused at accept (the `reason` label of `padis_http_connections_rejected_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener's `max_connections`.
    MaxConnections,
    /// `max_conns_per_client`.
    PerClientConns,
    /// `new_conns_per_client_per_sec`.
    PerClientRate,
    /// The client is not in the listener's `allow_cidrs`.
    Acl,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerClientConns => "per_client_conns",
            Refusal::PerClientRate => "per_client_rate",
            Refusal::Acl => "acl",
        }
    }
}

/// The client key of an address: IPv4 (also IPv4-mapped IPv6) as is, IPv6 by its /64 (one host usually holds a
/// whole /64). Also the key of per-client rate limits (`ratelimit`).
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The plane's per-client-address counts.
pub(crate) struct ClientTable {
    shards: Box<[Mutex<HashMap<u64, u32>>]>,
    /// Per cell: the GCRA "theoretical arrival time" in ns since `epoch`.
    rate: Box<[AtomicU64]>,
    hasher: RandomState,
    epoch: Instant,
}

impl ClientTable {
    /// An empty table.
    pub fn new() -> Arc<ClientTable> {
        Arc::new(ClientTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            rate: (0..RATE_CELLS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            epoch: Instant::now(),
        })
    }

    /// The keyed hash of a client address.
    fn key(&self, ip: IpAddr) -> u64 {
        self.hasher.hash_one(client_key(ip))
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, HashMap<u64, u32>> {
        // The top bits: the rate table uses the low ones.
        let i = (key >> 58) as usize & (SHARDS - 1);
        // Plain counts behind the lock: a panic elsewhere does not make them unusable.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `ip` with at most `max_conns` open (0 = no limit) and `per_sec` new ones per
    /// second (0 = no limit): a slot counting it until dropped, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max_conns: usize, per_sec: u32) -> Result<ClientSlot, Refusal> {
        let key = self.key(ip);
        if per_sec > 0 && !self.take_token(key, per_sec, Instant::now()) {
            return Err(Refusal::PerClientRate);
        }
        {
            let mut shard = self.shard(key);
            let count = shard.entry(key).or_insert(0);
            if max_conns > 0 && *count as usize >= max_conns {
                if *count == 0 {
                    shard.remove(&key);
                }
                return Err(Refusal::PerClientConns);
            }
            *count += 1;
        }
        Ok(ClientSlot { table: self.clone(), key })
    }

    /// Open connections counted for `ip`'s client key.
    #[cfg(test)]
    fn open(&self, ip: IpAddr) -> u32 {
        let key = self.key(ip);
        self.shard(key).get(&key).copied().unwrap_or(0)
    }

    /// Client keys with open connections.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }

    /// GCRA: one connection costs `1/per_sec` s of the cell's time; the cell may run up to one second ahead of
    /// `now` (a burst of `per_sec`).
    fn take_token(&self, key: u64, per_sec: u32, now: Instant) -> bool {
        let cell = &self.rate[key as usize & (RATE_CELLS - 1)];
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let step = 1_000_000_000 / u64::from(per_sec.max(1));
        let burst = Duration::from_secs(1).as_nanos() as u64;
        let mut tat = cell.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let next = base + step;
            if next - now > burst {
                return false;
            }
            match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(t) => tat = t,
            }
        }
    }

    fn release(&self, key: u64) {
        let mut shard = self.shard(key);
        if let Some(count) = shard.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&key);
            }
        }
    }
}

/// An admitted connection of one client: counted until dropped.
pub(crate) struct ClientSlot {
    table: Arc<ClientTable>,
    key: u64,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.table.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn concurrent_limit_per_address_and_entries_go_away() {
        let t = ClientTable::new();
        let a: Vec<_> = (0..3).map(|_| t.admit(ip("10.0.0.1"), 3, 0).expect("within limit")).collect();
        assert_eq!(t.admit(ip("10.0.0.1"), 3, 0).err(), Some(Refusal::PerClientConns));
        assert_eq!(t.admit(ip("::ffff:10.0.0.1"), 3, 0).err(), Some(Refusal::PerClientConns), "mapped = same client");
        let b = t.admit(ip("10.0.0.2"), 3, 0).expect("another address");
        assert_eq!(t.open(ip("10.0.0.1")), 3);
        drop(a);
        assert_eq!(t.open(ip("10.0.0.1")), 0);
        assert_eq!(t.entries(), 1, "a client with no connection has no entry");
        drop(b);
        assert_eq!(t.entries(), 0);
        // No limit: counted all the same.
        let many: Vec<_> = (0..100).map(|_| t.admit(ip("10.0.0.3"), 0, 0).unwrap()).collect();
        assert_eq!(t.open(ip("10.0.0.3")), 100);
        drop(many);
        assert_eq!(t.entries(), 0);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let t = ClientTable::new();
        let _a = t.admit(ip("2001:db8:1:2::1"), 1, 0).unwrap();
        assert_eq!(t.admit(ip("2001:db8:1:2::ffff"), 1, 0).err(), Some(Refusal::PerClientConns));
        assert!(t.admit(ip("2001:db8:1:3::1"), 1, 0).is_ok());
    }

    #[test]
    fn rate_allows_a_second_of_burst_then_the_rate() {
        let t = ClientTable::new();
        let key = t.key(ip("192.0.2.1"));
        let start = Instant::now();
        let allowed = (0..20).filter(|_| t.take_token(key, 10, start)).count();
        assert_eq!(allowed, 10, "a burst of one second's worth");
        assert!(!t.take_token(key, 10, start + Duration::from_millis(50)));
        assert!(t.take_token(key, 10, start + Duration::from_millis(110)), "refilled after 1/rate");
        assert!(!t.take_token(key, 10, start + Duration::from_millis(120)));
        let later = start + Duration::from_secs(5);
        assert_eq!((0..20).filter(|_| t.take_token(key, 10, later)).count(), 10, "full again after a pause");
        // A refused attempt through `admit` leaves no count behind.
        let other = ip("192.0.2.2");
        let slots: Vec<_> = (0..20).filter_map(|_| t.admit(other, 0, 5).ok()).collect();
        assert!(slots.len() <= 6, "{}", slots.len());
        assert_eq!(t.admit(other, 0, 5).err(), Some(Refusal::PerClientRate));
        assert_eq!(t.open(other), slots.len() as u32);
    }
}
