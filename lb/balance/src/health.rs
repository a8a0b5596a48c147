//! The health registry: one long-lived set of targets (group + backend address), each with active checks
//! (HTTP or TCP, rise/fall) and passive ejection state, synced per owner ("l7", "l4") from every snapshot and
//! kept for targets that stay.

mod backend;
mod metrics;
mod probe;
mod transport;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use padis_model::{HealthCheck, HealthKind, PassiveHealth};
use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;

pub use backend::BackendHealth;
pub use probe::{probe, probe_with, ProbeError};
pub use transport::{client_tls_config, CheckTls, CheckTransport, TransportError};

use metrics::{CheckCounters, Metrics};

/// Identity of a health target: health state follows it across snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TargetKey {
    /// Backend group (L7) or VIP name (L4).
    pub group: String,
    /// Backend address.
    pub addr: SocketAddr,
}

/// What should be checked for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthTarget {
    /// The target.
    pub key: TargetKey,
    /// Active check (none: the backend counts as up).
    pub check: Option<HealthCheck>,
    /// Passive ejection policy (none: never ejected).
    pub passive: Option<PassiveHealth>,
}

/// Health of one target, for `/v1/state` and `padis status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Group or VIP name.
    pub group: String,
    /// Backend address.
    pub backend: SocketAddr,
    /// Planes that asked for this target (`l7`, `l4`).
    pub owners: Vec<String>,
    /// Active check kind (`http`, `tcp`), if any.
    pub check: Option<&'static str>,
    /// Active state (true without a check).
    pub up: bool,
    /// Takes new requests: up and not ejected.
    pub usable: bool,
    /// Remaining passive ejection, in ms.
    pub ejected_for_ms: u64,
    /// Passive ejections so far.
    pub ejections: u64,
    /// Current consecutive request failures.
    pub consecutive_failures: u32,
    /// Error of the last active check, if it failed.
    pub last_check_error: Option<String>,
}

/// All health targets and their checkers. Cheap to clone (shared); created once by control.
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRegistry").field("targets", &self.lock().targets.len()).finish()
    }
}

struct Inner {
    state: Arc<Mutex<State>>,
    metrics: Metrics,
    runtime: Option<Handle>,
    changes: watch::Sender<u64>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) targets: HashMap<TargetKey, Entry>,
}

pub(crate) struct Entry {
    pub(crate) health: Arc<BackendHealth>,
    owners: BTreeSet<String>,
    check: Option<HealthCheck>,
    transport: CheckTransport,
    checker: Option<AbortHandle>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(task) = self.checker.take() {
            task.abort();
        }
    }
}

impl HealthRegistry {
    /// A registry whose metrics go into `metrics` (fails if they are already registered there).
    /// Active checkers run on the tokio runtime current at `sync` time (or at `new` time as a fallback).
    pub fn new(metrics: &prometheus::Registry) -> Result<HealthRegistry, prometheus::Error> {
        let state = Arc::new(Mutex::new(State::default()));
        let metrics = Metrics::register(metrics, Arc::downgrade(&state))?;
        let (changes, _) = watch::channel(0);
        Ok(HealthRegistry { inner: Arc::new(Inner { state, metrics, runtime: Handle::try_current().ok(), changes }) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts/stops active checkers so they match `targets`; state of targets that stay is kept.
    /// `owner` namespaces target sets ("l7", "l4") so each plane syncs its own set independently; a target wanted
    /// by two owners is checked once, with the settings of the latest sync that named it.
    pub fn sync(&self, owner: &str, targets: Vec<HealthTarget>) {
        self.sync_with_transport(owner, targets.into_iter().map(|t| (t, CheckTransport::default())).collect());
    }

    /// Like [`HealthRegistry::sync`], with the transport of each target's HTTP checks (L7 groups speaking TLS or
    /// h2 to their backends are checked the same way).
    pub fn sync_with_transport(&self, owner: &str, targets: Vec<(HealthTarget, CheckTransport)>) {
        let runtime = Handle::try_current().ok().or_else(|| self.inner.runtime.clone());
        let metrics = &self.inner.metrics;
        let mut state = self.lock();
        let mut wanted = HashSet::with_capacity(targets.len());
        for (t, transport) in targets {
            wanted.insert(t.key.clone());
            let entry = state.targets.entry(t.key.clone()).or_insert_with(|| {
                let health = BackendHealth::with_hooks(
                    t.key.clone(),
                    None,
                    Some(metrics.ejection_counter(&t.key)),
                    Some(self.inner.changes.clone()),
                );
                Entry {
                    health: Arc::new(health),
                    owners: BTreeSet::new(),
                    check: None,
                    transport: CheckTransport::default(),
                    checker: None,
                }
            });
            entry.owners.insert(owner.to_string());
            entry.health.set_passive(t.passive.as_ref());
            if entry.check != t.check
                || entry.transport != transport
                || (entry.check.is_some() && entry.checker.is_none())
            {
                restart_checker(entry, t.check, transport, runtime.as_ref(), metrics);
            }
        }
        let gone: Vec<TargetKey> = state
            .targets
            .iter_mut()
            .filter(|(k, _)| !wanted.contains(*k))
            .filter_map(|(k, e)| {
                e.owners.remove(owner);
                e.owners.is_empty().then(|| k.clone())
            })
            .collect();
        for key in gone {
            state.targets.remove(&key);
            metrics.forget(&key);
            tracing::debug!(group = %key.group, backend = %key.addr, "health target removed");
        }
    }

    /// A receiver whose value changes whenever a target's usability may have changed (active up/down, passive
    /// ejection): L4 and BGP re-read [`HealthRegistry::get`] then (ejection ends are not signalled: they are
    /// time-based, see [`BackendHealth::ejected_for`]).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The live health of a target.
    pub fn get(&self, key: &TargetKey) -> Option<Arc<BackendHealth>> {
        self.lock().targets.get(key).map(|e| e.health.clone())
    }

    /// Health of every target, sorted by group and address.
    pub fn report(&self) -> Vec<HealthReport> {
        let state = self.lock();
        let mut out: Vec<HealthReport> = state
            .targets
            .iter()
            .map(|(k, e)| HealthReport {
                group: k.group.clone(),
                backend: k.addr,
                owners: e.owners.iter().cloned().collect(),
                check: e.check.as_ref().map(|c| match c.kind {
                    HealthKind::Http => "http",
                    HealthKind::Tcp => "tcp",
                }),
                up: e.health.is_up(),
                usable: e.health.is_usable(),
                ejected_for_ms: e.health.ejected_for().as_millis() as u64,
                ejections: e.health.ejections(),
                consecutive_failures: e.health.consecutive_failures(),
                last_check_error: e.health.last_check_error(),
            })
            .collect();
        out.sort_by(|a, b| (&a.group, a.backend).cmp(&(&b.group, b.backend)));
        out
    }
}

/// Replaces the checker of `entry` (the up/down state is kept; counters restart).
fn restart_checker(
    entry: &mut Entry,
    check: Option<HealthCheck>,
    transport: CheckTransport,
    runtime: Option<&Handle>,
    metrics: &Metrics,
) {
    if let Some(task) = entry.checker.take() {
        task.abort();
    }
    entry.health.clear_counters();
    entry.check = check.clone();
    entry.transport = transport.clone();
    let Some(check) = check else {
        entry.health.clear_active();
        return;
    };
    let Some(runtime) = runtime else {
        tracing::error!(group = %entry.health.key().group, backend = %entry.health.key().addr,
            "no tokio runtime: active health check not started");
        return;
    };
    let counters = metrics.check_counters(entry.health.key());
    let task = runtime.spawn(run_checks(entry.health.clone(), check, transport, counters));
    entry.checker = Some(task.abort_handle());
}

/// The checker loop of one target: a check every `interval` (the first at once), results fed to rise/fall.
async fn run_checks(
    health: Arc<BackendHealth>,
    check: HealthCheck,
    transport: CheckTransport,
    counters: CheckCounters,
) {
    // TLS is set up once per checker; a setup error fails every check (and says why in the report).
    let tls = match &transport.tls {
        Some(t) if check.kind == HealthKind::Http => Some(t.setup(transport.protocol).map_err(|e| e.to_string())),
        _ => None,
    };
    let mut ticker = tokio::time::interval(check.interval.max(std::time::Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let addr = health.key().addr;
    // Spread the checks of many targets (HAProxy's spread-checks): a random start within half an interval.
    let spread = check.interval.min(std::time::Duration::from_secs(1)) / 2;
    tokio::time::sleep(spread.mul_f64(fastrand::f64())).await;
    loop {
        ticker.tick().await;
        let result = match &tls {
            None => probe::probe_prepared(addr, &check, transport.protocol, None).await,
            Some(Ok(setup)) => probe::probe_prepared(addr, &check, transport.protocol, Some(setup)).await,
            Some(Err(e)) => Err(ProbeError::Setup(e.clone())),
        };
        match &result {
            Ok(()) => counters.success.inc(),
            Err(ProbeError::Timeout) => counters.timeout.inc(),
            Err(_) => counters.failure.inc(),
        }
        let result = result.map_err(|e| e.to_string());
        let error = result.as_ref().err().cloned();
        if let Some(up) = health.record_check(result, check.rise, check.fall) {
            let key = health.key();
            if up {
                tracing::info!(group = %key.group, backend = %addr, "backend up (active check)");
            } else {
                tracing::warn!(group = %key.group, backend = %addr, error = error.as_deref().unwrap_or(""),
                    "backend down (active check)");
            }
        }
    }
}
