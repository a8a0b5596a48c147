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
            let sets: Vec<&RrSet> =
                if full_any { node.rrsets.iter().collect() } else { node.rrsets.iter().take(1).collect() };
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
    let nsec3 = Nsec3::of(zone);
    // The NSEC (or, in an NSEC3 zone, the NSEC3 matching the name's hash) at a name.
    let nsec_of = |w: &[u8], out: &mut Vec<Record>| match &nsec3 {
        Some(p) => {
            let h = p.owner(zone, w);
            if let Some(n) = zone.nodes.get(&h) {
                push_unique(out, n, RecordType::NSEC3);
            }
        }
        None => {
            if let Some(n) = zone.nodes.get(w) {
                push_unique(out, n, RecordType::NSEC);
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
    } else if ans.rcode == ResponseCode::NXDomain && nsec3.is_some() {
        // RFC 5155 7.2.2: the closest encloser's NSEC3, and NSEC3s covering the next closer name and the wildcard.
        let p = nsec3.clone().unwrap_or_default();
        let mut ce: &[u8] = &qwire;
        let mut next_closer: &[u8] = &qwire;
        while let Some(up) = parent(ce) {
            next_closer = ce;
            ce = up;
            if zone.nodes.contains_key(ce) || ce == &*zone.origin_wire {
                break;
            }
        }
        let mut proofs = Vec::new();
        nsec_of(ce, &mut proofs);
        let mut star = b"\x01*".to_vec();
        star.extend_from_slice(ce);
        for w in [next_closer, &star[..]] {
            if let Some(n) = p.covering(zone, w).and_then(|o| zone.nodes.get(&o)) {
                push_unique(&mut proofs, n, RecordType::NSEC3);
            }
        }
        ans.authority.extend(proofs);
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

fn push_unique(out: &mut Vec<Record>, node: &crate::zone::Node, t: RecordType) {
    if let Some(set) = node.get(t) {
        for r in set.records(&node.name) {
            if !out.contains(&r) {
                out.push(r);
            }
        }
    }
}

/// NSEC3 parameters of a zone (its apex NSEC3PARAM), to hash names (RFC 5155 5).
#[derive(Debug, Clone, Default)]
struct Nsec3 {
    iterations: u16,
    salt: Vec<u8>,
}

impl Nsec3 {
    fn of(zone: &ZoneData) -> Option<Nsec3> {
        let apex = zone.nodes.get(&zone.origin_wire)?;
        if apex.get(RecordType::NSEC).is_some() {
            return None;
        }
        let RData::Unknown { rdata, .. } = apex.get(RecordType::NSEC3PARAM)?.rdatas.first()? else { return None };
        let b = &rdata.anything;
        // Hash algorithm 1 (SHA-1) is the only one defined.
        if b.len() < 5 || b[0] != 1 {
            return None;
        }
        let len = b[4] as usize;
        Some(Nsec3 { iterations: u16::from_be_bytes([b[2], b[3]]), salt: b.get(5..5 + len)?.to_vec() })
    }

    /// The hashed owner label (base32hex, lowercase) of `w`.
    fn label(&self, w: &[u8]) -> Vec<u8> {
        use sha1::Digest;
        let mut h = sha1::Sha1::new().chain_update(w).chain_update(&self.salt).finalize();
        for _ in 0..self.iterations {
            h = sha1::Sha1::new().chain_update(h).chain_update(&self.salt).finalize();
        }
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        let mut out = Vec::with_capacity(32);
        let (mut acc, mut bits) = (0u32, 0u32);
        for b in h {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(ALPHABET[((acc >> bits) & 31) as usize]);
            }
        }
        if bits > 0 {
            out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize]);
        }
        out
    }

    /// The wire name of the NSEC3 record for `w`.
    fn owner(&self, zone: &ZoneData, w: &[u8]) -> crate::wire::WireName {
        let label = self.label(w);
        let mut o = Vec::with_capacity(label.len() + 1 + zone.origin_wire.len());
        o.push(label.len() as u8);
        o.extend_from_slice(&label);
        o.extend_from_slice(&zone.origin_wire);
        o.into()
    }

    /// The owner of the NSEC3 covering the hash of `w`: the greatest hash below it, or (wrapping) the greatest.
    fn covering(&self, zone: &ZoneData, w: &[u8]) -> Option<crate::wire::WireName> {
        let target = self.label(w);
        let hashed = |k: &crate::wire::WireName| k.get(1..1 + *k.first()? as usize).map(<[u8]>::to_vec);
        let owners: Vec<(Vec<u8>, &crate::wire::WireName)> = zone
            .nodes
            .iter()
            .filter(|(_, n)| n.get(RecordType::NSEC3).is_some())
            .filter_map(|(k, _)| hashed(k).map(|h| (h, k)))
            .collect();
        let below = owners.iter().filter(|(h, _)| *h < target).max_by(|a, b| a.0.cmp(&b.0));
        below.or_else(|| owners.iter().max_by(|a, b| a.0.cmp(&b.0))).map(|(_, k)| (*k).clone())
    }
}
