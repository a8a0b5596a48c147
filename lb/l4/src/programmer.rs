//! Programs the maps from a [`Desired`] state: [`crate::plan`] computes the ordered map operations from the
//! installed state (an unchanged VIP gets none; a changed one gets its new Maglev table in a free ring slot,
//! then one update of its `VipMeta` that switches packets to it; the old slot is released last), and
//! [`Programmer::apply`] carries them out. State is recovered from pinned maps after a restart.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use aya::maps::{MapError, PerCpuValues};
use padis_ebpf_common::{
    backend_flags, map_names as n, AclData, BackendInfo, Counters, VipKey, RING_STRIDE, VIP_PORTS_LEN,
};
use serde::Serialize;

use crate::desired::Desired;
use crate::error::map_err;
use crate::loader::Maps;
use crate::plan::{self, AclEntry, BackendSlot, Op, State, VipState};
use crate::L4Error;

pub use crate::plan::ApplyReport;

/// A VIP as installed, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct InstalledVip {
    /// Name.
    pub name: String,
    /// Id (stats index).
    pub id: u32,
    /// Ring slot.
    pub ring: u32,
    /// Table size (0 = no usable backend).
    pub table_size: u32,
    /// Backends in the table.
    pub in_table: Vec<IpAddr>,
}

/// Owner of the installed state (see [`plan::State`]).
pub struct Programmer {
    state: State,
}

fn ip_of(a: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn zero_stats(
    map: &mut aya::maps::PerCpuArray<aya::maps::MapData, Counters>,
    idx: u32,
    name: &'static str,
) -> Result<(), L4Error> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| L4Error::Map { map: name, source: MapError::IoError(e) })?;
    let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
        .map_err(|e| L4Error::Map { map: name, source: MapError::IoError(e) })?;
    map.set(idx, zeros, 0).map_err(map_err(name))
}

/// A removal of something already absent is not an error (a VIP recovered from pins may lack an entry).
fn absent_ok(r: Result<(), MapError>, name: &'static str) -> Result<(), L4Error> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r.map_err(map_err(name)),
    }
}

fn acl_key(vip: u32, e: &AclEntry) -> Key<AclData> {
    Key::new(e.prefix_len, AclData { vip: vip.to_be_bytes(), addr: e.addr })
}

/// Carries out one operation of a plan.
fn dispatch(maps: &mut Maps, op: &Op) -> Result<(), L4Error> {
    match op {
        Op::SetConfig(c) => maps.config.set(0, c, 0).map_err(map_err(n::CONFIG)),
        Op::SetSrcLimit(l) => maps.src_limit.set(0, l, 0).map_err(map_err(n::SRC_LIMIT)),
        Op::ZeroBackendStats(idx) => zero_stats(&mut maps.backend_stats, *idx, n::BACKEND_STATS),
        Op::SetBackend { idx, info } => maps.backends.set(*idx, info, 0).map_err(map_err(n::BACKENDS)),
        Op::ZeroVipStats(id) => {
            zero_stats(&mut maps.vip_stats, *id, n::VIP_STATS)?;
            zero_stats(&mut maps.vip_rate_drops, *id, n::VIP_RATE_DROPS)
        }
        Op::AddAcl { vip, entry } => maps.acl.insert(&acl_key(*vip, entry), 1, 0).map_err(map_err(n::ACL)),
        Op::RemoveAcl { vip, entry } => absent_ok(maps.acl.remove(&acl_key(*vip, entry)), n::ACL),
        Op::WriteRing { ring, backends } => {
            let base = ring * RING_STRIDE;
            for (i, b) in backends.iter().enumerate() {
                maps.rings.set(base + i as u32, b, 0).map_err(map_err(n::RINGS))?;
            }
            Ok(())
        }
        Op::SetVipSlot { id, slot } => maps.vip_by_id.set(*id, slot, 0).map_err(map_err(n::VIP_BY_ID)),
        Op::SetVip { key, meta } => maps.vips.insert(key, meta, 0).map_err(map_err(n::VIPS)),
        Op::RemoveVip(key) => absent_ok(maps.vips.remove(key), n::VIPS),
        Op::ReleaseRing(_) => Ok(()),
        Op::SetVipAddr { addr, count } => maps.vip_addrs.insert(addr, count, 0).map_err(map_err(n::VIP_ADDRS)),
        Op::RemoveVipAddr(addr) => absent_ok(maps.vip_addrs.remove(addr), n::VIP_ADDRS),
        Op::SetPort { port, bits } => maps.vip_ports.set(u32::from(*port), bits, 0).map_err(map_err(n::VIP_PORTS)),
        Op::ClearBackend(idx) => maps.backends.set(*idx, BackendInfo::default(), 0).map_err(map_err(n::BACKENDS)),
    }
}

impl Programmer {
    /// Empty state for freshly created maps of the given capacities.
    pub fn new(max_vips: u32, max_rings: u32, max_backends: u32) -> Programmer {
        Programmer { state: State::new(max_vips, max_rings, max_backends) }
    }

    /// Rebuilds the state from maps that survived a restart (pinned): VIP ids, ring slots and backend slots stay
    /// where they are, so established flows keep their backend. Every recovered VIP's table is rewritten (into a
    /// fresh slot, atomically) at the next `apply`, since the inputs that built it are not stored.
    pub fn recover(maps: &Maps, max_vips: u32, max_rings: u32, max_backends: u32) -> Result<Programmer, L4Error> {
        let mut st = State::new(max_vips, max_rings, max_backends);
        let mut acl: HashMap<u32, BTreeSet<AclEntry>> = HashMap::new();
        for k in maps.acl.keys() {
            let k = k.map_err(map_err(n::ACL))?;
            let data = k.data();
            let entry = AclEntry { prefix_len: k.prefix_len(), addr: data.addr };
            acl.entry(u32::from_be_bytes(data.vip)).or_default().insert(entry);
        }
        for e in maps.vips.iter() {
            let (key, meta) = e.map_err(map_err(n::VIPS))?;
            st.free_ids.remove(&meta.id);
            st.free_rings.retain(|r| *r != meta.ring);
            *st.vip_addrs.entry(key.addr).or_default() += 1;
            let acl = acl.remove(&meta.id).unwrap_or_default();
            st.vips.insert(key, VipState { name: String::new(), meta, inputs: None, acl, in_table: Vec::new() });
        }
        for idx in 0..max_backends.min(maps.backends.len()) {
            let info = maps.backends.get(&idx, 0).map_err(map_err(n::BACKENDS))?;
            if info.flags & backend_flags::ALIVE != 0 {
                st.free_backends.retain(|i| *i != idx);
                st.backends.insert(ip_of(info.addr), BackendSlot { idx, info });
            }
        }
        for port in 0..VIP_PORTS_LEN.min(maps.vip_ports.len()) {
            let bits = maps.vip_ports.get(&port, 0).map_err(map_err(n::VIP_PORTS))?;
            if bits != 0 {
                st.ports.insert(port as u16, bits);
            }
        }
        st.global = maps.config.get(&0, 0).ok();
        st.src_limit = maps.src_limit.get(&0, 0).ok();
        tracing::info!(vips = st.vips.len(), backends = st.backends.len(), "L4 state recovered from pinned maps");
        Ok(Programmer { state: st })
    }

    /// Backend index of `addr`, if it has a slot.
    pub fn backend_index(&self, addr: IpAddr) -> Option<u32> {
        self.state.backends.get(&addr).map(|s| s.idx)
    }

    /// Id of the installed VIP `key`.
    pub fn vip_id(&self, key: &VipKey) -> Option<u32> {
        self.state.vips.get(key).map(|v| v.meta.id)
    }

    /// Installed VIPs (for reports and stats), by key.
    pub fn installed(&self) -> Vec<(VipKey, InstalledVip)> {
        self.state
            .vips
            .iter()
            .map(|(k, v)| {
                let m = v.meta;
                let vip = InstalledVip {
                    name: v.name.clone(),
                    id: m.id,
                    ring: m.ring,
                    table_size: m.table_size,
                    in_table: v.in_table.clone(),
                };
                (*k, vip)
            })
            .collect()
    }

    /// Backends with slots: (address, index).
    pub fn backend_slots(&self) -> Vec<(IpAddr, u32)> {
        self.state.backends.iter().map(|(a, s)| (*a, s.idx)).collect()
    }

    /// Makes the maps hold `d`, touching only what differs: the plan first (nothing changes if it cannot be
    /// made), then its operations in order. If one fails, the maps hold part of the plan: the state becomes the
    /// planned one (its allocations stand) but [distrusted](State::distrusted), so the next apply writes every
    /// value again.
    pub fn apply(&mut self, maps: &mut Maps, d: &Desired) -> Result<ApplyReport, L4Error> {
        let (plan, next) = plan::plan(&self.state, d)?;
        for op in &plan.ops {
            if let Err(e) = dispatch(maps, op) {
                self.state = next.distrusted();
                return Err(e);
            }
        }
        self.state = next;
        Ok(plan.report)
    }
}
