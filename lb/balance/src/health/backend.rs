//! Per-backend health state: atomics only, read on every request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use padis_model::PassiveHealth;
use prometheus::IntCounter;
use tokio::sync::watch;

use super::TargetKey;

/// Milliseconds on a process-wide monotonic clock; never 0 (0 means "not ejected").
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Health of one backend (a [`TargetKey`]): active check state (up/down with rise/fall) and passive ejection
/// (consecutive failures, exponential back-off). Shared by reference between the registry, its checker and every
/// balancer that holds the backend, and kept across snapshots while the target stays.
#[derive(Debug)]
pub struct BackendHealth {
    key: TargetKey,
    /// Active state (true without an active check).
    up: AtomicBool,
    /// Consecutive active successes / failures.
    check_successes: AtomicU32,
    check_failures: AtomicU32,
    /// Passive policy (threshold 0 = passive ejection off).
    passive_threshold: AtomicU32,
    base_ms: AtomicU64,
    max_ms: AtomicU64,
    /// Consecutive request failures.
    failures: AtomicU32,
    /// Ejections in the current back-off series (the exponent).
    series: AtomicU32,
    /// Ejections ever.
    ejections_total: AtomicU64,
    /// End of the current ejection on the [`now_ms`] clock (0 = not ejected; cleared by the first success after
    /// it ends, so that `is_usable` reads no clock in the common case).
    ejected_until: AtomicU64,
    /// End of the last ejection (0 = never ejected), for restarting the back-off series.
    last_end: AtomicU64,
    /// Set by an ejection: the first result after it decides (failure re-ejects at once, success clears it).
    probation: AtomicBool,
    /// Last active check error (written by the checker only, read by reports).
    last_error: Mutex<Option<String>>,
    ejection_metric: Option<IntCounter>,
    /// Bumped on every usability change the registry's subscribers must know about.
    notify: Option<watch::Sender<u64>>,
}

impl BackendHealth {
    /// A fresh state: up, not ejected, with `passive` ejection (none = off).
    pub fn new(key: TargetKey, passive: Option<&PassiveHealth>) -> BackendHealth {
        BackendHealth::with_hooks(key, passive, None, None)
    }

    pub(crate) fn with_hooks(
        key: TargetKey,
        passive: Option<&PassiveHealth>,
        ejection_metric: Option<IntCounter>,
        notify: Option<watch::Sender<u64>>,
    ) -> BackendHealth {
        let h = BackendHealth {
            key,
            up: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            passive_threshold: AtomicU32::new(0),
            base_ms: AtomicU64::new(0),
            max_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            series: AtomicU32::new(0),
            ejections_total: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            last_end: AtomicU64::new(0),
            probation: AtomicBool::new(false),
            last_error: Mutex::new(None),
            ejection_metric,
            notify,
        };
        h.set_passive(passive);
        h
    }

    /// The target this state belongs to.
    pub fn key(&self) -> &TargetKey {
        &self.key
    }

    /// Whether new requests may go here: active state up AND not passively ejected.
    pub fn is_usable(&self) -> bool {
        if !self.up.load(Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Whether the active check says up (true without an active check).
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Remaining ejection time (zero when not ejected).
    pub fn ejected_for(&self) -> Duration {
        let until = self.ejected_until.load(Relaxed);
        Duration::from_millis(until.saturating_sub(now_ms()))
    }

    /// Ejections since the target appeared.
    pub fn ejections(&self) -> u64 {
        self.ejections_total.load(Relaxed)
    }

    /// Current consecutive request failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// Last active check error, if the last check failed.
    pub fn last_check_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// A request succeeded: resets the consecutive failure count and ends probation.
    pub fn report_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        let until = self.ejected_until.load(Relaxed);
        if until != 0 && now_ms() >= until {
            // The trial after an ejection succeeded: back in for good.
            self.probation.store(false, Relaxed);
            let _ = self.ejected_until.compare_exchange(until, 0, AcqRel, Relaxed);
        }
    }

    /// A request failed (5xx or connect failure). After `consecutive_failures` in a row the backend is ejected for
    /// `base_ejection x 2^(n-1)` (n-th ejection of a series, capped at `max_ejection`); the first failure after an
    /// ejection ends re-ejects at once. The series steps down by one per `base_ejection` since the last ejection
    /// ended, and restarts once that is `max_ejection` ago.
    pub fn report_failure(&self) {
        let threshold = self.passive_threshold.load(Relaxed);
        if threshold == 0 {
            return;
        }
        let now = now_ms();
        let until = self.ejected_until.load(Acquire);
        if now < until {
            return; // already ejected: late failures of requests sent before do not extend it
        }
        let max = self.max_ms.load(Relaxed);
        // When the last ejection ended (or is planned to: `eject` sets both; an active check's rise moves it).
        let last_end = self.last_end.load(Relaxed);
        let series = self.series.load(Relaxed);
        if last_end != 0 && series != 0 {
            let healthy = now.saturating_sub(last_end);
            if healthy >= max {
                // Long since the last ejection: a new series, and no probation.
                self.series.store(0, Relaxed);
                self.probation.store(false, Relaxed);
            } else {
                // The series decays by one step per `base_ejection` served since the last ejection ended (as
                // Envoy's multiplier does), so that a backend ejected now and then over hours is not out for
                // `max_ejection` each time.
                let steps = healthy / self.base_ms.load(Relaxed).max(1);
                let left = u64::from(series).saturating_sub(steps) as u32;
                if left != series && self.series.compare_exchange(series, left, AcqRel, Relaxed).is_ok() {
                    self.last_end.store(last_end + steps * self.base_ms.load(Relaxed).max(1), Relaxed);
                    if left == 0 {
                        self.probation.store(false, Relaxed);
                    }
                }
            }
        }
        let count = self.failures.fetch_add(1, AcqRel) + 1;
        if count >= threshold || self.probation.load(Relaxed) {
            self.eject(now, until);
        }
    }

    fn eject(&self, now: u64, previous_until: u64) {
        let base = self.base_ms.load(Relaxed).max(1);
        let max = self.max_ms.load(Relaxed).max(base);
        let n = self.series.load(Relaxed).saturating_add(1);
        let duration = base.saturating_mul(1u64 << (n - 1).min(40)).min(max);
        if self.ejected_until.compare_exchange(previous_until, now + duration, AcqRel, Relaxed).is_err() {
            return; // a concurrent failure ejected it
        }
        self.last_end.store(now + duration, Relaxed);
        self.series.store(n, Relaxed);
        self.failures.store(0, Relaxed);
        self.probation.store(true, Relaxed);
        self.ejections_total.fetch_add(1, Relaxed);
        if let Some(m) = &self.ejection_metric {
            m.inc();
        }
        self.notify();
        tracing::warn!(group = %self.key.group, backend = %self.key.addr, ejection = n, duration_ms = duration,
            "backend ejected after consecutive failures");
    }

    /// Applies a (possibly changed) passive policy; current counters are kept.
    pub(crate) fn set_passive(&self, passive: Option<&PassiveHealth>) {
        match passive {
            Some(p) => {
                self.base_ms.store(p.base_ejection.as_millis() as u64, Relaxed);
                self.max_ms.store(p.max_ejection.as_millis() as u64, Relaxed);
                self.passive_threshold.store(p.consecutive_failures, Relaxed);
            }
            None => {
                self.passive_threshold.store(0, Relaxed);
                self.ejected_until.store(0, Relaxed);
                self.last_end.store(0, Relaxed);
                self.series.store(0, Relaxed);
                self.probation.store(false, Relaxed);
                self.failures.store(0, Relaxed);
            }
        }
    }

    fn notify(&self) {
        if let Some(n) = &self.notify {
            n.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// No active check any more: the backend counts as up.
    pub(crate) fn clear_active(&self) {
        if !self.up.swap(true, Relaxed) {
            self.notify();
        }
        self.clear_counters();
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// Restarts the rise/fall counting (the up/down state is kept).
    pub(crate) fn clear_counters(&self) {
        self.check_successes.store(0, Relaxed);
        self.check_failures.store(0, Relaxed);
    }

    /// Records an active check result; returns the new state when it changed.
    pub(crate) fn record_check(&self, result: Result<(), String>, rise: u32, fall: u32) -> Option<bool> {
        let ok = result.is_ok();
        if let Ok(mut e) = self.last_error.lock() {
            *e = result.err();
        }
        if ok {
            self.check_failures.store(0, Relaxed);
            let n = self.check_successes.fetch_add(1, Relaxed).saturating_add(1);
            if !self.up.load(Relaxed) && n >= rise.max(1) {
                self.up.store(true, Relaxed);
                // Seen down by the check and back: a passive ejection from while it was down ends too (on
                // probation: the first failed request ejects it again, for the next step of its series).
                if self.ejected_until.swap(0, AcqRel) != 0 {
                    self.last_end.fetch_min(now_ms(), Relaxed);
                    self.probation.store(true, Relaxed);
                }
                self.notify();
                return Some(true);
            }
        } else {
            self.check_successes.store(0, Relaxed);
            let n = self.check_failures.fetch_add(1, Relaxed).saturating_add(1);
            if self.up.load(Relaxed) && n >= fall.max(1) {
                self.up.store(false, Relaxed);
                self.notify();
                return Some(false);
            }
        }
        None
    }
}
