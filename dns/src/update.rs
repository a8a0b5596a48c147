//! Dynamic update (RFC 2136): prerequisite checks against the served zone, then the update applied to the
//! zone's static records.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::wire::{in_zone, wire_of, WireName};
use crate::zone::{FastMap, RrSet, ZoneData};

/// Static records of a zone (master file plus accepted updates), by lowercase wire name.
pub type StaticZone = FastMap<WireName, (Name, Vec<RrSet>)>;

fn meta(t: RecordType) -> bool {
    matches!(
        t,
        RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::OPT | RecordType::TSIG | RecordType::SIG
    ) || u16::from(t) == 253
        || u16::from(t) == 254
}

fn empty_rdata(r: &Record) -> bool {
    matches!(r.data, RData::Update0(_))
}

/// Checks the prerequisite section (RFC 2136 3.2) against the zone as served.
pub fn check_prerequisites(zone: &ZoneData, prereqs: &[Record]) -> Result<(), ResponseCode> {
    let mut value_sets: FastMap<(WireName, RecordType), Vec<&RData>> = FastMap::default();
    for p in prereqs {
        let wire = wire_of(&p.name);
        if p.ttl != 0 {
            return Err(ResponseCode::FormErr);
        }
        if !in_zone(&wire, &zone.origin_wire) {
            return Err(ResponseCode::NotZone);
        }
        let node = zone.nodes.get(&wire).filter(|n| !n.rrsets.is_empty());
        let rtype = p.record_type();
        match p.dns_class {
            DNSClass::ANY => {
                if !empty_rdata(p) {
                    return Err(ResponseCode::FormErr);
                }
                if rtype == RecordType::ANY {
                    if node.is_none() {
                        return Err(ResponseCode::NXDomain);
                    }
                } else if node.and_then(|n| n.get(rtype)).is_none() {
                    return Err(ResponseCode::NXRRSet);
                }
            }
            DNSClass::NONE => {
                if !empty_rdata(p) {
                    return Err(ResponseCode::FormErr);
                }
                if rtype == RecordType::ANY {
                    if node.is_some() {
                        return Err(ResponseCode::YXDomain);
                    }
                } else if node.and_then(|n| n.get(rtype)).is_some() {
                    return Err(ResponseCode::YXRRSet);
                }
            }
            DNSClass::IN => value_sets.entry((wire, rtype)).or_default().push(&p.data),
            _ => return Err(ResponseCode::FormErr),
        }
    }
    for ((wire, rtype), want) in value_sets {
        let have = zone.nodes.get(&wire).and_then(|n| n.get(rtype));
        let ok = have.is_some_and(|h| h.rdatas.len() == want.len() && want.iter().all(|w| h.rdatas.contains(w)));
        if !ok {
            return Err(ResponseCode::NXRRSet);
        }
    }
    Ok(())
}

/// Checks the update section (RFC 2136 3.4.1).
pub fn prescan(origin: &[u8], updates: &[Record]) -> Result<(), ResponseCode> {
    for u in updates {
        if !in_zone(&wire_of(&u.name), origin) {
            return Err(ResponseCode::NotZone);
        }
        let t = u.record_type();
        match u.dns_class {
            DNSClass::IN if meta(t) || empty_rdata(u) => return Err(ResponseCode::FormErr),
            DNSClass::IN => {}
            DNSClass::ANY if u.ttl != 0 || !empty_rdata(u) || (meta(t) && t != RecordType::ANY) => {
                return Err(ResponseCode::FormErr)
            }
            DNSClass::ANY => {}
            DNSClass::NONE if u.ttl != 0 || meta(t) => return Err(ResponseCode::FormErr),
            DNSClass::NONE => {}
            _ => return Err(ResponseCode::FormErr),
        }
    }
    Ok(())
}

/// Applies a prescanned update section to `zone` (RFC 2136 3.4.2). Returns whether anything changed.
pub fn apply(zone: &mut StaticZone, origin: &[u8], updates: &[Record]) -> bool {
    let mut changed = false;
    for u in updates {
        let wire = wire_of(&u.name);
        let apex = &*wire == origin;
        let t = u.record_type();
        match u.dns_class {
            DNSClass::IN => {
                if t == RecordType::SOA {
                    continue; // the serial is ours; SOA fields come from the config or file
                }
                let (_, sets) = zone.entry(wire).or_insert_with(|| (u.name.clone(), Vec::new()));
                let has_cname = sets.iter().any(|s| s.rtype == RecordType::CNAME);
                let has_other = sets.iter().any(|s| s.rtype != RecordType::CNAME);
                if (t == RecordType::CNAME && has_other) || (t != RecordType::CNAME && has_cname) {
                    continue;
                }
                match sets.iter_mut().find(|s| s.rtype == t) {
                    Some(s) if t == RecordType::CNAME => {
                        if s.rdatas != [u.data.clone()] || s.ttl != u.ttl {
                            s.rdatas = vec![u.data.clone()];
                            s.ttl = u.ttl;
                            changed = true;
                        }
                    }
                    Some(s) => {
                        if s.ttl != u.ttl {
                            s.ttl = u.ttl;
                            changed = true;
                        }
                        if !s.rdatas.contains(&u.data) {
                            s.rdatas.push(u.data.clone());
                            changed = true;
                        }
                    }
                    None => {
                        sets.push(RrSet { rtype: t, ttl: u.ttl, rdatas: vec![u.data.clone()] });
                        changed = true;
                    }
                }
            }
            DNSClass::ANY => {
                if let Some((_, sets)) = zone.get_mut(&wire) {
                    let before = sets.len();
                    sets.retain(|s| {
                        let protected = apex && matches!(s.rtype, RecordType::SOA | RecordType::NS);
                        protected || (t != RecordType::ANY && s.rtype != t)
                    });
                    changed |= sets.len() != before;
                }
            }
            DNSClass::NONE => {
                if let Some((_, sets)) = zone.get_mut(&wire) {
                    for s in sets.iter_mut().filter(|s| s.rtype == t) {
                        if apex && (t == RecordType::SOA || (t == RecordType::NS && s.rdatas.len() == 1)) {
                            continue;
                        }
                        let before = s.rdatas.len();
                        s.rdatas.retain(|d| *d != u.data);
                        changed |= s.rdatas.len() != before;
                    }
                    sets.retain(|s| !s.rdatas.is_empty());
                }
            }
            _ => {}
        }
        if zone.get(&wire_of(&u.name)).is_some_and(|(_, s)| s.is_empty()) {
            zone.remove(&wire_of(&u.name));
        }
    }
    changed
}
