//! Outgoing zone transfers: AXFR (RFC 5936) and IXFR (RFC 1995) from the journal of recent changes, with AXFR
//! fallback, split into TCP messages each signed with TSIG when the request was.

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::Record;

use crate::serial::serial_gt;
use crate::tsig::Signer;
use crate::zone::ZoneData;

/// Records per transfer message (split further if a message would exceed 64 KiB).
const PER_MESSAGE: usize = 256;

/// The records of a transfer and its kind (`axfr`, `ixfr`, `ixfr-up-to-date`, `ixfr-axfr`).
pub fn transfer_records(zone: &ZoneData, ixfr: bool, client_serial: Option<u32>) -> (Vec<Record>, &'static str) {
    let soa = zone.soa_record();
    if ixfr {
        if let Some(cs) = client_serial {
            if !serial_gt(zone.serial, cs) {
                return (vec![soa], "ixfr-up-to-date");
            }
            if let Some(start) = zone.ixfr.iter().position(|d| soa_serial(&d.from) == Some(cs)) {
                let chain = &zone.ixfr[start..];
                let contiguous = chain.windows(2).all(|w| soa_serial(&w[0].to) == soa_serial(&w[1].from))
                    && chain.last().and_then(|d| soa_serial(&d.to)) == Some(zone.serial);
                if contiguous {
                    let mut out = vec![soa.clone()];
                    for d in chain {
                        out.push(d.from.clone());
                        out.extend(d.removed.iter().cloned());
                        out.push(d.to.clone());
                        out.extend(d.added.iter().cloned());
                    }
                    out.push(soa);
                    return (out, "ixfr");
                }
            }
        }
    }
    let mut all = zone.all_records();
    all.push(soa);
    (all, if ixfr { "ixfr-axfr" } else { "axfr" })
}

fn soa_serial(r: &Record) -> Option<u32> {
    match &r.data {
        hickory_proto::rr::RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}

/// Splits `records` into response messages to `req`, signing each when `signer` is given.
pub fn messages(req: &Message, records: Vec<Record>, mut signer: Option<Signer>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunks: Vec<Vec<Record>> = records.chunks(PER_MESSAGE).map(<[Record]>::to_vec).collect();
    chunks.reverse();
    let mut first = true;
    while let Some(chunk) = chunks.pop() {
        let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
        m.metadata.authoritative = true;
        if first {
            m.queries.clone_from(&req.queries);
        }
        m.answers = chunk;
        match m.to_vec() {
            Ok(mut bytes) if bytes.len() < 65000 => {
                if let Some(s) = signer.as_mut() {
                    s.sign(&mut bytes, None);
                }
                out.push(bytes);
                first = false;
            }
            _ if m.answers.len() > 1 => {
                let half = m.answers.len() / 2;
                let tail = m.answers.split_off(half);
                chunks.push(tail);
                chunks.push(m.answers);
            }
            _ => {
                tracing::warn!("a record does not fit in a transfer message; transfer aborted");
                return Vec::new();
            }
        }
    }
    out
}
