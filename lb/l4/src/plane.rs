//! The L4 plane as the daemon runs it: load (reusing pinned maps), program from the snapshot in force, attach,
//! then re-program on every new snapshot and every second (health and neighbour changes), until shutdown.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use padis_balance::{HealthRegistry, HealthTarget, TargetKey};
use padis_ebpf_common::config_flags;
use padis_model::{Snapshot, SnapshotReader};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::desired::{self, Desired};
use crate::loader::{Attachment, Balancer, LoadOptions};
use crate::programmer::{ApplyReport, Programmer};
use crate::stats::{self, Count};
use crate::sync::{SyncHandle, SyncIndex, SyncMaps, SyncReport};
use crate::{bpffs, neigh, L4Error};

/// Health owner name of L4 targets in the registry.
pub const HEALTH_OWNER: &str = "l4";

/// Entry point for the daemon.
pub struct L4Plane;

/// A running L4 plane.
pub struct L4Handle {
    task: Option<tokio::task::JoinHandle<()>>,
    sync: Option<SyncHandle>,
    inner: Option<Arc<Mutex<Inner>>>,
    /// Whether the stop leaves the program attached (`l4.keep_attached`, or an upgrade: see
    /// [`L4Handle::keep_attached`]).
    keep: Arc<std::sync::atomic::AtomicBool>,
}

/// One backend in the L4 report.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// Address.
    pub addr: IpAddr,
    /// Configured weight.
    pub weight: u32,
    /// Health allows new flows.
    pub usable: bool,
    /// In the Maglev table now.
    pub in_table: bool,
    /// MAC used for DSR, if known.
    pub mac: Option<String>,
    /// Packets forwarded to it (all VIPs).
    pub packets: u64,
    /// Bytes forwarded to it (all VIPs).
    pub bytes: u64,
}

/// One VIP in the L4 report.
#[derive(Debug, Clone, Serialize)]
pub struct VipReport {
    /// Name.
    pub name: String,
    /// `addr:port/proto`.
    pub vip: String,
    /// Maglev table size in force (0: no usable backend).
    pub table_size: u32,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// New flows dropped by the per-source-prefix limit (`[l4.source_limit]`).
    pub rate_limited: u64,
    /// Backends.
    pub backends: Vec<BackendReport>,
}

/// The L4 view for `/v1/state` and `padis status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct L4Report {
    /// False when `[l4]` lists no interfaces.
    pub enabled: bool,
    /// Interfaces and the XDP mode in use.
    pub interfaces: Vec<(String, String)>,
    /// Snapshot generation last programmed.
    pub generation: u64,
    /// What the last programming round changed.
    pub last_apply: ApplyReport,
    /// Last programming error (the previous state stays in force).
    pub last_error: Option<String>,
    /// Successful programming rounds.
    pub applies_ok: u64,
    /// Failed programming rounds.
    pub applies_failed: u64,
    /// VIPs.
    pub vips: Vec<VipReport>,
    /// Global counters by name.
    pub stats: BTreeMap<&'static str, Count>,
    /// Connection-table sync (none: `[l4.sync]` off): peers with the age of their last hello, counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncReport>,
    /// Per backend counters.
    #[serde(skip)]
    pub backend_counters: Vec<(IpAddr, Count)>,
}

/// Shared state of a running plane.
pub struct Inner {
    balancer: Balancer,
    programmer: Programmer,
    attachments: Vec<Attachment>,
    snapshot: Arc<Snapshot>,
    desired: Desired,
    generation: u64,
    last_apply: ApplyReport,
    last_error: Option<String>,
    applies_ok: u64,
    applies_failed: u64,
    /// Where the sync daemon learns local ids (sync on only).
    sync_index: Option<(tokio::sync::watch::Sender<Arc<SyncIndex>>, padis_model::l4::SyncConfig)>,
}

impl Inner {
    /// Builds the report from the maps and the installed state.
    pub fn report(&self) -> L4Report {
        let maps = &self.balancer.maps;
        let installed: BTreeMap<_, _> = self.programmer.installed().into_iter().collect();
        let slots: BTreeMap<IpAddr, u32> = self.programmer.backend_slots().into_iter().collect();
        let counters: BTreeMap<IpAddr, Count> =
            slots.iter().map(|(a, i)| (*a, stats::backend(maps, *i).unwrap_or_default())).collect();
        let vips = self
            .snapshot
            .state
            .vips
            .iter()
            .zip(self.desired.vips.iter())
            .map(|(v, d)| {
                let inst = installed.get(&d.key);
                let vc = inst.map(|i| stats::vip(maps, i.id).unwrap_or_default()).unwrap_or_default();
                let limited = inst.map(|i| stats::vip_rate_drops(maps, i.id).unwrap_or_default()).unwrap_or_default();
                VipReport {
                    name: v.name.clone(),
                    vip: format!("{}:{}/{}", v.addr, v.port, v.protocol),
                    table_size: inst.map(|i| i.table_size).unwrap_or(0),
                    packets: vc.packets,
                    bytes: vc.bytes,
                    rate_limited: limited.packets,
                    backends: d
                        .backends
                        .iter()
                        .map(|b| {
                            let c = counters.get(&b.addr).copied().unwrap_or_default();
                            BackendReport {
                                addr: b.addr,
                                weight: b.weight,
                                usable: b.usable,
                                in_table: inst.is_some_and(|i| i.in_table.contains(&b.addr)),
                                mac: self
                                    .desired
                                    .macs
                                    .get(&b.addr)
                                    .map(|m| m.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")),
                                packets: c.packets,
                                bytes: c.bytes,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        L4Report {
            enabled: true,
            interfaces: self.attachments.iter().map(|a| (a.iface.clone(), a.mode.to_string())).collect(),
            generation: self.generation,
            last_apply: self.last_apply.clone(),
            last_error: self.last_error.clone(),
            applies_ok: self.applies_ok,
            applies_failed: self.applies_failed,
            vips,
            stats: stats::global(maps).unwrap_or_default().into_iter().collect(),
            sync: None,
            backend_counters: counters.into_iter().collect(),
        }
    }

    /// Programs the maps for the snapshot in force; on error the maps keep their previous (valid) content.
    fn program(&mut self, snap: Arc<Snapshot>, health: &HealthRegistry) {
        let l4 = &snap.state.l4;
        health.sync(HEALTH_OWNER, health_targets(&snap));
        let table = neigh::table();
        let usable = |vip: &str, addr: SocketAddr| {
            health.get(&TargetKey { group: vip.to_string(), addr }).is_none_or(|h| h.is_usable())
        };
        let mut mac = |a: IpAddr| {
            let m = table.get(&a).copied();
            if m.is_none() {
                neigh::solicit(a);
            }
            m
        };
        let mut d = desired::compute(l4, &snap.state.vips, &usable, &mut mac);
        // `[l4.sync]` is read at start: XDP announces new flows only while the daemon started then drains them.
        if let Some((_, started)) = &self.sync_index {
            d.global.flags |= config_flags::SYNC;
            if l4.sync.as_ref() != Some(started) && snap.generation != self.generation {
                tracing::warn!("[l4.sync] changed: the change takes effect at the next restart");
            }
        } else {
            d.global.flags &= !config_flags::SYNC;
            if l4.sync.is_some() && snap.generation != self.generation && self.applies_ok > 0 {
                tracing::warn!("[l4.sync] added: sync starts at the next restart");
            }
        }
        let same = d == self.desired && snap.generation == self.generation && self.last_error.is_none();
        if same && self.applies_ok > 0 {
            return;
        }
        match self.programmer.apply(&mut self.balancer.maps, &d) {
            Ok(rep) => {
                if rep != (ApplyReport { vips_unchanged: rep.vips_unchanged, ..Default::default() }) {
                    tracing::info!(generation = snap.generation, ?rep, "L4 maps programmed");
                }
                self.last_apply = rep;
                self.last_error = None;
                self.applies_ok += 1;
                if let Some((tx, _)) = &self.sync_index {
                    tx.send_replace(Arc::new(SyncIndex::build(&self.programmer, &d)));
                }
            }
            Err(e) => {
                tracing::error!(generation = snap.generation, error = %e, "L4 programming failed");
                self.last_error = Some(e.to_string());
                self.applies_failed += 1;
            }
        }
        self.generation = snap.generation;
        self.desired = d;
        self.snapshot = snap;
    }
}

/// Health targets of all VIPs that have an active check.
pub fn health_targets(snap: &Snapshot) -> Vec<HealthTarget> {
    let l4 = &snap.state.l4;
    snap.state
        .vips
        .iter()
        .filter_map(|v| {
            let p = desired::policy(l4, v);
            let check = p.health.clone()?;
            let port = desired::health_port(l4, v);
            Some(v.backends.iter().map(move |b| HealthTarget {
                key: TargetKey { group: v.name.clone(), addr: SocketAddr::new(b.addr, port) },
                check: Some(check.clone()),
                passive: None,
            }))
        })
        .flatten()
        .collect()
}

impl L4Plane {
    /// Loads, programs and attaches the balancer, then follows snapshots until `shutdown`. Does nothing (Ok)
    /// when `[l4]` lists no interfaces. `[l4]` interfaces, instance and map sizes are read once, here.
    pub async fn start(
        mut reader: SnapshotReader,
        health: HealthRegistry,
        metrics: &prometheus::Registry,
        tickets: Option<Arc<padis_tickets::TicketKeys>>,
        shutdown: CancellationToken,
    ) -> Result<L4Handle, L4Error> {
        let snap = reader.load();
        reader.mark_seen();
        let l4 = snap.state.l4.clone();
        if l4.interfaces.is_empty() {
            // No XDP: the sync channel, if configured, still carries the TLS session ticket keys.
            let sync = match &l4.sync {
                Some(cfg) => {
                    let (_, index) = tokio::sync::watch::channel(Arc::new(SyncIndex::default()));
                    let name = crate::sync::node_name(&l4);
                    Some(SyncHandle::spawn(cfg, &name, None, index, metrics, tickets, shutdown)?)
                }
                None => None,
            };
            return Ok(L4Handle { task: None, sync, inner: None, keep: Default::default() });
        }
        let dir = bpffs::pin_dir(&l4.instance)?;
        let opts = LoadOptions {
            pin_dir: Some(dir.clone()),
            max_flows: l4.max_flows,
            max_vips: l4.max_vips,
            max_backends: l4.max_backends,
            max_sources: l4.max_sources,
        };
        let balancer = Balancer::load(opts.clone())?;
        let programmer = if balancer.reused_pins {
            Programmer::recover(&balancer.maps, opts.max_vips, opts.max_rings(), opts.max_backends)?
        } else {
            Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends)
        };
        let mut inner = Inner {
            balancer,
            programmer,
            attachments: Vec::new(),
            snapshot: snap.clone(),
            desired: Desired::default(),
            generation: 0,
            last_apply: ApplyReport::default(),
            last_error: None,
            applies_ok: 0,
            applies_failed: 0,
            sync_index: None,
        };
        let index_rx = l4.sync.as_ref().map(|cfg| {
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(SyncIndex::default()));
            inner.sync_index = Some((tx, cfg.clone()));
            rx
        });
        inner.program(snap, &health);
        if let Some(e) = &inner.last_error {
            tracing::warn!(error = %e, "starting L4 with a partial programming");
        }
        for iface in &l4.interfaces {
            let generic = l4.xdp_mode == padis_model::l4::XdpMode::Generic;
            let fallback = l4.xdp_mode == padis_model::l4::XdpMode::Auto;
            match inner.balancer.attach(iface, generic, fallback, Some(&dir)) {
                Ok(a) => inner.attachments.push(a),
                Err(e) => {
                    for a in inner.attachments.drain(..) {
                        a.release(false);
                    }
                    return Err(e);
                }
            }
        }
        let sync = match (&l4.sync, index_rx) {
            (Some(cfg), Some(rx)) => match start_sync(&mut inner, cfg, &l4, rx, metrics, tickets, shutdown.clone()) {
                Ok(h) => Some(h),
                Err(e) => {
                    for a in inner.attachments.drain(..) {
                        a.release(false);
                    }
                    return Err(e);
                }
            },
            _ => None,
        };
        let inner = Arc::new(Mutex::new(inner));
        metrics.register(Box::new(crate::metrics::L4Collector::new(inner.clone())))?;
        let shared = inner.clone();
        let keep = Arc::new(std::sync::atomic::AtomicBool::new(l4.keep_attached));
        let keep_flag = keep.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    alive = reader.changed() => if !alive { break },
                    _ = tick.tick() => {}
                }
                let snap = reader.load();
                let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
                g.program(snap, &health);
            }
            let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
            let keep = keep_flag.load(std::sync::atomic::Ordering::Acquire);
            for a in g.attachments.drain(..) {
                a.release(keep);
            }
            tracing::info!(keep_attached = keep, "L4 plane stopped");
        });
        Ok(L4Handle { task: Some(task), sync, inner: Some(inner), keep })
    }
}

/// Starts the sync daemon on handles of its own (the ring, the connection table, the counters).
fn start_sync(
    inner: &mut Inner,
    cfg: &padis_model::l4::SyncConfig,
    l4: &padis_model::l4::L4Config,
    index: tokio::sync::watch::Receiver<Arc<SyncIndex>>,
    metrics: &prometheus::Registry,
    tickets: Option<Arc<padis_tickets::TicketKeys>>,
    shutdown: CancellationToken,
) -> Result<SyncHandle, L4Error> {
    let maps = &mut inner.balancer.maps;
    let ring = maps.sync_ring.take().ok_or(crate::sync::SyncError::NoRing)?;
    let stats = aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(crate::sync::dup(
        aya::maps::IterableMap::map(&maps.stats),
    )?))
    .map_err(crate::sync::SyncError::from)?;
    let sync_maps =
        SyncMaps { ring, conntrack: crate::sync::conntrack_handle(&maps.conntrack)?, stats, max_flows: l4.max_flows };
    Ok(SyncHandle::spawn(cfg, &crate::sync::node_name(l4), Some(sync_maps), index, metrics, tickets, shutdown)?)
}

impl L4Handle {
    /// The stop leaves the program attached through its pinned link (an upgrade: the new process has taken the
    /// link over), whatever `l4.keep_attached` says.
    pub fn keep_attached(&self) {
        self.keep.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Waits until the plane has stopped (after shutdown) and released its interfaces.
    pub async fn wait(self) {
        if let Some(t) = self.task {
            let _ = t.await;
        }
        if let Some(s) = self.sync {
            s.wait().await;
        }
    }

    /// The L4 view: VIPs, backends, health, statistics, sync.
    pub fn report(&self) -> L4Report {
        let mut r = match &self.inner {
            Some(i) => i.lock().unwrap_or_else(|e| e.into_inner()).report(),
            None => L4Report::default(),
        };
        r.sync = self.sync.as_ref().map(SyncHandle::report);
        r
    }
}
