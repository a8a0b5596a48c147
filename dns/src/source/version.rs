//! From the name index to the next published version: the names that may have changed are rebuilt (the others
//! keep their nodes), their differences collected for IXFR, the structure (delegations, wildcards, reverse
//! dependencies) followed, and the version assembled with its pre-rendered answers.

use std::sync::Arc;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::index::NameIndex;
use crate::render::{negative_tail, update_fast};
use crate::resolve::dependencies;
use crate::sharded::Sharded;
use crate::wire::{wire_of, WireName};
use crate::zone::{Diff, FastSet, Node, RrSet, ZoneData, ZonePolicy};

/// The nodes of the next version and how they differ from the last one's.
pub struct NodeUpdate {
    /// Every node of the next version.
    pub nodes: Sharded<Arc<Node>>,
    /// The names whose node changed (added, replaced or removed).
    pub changed: Vec<WireName>,
    removed: Vec<Record>,
    added: Vec<Record>,
    /// Content hash of the next version (the XOR of its nodes').
    pub hash: u64,
}

/// The apex of a version: its names and its SOA.
pub struct Apex {
    /// Apex name.
    pub origin: Name,
    /// Apex in lowercase wire form.
    pub origin_wire: WireName,
    /// The SOA data (with the version's serial).
    pub soa: SOA,
    /// The SOA's TTL.
    pub soa_ttl: u32,
}

impl NodeUpdate {
    /// Rebuilds the `affected` names from `index` over the nodes of `prev` (whose content hash is `hash`); the
    /// apex carries `apex.soa`. A name whose content is the same keeps its node.
    pub fn rebuild(
        index: &mut NameIndex,
        affected: &[WireName],
        prev: Option<&ZoneData>,
        hash: u64,
        apex: &Apex,
    ) -> NodeUpdate {
        let nodes = prev.map(|p| p.nodes.clone()).unwrap_or_default();
        let mut update = NodeUpdate { nodes, changed: Vec::new(), removed: Vec::new(), added: Vec::new(), hash };
        for w in affected {
            match index.content(w) {
                None => update.remove(w),
                Some((name, mut sets)) => {
                    if *w == apex.origin_wire {
                        sets.retain(|s| s.rtype != RecordType::SOA);
                        let soa = RData::SOA(apex.soa.clone());
                        sets.push(RrSet { rtype: RecordType::SOA, ttl: apex.soa_ttl, rdatas: vec![soa] });
                    }
                    update.put(w, name, sets);
                }
            }
        }
        update
    }

    /// Gives the apex node the SOA `soa` (a new serial).
    pub fn set_apex_soa(&mut self, origin_wire: &WireName, soa: &SOA) {
        let Some(apex) = self.nodes.get(origin_wire) else { return };
        let mut sets = apex.rrsets.clone();
        for s in sets.iter_mut().filter(|s| s.rtype == RecordType::SOA) {
            s.rdatas = vec![RData::SOA(soa.clone())];
        }
        let name = apex.name.clone();
        self.nodes.insert(origin_wire.clone(), Arc::new(Node::new(name, sets)));
        self.changed.push(origin_wire.clone());
    }

    /// The change from the SOA record `from` to `to`: the records removed and added (SOAs apart).
    pub fn take_diff(&mut self, from: Record, to: Record) -> Diff {
        let mut removed = std::mem::take(&mut self.removed);
        let mut added = std::mem::take(&mut self.added);
        removed.retain(|r| r.record_type() != RecordType::SOA);
        added.retain(|r| r.record_type() != RecordType::SOA);
        Diff { from, to, removed, added, size: 0 }
    }

    fn remove(&mut self, w: &WireName) {
        if let Some(old) = self.nodes.remove(w) {
            self.hash ^= old.hash;
            diff_node(&old.rrsets, &[], &old.name, &mut self.removed, &mut self.added);
            self.changed.push(w.clone());
        }
    }

    fn put(&mut self, w: &WireName, name: Name, sets: Vec<RrSet>) {
        let old = self.nodes.get(w).cloned();
        if old.as_ref().is_some_and(|o| same_content(&o.rrsets, &sets)) {
            return;
        }
        let node = Arc::new(Node::new(name, sets));
        if let Some(o) = &old {
            self.hash ^= o.hash;
        }
        self.hash ^= node.hash;
        let before = old.as_ref().map(|o| &o.rrsets[..]).unwrap_or(&[]);
        diff_node(before, &node.rrsets, &node.name, &mut self.removed, &mut self.added);
        self.nodes.insert(w.clone(), node);
        self.changed.push(w.clone());
    }
}

/// Assembles the next version from `update` over `prev`: structure followed, answers of the names that may
/// have changed re-rendered (all of them for a first version or when the structure changed).
pub fn assemble(
    prev: Option<&ZoneData>,
    update: NodeUpdate,
    apex: Apex,
    serial: u32,
    policy: ZonePolicy,
    ixfr: Vec<Arc<Diff>>,
) -> ZoneData {
    let structure = Structure::follow(prev, &update.nodes, &update.changed, &apex.origin_wire);
    let dirty = structure.dirty(update.changed);
    let nodes = update.nodes;
    let negative_ttl = apex.soa_ttl.min(apex.soa.minimum);
    let neg = Record::from_rdata(apex.origin.clone(), negative_ttl, RData::SOA(apex.soa.clone()));
    let record_count = match prev {
        Some(p) => {
            let before: usize = dirty.iter().filter_map(|w| p.nodes.get(w)).map(|n| n.record_count()).sum();
            let after: usize = dirty.iter().filter_map(|w| nodes.get(w)).map(|n| n.record_count()).sum();
            p.record_count + after - before
        }
        None => nodes.values().map(|n| n.record_count()).sum(),
    };
    let signed = nodes.get(&apex.origin_wire).is_some_and(|n| n.get(RecordType::RRSIG).is_some());
    let mut data = ZoneData {
        signed,
        origin: apex.origin,
        origin_wire: apex.origin_wire,
        serial,
        soa: apex.soa,
        negative_ttl,
        nodes,
        has_cuts: !structure.cuts.is_empty(),
        has_wildcards: !structure.wilds.is_empty(),
        cuts: structure.cuts,
        wilds: structure.wilds,
        rdeps: structure.rdeps,
        fast: Default::default(),
        neg_tail: negative_tail(&neg),
        record_count,
        policy,
        ixfr,
    };
    let mut fast = prev.map(|p| p.fast.clone()).unwrap_or_default();
    let full = prev.is_none() || structure.changed;
    update_fast(&data, &mut fast, if full { None } else { Some(&dirty) });
    data.fast = fast;
    data
}

/// Delegation points, wildcard names and reverse dependencies of a version.
struct Structure {
    cuts: FastSet<WireName>,
    wilds: FastSet<WireName>,
    rdeps: Sharded<Vec<WireName>>,
    /// A delegation point or a wildcard came or went.
    changed: bool,
}

impl Structure {
    /// The structure of `prev` updated for the `changed` names of `nodes`.
    fn follow(
        prev: Option<&ZoneData>,
        nodes: &Sharded<Arc<Node>>,
        changed: &[WireName],
        origin_wire: &WireName,
    ) -> Structure {
        let mut s = Structure {
            cuts: prev.map(|p| p.cuts.clone()).unwrap_or_default(),
            wilds: prev.map(|p| p.wilds.clone()).unwrap_or_default(),
            rdeps: prev.map(|p| p.rdeps.clone()).unwrap_or_default(),
            changed: false,
        };
        let (cuts_before, wilds_before) = (s.cuts.len(), s.wilds.len());
        for w in changed {
            let node = nodes.get(w);
            let is_cut = node.is_some_and(|n| n.get(RecordType::NS).is_some()) && w != origin_wire;
            s.changed |= if is_cut { s.cuts.insert(w.clone()) } else { s.cuts.remove(w) };
            let is_wild = node.is_some() && w.starts_with(b"\x01*");
            s.changed |= if is_wild { s.wilds.insert(w.clone()) } else { s.wilds.remove(w) };
            s.relink(w, prev.and_then(|p| p.nodes.get(w)), node);
        }
        s.changed |= s.cuts.len() != cuts_before || s.wilds.len() != wilds_before;
        s
    }

    /// Moves the reverse dependencies of `w` from those of its `old` node to those of its `new` one.
    fn relink(&mut self, w: &WireName, old: Option<&Arc<Node>>, new: Option<&Arc<Node>>) {
        for t in old.map(|n| dependencies(n)).unwrap_or_default() {
            let tw = wire_of(&t);
            if let Some(v) = self.rdeps.get_mut(&tw) {
                v.retain(|x| x != w);
                if v.is_empty() {
                    self.rdeps.remove(&tw);
                }
            }
        }
        for t in new.map(|n| dependencies(n)).unwrap_or_default() {
            let v = self.rdeps.entry_or_insert_with(wire_of(&t), Vec::new);
            if !v.contains(w) {
                v.push(w.clone());
            }
        }
    }

    /// The names whose answers may have changed: the `changed` ones and, up to 8 steps away, those whose answers
    /// include their records.
    fn dirty(&self, changed: Vec<WireName>) -> FastSet<WireName> {
        let mut dirty: FastSet<WireName> = changed.iter().cloned().collect();
        let mut frontier = changed;
        for _ in 0..8 {
            let mut next = Vec::new();
            for w in &frontier {
                for d in self.rdeps.get(w).into_iter().flatten() {
                    if dirty.insert(d.clone()) {
                        next.push(d.clone());
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            frontier = next;
        }
        dirty
    }
}

fn diff_node(old: &[RrSet], new: &[RrSet], name: &Name, removed: &mut Vec<Record>, added: &mut Vec<Record>) {
    for o in old {
        let n = new.iter().find(|n| n.rtype == o.rtype);
        for d in &o.rdatas {
            if !n.is_some_and(|n| n.ttl == o.ttl && n.rdatas.contains(d)) {
                removed.push(Record::from_rdata(name.clone(), o.ttl, d.clone()));
            }
        }
    }
    for n in new {
        let o = old.iter().find(|o| o.rtype == n.rtype);
        for d in &n.rdatas {
            if !o.is_some_and(|o| o.ttl == n.ttl && o.rdatas.contains(d)) {
                added.push(Record::from_rdata(name.clone(), n.ttl, d.clone()));
            }
        }
    }
}

/// Whether two RRset lists hold the same records (order of records inside a set ignored).
fn same_content(a: &[RrSet], b: &[RrSet]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                y.rtype == x.rtype
                    && y.ttl == x.ttl
                    && y.rdatas.len() == x.rdatas.len()
                    && x.rdatas.iter().all(|d| y.rdatas.contains(d))
            })
        })
}
