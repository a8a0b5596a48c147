//! Authoritative resolution (RFC 1034 4.3.2) over one zone: answers, referrals, CNAME chains, wildcards,
//! NXDOMAIN/NODATA with the SOA, ANY per RFC 8482. Used by the general path and to pre-render the fast path.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::wire::{parent, wire_of};
use crate::zone::{Node, RrSet, ZoneData};

/// The sections of an answer.
#[derive(Debug, Default)]
pub struct Answer {
    /// Response code.
    pub rcode: ResponseCode,
    /// Authoritative answer.
    pub aa: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authority: Vec<Record>,
    /// Additional section.
    pub additional: Vec<Record>,
    /// Index range in `answers` of the RRset that may be shuffled (A/AAAA/SRV with several records).
    pub shuffle: Option<(usize, usize)>,
}

const MAX_CHAIN: usize = 8;

/// Resolves `qname`/`qtype` in `zone`. `full_any`: answer ANY with every RRset (TCP) rather than one (UDP).
pub fn resolve(zone: &ZoneData, qname: &Name, qtype: RecordType, full_any: bool) -> Answer {
    let mut ans = Answer { aa: true, ..Answer::default() };
    let mut next = qname.clone();
    let mut seen: Vec<crate::wire::WireName> = Vec::new();
    for _ in 0..MAX_CHAIN {
        let name = next.clone();
        let wire = wire_of(&name);
        if seen.contains(&wire) {
            break; // CNAME loop: stop with what we have
        }
        seen.push(wire.clone());
        if !crate::wire::in_zone(&wire, &zone.origin_wire) {
            return ans; // chain left the zone: the client follows it
        }
        if let Some(cut) = find_cut(zone, &wire, qtype) {
            if ans.answers.is_empty() {
                ans.aa = false;
            }
            referral(zone, cut, &mut ans);
            return ans;
        }
        let node = match zone.nodes.get(&wire) {
            Some(n) => NodeRef::Exact(n),
            None => match wildcard(zone, &wire) {
                Some(w) => NodeRef::Wild(w),
                None => {
                    ans.rcode = ResponseCode::NXDomain;
                    ans.authority.push(zone.negative_soa());
                    return ans;
                }
            },
        };
        // Owner names as written in the zone (BIND keeps the zone's case); a wildcard's answers are owned by the
        // name asked for.
        let (node, name) = match node {
            NodeRef::Exact(n) => (n, n.name.clone()),
            NodeRef::Wild(n) => (n, name.clone()),
        };
        if qtype == RecordType::ANY {
            let sets: Vec<&RrSet> = if full_any { node.rrsets.iter().collect() } else { node.rrsets.iter().take(1).collect() };
            if sets.is_empty() {
                ans.authority.push(zone.negative_soa());
            }
            for s in sets {
                ans.answers.extend(s.records(&name));
            }
            return ans;
        }
        if let Some(set) = node.get(qtype) {
            let start = ans.answers.len();
            ans.answers.extend(set.records(&name));
            if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::SRV) && set.rdatas.len() > 1 {
                ans.shuffle = Some((start, ans.answers.len()));
            }
            additional(zone, set, &mut ans);
            return ans;
        }
        if let Some(cname) = node.get(RecordType::CNAME) {
            ans.answers.extend(cname.records(&name));
            match cname.rdatas.first() {
                Some(RData::CNAME(target)) => {
                    next = target.0.clone();
                    continue;
                }
                _ => return ans,
            }
        }
        ans.authority.push(zone.negative_soa());
        return ans;
    }
    ans
}

enum NodeRef<'a> {
    Exact(&'a Node),
    Wild(&'a Node),
}


/// The delegation point above or at `wire` (not the apex), if any. A DS query at the cut itself is answered by
/// the parent side.
fn find_cut<'a>(zone: &'a ZoneData, wire: &[u8], qtype: RecordType) -> Option<&'a Node> {
    if !zone.has_cuts {
        return None;
    }
    let mut best = None;
    let mut w = wire;
    while w.len() > zone.origin_wire.len() {
        if let Some(n) = zone.nodes.get(w) {
            if n.get(RecordType::NS).is_some() && !(w == wire && qtype == RecordType::DS) {
                best = Some(&**n); // keep walking up: the highest cut wins
            }
        }
        w = parent(w)?;
    }
    best
}

fn referral(zone: &ZoneData, cut: &Node, ans: &mut Answer) {
    if let Some(ns) = cut.get(RecordType::NS) {
        ans.authority.extend(ns.records(&cut.name));
        for d in &ns.rdatas {
            if let RData::NS(t) = d {
                glue(zone, &t.0, ans);
            }
        }
    }
}

/// A/AAAA of `target` if it is in the zone (including below cuts: glue).
fn glue(zone: &ZoneData, target: &Name, ans: &mut Answer) {
    if let Some(n) = zone.nodes.get(&wire_of(target)) {
        for t in [RecordType::A, RecordType::AAAA] {
            if let Some(s) = n.get(t) {
                ans.additional.extend(s.records(&n.name));
            }
        }
    }
}

fn additional(zone: &ZoneData, set: &RrSet, ans: &mut Answer) {
    for d in &set.rdatas {
        let target = match d {
            RData::SRV(s) => &s.target,
            RData::MX(m) => &m.exchange,
            RData::NS(n) => &n.0,
            _ => continue,
        };
        glue(zone, target, ans);
    }
}

/// The wildcard node covering `wire` (RFC 4592: `*.<closest encloser>`), if any.
fn wildcard<'a>(zone: &'a ZoneData, wire: &[u8]) -> Option<&'a Node> {
    if !zone.has_wildcards {
        return None;
    }
    let mut w = parent(wire)?;
    loop {
        if w.len() < zone.origin_wire.len() {
            return None;
        }
        if zone.nodes.contains_key(w) || w == &*zone.origin_wire {
            let mut star = Vec::with_capacity(w.len() + 2);
            star.extend_from_slice(b"\x01*");
            star.extend_from_slice(w);
            return zone.nodes.get(&star[..]).map(|n| &**n);
        }
        w = parent(w)?;
    }
}

/// The dependencies of a node's answers: names whose records appear in them (CNAME targets, SRV/MX/NS targets).
pub fn dependencies(node: &Node) -> Vec<Name> {
    let mut out = Vec::new();
    for s in &node.rrsets {
        for d in &s.rdatas {
            match d {
                RData::CNAME(t) => out.push(t.0.clone()),
                RData::SRV(s) => out.push(s.target.clone()),
                RData::MX(m) => out.push(m.exchange.clone()),
                RData::NS(n) => out.push(n.0.clone()),
                _ => {}
            }
        }
    }
    out
}
