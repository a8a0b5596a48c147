//! One zone's inputs and its build: master file + accepted updates (persisted in a journal) + generated records,
//! merged into a new immutable [`ZoneData`] whose serial is bumped (RFC 1982) only when the content changes.

use std::collections::VecDeque;
use std::fs;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use padis_model::dns::DnsZone;

use crate::generate::GenRecord;
use crate::render::{build_fast, negative_tail};
use crate::update::{self, StaticZone};
use crate::wire::{in_zone, parent, wire_of, WireName};
use crate::zone::{FastMap, Node, RrSet, ZoneData, ZonePolicy};

/// A zone that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The zone name is not a DNS name.
    #[error("zone `{0}`: invalid name: {1}")]
    Name(String, String),
    /// The master file cannot be read.
    #[error("zone {zone}: {path}: {msg}")]
    File {
        /// Zone.
        zone: String,
        /// File.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// The journal of updates cannot be read or written.
    #[error("zone {zone}: journal {path}: {msg}")]
    Journal {
        /// Zone.
        zone: String,
        /// File.
        path: String,
        /// What went wrong.
        msg: String,
    },
}

/// One step of the zone's history, for IXFR.
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
}

/// RFC 1982: whether `a` is greater than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// The inputs and state of one zone, owned by the zone manager.
pub struct ZoneSource {
    /// Config of the zone.
    pub cfg: DnsZone,
    /// Apex.
    pub origin: Name,
    origin_wire: WireName,
    file: Option<PathBuf>,
    file_stamp: Option<(std::time::SystemTime, u64)>,
    file_records: StaticZone,
    file_soa: Option<(SOA, u32)>,
    /// Master file plus accepted updates.
    pub statics: StaticZone,
    journal_path: PathBuf,
    serial_path: PathBuf,
    /// Current serial.
    pub serial: u32,
    persisted_hash: Option<u64>,
    ixfr: VecDeque<Arc<Diff>>,
    ixfr_cap: usize,
    /// Last published build.
    pub current: Option<Arc<ZoneData>>,
    /// Last load error (the previous content stays served).
    pub error: Option<String>,
}

fn file_name(origin: &Name) -> String {
    let s = origin.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    if s.is_empty() {
        "root".into()
    } else {
        s.replace('/', "_")
    }
}

fn add_record(map: &mut StaticZone, name: &Name, ttl: u32, rdata: RData) {
    let (_, sets) = map.entry(wire_of(name)).or_insert_with(|| (name.clone(), Vec::new()));
    let rtype = rdata.record_type();
    match sets.iter_mut().find(|s| s.rtype == rtype) {
        Some(s) => {
            if !s.rdatas.contains(&rdata) {
                s.rdatas.push(rdata);
            }
        }
        None => sets.push(RrSet { rtype, ttl, rdatas: vec![rdata] }),
    }
}

impl ZoneSource {
    /// Loads a zone: its master file, then the journal of updates accepted before a restart, and its last serial.
    pub fn load(cfg: &DnsZone, base: &Path, state_dir: &Path, ixfr_cap: usize) -> Result<ZoneSource, ZoneError> {
        let mut origin = Name::from_ascii(&cfg.name).map_err(|e| ZoneError::Name(cfg.name.clone(), e.to_string()))?;
        origin.set_fqdn(true);
        let origin = origin.to_lowercase();
        let fname = file_name(&origin);
        let mut z = ZoneSource {
            cfg: cfg.clone(),
            origin_wire: wire_of(&origin),
            origin,
            file: cfg.file.as_ref().map(|f| base.join(f)),
            file_stamp: None,
            file_records: StaticZone::default(),
            file_soa: None,
            statics: StaticZone::default(),
            journal_path: state_dir.join(format!("{fname}.journal")),
            serial_path: state_dir.join(format!("{fname}.serial")),
            serial: 0,
            persisted_hash: None,
            ixfr: VecDeque::new(),
            ixfr_cap,
            current: None,
            error: None,
        };
        z.reload_file(true)?;
        z.statics = z.file_records.clone();
        z.replay_journal()?;
        if let Ok(text) = fs::read_to_string(&z.serial_path) {
            let mut it = text.split_whitespace();
            if let (Some(Ok(s)), Some(Ok(h))) = (it.next().map(str::parse), it.next().map(str::parse)) {
                z.serial = s;
                z.persisted_hash = Some(h);
            }
        }
        if let Some((soa, _)) = &z.file_soa {
            if serial_gt(soa.serial, z.serial) || z.persisted_hash.is_none() {
                // The file's own serial already stands for this content.
                z.serial = soa.serial;
                z.persisted_hash = None;
            }
        }
        Ok(z)
    }

    /// Re-reads the master file if it changed on disk. On error the previous records stay.
    pub fn reload_file(&mut self, force: bool) -> Result<bool, ZoneError> {
        let Some(path) = self.file.clone() else { return Ok(false) };
        let err = |msg: String| ZoneError::File { zone: self.cfg.name.clone(), path: path.display().to_string(), msg };
        let meta = fs::metadata(&path).map_err(|e| err(e.to_string()))?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if !force && self.file_stamp == Some(stamp) {
            return Ok(false);
        }
        let text = fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let (_, sets) = Parser::new(text, Some(path.clone()), Some(self.origin.clone())).parse().map_err(|e| err(e.to_string()))?;
        let mut records = StaticZone::default();
        let mut soa = None;
        for (_, set) in sets {
            for r in set.records_without_rrsigs() {
                if !in_zone(&wire_of(&r.name), &self.origin_wire) {
                    return Err(err(format!("{} is outside the zone", r.name)));
                }
                match &r.data {
                    RData::SOA(s) if wire_of(&r.name) == self.origin_wire => soa = Some((s.clone(), r.ttl)),
                    RData::SOA(_) => return Err(err(format!("SOA at {} is not at the apex", r.name))),
                    d => add_record(&mut records, &r.name, r.ttl, d.clone()),
                }
            }
        }
        let old = std::mem::replace(&mut self.file_records, records);
        // Keep the records added by updates: replace only what came from the file.
        for (w, (_, sets)) in &old {
            if let Some((_, cur)) = self.statics.get_mut(w) {
                cur.retain(|s| !sets.contains(s));
            }
        }
        for (w, (n, sets)) in &self.file_records {
            let (_, cur) = self.statics.entry(w.clone()).or_insert_with(|| (n.clone(), Vec::new()));
            for s in sets {
                if !cur.iter().any(|c| c.rtype == s.rtype) {
                    cur.push(s.clone());
                }
            }
        }
        self.statics.retain(|_, (_, s)| !s.is_empty());
        self.file_soa = soa;
        self.file_stamp = Some(stamp);
        Ok(true)
    }

    fn journal_err(&self, msg: impl ToString) -> ZoneError {
        ZoneError::Journal {
            zone: self.cfg.name.clone(),
            path: self.journal_path.display().to_string(),
            msg: msg.to_string(),
        }
    }

    fn replay_journal(&mut self) -> Result<(), ZoneError> {
        let mut f = match fs::File::open(&self.journal_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.journal_err(e)),
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| self.journal_err(e))?;
        let mut pos = 0;
        while pos + 4 <= buf.len() {
            let len = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            let Some(bytes) = buf.get(pos + 4..pos + 4 + len) else {
                tracing::warn!(zone = %self.origin, "journal ends with a partial entry (ignored)");
                break;
            };
            let msg = Message::from_vec(bytes).map_err(|e| self.journal_err(e))?;
            update::apply(&mut self.statics, &self.origin_wire, &msg.authorities);
            pos += 4 + len;
        }
        Ok(())
    }

    /// Persists an accepted update (fsync'ed before the client gets NOERROR).
    pub fn append_journal(&self, updates: &[Record]) -> Result<(), ZoneError> {
        let mut msg = Message::new(0, MessageType::Query, OpCode::Update);
        msg.add_query(Query::query(self.origin.clone(), RecordType::SOA));
        msg.authorities = updates.to_vec();
        let bytes = msg.to_vec().map_err(|e| self.journal_err(e))?;
        if let Some(dir) = self.journal_path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.journal_err(e))?;
        }
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&self.journal_path).map_err(|e| self.journal_err(e))?;
        let mut entry = (bytes.len() as u32).to_be_bytes().to_vec();
        entry.extend_from_slice(&bytes);
        f.write_all(&entry).and_then(|_| f.sync_data()).map_err(|e| self.journal_err(e))
    }

    fn soa(&self, serial: u32) -> (SOA, u32) {
        let neg = self.cfg.negative_ttl.as_secs() as u32;
        if let Some((s, ttl)) = &self.file_soa {
            let mut s = s.clone();
            s.serial = serial;
            return (s, *ttl);
        }
        let mname = self
            .cfg
            .soa
            .mname
            .clone()
            .or_else(|| self.cfg.ns.first().map(|n| n.name.clone()))
            .and_then(|m| Name::from_ascii(m).ok())
            .map(|mut m| {
                m.set_fqdn(true);
                m
            })
            .unwrap_or_else(|| self.origin.prepend_label("ns").unwrap_or_else(|_| self.origin.clone()));
        let rname = self
            .cfg
            .soa
            .rname
            .clone()
            .and_then(|m| Name::from_ascii(m).ok())
            .map(|mut m| {
                m.set_fqdn(true);
                m
            })
            .unwrap_or_else(|| self.origin.prepend_label("hostmaster").unwrap_or_else(|_| self.origin.clone()));
        let c = &self.cfg.soa;
        let soa = SOA::new(
            mname,
            rname,
            serial,
            c.refresh.as_secs() as i32,
            c.retry.as_secs() as i32,
            c.expire.as_secs() as i32,
            neg,
        );
        (soa, neg)
    }

    /// Builds the zone from the static records and `generated`. Returns the new version when it differs from the
    /// current one (serial bumped), `None` when nothing changed.
    pub fn build(&mut self, generated: &[Arc<Vec<GenRecord>>], policy: ZonePolicy) -> Option<Arc<ZoneData>> {
        let ttl = self.cfg.ttl.as_secs() as u32;
        let mut map = self.statics.clone();
        for set in generated {
            for r in set.iter() {
                add_record(&mut map, &r.name, ttl, r.rdata.clone());
            }
        }
        // Apex NS and glue from the config (when the file gives none).
        let apex_has_ns = map.get(&self.origin_wire).is_some_and(|(_, s)| s.iter().any(|s| s.rtype == RecordType::NS));
        if !apex_has_ns {
            for ns in &self.cfg.ns {
                let Ok(mut n) = Name::from_ascii(&ns.name) else { continue };
                n.set_fqdn(true); // config names are absolute
                let nttl = self.cfg.soa.refresh.as_secs().max(ttl as u64) as u32;
                add_record(&mut map, &self.origin, nttl, RData::NS(NS(n.clone())));
                if in_zone(&wire_of(&n), &self.origin_wire) {
                    for a in &ns.addrs {
                        let d = match a {
                            std::net::IpAddr::V4(v) => RData::A(v.to_owned().into()),
                            std::net::IpAddr::V6(v) => RData::AAAA(v.to_owned().into()),
                        };
                        add_record(&mut map, &n, nttl, d);
                    }
                }
            }
        }
        // Empty non-terminals.
        let names: Vec<WireName> = map.keys().cloned().collect();
        for w in names {
            let mut p = parent(&w);
            while let Some(pw) = p {
                if pw.len() < self.origin_wire.len() {
                    break;
                }
                if !map.contains_key(pw) {
                    let mut n = map[&w].0.clone();
                    let mut cur: &[u8] = &w;
                    while cur != pw {
                        n = n.base_name();
                        cur = parent(cur).unwrap_or(pw);
                    }
                    map.insert(pw.into(), (n, Vec::new()));
                }
                p = parent(pw);
            }
        }
        map.entry(self.origin_wire.clone()).or_insert_with(|| (self.origin.clone(), Vec::new()));

        let prev = self.current.clone();
        let (old_soa, soa_ttl) = self.soa(self.serial);
        let mut nodes: FastMap<WireName, Arc<Node>> = FastMap::with_capacity_and_hasher(map.len(), Default::default());
        let mut changed = prev.is_none();
        let mut removed = Vec::new();
        let mut added = Vec::new();
        for (w, (name, mut sets)) in map {
            if w == self.origin_wire {
                sets.retain(|s| s.rtype != RecordType::SOA);
                sets.push(RrSet { rtype: RecordType::SOA, ttl: soa_ttl, rdatas: vec![RData::SOA(old_soa.clone())] });
            }
            sets.sort_by_key(|r| u16::from(r.rtype));
            let old = prev.as_ref().and_then(|p| p.nodes.get(&w));
            let node = match old {
                Some(o) if o.rrsets == sets => o.clone(),
                _ => {
                    if prev.is_some() {
                        changed = true;
                        diff_node(old.map(|o| &o.rrsets[..]).unwrap_or(&[]), &sets, &name, &mut removed, &mut added);
                    }
                    Arc::new(Node::new(name, sets))
                }
            };
            nodes.insert(w, node);
        }
        if let Some(p) = &prev {
            for (w, o) in &p.nodes {
                if !nodes.contains_key(w) {
                    changed = true;
                    diff_node(&o.rrsets, &[], &o.name, &mut removed, &mut added);
                }
            }
        }
        if !changed {
            return None;
        }
        let hash = content_hash(&nodes);
        let first = prev.is_none();
        if first && self.persisted_hash.is_none() {
            self.persist_serial(hash);
        } else if !first || self.persisted_hash != Some(hash) {
            let next = self.serial.wrapping_add(1);
            let from = Record::from_rdata(self.origin.clone(), soa_ttl, RData::SOA(old_soa.clone()));
            self.serial = next;
            let (new_soa, _) = self.soa(next);
            let to = Record::from_rdata(self.origin.clone(), soa_ttl, RData::SOA(new_soa.clone()));
            if let Some(apex) = nodes.get(&self.origin_wire) {
                let mut sets = apex.rrsets.clone();
                for s in sets.iter_mut().filter(|s| s.rtype == RecordType::SOA) {
                    s.rdatas = vec![RData::SOA(new_soa.clone())];
                }
                let name = apex.name.clone();
                nodes.insert(self.origin_wire.clone(), Arc::new(Node::new(name, sets)));
            }
            removed.retain(|r: &Record| r.record_type() != RecordType::SOA);
            added.retain(|r: &Record| r.record_type() != RecordType::SOA);
            if !first {
                self.ixfr.push_back(Arc::new(Diff { from, to, removed, added }));
                while self.ixfr.len() > self.ixfr_cap {
                    self.ixfr.pop_front();
                }
            }
            self.persist_serial(hash);
        }
        let (soa, _) = self.soa(self.serial);
        let negative_ttl = soa_ttl.min(soa.minimum);
        let has_cuts = nodes
            .iter()
            .any(|(w, n)| w.len() > self.origin_wire.len() && n.get(RecordType::NS).is_some());
        let has_wildcards = nodes.keys().any(|w| w.starts_with(b"\x01*"));
        let neg = Record::from_rdata(self.origin.clone(), negative_ttl, RData::SOA(soa.clone()));
        let record_count = nodes.values().map(|n| n.record_count()).sum();
        let mut data = ZoneData {
            origin: self.origin.clone(),
            origin_wire: self.origin_wire.clone(),
            serial: self.serial,
            soa,
            negative_ttl,
            nodes,
            fast: FastMap::default(),
            has_cuts,
            has_wildcards,
            neg_tail: negative_tail(&neg),
            record_count,
            policy,
            ixfr: self.ixfr.iter().cloned().collect(),
        };
        data.fast = build_fast(&data, prev.as_deref());
        let data = Arc::new(data);
        self.current = Some(data.clone());
        Some(data)
    }

    fn persist_serial(&mut self, hash: u64) {
        self.persisted_hash = Some(hash);
        let tmp = self.serial_path.with_extension("serial.tmp");
        let res = self
            .serial_path
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|_| fs::write(&tmp, format!("{} {hash}\n", self.serial)))
            .and_then(|_| fs::rename(&tmp, &self.serial_path));
        if let Err(e) = res {
            tracing::warn!(zone = %self.origin, error = %e, "cannot persist the serial");
        }
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

fn content_hash(nodes: &FastMap<WireName, Arc<Node>>) -> u64 {
    let seed = foldhash::fast::FixedState::with_seed(0xd15);
    let mut acc = 0u64;
    for (w, n) in nodes {
        let mut h = seed.build_hasher();
        w.hash(&mut h);
        for s in n.rrsets.iter().filter(|s| s.rtype != RecordType::SOA) {
            s.hash(&mut h);
        }
        acc ^= h.finish();
    }
    acc
}
