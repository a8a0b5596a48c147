//! The immutable record set of a zone, as served: names, RRsets, pre-rendered answers and the zone's policy.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use ipnet::IpNet;

use crate::fasttable::FastTable;
use crate::sharded::Sharded;
use crate::tsig::TsigKey;
use crate::wire::WireName;

/// Hash map with a fast, randomly seeded hasher.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// Hash set with a fast, randomly seeded hasher.
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// The records of one type at one name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RrSet {
    /// Record type.
    pub rtype: RecordType,
    /// TTL shared by the set.
    pub ttl: u32,
    /// Record data, without duplicates.
    pub rdatas: Vec<RData>,
}

impl RrSet {
    /// The set as records owned by `name`.
    pub fn records(&self, name: &Name) -> impl Iterator<Item = Record> + '_ {
        let name = name.clone();
        self.rdatas.iter().map(move |d| {
            let mut r = Record::from_rdata(name.clone(), self.ttl, d.clone());
            r.dns_class = DNSClass::IN;
            r
        })
    }
}

/// One name of a zone with its RRsets (none for an empty non-terminal).
#[derive(Debug)]
pub struct Node {
    /// Owner name, as written in the zone.
    pub name: Name,
    /// RRsets, sorted by type.
    pub rrsets: Vec<RrSet>,
    /// Hash of the content without the SOA (the zone's content hash is the XOR of its nodes').
    pub hash: u64,
}

impl Node {
    /// A node with a fresh version.
    pub fn new(name: Name, mut rrsets: Vec<RrSet>) -> Node {
        rrsets.sort_by_key(|r| u16::from(r.rtype));
        let mut h = foldhash::fast::FixedState::with_seed(0xd15).build_hasher();
        crate::wire::wire_of(&name).hash(&mut h);
        for s in rrsets.iter().filter(|s| s.rtype != RecordType::SOA) {
            s.hash(&mut h);
        }
        let hash = h.finish();
        Node { name, rrsets, hash }
    }

    /// The RRset of `rtype`.
    pub fn get(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }

    /// Number of records.
    pub fn record_count(&self) -> usize {
        self.rrsets.iter().map(|r| r.rdatas.len()).sum()
    }
}

/// A pre-rendered answer: everything after the question, for every shuffle variant.
#[derive(Debug)]
pub struct Rendered {
    /// Response code (low 4 bits).
    pub rcode: u8,
    /// Authoritative answer bit.
    pub aa: bool,
    /// Answer, authority and additional counts.
    pub counts: [u16; 3],
    /// Record bytes (compression pointers refer to the question at offset 12), one per shuffle order.
    pub variants: Box<[Box<[u8]>]>,
}

/// One step of a zone's history: what changed from one serial to the next (an IXFR difference sequence).
#[derive(Debug)]
pub struct Diff {
    /// SOA before.
    pub from: Record,
    /// SOA after.
    pub to: Record,
    /// Records removed.
    pub removed: Vec<Record>,
    /// Records added.
    pub added: Vec<Record>,
    /// Wire size of the change as journaled (counts against `dns.ixfr_journal_bytes`).
    pub size: usize,
}

/// Who may transfer and update a zone, and where NOTIFY goes.
#[derive(Debug, Clone, Default)]
pub struct ZonePolicy {
    /// Sources allowed to transfer (AXFR/IXFR).
    pub allow_transfer: Vec<IpNet>,
    /// TSIG key required for transfers and used for NOTIFY.
    pub transfer_key: Option<Arc<TsigKey>>,
    /// NOTIFY targets.
    pub notify: Vec<std::net::SocketAddr>,
    /// Sources allowed to update (empty = any source holding the key).
    pub allow_update: Vec<IpNet>,
    /// TSIG key required for updates (none = updates refused).
    pub update_key: Option<Arc<TsigKey>>,
}

impl ZonePolicy {
    /// Whether `ip` is in `nets`.
    pub fn allowed(nets: &[IpNet], ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether `other` grants the same access with the same keys and notifies the same targets.
    pub fn same(&self, other: &ZonePolicy) -> bool {
        self.allow_transfer == other.allow_transfer
            && self.allow_update == other.allow_update
            && self.notify == other.notify
            && self.transfer_key.as_deref() == other.transfer_key.as_deref()
            && self.update_key.as_deref() == other.update_key.as_deref()
    }
}

/// One published version of a zone. Immutable.
#[derive(Debug)]
pub struct ZoneData {
    /// Apex name.
    pub origin: Name,
    /// Apex in lowercase wire form.
    pub origin_wire: WireName,
    /// Current serial.
    pub serial: u32,
    /// The SOA record data (with `serial`).
    pub soa: SOA,
    /// TTL of the SOA in negative answers (min of SOA TTL and MINIMUM).
    pub negative_ttl: u32,
    /// All names (with empty non-terminals), by lowercase wire name.
    pub nodes: Sharded<Arc<Node>>,
    /// Delegation points below the apex.
    pub cuts: FastSet<WireName>,
    /// Wildcard owner names.
    pub wilds: FastSet<WireName>,
    /// Names whose answers include records of a name (CNAME chains, SRV/MX/NS targets): target -> dependents.
    pub rdeps: Sharded<Vec<WireName>>,
    /// Fast-path records by lowercase wire name.
    pub fast: FastTable,
    /// The zone has delegations below the apex.
    pub has_cuts: bool,
    /// Pre-signed (RRSIGs at the apex): answers to queries with the DO bit carry signatures and NSEC proofs.
    pub signed: bool,
    /// The zone has wildcard names.
    pub has_wildcards: bool,
    /// Negative-answer SOA record after its owner name (type, class, TTL, RDLENGTH, RDATA).
    pub neg_tail: Box<[u8]>,
    /// Number of records.
    pub record_count: usize,
    /// Access policy.
    pub policy: ZonePolicy,
    /// Recent changes, oldest first (for IXFR).
    pub ixfr: Vec<Arc<Diff>>,
}

impl ZoneData {
    /// The SOA as a record at the apex with the negative TTL.
    pub fn negative_soa(&self) -> Record {
        Record::from_rdata(self.origin.clone(), self.negative_ttl, RData::SOA(self.soa.clone()))
    }

    /// The SOA as a record at the apex with its own TTL.
    pub fn soa_record(&self) -> Record {
        let ttl =
            self.nodes.get(&self.origin_wire).and_then(|n| n.get(RecordType::SOA)).map_or(self.negative_ttl, |s| s.ttl);
        Record::from_rdata(self.origin.clone(), ttl, RData::SOA(self.soa.clone()))
    }

    /// All records in canonical order with the SOA first (the AXFR body, without the closing SOA).
    pub fn all_records(&self) -> Vec<Record> {
        let mut out = vec![self.soa_record()];
        let mut names: Vec<&Arc<Node>> = self.nodes.values().collect();
        names.sort_by(|a, b| a.name.cmp(&b.name));
        for n in names {
            for rs in &n.rrsets {
                if rs.rtype == RecordType::SOA {
                    continue;
                }
                out.extend(rs.records(&n.name));
            }
        }
        out
    }
}

/// All zones served, published as one immutable value.
#[derive(Debug, Default)]
pub struct ZoneSet {
    /// Zones.
    pub zones: Vec<Arc<ZoneData>>,
    /// Zone index by apex wire name.
    pub by_origin: FastMap<WireName, usize>,
    /// Changes whenever any zone changes (used to reset per-worker caches).
    pub generation: u64,
    /// TSIG keys by name.
    pub keys: Vec<Arc<TsigKey>>,
    /// EDNS payload size the server advertises.
    pub edns_payload: u16,
    /// Answer to CH TXT `version.bind`/`version.server` (`None`: REFUSED).
    pub version: Option<Arc<str>>,
    /// Answer to CH TXT `id.server`/`hostname.bind` (`None`: REFUSED).
    pub identity: Option<Arc<str>>,
}

impl ZoneSet {
    /// The zone `wire` falls in (longest match), with the apex offset inside `wire`.
    pub fn find(&self, wire: &[u8]) -> Option<(&Arc<ZoneData>, usize)> {
        self.locate(wire).and_then(|(i, pos)| self.zones.get(i).map(|z| (z, pos)))
    }

    /// Index of the zone `wire` falls in.
    pub fn find_index(&self, wire: &[u8]) -> Option<usize> {
        self.locate(wire).map(|(i, _)| i)
    }

    /// Index of the zone `wire` falls in and the apex offset inside `wire`.
    pub fn locate(&self, wire: &[u8]) -> Option<(usize, usize)> {
        if self.zones.len() <= 8 {
            // Few zones: compare suffixes directly instead of hashing every suffix of the name.
            let mut best: Option<(usize, usize)> = None;
            for (i, z) in self.zones.iter().enumerate() {
                let o = &z.origin_wire[..];
                if o.len() > wire.len() || wire[wire.len() - o.len()..] != *o {
                    continue;
                }
                let at = wire.len() - o.len();
                if best.is_some_and(|(_, b)| b <= at) {
                    continue; // a longer (more specific) origin already matched
                }
                let mut pos = 0usize;
                while pos < at {
                    pos += 1 + wire[pos] as usize;
                }
                if pos == at {
                    best = Some((i, at));
                }
            }
            return best;
        }
        let mut pos = 0usize;
        loop {
            let w = wire.get(pos..)?;
            if let Some(i) = self.by_origin.get(w) {
                return Some((*i, pos));
            }
            let len = *w.first()? as usize;
            if len == 0 {
                return None;
            }
            pos += 1 + len;
        }
    }
}
