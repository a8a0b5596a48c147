//! The programming plan: from the installed state and a [`Desired`] one, the ordered list of map operations that
//! turns one into the other, and the state after them — computed without touching any map (as sozu's
//! `ConfigState::diff` produces the requests that its `dispatch` applies). [`crate::programmer`] applies it.
//!
//! The order is what keeps packets correct while the maps change; [`plan`] emits, in this order:
//! 1. global settings (`CONFIG`, `SRC_LIMIT`);
//! 2. backend slots of every wanted backend (a table may only point at a written slot);
//! 3. per VIP: counters zeroed for a new id, new ACL entries (before the VIP can take packets under them), its
//!    Maglev table into a free ring slot, `VIP_BY_ID` (what connection-table hits check) before `VIPS` (the one
//!    update that switches packets to the new table), then its stale ACL entries, then the old ring released;
//! 4. VIPs gone: `VIPS` entry, `VIP_BY_ID` slot, ACL entries, ring released;
//! 5. `VIP_ADDRS` and `VIP_PORTS` (the program's prefilters);
//! 6. backend slots no VIP wants (cleared last: established flows re-balance).
//!
//! A released ring goes to the back of the free queue: it is rewritten only after every other free slot was
//! used once, so packets still reading it (a switch is not a barrier) see the old table. Unchanged things get no
//! operation at all.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use padis_balance::Maglev;
use padis_ebpf_common::{
    acl_prefix_len, backend_flags, port_flags, vip_flags, BackendInfo, GlobalConfig, SrcLimitConfig, VipKey, VipMeta,
    VipSlot,
};
use serde::Serialize;

use crate::desired::{addr16, Desired, DesiredVip};
use crate::L4Error;

/// One `ACL` entry of a VIP: key prefix length (VIP id bits included) and the source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AclEntry {
    /// Prefix length of the trie key ([`acl_prefix_len`]).
    pub prefix_len: u32,
    /// The network (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
}

/// One map operation (or, for [`Op::ReleaseRing`], the point from which a ring slot may be reused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `CONFIG[0] = config`.
    SetConfig(GlobalConfig),
    /// `SRC_LIMIT[0] = limit`.
    SetSrcLimit(SrcLimitConfig),
    /// `BACKEND_STATS[idx]` zeroed (a new backend in a recycled slot).
    ZeroBackendStats(u32),
    /// `BACKENDS[idx] = info`.
    SetBackend {
        /// Slot.
        idx: u32,
        /// Value.
        info: BackendInfo,
    },
    /// `VIP_STATS[id]` and `VIP_RATE_DROPS[id]` zeroed (a new VIP in a recycled id).
    ZeroVipStats(u32),
    /// `ACL` entry added for VIP `vip`.
    AddAcl {
        /// VIP id.
        vip: u32,
        /// The entry.
        entry: AclEntry,
    },
    /// `ACL` entry of VIP `vip` removed.
    RemoveAcl {
        /// VIP id.
        vip: u32,
        /// The entry.
        entry: AclEntry,
    },
    /// `RINGS[ring * RING_STRIDE + i] = backends[i]`: a Maglev table (backend slot per table position).
    WriteRing {
        /// Ring slot.
        ring: u32,
        /// Backend slot of each table position.
        backends: Vec<u32>,
    },
    /// `VIP_BY_ID[id] = slot` (all zero: no VIP has the id).
    SetVipSlot {
        /// VIP id.
        id: u32,
        /// Value.
        slot: VipSlot,
    },
    /// `VIPS[key] = meta`: the switch of a VIP to its table.
    SetVip {
        /// The VIP.
        key: VipKey,
        /// Value.
        meta: VipMeta,
    },
    /// `VIPS[key]` removed.
    RemoveVip(VipKey),
    /// Ring slot `ring` no longer read by new packets; reusable by a later plan (no map write).
    ReleaseRing(u32),
    /// `VIP_ADDRS[addr] = count` (VIPs on the address).
    SetVipAddr {
        /// Address.
        addr: [u8; 16],
        /// Number of VIPs on it.
        count: u32,
    },
    /// `VIP_ADDRS[addr]` removed.
    RemoveVipAddr([u8; 16]),
    /// `VIP_PORTS[port] = bits` (0: no VIP on the port).
    SetPort {
        /// Port, host order.
        port: u16,
        /// `port_flags::*`.
        bits: u32,
    },
    /// `BACKENDS[idx]` cleared (not alive: its flows re-balance).
    ClearBackend(u32),
}

/// What one plan changes, in numbers.
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

/// What a VIP's table was built from: equal inputs give the same table, so the table is not rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInputs {
    /// Table size (a prime).
    pub size: u32,
    /// Usable members: (address, weight), sorted.
    pub members: Vec<([u8; 16], u32)>,
    /// The `naive` scheduler's seed; `None`: Maglev.
    pub naive_seed: Option<u64>,
}

/// A VIP as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipState {
    /// Name (empty for a VIP recovered from pinned maps until it is programmed again).
    pub name: String,
    /// Its `VIPS` value (id, flags, ring slot, table size).
    pub meta: VipMeta,
    /// What its table was built from; `None`: unknown (recovered from pins): rewritten at the next plan.
    pub inputs: Option<TableInputs>,
    /// Its ACL entries.
    pub acl: BTreeSet<AclEntry>,
    /// Backends in its table (for reports).
    pub in_table: Vec<IpAddr>,
}

/// A backend's slot as installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendSlot {
    /// Index in `BACKENDS`.
    pub idx: u32,
    /// Value written there.
    pub info: BackendInfo,
}

/// Everything the maps hold, as far as programming goes, and the free slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Installed VIPs.
    pub vips: BTreeMap<VipKey, VipState>,
    /// Free VIP ids (lowest first).
    pub free_ids: BTreeSet<u32>,
    /// Free ring slots (released ones at the back).
    pub free_rings: VecDeque<u32>,
    /// Backends with a slot.
    pub backends: BTreeMap<IpAddr, BackendSlot>,
    /// Free backend slots (released ones at the back).
    pub free_backends: VecDeque<u32>,
    /// `VIP_ADDRS` as written.
    pub vip_addrs: BTreeMap<[u8; 16], u32>,
    /// Non-zero `VIP_PORTS` entries as written.
    pub ports: BTreeMap<u16, u32>,
    /// `CONFIG[0]` as written.
    pub global: Option<GlobalConfig>,
    /// `SRC_LIMIT[0]` as written.
    pub src_limit: Option<SrcLimitConfig>,
}

impl State {
    /// Empty maps of the given capacities.
    pub fn new(max_vips: u32, max_rings: u32, max_backends: u32) -> State {
        State {
            vips: BTreeMap::new(),
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

    /// The same state, trusted for what exists but not for what the values are: after a failed apply (some
    /// operations of the plan may not have happened), every value is written again by the next plan.
    pub fn distrusted(mut self) -> State {
        self.global = None;
        self.src_limit = None;
        for v in self.vips.values_mut() {
            v.inputs = None;
        }
        for b in self.backends.values_mut() {
            b.info.flags = 0;
        }
        for c in self.vip_addrs.values_mut() {
            *c = 0;
        }
        for bits in self.ports.values_mut() {
            *bits = 0;
        }
        self
    }
}

/// An ordered list of operations and what they change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The operations, in the order they must be applied.
    pub ops: Vec<Op>,
    /// Counts for the report.
    pub report: ApplyReport,
}

/// The `VIP_BY_ID` value of an installed VIP (`pad` = 1: in use).
pub fn vip_slot(key: &VipKey, flags: u32) -> VipSlot {
    VipSlot { key: VipKey { pad: 1, ..*key }, flags }
}

/// The `VIP_PORTS` bits one VIP contributes to its port.
fn port_bits(key: &VipKey, flags: u32) -> u32 {
    let (any, src_only) = port_flags::of(key.proto);
    any | if flags & vip_flags::HASH_SRC_ONLY != 0 { src_only } else { 0 }
}

/// The `ACL` entries of a VIP's allowed prefixes.
fn acl_entries(v: &DesiredVip) -> BTreeSet<AclEntry> {
    v.allow
        .iter()
        .map(|net| {
            let extra = if net.addr().is_ipv4() { 96 } else { 0 };
            AclEntry { prefix_len: acl_prefix_len(u32::from(net.prefix_len()) + extra), addr: addr16(net.network()) }
        })
        .collect()
}

/// The plan from `state` to `d`, and the state after it. Fails (changing nothing) when ids, ring slots or
/// backend slots run out, or a table cannot be built.
pub fn plan(state: &State, d: &Desired) -> Result<(Plan, State), L4Error> {
    let mut p = Planner { next: state.clone(), out: Plan::default() };
    p.settings(d);
    let wanted = p.backends(d)?;
    for v in &d.vips {
        p.vip(v, d.naive_seed)?;
    }
    let keep: BTreeSet<VipKey> = d.vips.iter().map(|v| v.key).collect();
    p.remove_vips(&keep);
    p.prefilters();
    p.remove_backends(&wanted);
    Ok((p.out, p.next))
}

/// A plan being built over the state it leads to.
struct Planner {
    next: State,
    out: Plan,
}

impl Planner {
    fn push(&mut self, op: Op) {
        self.out.ops.push(op);
    }

    fn settings(&mut self, d: &Desired) {
        if self.next.global != Some(d.global) {
            self.push(Op::SetConfig(d.global));
            self.next.global = Some(d.global);
        }
        if self.next.src_limit != Some(d.src_limit) {
            self.push(Op::SetSrcLimit(d.src_limit));
            self.next.src_limit = Some(d.src_limit);
        }
    }

    /// Slots for every wanted backend; returns the wanted set.
    fn backends(&mut self, d: &Desired) -> Result<BTreeSet<IpAddr>, L4Error> {
        let wanted: BTreeSet<IpAddr> = d.vips.iter().flat_map(|v| v.backends.iter().map(|b| b.addr)).collect();
        for &addr in &wanted {
            let prev = self.next.backends.get(&addr).copied();
            // A MAC once known sticks until a new one is learnt.
            let mac = d.macs.get(&addr).copied().or(prev.map(|s| s.info.mac)).unwrap_or_default();
            let v6 = if addr.is_ipv6() { backend_flags::V6 } else { 0 };
            let info = BackendInfo { addr: addr16(addr), mac, flags: backend_flags::ALIVE | v6, pad: 0 };
            let idx = match prev {
                Some(s) if s.info == info => continue,
                Some(s) => s.idx,
                None => {
                    let idx = self.next.free_backends.pop_front().ok_or(L4Error::Capacity("backend slots"))?;
                    self.push(Op::ZeroBackendStats(idx));
                    self.out.report.backends_added += 1;
                    idx
                }
            };
            self.push(Op::SetBackend { idx, info });
            self.next.backends.insert(addr, BackendSlot { idx, info });
        }
        Ok(wanted)
    }

    /// The usable members of `v`'s table: (address, weight, address) sorted, only backends that have a slot and,
    /// for DSR, a MAC.
    fn members(&self, v: &DesiredVip) -> Vec<([u8; 16], u32, IpAddr)> {
        let ipip = v.flags & vip_flags::IPIP != 0;
        let mut members: Vec<_> = v
            .backends
            .iter()
            .filter(|b| b.usable && b.weight > 0)
            .filter_map(|b| {
                let s = self.next.backends.get(&b.addr)?;
                (ipip || s.info.mac != [0; 6]).then_some((addr16(b.addr), b.weight, b.addr))
            })
            .collect();
        members.sort();
        members
    }

    /// One wanted VIP: new, changed or unchanged.
    fn vip(&mut self, v: &DesiredVip, naive_seed: Option<u64>) -> Result<(), L4Error> {
        let members = self.members(v);
        let inputs =
            TableInputs { size: v.table_size, members: members.iter().map(|(a, w, _)| (*a, *w)).collect(), naive_seed };
        let prev = self.next.vips.get(&v.key).cloned();
        let acl = acl_entries(v);
        let (id, old_acl) = match &prev {
            Some(p) => (p.meta.id, p.acl.clone()),
            None => {
                let id = self.next.free_ids.pop_first().ok_or(L4Error::Capacity("VIP ids"))?;
                self.push(Op::ZeroVipStats(id));
                (id, BTreeSet::new())
            }
        };
        for entry in acl.difference(&old_acl) {
            self.push(Op::AddAcl { vip: id, entry: *entry });
        }
        let meta = match &prev {
            Some(p) if p.inputs.as_ref() == Some(&inputs) && p.meta.flags == v.flags => {
                self.out.report.vips_unchanged += 1;
                p.meta
            }
            _ => {
                let meta = self.switch(v, id, prev.as_ref().map(|p| p.meta), &inputs, &members)?;
                if prev.is_some() {
                    self.out.report.vips_updated += 1;
                } else {
                    self.out.report.vips_added += 1;
                }
                meta
            }
        };
        for entry in old_acl.difference(&acl) {
            self.push(Op::RemoveAcl { vip: id, entry: *entry });
        }
        let in_table = members.iter().map(|(_, _, a)| *a).collect();
        self.next.vips.insert(v.key, VipState { name: v.name.clone(), meta, inputs: Some(inputs), acl, in_table });
        Ok(())
    }

    /// A new or changed VIP: its table in a fresh ring slot (none written when no member is usable: the VIP
    /// keeps a ring slot with table size 0), `VIP_BY_ID`, the switch, the old slot released.
    fn switch(
        &mut self,
        v: &DesiredVip,
        id: u32,
        prev: Option<VipMeta>,
        inputs: &TableInputs,
        members: &[([u8; 16], u32, IpAddr)],
    ) -> Result<VipMeta, L4Error> {
        let (ring, table_size) = match (members.is_empty(), prev) {
            (true, Some(p)) => (p.ring, 0),
            (true, None) => (self.next.free_rings.pop_front().ok_or(L4Error::Capacity("ring slots"))?, 0),
            (false, _) => {
                let table = match inputs.naive_seed {
                    None => Maglev::new(&inputs.members, v.table_size as usize)
                        .map_err(|source| L4Error::Maglev { vip: v.name.clone(), source })?
                        .table()
                        .to_vec(),
                    Some(seed) => crate::naive::table(&inputs.members, v.table_size as usize, seed),
                };
                let slots: Vec<u32> = members.iter().map(|(_, _, a)| self.next.backends[a].idx).collect();
                let backends: Vec<u32> = table.iter().map(|m| slots[*m as usize]).collect();
                let ring = self.next.free_rings.pop_front().ok_or(L4Error::Capacity("ring slots"))?;
                self.out.report.ring_entries_written += backends.len();
                self.push(Op::WriteRing { ring, backends });
                (ring, v.table_size)
            }
        };
        let meta = VipMeta { id, flags: v.flags, ring, table_size };
        // What connection-table hits check, written before the VIP can create entries.
        self.push(Op::SetVipSlot { id, slot: vip_slot(&v.key, v.flags) });
        self.push(Op::SetVip { key: v.key, meta });
        if let Some(old) = prev.map(|p| p.ring).filter(|r| *r != ring) {
            self.release_ring(old);
        }
        Ok(meta)
    }

    fn release_ring(&mut self, ring: u32) {
        self.push(Op::ReleaseRing(ring));
        self.next.free_rings.push_back(ring);
    }

    /// VIPs not in `keep`: switched off first, then their id's slot and ACL entries, their ring released.
    fn remove_vips(&mut self, keep: &BTreeSet<VipKey>) {
        let gone: Vec<VipKey> = self.next.vips.keys().filter(|k| !keep.contains(*k)).copied().collect();
        for key in gone {
            let Some(v) = self.next.vips.remove(&key) else { continue };
            let id = v.meta.id;
            self.push(Op::RemoveVip(key));
            // Its connection entries no longer match the slot: they stop forwarding (and the id may be reused).
            self.push(Op::SetVipSlot { id, slot: VipSlot::default() });
            for entry in &v.acl {
                self.push(Op::RemoveAcl { vip: id, entry: *entry });
            }
            self.release_ring(v.meta.ring);
            self.next.free_ids.insert(id);
            self.out.report.vips_removed += 1;
        }
    }

    /// `VIP_ADDRS` (VIPs per address) and `VIP_PORTS` (protocols per port) from the installed VIPs.
    fn prefilters(&mut self) {
        let mut addrs: BTreeMap<[u8; 16], u32> = BTreeMap::new();
        let mut ports: BTreeMap<u16, u32> = BTreeMap::new();
        for (k, v) in &self.next.vips {
            *addrs.entry(k.addr).or_default() += 1;
            *ports.entry(u16::from_be(k.port)).or_default() |= port_bits(k, v.meta.flags);
        }
        let old_addrs = std::mem::take(&mut self.next.vip_addrs);
        for (&addr, &count) in &addrs {
            if old_addrs.get(&addr) != Some(&count) {
                self.push(Op::SetVipAddr { addr, count });
            }
        }
        for addr in old_addrs.keys().filter(|a| !addrs.contains_key(*a)) {
            self.push(Op::RemoveVipAddr(*addr));
        }
        let old_ports = std::mem::take(&mut self.next.ports);
        for (&port, &bits) in &ports {
            if old_ports.get(&port) != Some(&bits) {
                self.push(Op::SetPort { port, bits });
            }
        }
        for port in old_ports.keys().filter(|p| !ports.contains_key(*p)) {
            self.push(Op::SetPort { port: *port, bits: 0 });
        }
        self.next.vip_addrs = addrs;
        self.next.ports = ports;
    }

    /// Backend slots no VIP wants: cleared (established flows re-balance), recycled last-in-last-out.
    fn remove_backends(&mut self, wanted: &BTreeSet<IpAddr>) {
        let dead: Vec<IpAddr> = self.next.backends.keys().filter(|a| !wanted.contains(*a)).copied().collect();
        for addr in dead {
            if let Some(s) = self.next.backends.remove(&addr) {
                self.push(Op::ClearBackend(s.idx));
                self.next.free_backends.push_back(s.idx);
                self.out.report.backends_removed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use padis_ebpf_common::{vip_flags, GlobalConfig, VipKey};

    use super::{plan, AclEntry, Op, State};
    use crate::desired::{addr16, Desired, DesiredBackend, DesiredVip};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn key(last: u8, port: u16) -> VipKey {
        VipKey { addr: addr16(ip(&format!("192.0.2.{last}"))), port: port.to_be(), proto: 6, pad: 0 }
    }

    fn vip(name: &str, key: VipKey, backends: &[&str]) -> DesiredVip {
        DesiredVip {
            name: name.into(),
            key,
            flags: 0,
            table_size: 101,
            backends: backends.iter().map(|b| DesiredBackend { addr: ip(b), weight: 1, usable: true }).collect(),
            allow: Vec::new(),
        }
    }

    fn desired(vips: Vec<DesiredVip>) -> Desired {
        let macs = vips.iter().flat_map(|v| v.backends.iter().map(|b| (b.addr, [2, 0, 0, 0, 0, 1]))).collect();
        Desired { vips, global: GlobalConfig { mtu: 1500, ..Default::default() }, macs, ..Default::default() }
    }

    /// Index of the first op matching `f`.
    fn at(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).unwrap_or_else(|| panic!("no such op in {ops:#?}"))
    }

    #[test]
    fn a_new_vip_is_written_in_order() {
        let d = desired(vec![vip("web", key(1, 80), &["10.0.0.1", "10.0.0.2"])]);
        let (p, next) = plan(&State::new(4, 8, 16), &d).unwrap();
        let ops = &p.ops;
        assert!(matches!(ops[0], Op::SetConfig(_)));
        let backend = at(ops, |o| matches!(o, Op::SetBackend { .. }));
        let ring = at(ops, |o| matches!(o, Op::WriteRing { .. }));
        let slot = at(ops, |o| matches!(o, Op::SetVipSlot { .. }));
        let switch = at(ops, |o| matches!(o, Op::SetVip { .. }));
        let port = at(ops, |o| matches!(o, Op::SetPort { port: 80, .. }));
        assert!(backend < ring && ring < slot && slot < switch && switch < port, "{ops:#?}");
        let Op::WriteRing { ring: r, backends } = &ops[ring] else { unreachable!() };
        assert_eq!(backends.len(), 101);
        assert!(backends.iter().all(|b| *b < 2), "table points at the two written slots");
        assert_eq!(next.vips[&key(1, 80)].meta.ring, *r);
        assert_eq!((p.report.vips_added, p.report.backends_added, p.report.ring_entries_written), (1, 2, 101));
    }

    #[test]
    fn the_same_desired_state_plans_nothing() {
        let d = desired(vec![vip("web", key(1, 80), &["10.0.0.1"]), vip("dns", key(1, 53), &["10.0.0.2"])]);
        let (_, next) = plan(&State::new(4, 8, 16), &d).unwrap();
        let (p, again) = plan(&next, &d).unwrap();
        assert_eq!(p.ops, Vec::<Op>::new());
        assert_eq!(p.report.vips_unchanged, 2);
        assert_eq!(again, next);
    }

    #[test]
    fn a_changed_vip_gets_a_new_ring_switched_then_the_old_one_released() {
        let before = desired(vec![vip("web", key(1, 80), &["10.0.0.1"]), vip("dns", key(1, 53), &["10.0.0.9"])]);
        let (_, state) = plan(&State::new(4, 8, 16), &before).unwrap();
        let old_ring = state.vips[&key(1, 80)].meta.ring;
        let after = desired(vec![vip("web", key(1, 80), &["10.0.0.1", "10.0.0.2"]), before.vips[1].clone()]);
        let (p, next) = plan(&state, &after).unwrap();
        // Only the new backend and web's table: dns and the prefilters are untouched.
        let kinds: Vec<&str> = p
            .ops
            .iter()
            .map(|o| match o {
                Op::ZeroBackendStats(_) => "zero_backend",
                Op::SetBackend { .. } => "backend",
                Op::WriteRing { .. } => "ring",
                Op::SetVipSlot { .. } => "vip_slot",
                Op::SetVip { .. } => "switch",
                Op::ReleaseRing(_) => "release",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["zero_backend", "backend", "ring", "vip_slot", "switch", "release"]);
        assert_eq!(p.ops[5], Op::ReleaseRing(old_ring));
        assert_ne!(next.vips[&key(1, 80)].meta.ring, old_ring);
        assert_eq!(next.free_rings.back(), Some(&old_ring), "released ring reused last");
        assert_eq!((p.report.vips_updated, p.report.vips_unchanged), (1, 1));
    }

    #[test]
    fn acl_entries_are_added_before_the_switch_and_removed_after() {
        let mut web = vip("web", key(1, 80), &["10.0.0.1"]);
        web.allow = vec!["198.51.100.0/24".parse().unwrap()];
        let (_, state) = plan(&State::new(4, 8, 16), &desired(vec![web.clone()])).unwrap();
        web.allow = vec!["203.0.113.0/24".parse().unwrap()];
        web.flags = vip_flags::ACL | vip_flags::HASH_SRC_ONLY;
        let (p, _) = plan(&state, &desired(vec![web])).unwrap();
        let add = at(&p.ops, |o| matches!(o, Op::AddAcl { .. }));
        let switch = at(&p.ops, |o| matches!(o, Op::SetVip { .. }));
        let remove = at(&p.ops, |o| matches!(o, Op::RemoveAcl { .. }));
        assert!(add < switch && switch < remove, "{:#?}", p.ops);
        let Op::RemoveAcl { entry, .. } = &p.ops[remove] else { unreachable!() };
        assert_eq!(*entry, AclEntry { prefix_len: 32 + 96 + 24, addr: addr16(ip("198.51.100.0")) });
        // The flags changed, so the port's bits too.
        assert!(p.ops.iter().any(|o| matches!(o, Op::SetPort { port: 80, bits } if *bits != 1)));
    }

    #[test]
    fn a_removed_vip_is_switched_off_before_its_slot_acl_and_ring_and_its_backends_cleared_last() {
        let mut web = vip("web", key(1, 80), &["10.0.0.1"]);
        web.allow = vec!["198.51.100.0/24".parse().unwrap()];
        web.flags = vip_flags::ACL;
        let dns = vip("dns", key(2, 53), &["10.0.0.2"]);
        let (_, state) = plan(&State::new(4, 8, 16), &desired(vec![web, dns.clone()])).unwrap();
        let (id, ring) = (state.vips[&key(1, 80)].meta.id, state.vips[&key(1, 80)].meta.ring);
        let (p, next) = plan(&state, &desired(vec![dns])).unwrap();
        let order = [
            at(&p.ops, |o| *o == Op::RemoveVip(key(1, 80))),
            at(&p.ops, |o| matches!(o, Op::SetVipSlot { id: i, slot } if *i == id && slot.key.pad == 0)),
            at(&p.ops, |o| matches!(o, Op::RemoveAcl { vip, .. } if *vip == id)),
            at(&p.ops, |o| *o == Op::ReleaseRing(ring)),
            at(&p.ops, |o| *o == Op::RemoveVipAddr(key(1, 80).addr)),
            at(&p.ops, |o| *o == Op::SetPort { port: 80, bits: 0 }),
            at(&p.ops, |o| matches!(o, Op::ClearBackend(_))),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?} in {:#?}", p.ops);
        assert!(next.free_ids.contains(&id) && !next.vips.contains_key(&key(1, 80)));
        assert_eq!((p.report.vips_removed, p.report.backends_removed), (1, 1));
    }

    #[test]
    fn a_vip_without_usable_backend_keeps_a_ring_slot_and_table_size_zero() {
        let mut web = vip("web", key(1, 80), &["10.0.0.1"]);
        web.backends[0].usable = false;
        let (p, next) = plan(&State::new(4, 8, 16), &desired(vec![web.clone()])).unwrap();
        assert!(!p.ops.iter().any(|o| matches!(o, Op::WriteRing { .. })));
        let meta = next.vips[&key(1, 80)].meta;
        assert_eq!(meta.table_size, 0);
        assert!(!next.free_rings.contains(&meta.ring), "the VIP owns its ring slot");
        // Usable again: a table into a fresh slot, the empty one released.
        web.backends[0].usable = true;
        let (p, after) = plan(&next, &desired(vec![web])).unwrap();
        assert!(p.ops.contains(&Op::ReleaseRing(meta.ring)));
        assert_eq!(after.vips[&key(1, 80)].meta.table_size, 101);
    }

    #[test]
    fn running_out_of_slots_fails_without_a_partial_state() {
        let d = desired(vec![vip("a", key(1, 80), &["10.0.0.1"]), vip("b", key(2, 80), &["10.0.0.2"])]);
        let e = plan(&State::new(1, 8, 16), &d).unwrap_err();
        assert!(matches!(e, crate::L4Error::Capacity("VIP ids")), "{e}");
        let e = plan(&State::new(4, 8, 1), &d).unwrap_err();
        assert!(matches!(e, crate::L4Error::Capacity("backend slots")), "{e}");
    }

    #[test]
    fn a_distrusted_state_rewrites_every_value_but_allocates_nothing() {
        let d = desired(vec![vip("web", key(1, 80), &["10.0.0.1"])]);
        let (_, state) = plan(&State::new(4, 8, 16), &d).unwrap();
        let (p, next) = plan(&state.clone().distrusted(), &d).unwrap();
        for want in ["SetConfig", "SetBackend", "WriteRing", "SetVip ", "SetVipAddr", "SetPort"] {
            assert!(format!("{:?}", p.ops).contains(want.trim()), "{want} missing: {:#?}", p.ops);
        }
        assert_eq!(p.report.backends_added, 0);
        assert_eq!(next.vips[&key(1, 80)].meta.id, state.vips[&key(1, 80)].meta.id);
    }
}
