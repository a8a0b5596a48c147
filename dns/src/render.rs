//! Pre-rendering: the wire bytes of the answers to the common queries of every name, computed when a zone is
//! built (reusing the previous version's bytes for names whose inputs did not change), so the query path only
//! copies bytes and patches the ID.

use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};
use rand::seq::SliceRandom;

use crate::fasttable::{FastRecord, FastTable};
use crate::resolve::{resolve, Answer};
use crate::wire::{in_zone, parent, WireName};
use crate::zone::{FastSet, Node, Rendered, ZoneData};

/// Shuffle variants kept per answer with several A/AAAA/SRV records.
const MAX_VARIANTS: usize = 8;

/// Query types pre-rendered through a CNAME.
const CNAME_TYPES: [RecordType; 6] =
    [RecordType::A, RecordType::AAAA, RecordType::SRV, RecordType::TXT, RecordType::MX, RecordType::PTR];

/// Encodes `ans` as the bytes that follow a question for `qname`/`qtype`, with the header fields.
fn encode(qname: &Name, qtype: RecordType, ans: &Answer) -> Option<(Box<[u8]>, [u16; 3])> {
    let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
    let mut q = Query::query(qname.to_lowercase(), qtype);
    q.set_query_class(DNSClass::IN);
    msg.add_query(q);
    msg.answers.clone_from(&ans.answers);
    msg.authorities.clone_from(&ans.authority);
    msg.additionals.clone_from(&ans.additional);
    let bytes = msg.to_vec().ok()?;
    let qend = crate::wire::after_questions(&bytes)?;
    Some((bytes[qend..].into(), [ans.answers.len() as u16, ans.authority.len() as u16, ans.additional.len() as u16]))
}

/// Renders the answer to `qname`/`qtype`, with shuffle variants.
pub fn render(zone: &ZoneData, qname: &Name, qtype: RecordType) -> Option<Rendered> {
    let mut ans = resolve(zone, qname, qtype, false);
    let mut variants = Vec::new();
    match ans.shuffle {
        Some((s, e)) => {
            let n = e - s;
            if n <= MAX_VARIANTS {
                for _ in 0..n {
                    variants.push(encode(qname, qtype, &ans)?);
                    ans.answers[s..e].rotate_left(1);
                }
            } else {
                let mut rng = rand::rng();
                for _ in 0..MAX_VARIANTS {
                    ans.answers[s..e].shuffle(&mut rng);
                    variants.push(encode(qname, qtype, &ans)?);
                }
            }
        }
        None => variants.push(encode(qname, qtype, &ans)?),
    }
    let counts = variants[0].1;
    Some(Rendered { rcode: ans.rcode.low(), aa: ans.aa, counts, variants: variants.into_iter().map(|v| v.0).collect() })
}

/// Whether `wire` is at or below a delegation of `zone`.
fn under_cut(zone: &ZoneData, wire: &[u8]) -> bool {
    if zone.cuts.is_empty() {
        return false;
    }
    let mut w = wire;
    while w.len() > zone.origin_wire.len() {
        if zone.cuts.contains(w) {
            return true;
        }
        match parent(w) {
            Some(p) => w = p,
            None => break,
        }
    }
    false
}

/// Renders the fast record of one node (`None` only for a name too long to be one, which cannot be queried).
fn entry(zone: &ZoneData, wire: &[u8], node: &Node) -> Option<FastRecord> {
    let slow = || FastRecord::slow(wire).ok();
    if under_cut(zone, wire) || !in_zone(wire, &zone.origin_wire) {
        return slow();
    }
    let cname = node.get(RecordType::CNAME).is_some();
    let mut qtypes: Vec<RecordType> = node.rrsets.iter().map(|r| r.rtype).collect();
    if cname {
        qtypes.extend(CNAME_TYPES);
    }
    qtypes.dedup();
    let mut types = Vec::with_capacity(qtypes.len());
    for t in qtypes {
        match render(zone, &node.name, t) {
            Some(r) => types.push((u16::from(t), r)),
            None => return slow(),
        }
    }
    FastRecord::data(wire, cname, &types)
        .or_else(|e| {
            tracing::debug!(error = %e, "name answered by the general path");
            FastRecord::slow(wire)
        })
        .ok()
}

/// Renders the fast-path records of the `dirty` names of `zone` into `fast` (the previous version's table); all
/// names when `dirty` is `None`. Names no longer in the zone are removed.
pub fn update_fast(zone: &ZoneData, fast: &mut FastTable, dirty: Option<&FastSet<WireName>>) {
    let put = |fast: &FastTable, wire: &[u8], node: Option<&Arc<Node>>| {
        fast.change(wire, node.and_then(|n| entry(zone, wire, n)))
    };
    match dirty {
        None => {
            fast.clear();
            let changes: Vec<_> = zone.nodes.iter().map(|(wire, node)| put(fast, wire, Some(node))).collect();
            fast.apply(changes);
        }
        Some(d) => {
            let changes: Vec<_> = d.iter().map(|wire| put(fast, wire, zone.nodes.get(wire))).collect();
            fast.apply(changes);
        }
    }
}

/// The negative-answer SOA record without its owner name: TYPE, CLASS, TTL, RDLENGTH, uncompressed RDATA.
pub fn negative_tail(soa: &Record) -> Box<[u8]> {
    let mut buf = Vec::with_capacity(64);
    {
        let mut enc = BinEncoder::new(&mut buf);
        let mut enc = enc.with_name_encoding(NameEncoding::Uncompressed);
        let mut r = soa.clone();
        r.name = Name::root();
        if r.emit(&mut enc).is_err() {
            return Box::default();
        }
    }
    buf[1..].into() // drop the root owner label
}
