//! One backend group of one snapshot: its backends (with health and in-flight counters) and its algorithm.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use http::HeaderValue;
use padis_model::{BackendGroup, Balance, HashKey};

use crate::hash::{addr_identity, sticky_id};
use crate::health::{BackendHealth, HealthRegistry, TargetKey};
use crate::maglev::{next_prime_at_least, Maglev, DEFAULT_TABLE_SIZE};
use crate::select::{LeastRequest, MaglevSelector, RoundRobin, SelectCtx, Selector, Sticky};

/// Default sticky cookie name.
pub const DEFAULT_STICKY_COOKIE: &str = "padis_sticky";

/// One backend of a group. In-flight requests hold an `Arc` of it, so a backend removed or drained by a new
/// snapshot lets them finish.
#[derive(Debug)]
pub struct BackendEntry {
    /// Address.
    pub addr: SocketAddr,
    /// Relative weight (0 = no new requests).
    pub weight: u32,
    /// Being removed by its source: no new requests.
    pub draining: bool,
    /// Live health, shared with the [`HealthRegistry`].
    pub health: Arc<BackendHealth>,
    in_flight: Arc<AtomicUsize>,
    sticky_id: String,
}

/// Counts one in-flight request on a backend until dropped.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Relaxed);
    }
}

impl BackendEntry {
    /// A backend with a fresh in-flight counter.
    pub fn new(addr: SocketAddr, weight: u32, draining: bool, health: Arc<BackendHealth>) -> BackendEntry {
        BackendEntry::with_counter(addr, weight, draining, health, Arc::default())
    }

    fn with_counter(
        addr: SocketAddr,
        weight: u32,
        draining: bool,
        health: Arc<BackendHealth>,
        in_flight: Arc<AtomicUsize>,
    ) -> BackendEntry {
        BackendEntry { addr, weight, draining, health, in_flight, sticky_id: sticky_id(addr) }
    }

    /// Starts counting a request; the count drops with the guard.
    pub fn begin(&self) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight { counter: self.in_flight.clone() }
    }

    /// Requests in flight (counted across snapshots while the backend stays in its group).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Whether it may take new requests by config (weight > 0 and not draining); health aside.
    pub fn accepts_new(&self) -> bool {
        self.weight > 0 && !self.draining
    }

    /// Whether it may take a new request now: accepts new ones and is healthy (not down, not ejected).
    pub fn is_usable(&self) -> bool {
        self.accepts_new() && self.health.is_usable()
    }

    /// The opaque id written in sticky cookies (a short stable hash of the address).
    pub fn sticky_id(&self) -> &str {
        &self.sticky_id
    }
}

/// The result of a selection.
#[derive(Debug, Clone)]
pub struct Pick {
    /// The chosen backend (hold it for the request's lifetime; call `begin()` on it).
    pub backend: Arc<BackendEntry>,
    /// `Set-Cookie` value to add to the response (sticky groups, when the client's cookie did not name it).
    pub set_cookie: Option<HeaderValue>,
}

enum Algorithm {
    RoundRobin(RoundRobin),
    LeastRequest(LeastRequest),
    Maglev(MaglevSelector),
    Sticky(Sticky),
}

impl Algorithm {
    fn selector(&self) -> &dyn Selector {
        match self {
            Algorithm::RoundRobin(s) => s,
            Algorithm::LeastRequest(s) => s,
            Algorithm::Maglev(s) => s,
            Algorithm::Sticky(s) => s,
        }
    }
}

/// The balancer of one backend group in one snapshot. Cheap to rebuild; [`crate::Balancers::build`] reuses it
/// as a whole when the group's config did not change.
pub struct GroupBalancer {
    config: BackendGroup,
    backends: Vec<Arc<BackendEntry>>,
    /// Maglev input (identity, weight), to reuse the table when only other settings change.
    maglev_input: Vec<(Vec<u8>, u32)>,
    algorithm: Algorithm,
}

impl std::fmt::Debug for GroupBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupBalancer")
            .field("name", &self.config.name)
            .field("balance", &self.config.balance)
            .field("backends", &self.backends)
            .finish()
    }
}

/// Maglev table size for a group of `n` backends: the default, or a prime at 100 x `n` for huge groups.
pub fn table_size_for(n: usize) -> usize {
    if n.saturating_mul(100) <= DEFAULT_TABLE_SIZE {
        DEFAULT_TABLE_SIZE
    } else {
        next_prime_at_least(n.saturating_mul(100))
    }
}

impl GroupBalancer {
    /// Builds the balancer of `group`, taking each backend's health from `health` (targets are expected to be
    /// synced already; a missing one gets a detached, always-up state) and, from `previous` (the same group in the
    /// previous snapshot), the in-flight counters of backends that stay and the Maglev table if its input is equal.
    pub fn new(group: &BackendGroup, health: &HealthRegistry, previous: Option<&GroupBalancer>) -> GroupBalancer {
        let backends: Vec<Arc<BackendEntry>> = group
            .backends
            .iter()
            .map(|b| {
                let key = TargetKey { group: group.name.clone(), addr: b.addr };
                let h = health.get(&key).unwrap_or_else(|| {
                    tracing::debug!(group = %group.name, backend = %b.addr, "no health target: always up");
                    Arc::new(BackendHealth::new(key, group.passive.as_ref()))
                });
                let counter = previous
                    .and_then(|p| p.backends.iter().find(|e| e.addr == b.addr))
                    .map(|e| e.in_flight.clone())
                    .unwrap_or_default();
                Arc::new(BackendEntry::with_counter(b.addr, b.weight, b.draining, h, counter))
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| if b.accepts_new() { b.weight } else { 0 }).collect();
        let mut seen = HashSet::new();
        let maglev_input: Vec<(Vec<u8>, u32)> = if group.balance == Balance::Maglev {
            backends
                .iter()
                .zip(&weights)
                .map(|(b, &w)| (addr_identity(b.addr), if seen.insert(b.addr) { w } else { 0 }))
                .collect()
        } else {
            Vec::new()
        };
        let algorithm = match group.balance {
            Balance::RoundRobin => Algorithm::RoundRobin(RoundRobin::new(&weights)),
            Balance::LeastRequest => {
                let list: Vec<_> = backends.iter().zip(&weights).map(|(b, &w)| (w, b.in_flight.clone())).collect();
                Algorithm::LeastRequest(LeastRequest::new(&list))
            }
            Balance::Sticky => {
                let cookie = group.sticky_cookie.clone().unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_string());
                let ids = backends.iter().map(|b| b.sticky_id.clone()).collect();
                Algorithm::Sticky(Sticky::new(cookie, ids, &weights))
            }
            Balance::Maglev => {
                let key = group.hash_key.clone().unwrap_or(HashKey::ClientIp);
                let reuse = previous.and_then(|p| match &p.algorithm {
                    Algorithm::Maglev(m) if p.maglev_input == maglev_input => Some(m.table().clone()),
                    _ => None,
                });
                let table = match reuse {
                    Some(t) => Ok(t),
                    None => Maglev::new(&maglev_input, table_size_for(backends.len())).map(Arc::new),
                };
                match table {
                    Ok(t) => Algorithm::Maglev(MaglevSelector::new(t, key)),
                    Err(e) => {
                        tracing::error!(group = %group.name, error = %e, "maglev table failed: round robin instead");
                        Algorithm::RoundRobin(RoundRobin::new(&weights))
                    }
                }
            }
        };
        GroupBalancer { config: group.clone(), backends, maglev_input, algorithm }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The group's config (timeouts, retries, protocol, TLS are read from here by the proxy).
    pub fn config(&self) -> &BackendGroup {
        &self.config
    }

    /// The backends, in config order (indices of [`Selector::select`]).
    pub fn backends(&self) -> &[Arc<BackendEntry>] {
        &self.backends
    }

    /// The algorithm.
    pub fn selector(&self) -> &dyn Selector {
        self.algorithm.selector()
    }

    /// The Maglev table of a `maglev` group.
    pub fn maglev(&self) -> Option<&Arc<Maglev>> {
        match &self.algorithm {
            Algorithm::Maglev(m) => Some(m.table()),
            _ => None,
        }
    }

    /// Picks a usable backend (healthy, not ejected, weight > 0, not draining, not in `exclude`).
    ///
    /// Panic mode (as Envoy's ejection limit): when no backend is left that is usable and not yet tried by this
    /// request — every backend that is up and accepts new requests is passively ejected, or the ones that are
    /// not were tried and failed — ejection is ignored rather than failing the request on the strength of past
    /// request failures alone (a backend ejected minutes ago for a crash it has recovered from, while the only
    /// one not ejected is the one that just died); backends down by their active check, and backends this
    /// request already tried, are never picked.
    pub fn select(&self, ctx: &SelectCtx<'_>, exclude: &[SocketAddr]) -> Option<Pick> {
        let usable = |i: usize| self.backends.get(i).is_some_and(|b| b.is_usable() && !exclude.contains(&b.addr));
        if let Some(pick) = self.pick(ctx, &usable) {
            return Some(pick);
        }
        let up = |i: usize| {
            self.backends.get(i).is_some_and(|b| b.accepts_new() && b.health.is_up() && !exclude.contains(&b.addr))
        };
        // Round-robin turns were all consumed by the failed pass above: choose at random (weighted) instead.
        let pick = match &self.algorithm {
            Algorithm::RoundRobin(_) => self.random_weighted(&up).map(|i| self.pick_at(i, None)),
            Algorithm::Sticky(s) => match s.pinned(ctx) {
                Some(i) if up(i) => Some(self.pick_at(i, None)),
                _ => self.random_weighted(&up).map(|i| self.pick_at(i, Some(s))),
            },
            _ => self.pick(ctx, &up),
        }?;
        tracing::debug!(group = %self.config.name, backend = %pick.backend.addr, "no usable backend left untried: panic mode (ejection ignored)");
        Some(pick)
    }

    fn pick(&self, ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<Pick> {
        let (i, sticky) = match &self.algorithm {
            Algorithm::Sticky(s) => {
                let (i, pinned) = s.select_pinned(ctx, usable)?;
                (i, (!pinned).then_some(s))
            }
            other => (other.selector().select(ctx, usable)?, None),
        };
        Some(self.pick_at(i, sticky))
    }

    /// The pick of backend `i` (a valid index), with a sticky cookie for it when `sticky` is given.
    fn pick_at(&self, i: usize, sticky: Option<&Sticky>) -> Pick {
        let backend = self.backends[i].clone();
        let set_cookie = sticky.and_then(|s| {
            let v = format!("{}={}; Path=/; HttpOnly; SameSite=Lax", s.cookie(), backend.sticky_id);
            HeaderValue::from_str(&v)
                .inspect_err(|_| tracing::warn!(group = %self.config.name, "sticky cookie name is not valid"))
                .ok()
        });
        Pick { backend, set_cookie }
    }

    /// A random backend among those for which `ok` holds, in proportion to weight.
    fn random_weighted(&self, ok: &dyn Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<(usize, u64)> =
            (0..self.backends.len()).filter(|&i| ok(i)).map(|i| (i, u64::from(self.backends[i].weight))).collect();
        let total: u64 = candidates.iter().map(|c| c.1).sum();
        if total == 0 {
            return None;
        }
        let mut r = fastrand::u64(0..total);
        for (i, w) in candidates {
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }

    /// Whether this balancer can serve `group` unchanged (same config, same health states in `health`).
    pub(crate) fn reusable_for(&self, group: &BackendGroup, health: &HealthRegistry) -> bool {
        self.config == *group
            && self.backends.iter().all(|b| {
                let key = TargetKey { group: group.name.clone(), addr: b.addr };
                health.get(&key).is_some_and(|h| Arc::ptr_eq(&h, &b.health))
            })
    }
}
