//! All backend groups of one snapshot, rebuilt per snapshot while keeping what did not change.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use padis_model::{Backend, BackendGroup, HealthCheck, HealthKind, Snapshot};

use crate::group::GroupBalancer;
use crate::health::{CheckTls, CheckTransport, HealthRegistry, HealthTarget, TargetKey};

/// Health owner name of the L7 plane.
pub const L7_OWNER: &str = "l7";

/// The balancers of every backend group of one snapshot.
#[derive(Debug, Default)]
pub struct Balancers {
    generation: u64,
    groups: HashMap<String, Arc<GroupBalancer>>,
}

/// The health targets of L7 groups with the transport of their checks (the group's protocol and TLS): every
/// backend (draining ones too, so their state survives a drain that is undone) with the group's active and
/// passive settings. `base` resolves relative CA paths (the config file's directory).
pub fn health_targets_with_transport<G: Borrow<BackendGroup>>(
    groups: &[G],
    base: &Path,
) -> Vec<(HealthTarget, CheckTransport)> {
    groups
        .iter()
        .map(Borrow::borrow)
        .flat_map(|g: &BackendGroup| {
            let transport = CheckTransport {
                protocol: g.protocol,
                tls: g.tls.clone().map(|config| CheckTls { config, base: base.to_path_buf() }),
            };
            g.backends.iter().map(move |b| {
                let target = HealthTarget {
                    key: TargetKey { group: g.name.clone(), addr: b.addr },
                    check: check_of(g.health.as_ref(), b),
                    passive: g.passive.clone(),
                };
                (target, transport.clone())
            })
        })
        .collect()
}

/// The active check of backend `b`: its group's `check`, probing the backend's `check_port` when it has one.
fn check_of(check: Option<&HealthCheck>, b: &Backend) -> Option<HealthCheck> {
    check.map(|c| HealthCheck { port: b.check_port.or(c.port), ..c.clone() })
}

/// The directory relative paths of `snapshot` are relative to (its config file's).
pub fn config_base(snapshot: &Snapshot) -> PathBuf {
    snapshot
        .config_path
        .as_deref()
        .and_then(|p| Path::new(p).parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The health targets of L7 groups for a plain [`HealthRegistry::sync`] (no transport): like
/// [`health_targets_with_transport`], but HTTP checks of groups speaking TLS to their backends become TCP
/// connect checks, since a plaintext check would fail against them.
pub fn health_targets<G: Borrow<BackendGroup>>(groups: &[G]) -> Vec<HealthTarget> {
    groups
        .iter()
        .map(Borrow::borrow)
        .flat_map(|g: &BackendGroup| {
            let mut check = g.health.clone();
            if let Some(c) = check.as_mut().filter(|c| g.tls.is_some() && c.kind == HealthKind::Http) {
                tracing::debug!(group = %g.name, "TLS backends: HTTP health check done as TCP connect");
                c.kind = HealthKind::Tcp;
            }
            g.backends.iter().map(move |b| HealthTarget {
                key: TargetKey { group: g.name.clone(), addr: b.addr },
                check: check_of(check.as_ref(), b),
                passive: g.passive.clone(),
            })
        })
        .collect()
}

impl Balancers {
    /// Builds from a snapshot, reusing GroupBalancers (and their Maglev tables, round-robin state and in-flight
    /// counters) of groups whose config did not change; calls `health.sync("l7", ..)` first.
    pub fn build(snapshot: &Snapshot, health: &HealthRegistry, previous: Option<&Balancers>) -> Balancers {
        let groups = &snapshot.state.groups;
        health.sync_with_transport(L7_OWNER, health_targets_with_transport(groups, &config_base(snapshot)));
        let mut out = HashMap::with_capacity(groups.len());
        for g in groups {
            let prev = previous.and_then(|p| p.groups.get(&g.name));
            let balancer = match prev {
                Some(p) if p.reusable_for(g, health) => p.clone(),
                _ => Arc::new(GroupBalancer::new(g, health, prev.map(|p| &**p))),
            };
            out.insert(g.name.clone(), balancer);
        }
        Balancers { generation: snapshot.generation, groups: out }
    }

    /// The balancer of group `name`.
    pub fn group(&self, name: &str) -> Option<&Arc<GroupBalancer>> {
        self.groups.get(name)
    }

    /// All groups (in no particular order).
    pub fn groups(&self) -> impl Iterator<Item = &Arc<GroupBalancer>> {
        self.groups.values()
    }

    /// The snapshot generation these balancers were built from (0 for an empty set).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}
