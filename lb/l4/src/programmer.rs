//! Programs the maps from a [`Desired`] state as a diff against what is installed: an unchanged VIP is not
//! rewritten; a changed VIP gets its new Maglev table written into a free ring slot, then one map update of its
//! `VipMeta` switches packets to it (no half-written table is ever visible); the old slot is recycled last.
//! State is recovered from pinned maps after a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use aya::maps::PerCpuValues;
use padis_balance::Maglev;
use padis_ebpf_common::{
    acl_prefix_len, backend_flags, map_names as n, port_flags, vip_flags, AclData, BackendInfo, Counters,
    GlobalConfig, SrcLimitConfig, VipKey, VipMeta, VipSlot, RING_STRIDE, VIP_PORTS_LEN,
};
use serde::Serialize;

use crate::desired::{addr16, Desired, DesiredVip};
use crate::error::map_err;
use crate::loader::Maps;
use crate::L4Error;

/// What one [`Programmer::apply`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    /// VIPs created.
    pub vips_added: usize,
    /// VIPs whose table or flags changed (table swapped).
    pub vips_updated: usize,
    /// VIPs left untouched.
    pub vips_unchanged: usize,
    /// VIPs deleted.
    pub vips_removed: usize,
    /// Backend slots created.
    pub backends_added: usize,
    /// Backend slots released.
    pub backends_removed: usize,
    /// Ring entries written.
    pub ring_entries_written: usize,
}

/// Sorted (identity, weight) list a table is built from, with its size.
/// (The third part is the `naive` scheduler's seed; `None`: Maglev.)
type TableInputs = (u32, Vec<([u8; 16], u32)>, Option<u64>);

#[derive(Debug, Clone)]
struct Installed {
    name: String,
    meta: VipMeta,
    inputs: Option<TableInputs>,
    acl: BTreeSet<(u32, [u8; 16])>,
    /// Backend indexes in the table (for the report).
    in_table: Vec<IpAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    idx: u32,
    info: BackendInfo,
}

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

/// Owner of the installed state and the slot allocators.
pub struct Programmer {
    vips: HashMap<VipKey, Installed>,
    free_ids: BTreeSet<u32>,
    free_rings: VecDeque<u32>,
    backends: BTreeMap<IpAddr, Slot>,
    free_backends: VecDeque<u32>,
    vip_addrs: BTreeMap<[u8; 16], u32>,
    /// `VIP_PORTS` entries as written (non-zero ones).
    ports: BTreeMap<u16, u32>,
    global: Option<GlobalConfig>,
    src_limit: Option<SrcLimitConfig>,
}

/// The `VIP_BY_ID` value of an installed VIP.
fn vip_slot(key: &VipKey, flags: u32) -> VipSlot {
    VipSlot { key: VipKey { pad: 1, ..*key }, flags }
}

/// The `VIP_PORTS` bits one VIP contributes to its port.
fn port_bits(key: &VipKey, flags: u32) -> u32 {
    let (any, src_only) = port_flags::of(key.proto);
    any | if flags & vip_flags::HASH_SRC_ONLY != 0 { src_only } else { 0 }
}

fn ip_of(a: [u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn zero_stats(map: &mut aya::maps::PerCpuArray<aya::maps::MapData, Counters>, idx: u32, name: &'static str) -> Result<(), L4Error> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| L4Error::Map { map: name, source: aya::maps::MapError::IoError(e) })?;
    let zeros = PerCpuValues::try_from(vec![Counters::default(); cpus])
        .map_err(|e| L4Error::Map { map: name, source: aya::maps::MapError::IoError(e) })?;
    map.set(idx, zeros, 0).map_err(map_err(name))
}

impl Programmer {
    /// Empty state for freshly created maps of the given capacities.
    pub fn new(max_vips: u32, max_rings: u32, max_backends: u32) -> Programmer {
        Programmer {
            vips: HashMap::new(),
            free_ids: (0..max_vips).collect(),
            free_rings: (0..max_rings).collect(),
            backends: BTreeMap::new(),
            free_backends: (0..max_backends).collect(),
            vip_addrs: BTreeMap::new(),
            ports: BTreeMap::new(),
            global: None,
            src_limit: None,
        }
    }

    /// Rebuilds the state from maps that survived a restart (pinned): VIP ids, ring slots and backend slots stay
    /// where they are, so established flows keep their backend. Every recovered VIP's table is rewritten (into a
    /// fresh slot, atomically) at the next `apply`, since the inputs that built it are not stored.
    pub fn recover(maps: &Maps, max_vips: u32, max_rings: u32, max_backends: u32) -> Result<Programmer, L4Error> {
        let mut p = Programmer::new(max_vips, max_rings, max_backends);
        let mut acl: HashMap<u32, BTreeSet<(u32, [u8; 16])>> = HashMap::new();
        for k in maps.acl.keys() {
            let k = k.map_err(map_err(n::ACL))?;
            let data = k.data();
            acl.entry(u32::from_be_bytes(data.vip)).or_default().insert((k.prefix_len(), data.addr));
        }
        for e in maps.vips.iter() {
            let (key, meta) = e.map_err(map_err(n::VIPS))?;
            p.free_ids.remove(&meta.id);
            p.free_rings.retain(|r| *r != meta.ring);
            *p.vip_addrs.entry(key.addr).or_default() += 1;
            let installed = Installed {
                name: String::new(),
                meta,
                inputs: None,
                acl: acl.remove(&meta.id).unwrap_or_default(),
                in_table: Vec::new(),
            };
            p.vips.insert(key, installed);
        }
        for idx in 0..max_backends.min(maps.backends.len()) {
            let info = maps.backends.get(&idx, 0).map_err(map_err(n::BACKENDS))?;
            if info.flags & backend_flags::ALIVE != 0 {
                p.free_backends.retain(|i| *i != idx);
                p.backends.insert(ip_of(info.addr), Slot { idx, info });
            }
        }
        for port in 0..VIP_PORTS_LEN.min(maps.vip_ports.len()) {
            let bits = maps.vip_ports.get(&port, 0).map_err(map_err(n::VIP_PORTS))?;
            if bits != 0 {
                p.ports.insert(port as u16, bits);
            }
        }
        p.global = maps.config.get(&0, 0).ok();
        p.src_limit = maps.src_limit.get(&0, 0).ok();
        tracing::info!(vips = p.vips.len(), backends = p.backends.len(), "L4 state recovered from pinned maps");
        Ok(p)
    }

    /// Backend index of `addr`, if it has a slot.
    pub fn backend_index(&self, addr: IpAddr) -> Option<u32> {
        self.backends.get(&addr).map(|s| s.idx)
    }

    /// Id of the installed VIP `key`.
    pub fn vip_id(&self, key: &VipKey) -> Option<u32> {
        self.vips.get(key).map(|v| v.meta.id)
    }

    /// Installed VIPs (for reports and stats), by key.
    pub fn installed(&self) -> Vec<(VipKey, InstalledVip)> {
        self.vips
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    InstalledVip {
                        name: v.name.clone(),
                        id: v.meta.id,
                        ring: v.meta.ring,
                        table_size: v.meta.table_size,
                        in_table: v.in_table.clone(),
                    },
                )
            })
            .collect()
    }

    /// Backends with slots: (address, index).
    pub fn backend_slots(&self) -> Vec<(IpAddr, u32)> {
        self.backends.iter().map(|(a, s)| (*a, s.idx)).collect()
    }

    /// Makes the maps hold `d`, touching only what differs.
    pub fn apply(&mut self, maps: &mut Maps, d: &Desired) -> Result<ApplyReport, L4Error> {
        let mut rep = ApplyReport::default();
        if self.global != Some(d.global) {
            maps.config.set(0, d.global, 0).map_err(map_err(n::CONFIG))?;
            self.global = Some(d.global);
        }
        if self.src_limit != Some(d.src_limit) {
            maps.src_limit.set(0, d.src_limit, 0).map_err(map_err(n::SRC_LIMIT))?;
            self.src_limit = Some(d.src_limit);
        }
        // 1. Backend slots for every wanted backend (new ones first, so tables can point at them).
        let wanted: BTreeSet<IpAddr> = d.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.addr)).collect();
        for &addr in &wanted {
            let prev = self.backends.get(&addr).copied();
            // A MAC once known sticks until a new one is learnt.
            let mac = d.macs.get(&addr).copied().or(prev.map(|s| s.info.mac)).unwrap_or_default();
            let info = BackendInfo {
                addr: addr16(addr),
                mac,
                flags: backend_flags::ALIVE | if addr.is_ipv6() { backend_flags::V6 } else { 0 },
                pad: 0,
            };
            let idx = match prev {
                Some(s) if s.info == info => continue,
                Some(s) => s.idx,
                None => {
                    let idx = self.free_backends.pop_front().ok_or(L4Error::Capacity("backend slots"))?;
                    zero_stats(&mut maps.backend_stats, idx, n::BACKEND_STATS)?;
                    rep.backends_added += 1;
                    idx
                }
            };
            maps.backends.set(idx, info, 0).map_err(map_err(n::BACKENDS))?;
            self.backends.insert(addr, Slot { idx, info });
        }
        // 2. VIPs: new and changed ones.
        let mut keep = BTreeSet::new();
        for v in &d.vips {
            keep.insert(v.key);
            self.apply_vip(maps, v, d.naive_seed, &mut rep)?;
        }
        // 3. VIPs gone.
        let gone: Vec<VipKey> = self.vips.keys().filter(|k| !keep.contains(*k)).copied().collect();
        for key in gone {
            let Some(inst) = self.vips.remove(&key) else { continue };
            match maps.vips.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(n::VIPS)(e)),
            }
            // Its connection entries no longer match the slot: they stop forwarding (and the id may be reused).
            maps.vip_by_id.set(inst.meta.id, VipSlot::default(), 0).map_err(map_err(n::VIP_BY_ID))?;
            for (plen, addr) in &inst.acl {
                let _ = maps.acl.remove(&Key::new(*plen, AclData { vip: inst.meta.id.to_be_bytes(), addr: *addr }));
            }
            self.free_rings.push_back(inst.meta.ring);
            self.free_ids.insert(inst.meta.id);
            rep.vips_removed += 1;
        }
        // 4. VIP addresses (the program's first filter).
        let mut counts: BTreeMap<[u8; 16], u32> = BTreeMap::new();
        for k in self.vips.keys() {
            *counts.entry(k.addr).or_default() += 1;
        }
        for (a, c) in &counts {
            if self.vip_addrs.get(a) != Some(c) {
                maps.vip_addrs.insert(a, c, 0).map_err(map_err(n::VIP_ADDRS))?;
            }
        }
        for a in self.vip_addrs.keys().filter(|a| !counts.contains_key(*a)) {
            let _ = maps.vip_addrs.remove(a);
        }
        self.vip_addrs = counts;
        // 4b. Ports carrying VIPs (the program's array prefilter, and which ones need the VIP before the
        // connection lookup).
        let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
        for (k, v) in &self.vips {
            *ports.entry(u16::from_be(k.port)).or_default() |= port_bits(k, v.meta.flags);
        }
        for (port, bits) in &ports {
            if self.ports.get(port) != Some(bits) {
                maps.vip_ports.set(u32::from(*port), *bits, 0).map_err(map_err(n::VIP_PORTS))?;
            }
        }
        for port in self.ports.keys().filter(|p| !ports.contains_key(*p)) {
            maps.vip_ports.set(u32::from(*port), 0, 0).map_err(map_err(n::VIP_PORTS))?;
        }
        self.ports = ports;
        // 5. Backend slots no VIP wants: marked dead (established flows re-balance), recycled last-in-last-out.
        let dead: Vec<IpAddr> = self.backends.keys().filter(|a| !wanted.contains(*a)).copied().collect();
        for addr in dead {
            if let Some(s) = self.backends.remove(&addr) {
                maps.backends.set(s.idx, BackendInfo::default(), 0).map_err(map_err(n::BACKENDS))?;
                self.free_backends.push_back(s.idx);
                rep.backends_removed += 1;
            }
        }
        Ok(rep)
    }

    fn apply_vip(
        &mut self,
        maps: &mut Maps,
        v: &DesiredVip,
        d_naive: Option<u64>,
        rep: &mut ApplyReport,
    ) -> Result<(), L4Error> {
        let ipip = v.flags & vip_flags::IPIP != 0;
        let mut members: Vec<([u8; 16], u32, IpAddr)> = v
            .backends
            .iter()
            .filter(|b| b.usable && b.weight > 0)
            .filter_map(|b| {
                let s = self.backends.get(&b.addr)?;
                (ipip || s.info.mac != [0; 6]).then_some((addr16(b.addr), b.weight, b.addr))
            })
            .collect();
        members.sort();
        let inputs: TableInputs = (v.table_size, members.iter().map(|(a, w, _)| (*a, *w)).collect(), d_naive);
        let prev = self.vips.get(&v.key).cloned();
        let id = match &prev {
            Some(p) => p.meta.id,
            None => {
                let id = self.free_ids.pop_first().ok_or(L4Error::Capacity("VIP ids"))?;
                zero_stats(&mut maps.vip_stats, id, n::VIP_STATS)?;
                zero_stats(&mut maps.vip_rate_drops, id, n::VIP_RATE_DROPS)?;
                id
            }
        };
        // ACL entries: add before the flip, remove stale after.
        let acl: BTreeSet<(u32, [u8; 16])> = v
            .allow
            .iter()
            .map(|net| {
                let extra = if net.addr().is_ipv4() { 96 } else { 0 };
                (acl_prefix_len(net.prefix_len() as u32 + extra), addr16(net.network()))
            })
            .collect();
        let old_acl = prev.as_ref().map(|p| p.acl.clone()).unwrap_or_default();
        for (plen, addr) in acl.difference(&old_acl) {
            let k = Key::new(*plen, AclData { vip: id.to_be_bytes(), addr: *addr });
            maps.acl.insert(&k, 1, 0).map_err(map_err(n::ACL))?;
        }
        let unchanged = prev.as_ref().is_some_and(|p| p.inputs.as_ref() == Some(&inputs) && p.meta.flags == v.flags);
        let mut meta = prev.as_ref().map(|p| p.meta).unwrap_or(VipMeta { id, flags: v.flags, ring: u32::MAX, table_size: 0 });
        if unchanged {
            rep.vips_unchanged += 1;
        } else {
            let old_ring = prev.as_ref().map(|p| p.meta.ring);
            if members.is_empty() {
                meta.table_size = 0;
                if meta.ring == u32::MAX {
                    meta.ring = self.free_rings.pop_front().ok_or(L4Error::Capacity("ring slots"))?;
                }
            } else {
                let table = match inputs.2 {
                    None => Maglev::new(&inputs.1, v.table_size as usize)
                        .map_err(|source| L4Error::Maglev { vip: v.name.clone(), source })?
                        .table()
                        .to_vec(),
                    Some(seed) => crate::naive::table(&inputs.1, v.table_size as usize, seed),
                };
                let ring = self.free_rings.pop_front().ok_or(L4Error::Capacity("ring slots"))?;
                let base = ring * RING_STRIDE;
                for (i, m) in table.iter().enumerate() {
                    let Some(&(_, _, addr)) = members.get(*m as usize) else { continue };
                    let Some(slot) = self.backends.get(&addr) else { continue };
                    maps.rings.set(base + i as u32, slot.idx, 0).map_err(map_err(n::RINGS))?;
                }
                rep.ring_entries_written += table.len();
                meta.ring = ring;
                meta.table_size = v.table_size;
            }
            meta.flags = v.flags;
            meta.id = id;
            // What connection-table hits check (written before the VIP can create entries).
            maps.vip_by_id.set(id, vip_slot(&v.key, v.flags), 0).map_err(map_err(n::VIP_BY_ID))?;
            // The switch: one update of the VIP's value.
            maps.vips.insert(v.key, meta, 0).map_err(map_err(n::VIPS))?;
            if let Some(old) = old_ring.filter(|r| *r != meta.ring && *r != u32::MAX) {
                self.free_rings.push_back(old);
            }
            if prev.is_some() {
                rep.vips_updated += 1;
            } else {
                rep.vips_added += 1;
            }
        }
        for (plen, addr) in old_acl.difference(&acl) {
            let _ = maps.acl.remove(&Key::new(*plen, AclData { vip: id.to_be_bytes(), addr: *addr }));
        }
        self.vips.insert(
            v.key,
            Installed {
                name: v.name.clone(),
                meta,
                inputs: Some(inputs),
                acl,
                in_table: members.iter().map(|(_, _, a)| *a).collect(),
            },
        );
        Ok(())
    }
}
