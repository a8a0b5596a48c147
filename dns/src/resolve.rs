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

/// Adds DNSSEC records to an answer from a pre-signed zone, for a query with the DO bit: the RRSIGs of every
/// RRset of the answer and authority sections, the DS (or the NSEC proving there is none) of a referral, and the
/// NSEC records proving an NXDOMAIN (the name and the wildcard) or a NODATA. Wildcard expansions get no proof.
pub fn add_dnssec(zone: &ZoneData, qname: &Name, qtype: RecordType, ans: &mut Answer) {
    let qwire = wire_of(qname);
    let nsec_of = |w: &[u8], out: &mut Vec<Record>| {
        if let Some(n) = zone.nodes.get(w) {
            if let Some(s) = n.get(RecordType::NSEC) {
                out.extend(s.records(&n.name));
            }
        }
    };
    let negative = ans.answers.is_empty() || ans.answers.iter().all(|r| r.record_type() == RecordType::CNAME);
    let referral = !ans.aa && ans.authority.iter().any(|r| r.record_type() == RecordType::NS);
    if referral {
        if let Some(cut) = ans.authority.first().map(|r| wire_of(&r.name)) {
            match zone.nodes.get(&cut).and_then(|n| n.get(RecordType::DS).map(|s| (n, s))) {
                Some((n, ds)) => ans.authority.extend(ds.records(&n.name)),
                None => nsec_of(&cut, &mut ans.authority),
            }
        }
    } else if ans.rcode == ResponseCode::NXDomain {
        let mut proofs = Vec::new();
        if let Some(c) = covering(zone, &qwire) {
            nsec_of(&c, &mut proofs);
        }
        // The closest encloser's wildcard does not exist either.
        let mut ce: &[u8] = &qwire;
        while let Some(p) = parent(ce) {
            ce = p;
            if zone.nodes.contains_key(ce) || ce == &*zone.origin_wire {
                break;
            }
        }
        let mut star = b"\x01*".to_vec();
        star.extend_from_slice(ce);
        if let Some(c) = covering(zone, &star) {
            let mut more = Vec::new();
            nsec_of(&c, &mut more);
            more.retain(|r| !proofs.contains(r));
            proofs.extend(more);
        }
        ans.authority.extend(proofs);
    } else if negative && qtype != RecordType::CNAME {
        // NODATA at the name the chain ended on.
        let last = ans.answers.last().and_then(|r| match &r.data {
            RData::CNAME(t) => Some(wire_of(&t.0)),
            _ => None,
        });
        nsec_of(&last.unwrap_or_else(|| qwire.clone()), &mut ans.authority);
    }
    sign(zone, &mut ans.answers);
    sign(zone, &mut ans.authority);
}

/// Appends the RRSIGs covering each RRset of `records` (found at their owner names).
fn sign(zone: &ZoneData, records: &mut Vec<Record>) {
    let mut seen: Vec<(crate::wire::WireName, RecordType)> = Vec::new();
    let mut sigs = Vec::new();
    for r in records.iter() {
        let key = (wire_of(&r.name), r.record_type());
        if key.1 == RecordType::RRSIG || seen.contains(&key) {
            continue;
        }
        if let Some(set) = zone.nodes.get(&key.0).and_then(|n| n.get(RecordType::RRSIG)) {
            for d in set.rdatas.iter().filter(|d| crate::dnssec::covered(d) == Some(key.1)) {
                sigs.push(Record::from_rdata(r.name.clone(), set.ttl, d.clone()));
            }
        }
        seen.push(key);
    }
    records.extend(sigs);
}

/// Labels of a wire name, last first, lowercase: DNSSEC canonical order compares these.
fn canonical(w: &[u8]) -> Vec<&[u8]> {
    let mut labels = Vec::new();
    let mut pos = 0;
    while let Some(&len) = w.get(pos).filter(|l| **l > 0) {
        labels.push(&w[pos + 1..pos + 1 + len as usize]);
        pos += 1 + len as usize;
    }
    labels.reverse();
    labels
}

/// The owner of the NSEC record covering `w` (the greatest owner before it in canonical order).
fn covering(zone: &ZoneData, w: &[u8]) -> Option<crate::wire::WireName> {
    let target = canonical(w);
    zone.nodes
        .iter()
        .filter(|(_, n)| n.get(RecordType::NSEC).is_some())
        .map(|(k, _)| k)
        .filter(|k| canonical(k) < target)
        .max_by(|a, b| canonical(a).cmp(&canonical(b)))
        .cloned()
}
