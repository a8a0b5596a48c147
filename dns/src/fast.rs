//! The hot path: answers plain queries from pre-rendered bytes. It parses only the header, the question and an
//! optional OPT record; anything else (or any doubt) returns `None` and the general path answers.

use crate::zone::ZoneSet;

/// What the fast path answered (for metrics).
#[derive(Debug, Clone, Copy)]
pub struct FastOutcome {
    /// Index of the zone in the zone set.
    pub zone: usize,
    /// Query type.
    pub qtype: u16,
    /// Response code.
    pub rcode: u8,
    /// The answer did not fit and was truncated.
    pub truncated: bool,
}

/// EDNS of a query.
#[derive(Debug, Clone, Copy)]
pub struct QueryEdns {
    /// Requestor's UDP payload size.
    pub payload: u16,
    /// DNSSEC OK bit.
    pub dnssec_ok: bool,
}

/// Parsed plain query.
struct Plain {
    /// The query name has upper-case letters: pre-rendered answers point their owner names at the question, so
    /// they would show the query's case instead of the zone's; the general path answers these.
    mixed_case: bool,
    qend: usize,
    name_len: usize,
    qtype: u16,
    edns: Option<QueryEdns>,
}

fn parse(req: &[u8], lower: &mut [u8; 256]) -> Option<Plain> {
    if req.len() < 17 {
        return None;
    }
    let flags = u16::from_be_bytes([req[2], req[3]]);
    // QR=0, opcode QUERY; one question; no answer/authority; at most one additional (OPT).
    if flags & 0xF800 != 0 || req[4..10] != [0, 1, 0, 0, 0, 0] || req[10] != 0 || req[11] > 1 {
        return None;
    }
    let mut pos = 12;
    let mut n = 0;
    let mut mixed_case = false;
    loop {
        let len = *req.get(pos)? as usize;
        if len & 0xC0 != 0 {
            return None;
        }
        if n + len + 1 > 255 {
            return None;
        }
        lower[n] = len as u8;
        if len == 0 {
            n += 1;
            pos += 1;
            break;
        }
        let label = req.get(pos + 1..pos + 1 + len)?;
        for (i, b) in label.iter().enumerate() {
            mixed_case |= b.is_ascii_uppercase();
            lower[n + 1 + i] = b.to_ascii_lowercase();
        }
        n += 1 + len;
        pos += 1 + len;
    }
    let qtype = u16::from_be_bytes([*req.get(pos)?, *req.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*req.get(pos + 2)?, *req.get(pos + 3)?]);
    let qend = pos + 4;
    // IN only; meta and special types (OPT, TSIG, IXFR, AXFR, MAILB, MAILA, ANY) take the general path.
    if qclass != 1 || qtype == 41 || qtype >= 249 || qtype == 0 {
        return None;
    }
    let edns = if req[11] == 1 {
        // OPT: root owner, type 41, class = payload, TTL = ext-rcode/version/flags, RDLENGTH.
        let o = req.get(qend..qend + 11)?;
        if o[0] != 0 || o[1..3] != [0, 41] || o[6] != 0 {
            return None; // not OPT, or EDNS version > 0 (BADVERS from the general path)
        }
        let rdlen = u16::from_be_bytes([o[9], o[10]]) as usize;
        if qend + 11 + rdlen != req.len() {
            return None;
        }
        Some(QueryEdns { payload: u16::from_be_bytes([o[3], o[4]]), dnssec_ok: o[7] & 0x80 != 0 })
    } else {
        if qend != req.len() {
            return None;
        }
        None
    };
    Some(Plain { mixed_case, qend, name_len: n, qtype, edns })
}

/// Which lines [`prefetch`] warms.
#[derive(Debug, Clone, Copy)]
pub enum Warm {
    /// The table slot of the query name.
    Slot,
    /// The query name's record (the slot must be warm already, or this stalls on it).
    Record,
}

/// Warms the cache lines the answer to `req` will read, if it is a plain query in one of our zones. A batch of
/// queries is warmed slot-first, then record, then answered: the loads of all its queries overlap.
pub fn prefetch(set: &ZoneSet, req: &[u8], what: Warm) {
    let mut lower = [0u8; 256];
    let Some(q) = parse(req, &mut lower) else { return };
    let name = &lower[..q.name_len];
    let Some(zone) = set.locate(name).and_then(|(zi, _)| set.zones.get(zi)) else { return };
    match what {
        Warm::Slot => zone.fast.prefetch_slot(name),
        Warm::Record => zone.fast.prefetch_record(name),
    }
}

/// The UDP size limit for a response.
pub fn udp_limit(edns: Option<QueryEdns>, server_payload: u16) -> usize {
    match edns {
        None => 512,
        Some(e) => e.payload.clamp(512, server_payload.max(512)) as usize,
    }
}

/// Appends an OPT record advertising `payload`.
pub fn push_opt(out: &mut Vec<u8>, payload: u16, dnssec_ok: bool) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
}

/// Answers `req` into `out` if it is a plain query the pre-rendered data covers.
/// `tcp`: no size limit. `rotate`: a per-worker counter choosing the shuffle variant.
pub fn answer(
    set: &ZoneSet,
    req: &[u8],
    out: &mut Vec<u8>,
    tcp: bool,
    server_payload: u16,
    rotate: &mut usize,
) -> Option<FastOutcome> {
    let mut lower = [0u8; 256];
    let q = parse(req, &mut lower)?;
    if q.mixed_case {
        return None;
    }
    let name = &lower[..q.name_len];
    let (zi, apex_off) = set.locate(name)?;
    let zone = set.zones.get(zi)?;
    if zone.signed && q.edns.is_some_and(|e| e.dnssec_ok) {
        return None; // signatures and proofs: the general path
    }
    out.clear();
    // Header: ID, flags (QR, AA, RD and CD copied), counts filled below.
    let rd = req[2] & 0x01;
    let cd = req[3] & 0x10;
    out.extend_from_slice(&req[0..2]);
    out.extend_from_slice(&[0x84 | rd, cd, 0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&req[12..q.qend]);
    let (rcode, aa, counts) = match zone.fast.get(name) {
        Some(rec) if rec.is_slow() => return None,
        Some(rec) => match rec.answer(q.qtype, *rotate) {
            Some(a) => {
                *rotate = rotate.wrapping_add(1);
                out.extend_from_slice(a.bytes);
                (a.rcode, a.aa, a.counts)
            }
            None if rec.has_cname() => return None,
            None => {
                negative(out, zone, apex_off);
                (0, true, [0, 1, 0])
            }
        },
        None if zone.has_wildcards || zone.has_cuts => return None,
        None => {
            negative(out, zone, apex_off);
            (3, true, [0, 1, 0])
        }
    };
    out[2] = 0x80 | if aa { 0x04 } else { 0 } | rd;
    out[3] = cd | rcode;
    out[6..8].copy_from_slice(&counts[0].to_be_bytes());
    out[8..10].copy_from_slice(&counts[1].to_be_bytes());
    out[10..12].copy_from_slice(&counts[2].to_be_bytes());
    let limit = if tcp { 65535 } else { udp_limit(q.edns, server_payload) };
    let opt_len = if q.edns.is_some() { 11 } else { 0 };
    let mut truncated = false;
    if out.len() + opt_len > limit {
        truncated = true;
        out.truncate(q.qend);
        out[2] |= 0x02;
        out[6..12].fill(0);
    }
    if let Some(e) = q.edns {
        push_opt(out, server_payload, e.dnssec_ok);
        let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
        out[10..12].copy_from_slice(&ar.to_be_bytes());
    }
    Some(FastOutcome { zone: zi, qtype: q.qtype, rcode, truncated })
}

fn negative(out: &mut Vec<u8>, zone: &crate::zone::ZoneData, apex_off: usize) {
    let ptr = 0xC000u16 | (12 + apex_off) as u16;
    out.extend_from_slice(&ptr.to_be_bytes());
    out.extend_from_slice(&zone.neg_tail);
}
