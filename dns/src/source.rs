//! One zone's inputs and its build: master file + accepted updates (persisted in a journal) + generated records,
//! merged into a new immutable [`ZoneData`] whose serial is bumped (RFC 1982) only when the content changes.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use padis_model::dns::{DnsZone, SerialPolicy};

use crate::generate::GenRecord;
use crate::journal::{encode_change, Entry, Journal, JournalError};
use crate::render::{negative_tail, update_fast};
use crate::serial_file::SerialFile;
use crate::resolve::dependencies;
use crate::update::{self, StaticZone};
use crate::wire::{in_zone, parent, wire_of, WireName};
use crate::zone::{FastMap, FastSet, Node, RrSet, ZoneData, ZonePolicy};

/// A zone that cannot be loaded.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// Wire size of the change as journaled (counts against `dns.ixfr_journal_bytes`).
    pub size: usize,
}

/// How long the IXFR history of a zone may get.
#[derive(Debug, Clone, Copy)]
pub struct HistoryBounds {
    /// Most changes kept.
    pub changes: usize,
    /// Most bytes of changes kept.
    pub bytes: u64,
}

/// RFC 1982: whether `a` is greater than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

fn unix_now() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
}

/// The serial after `serial` under `policy` (always greater in RFC 1982 arithmetic).
pub fn next_serial(policy: SerialPolicy, serial: u32) -> u32 {
    let inc = serial.wrapping_add(1);
    match policy {
        SerialPolicy::Unixtime if serial_gt(unix_now(), inc) => unix_now(),
        _ => inc,
    }
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
    /// Stamp of a file version that failed to load (not read again until it changes).
    bad_stamp: Option<(std::time::SystemTime, u64)>,
    /// The SOA serial of a file version read since the last build (taken if above the served one).
    file_serial: Option<u32>,
    /// Why the serial served is not the file's, after the last file reload (a file serial not raised).
    pub serial_note: Option<String>,
    /// Master file plus accepted updates.
    pub statics: StaticZone,
    journal: Journal,
    serial_file: SerialFile,
    /// Current serial.
    pub serial: u32,
    serial_policy: SerialPolicy,
    persisted_hash: Option<u64>,
    ixfr: VecDeque<Arc<Diff>>,
    ixfr_bytes: u64,
    bounds: HistoryBounds,
    /// Last published build.
    pub current: Option<Arc<ZoneData>>,
    /// Last load error (the previous content stays served).
    pub error: Option<String>,
    index: FastMap<WireName, NameData>,
    /// The generated groups of the last build, in the order they came.
    groups: Vec<Arc<Vec<GenRecord>>>,
    applied_statics: StaticZone,
    statics_dirty: bool,
    hash: u64,
    /// Names where several generated sources publish addresses.
    pub collisions: FastMap<WireName, String>,
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
    /// Loads a zone: its master file, then the journal (updates accepted before a restart and the recent changes),
    /// and its last serial.
    pub fn load(cfg: &DnsZone, base: &Path, state_dir: &Path, bounds: HistoryBounds) -> Result<ZoneSource, ZoneError> {
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
            bad_stamp: None,
            file_serial: None,
            serial_note: None,
            statics: StaticZone::default(),
            journal: Journal::new(state_dir.join(format!("{fname}.journal"))),
            serial_file: SerialFile::new(state_dir.join(format!("{fname}.serial"))),
            serial: 0,
            serial_policy: SerialPolicy::Increment,
            persisted_hash: None,
            ixfr: VecDeque::new(),
            ixfr_bytes: 0,
            bounds,
            current: None,
            error: None,
            index: FastMap::default(),
            groups: Vec::new(),
            applied_statics: StaticZone::default(),
            statics_dirty: true,
            hash: 0,
            collisions: FastMap::default(),
        };
        z.reload_file(true)?;
        z.file_serial = None; // the serial to resume from is chosen below
        z.serial_policy = cfg.serial_policy.unwrap_or(if z.file_soa.is_some() {
            SerialPolicy::Increment
        } else {
            SerialPolicy::Unixtime
        });
        z.statics = z.file_records.clone();
        let changes = z.replay_journal()?;
        if let Some((s, h)) = z.serial_file.read() {
            z.serial = s;
            z.persisted_hash = Some(h);
        }
        match &z.file_soa {
            Some((soa, _)) if serial_gt(soa.serial, z.serial) || z.persisted_hash.is_none() => {
                // The file's own serial already stands for this content.
                z.serial = soa.serial;
                z.persisted_hash = None;
            }
            None if z.persisted_hash.is_none() => {
                // A new zone: its first serial (a state directory that was wiped starts from the clock again).
                z.serial = match z.serial_policy {
                    SerialPolicy::Unixtime => unix_now(),
                    SerialPolicy::Increment => 1,
                };
            }
            _ => {}
        }
        // Keep the changes that lead, without a gap, to the serial the zone resumes from.
        let mut tail = Vec::new();
        let mut want = z.serial;
        for d in changes.into_iter().rev() {
            if soa_serial(&d.to) != Some(want) {
                break;
            }
            want = soa_serial(&d.from).unwrap_or(want);
            tail.push(d);
        }
        for d in tail.into_iter().rev() {
            z.push_change(Arc::new(d));
        }
        tracing::debug!(zone = %z.origin, serial = z.serial, changes = z.ixfr.len(), "zone loaded");
        Ok(z)
    }

    /// Adds a change to the IXFR history, dropping the oldest beyond the bounds. Returns whether it was kept.
    fn push_change(&mut self, d: Arc<Diff>) -> bool {
        self.ixfr_bytes += d.size as u64;
        self.ixfr.push_back(d);
        while self.ixfr.len() > self.bounds.changes || self.ixfr_bytes > self.bounds.bytes {
            match self.ixfr.pop_front() {
                Some(old) => self.ixfr_bytes -= old.size as u64,
                None => break,
            }
        }
        !self.ixfr.is_empty()
    }

    /// Replaces the kept groups by `generated`; returns the groups that went away and those that came.
    /// Groups usually come in the same order (one per service), so a positional pointer comparison finds the few
    /// that changed without hashing or touching the others; any shift falls back to a set comparison.
    fn regroup(&mut self, generated: &[Arc<Vec<GenRecord>>]) -> (Vec<Arc<Vec<GenRecord>>>, Vec<Arc<Vec<GenRecord>>>) {
        if self.groups.len() == generated.len() {
            let differ = self.groups.iter().zip(generated).filter(|(o, n)| !Arc::ptr_eq(o, n)).count();
            // Few differ in place: a group that only moved is then both gone and came (removed, added back).
            // Many differ (e.g. a service inserted early shifts the rest): compare as sets instead.
            if differ <= generated.len() / 4 + 8 {
                let (mut gone, mut came) = (Vec::with_capacity(differ), Vec::with_capacity(differ));
                for (old, new) in self.groups.iter_mut().zip(generated) {
                    if !Arc::ptr_eq(old, new) {
                        gone.push(std::mem::replace(old, new.clone()));
                        came.push(new.clone());
                    }
                }
                return (gone, came);
            }
        }
        let before: FastSet<usize> = self.groups.iter().map(group_id).collect();
        let after: FastSet<usize> = generated.iter().map(group_id).collect();
        let old = std::mem::replace(&mut self.groups, generated.to_vec());
        let gone = old.into_iter().filter(|g| !after.contains(&group_id(g))).collect();
        let came = generated.iter().filter(|g| !before.contains(&group_id(g))).cloned().collect();
        (gone, came)
    }

    /// Changes how much IXFR history is kept (applies from the next change).
    pub fn set_bounds(&mut self, bounds: HistoryBounds) {
        self.bounds = bounds;
    }

    /// Forgets the IXFR history (the content changed in a way no change describes).
    fn clear_history(&mut self) {
        self.ixfr.clear();
        self.ixfr_bytes = 0;
        self.compact_journal();
    }

    fn compact_journal(&mut self) {
        let res = self.journal.compact(&self.origin, &self.file_records, &self.statics, self.ixfr.iter().map(|d| &**d));
        if let Err(e) = res {
            tracing::warn!(zone = %self.origin, error = %e, "journal not compacted");
        }
    }

    /// Re-reads the master file if it changed on disk (or always, with `force`). Returns whether it was read.
    /// On error the previous records stay; a file that failed to load is not read again until it changes
    /// (`Ok(false)`), unless forced.
    pub fn reload_file(&mut self, force: bool) -> Result<bool, ZoneError> {
        let Some(path) = self.file.clone() else { return Ok(false) };
        let err = |msg: String| ZoneError::File { zone: self.cfg.name.clone(), path: path.display().to_string(), msg };
        let meta = fs::metadata(&path).map_err(|e| err(e.to_string()))?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if !force && (self.file_stamp == Some(stamp) || self.bad_stamp == Some(stamp)) {
            return Ok(false);
        }
        let (records, soa) = match parse_zone_file(&self.cfg.name, &path, &self.origin) {
            Ok(x) => x,
            Err(e) => {
                self.bad_stamp = Some(stamp);
                return Err(e);
            }
        };
        self.bad_stamp = None;
        self.file_serial = soa.as_ref().map(|(s, _): &(SOA, u32)| s.serial);
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
        self.statics_dirty = true;
        Ok(true)
    }

    fn journal_err(&self, e: JournalError) -> ZoneError {
        ZoneError::Journal { zone: self.cfg.name.clone(), path: e.path, msg: e.msg }
    }

    /// Replays the journal's updates over the static records; returns its changes, oldest first.
    fn replay_journal(&mut self) -> Result<Vec<Diff>, ZoneError> {
        let entries = self.journal.read().map_err(|e| self.journal_err(e))?;
        let mut changes = Vec::new();
        for e in entries {
            match e {
                Entry::Update(u) => {
                    update::apply(&mut self.statics, &self.origin_wire, &u);
                }
                Entry::Change(d) => changes.push(d),
            }
        }
        Ok(changes)
    }

    /// Persists an accepted update (fsync'ed before the client gets NOERROR).
    pub fn append_journal(&mut self, updates: &[Record]) -> Result<(), ZoneError> {
        self.journal.append_update(&self.origin, updates).map_err(|e| self.journal_err(e))
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

    /// Replaces the static records (after an accepted update); the next build applies them.
    pub fn set_statics(&mut self, statics: StaticZone) {
        self.statics = statics;
        self.statics_dirty = true;
    }

    /// The static records plus the apex NS and glue from the config (when the file gives no apex NS).
    fn effective_statics(&self, ttl: u32) -> StaticZone {
        let mut map = self.statics.clone();
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
        map
    }

    /// Builds the next version of the zone from the static records and the `generated` groups (one per service;
    /// an unchanged service is the same `Arc`, so only changed services' names are rebuilt and re-rendered).
    /// Returns the new version when its content (serial bumped) or its policy changed, `None` otherwise.
    pub fn build(&mut self, generated: &[Arc<Vec<GenRecord>>], policy: ZonePolicy) -> Option<Arc<ZoneData>> {
        let ttl = self.cfg.ttl.as_secs() as u32;
        let prev = self.current.clone();
        let mut touched: FastSet<WireName> = FastSet::default();

        // Generated groups that appeared or disappeared.
        let (gone, came) = self.regroup(generated);
        for g in &gone {
            let id = group_id(g);
            for r in g.iter() {
                let w = wire_of(&r.name);
                if let Some(nd) = self.index.get_mut(&w) {
                    nd.contrib.retain(|c| c.src != id);
                }
                touched.insert(w);
            }
        }
        for g in &came {
            let id = group_id(g);
            for r in g.iter() {
                let w = wire_of(&r.name);
                let nd = self.index.entry(w.clone()).or_insert_with(|| NameData::new(r.name.clone()));
                nd.contrib.push(Contrib { src: id, ttl, rdata: r.rdata.clone(), origin: Some(r.origin.clone()) });
                touched.insert(w);
            }
        }
        drop(gone);

        // Static records (file, updates, config NS) when they changed.
        if self.statics_dirty {
            let eff = self.effective_statics(ttl);
            for w in self.applied_statics.keys() {
                if let Some(nd) = self.index.get_mut(w) {
                    nd.contrib.retain(|c| c.src != STATIC);
                }
                touched.insert(w.clone());
            }
            for (w, (n, sets)) in &eff {
                let nd = self.index.entry(w.clone()).or_insert_with(|| NameData::new(n.clone()));
                for set in sets {
                    for d in &set.rdatas {
                        nd.contrib.push(Contrib { src: STATIC, ttl: set.ttl, rdata: d.clone(), origin: None });
                    }
                }
                touched.insert(w.clone());
            }
            self.applied_statics = eff;
            self.statics_dirty = false;
        }
        touched.insert(self.origin_wire.clone());
        self.index.entry(self.origin_wire.clone()).or_insert_with(|| NameData::new(self.origin.clone()));

        // Presence changes update the descendant counts of the ancestors (empty non-terminals).
        let mut affected: Vec<WireName> = touched.iter().cloned().collect();
        for w in touched.iter() {
            let Some(nd) = self.index.get_mut(w) else { continue };
            let has = !nd.contrib.is_empty();
            if has == nd.has_data {
                continue;
            }
            nd.has_data = has;
            let mut name = nd.name.clone();
            let mut cur: &[u8] = w;
            while let Some(p) = parent(cur) {
                if p.len() < self.origin_wire.len() {
                    break;
                }
                name = name.base_name();
                let pw: WireName = p.into();
                let pd = self.index.entry(pw.clone()).or_insert_with(|| NameData::new(name.clone()));
                if has {
                    pd.below += 1;
                } else {
                    pd.below = pd.below.saturating_sub(1);
                }
                affected.push(pw);
                cur = p;
            }
        }
        affected.sort_unstable();
        affected.dedup();

        // Rebuild the affected names; keep the previous node when the content is the same.
        let (old_soa, soa_ttl) = self.soa(self.serial);
        let mut nodes = prev.as_ref().map(|p| p.nodes.clone()).unwrap_or_default();
        let mut changed_names: Vec<WireName> = Vec::new();
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        let mut hash = self.hash;
        for w in &affected {
            let is_apex = **w == *self.origin_wire;
            let exists = self.index.get(w).is_some_and(|nd| nd.has_data || nd.below > 0) || is_apex;
            let old = nodes.get(w).cloned();
            if !exists {
                self.index.remove(w);
                self.collisions.remove(w);
                if let Some(o) = old {
                    nodes.remove(w);
                    hash ^= o.hash;
                    diff_node(&o.rrsets, &[], &o.name, &mut removed, &mut added);
                    changed_names.push(w.clone());
                }
                continue;
            }
            let Some(nd) = self.index.get(w) else { continue };
            match nd.collision() {
                Some(c) => {
                    if self.collisions.insert(w.clone(), c.clone()).is_none() {
                        tracing::warn!(collision = %c, "DNS name collision");
                    }
                }
                None => {
                    self.collisions.remove(w);
                }
            }
            let mut sets = nd.rrsets();
            if is_apex {
                sets.retain(|s| s.rtype != RecordType::SOA);
                sets.push(RrSet { rtype: RecordType::SOA, ttl: soa_ttl, rdatas: vec![RData::SOA(old_soa.clone())] });
            }
            if old.as_ref().is_some_and(|o| same_content(&o.rrsets, &sets)) {
                continue;
            }
            let node = Arc::new(Node::new(nd.name.clone(), sets));
            if let Some(o) = &old {
                hash ^= o.hash;
            }
            hash ^= node.hash;
            diff_node(old.as_ref().map(|o| &o.rrsets[..]).unwrap_or(&[]), &node.rrsets, &node.name, &mut removed, &mut added);
            nodes.insert(w.clone(), node);
            changed_names.push(w.clone());
        }
        let policy_changed = prev.as_ref().is_some_and(|p| !same_policy(&p.policy, &policy));
        // A file read since the last build: a higher serial in it is taken (even with no other change); a lower
        // or unchanged one with new content gets the served serial + 1, and a note says so.
        let file_serial = self.file_serial.take();
        let raise = file_serial.filter(|f| serial_gt(*f, self.serial));
        if let Some(f) = file_serial {
            self.serial_note = None;
            if raise.is_none() && (serial_gt(self.serial, f) || !changed_names.is_empty()) && prev.is_some() {
                let served = if changed_names.is_empty() { self.serial } else { next_serial(self.serial_policy, self.serial) };
                let note = format!(
                    "zone file serial {f} is not above the served serial {}; serving {served} (raise the file's serial above it)",
                    self.serial
                );
                tracing::warn!(zone = %self.origin, "{note}");
                self.serial_note = Some(note);
            }
        }
        if prev.is_some() && changed_names.is_empty() && !policy_changed && raise.is_none() {
            return None;
        }
        self.hash = hash;
        let first = prev.is_none();
        if !changed_names.is_empty() || (raise.is_some() && !first) {
            if first && self.persisted_hash.is_none() {
                self.persist_serial(hash);
            } else if !first || self.persisted_hash != Some(hash) {
                let next = raise.unwrap_or_else(|| next_serial(self.serial_policy, self.serial));
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
                    changed_names.push(self.origin_wire.clone());
                }
                removed.retain(|r: &Record| r.record_type() != RecordType::SOA);
                added.retain(|r: &Record| r.record_type() != RecordType::SOA);
                if first {
                    // Restarted on content that differs from the last serial's: no change describes the step.
                    self.clear_history();
                } else {
                    let mut diff = Diff { from, to, removed, added, size: 0 };
                    match encode_change(&diff) {
                        Ok(bytes) => {
                            diff.size = bytes.len();
                            if self.push_change(Arc::new(diff)) {
                                if let Err(e) = self.journal.append_change(bytes) {
                                    tracing::warn!(zone = %self.origin, error = %e, "change not journaled");
                                }
                            }
                            if self.journal.oversized(self.bounds.changes, self.bounds.bytes) {
                                self.compact_journal();
                            }
                        }
                        Err(e) => {
                            tracing::warn!(zone = %self.origin, error = %e, "change too large to keep; IXFR falls back to AXFR");
                            self.clear_history();
                        }
                    }
                }
                self.persist_serial(hash);
            }
        }

        // Structure (delegations, wildcards) and reverse dependencies of the changed names.
        let mut cuts = prev.as_ref().map(|p| p.cuts.clone()).unwrap_or_default();
        let mut wilds = prev.as_ref().map(|p| p.wilds.clone()).unwrap_or_default();
        let mut rdeps = prev.as_ref().map(|p| p.rdeps.clone()).unwrap_or_default();
        let (cuts_before, wilds_before) = (cuts.len(), wilds.len());
        let mut structure_changed = false;
        for w in &changed_names {
            let node = nodes.get(w);
            let is_cut = node.is_some_and(|n| n.get(RecordType::NS).is_some()) && **w != *self.origin_wire;
            structure_changed |= if is_cut { cuts.insert(w.clone()) } else { cuts.remove(w) };
            let is_wild = node.is_some() && w.starts_with(b"\x01*");
            structure_changed |= if is_wild { wilds.insert(w.clone()) } else { wilds.remove(w) };
            if let Some(old) = prev.as_ref().and_then(|p| p.nodes.get(w)) {
                for t in dependencies(old) {
                    let tw = wire_of(&t);
                    if let Some(v) = rdeps.get_mut(&tw) {
                        v.retain(|x| x != w);
                        if v.is_empty() {
                            rdeps.remove(&tw);
                        }
                    }
                }
            }
            if let Some(n) = node {
                for t in dependencies(n) {
                    let v = rdeps.entry_or_insert_with(wire_of(&t), Vec::new);
                    if !v.contains(w) {
                        v.push(w.clone());
                    }
                }
            }
        }
        structure_changed |= cuts.len() != cuts_before || wilds.len() != wilds_before;
        let mut dirty: FastSet<WireName> = changed_names.iter().cloned().collect();
        let mut frontier = changed_names;
        for _ in 0..8 {
            let mut next = Vec::new();
            for w in &frontier {
                for d in rdeps.get(w).into_iter().flatten() {
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

        let (soa, _) = self.soa(self.serial);
        let negative_ttl = soa_ttl.min(soa.minimum);
        let neg = Record::from_rdata(self.origin.clone(), negative_ttl, RData::SOA(soa.clone()));
        let record_count = match &prev {
            Some(p) => {
                let before: usize = dirty.iter().filter_map(|w| p.nodes.get(w)).map(|n| n.record_count()).sum();
                let after: usize = dirty.iter().filter_map(|w| nodes.get(w)).map(|n| n.record_count()).sum();
                p.record_count + after - before
            }
            None => nodes.values().map(|n| n.record_count()).sum(),
        };
        let signed = nodes.get(&self.origin_wire).is_some_and(|n| n.get(RecordType::RRSIG).is_some());
        let mut data = ZoneData {
            signed,
            origin: self.origin.clone(),
            origin_wire: self.origin_wire.clone(),
            serial: self.serial,
            soa,
            negative_ttl,
            nodes,
            has_cuts: !cuts.is_empty(),
            has_wildcards: !wilds.is_empty(),
            cuts,
            wilds,
            rdeps,
            fast: Default::default(),
            neg_tail: negative_tail(&neg),
            record_count,
            policy,
            ixfr: self.ixfr.iter().cloned().collect(),
        };
        let mut fast = prev.as_ref().map(|p| p.fast.clone()).unwrap_or_default();
        let full = first || structure_changed;
        update_fast(&data, &mut fast, if full { None } else { Some(&dirty) });
        data.fast = fast;
        let data = Arc::new(data);
        self.current = Some(data.clone());
        Some(data)
    }

    fn persist_serial(&mut self, hash: u64) {
        self.persisted_hash = Some(hash);
        if let Err(e) = self.serial_file.write(self.serial, hash) {
            tracing::warn!(zone = %self.origin, error = %e, "cannot persist the serial");
        }
    }
}

/// Parses a master file of the zone `origin` (named `zone` in errors): its records (SOA apart). Errors name the
/// file and the line of the first entry that does not load (`path:line: message`).
pub fn parse_zone_file(zone: &str, path: &Path, origin: &Name) -> Result<(StaticZone, Option<(SOA, u32)>), ZoneError> {
    let err = |msg: String| ZoneError::File { zone: zone.to_string(), path: path.display().to_string(), msg };
    let text = fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    match parse_zone_text(&text, path, origin) {
        Ok(x) => Ok(x),
        Err(msg) => {
            let line = failing_line(&text, path, origin);
            Err(ZoneError::File { zone: zone.to_string(), path: format!("{}:{line}", path.display()), msg })
        }
    }
}

fn parse_zone_text(text: &str, path: &Path, origin: &Name) -> Result<(StaticZone, Option<(SOA, u32)>), String> {
    let origin_wire = wire_of(origin);
    // A pre-signed zone: its DNSSEC records are taken out and encoded here (hickory's parser refuses them).
    let split = crate::dnssec::split(text, origin).map_err(|(_, m)| m)?;
    let (_, sets) = Parser::new(split.text.as_str(), Some(path.to_path_buf()), Some(origin.clone())).parse().map_err(|e| e.to_string())?;
    // hickory's parser gives owner names in lower case: take them as written from the file.
    let written = owner_names(text, origin);
    let mut records = StaticZone::default();
    let mut soa = None;
    for (_, set) in sets {
        for r in set.records_without_rrsigs() {
            let wire = wire_of(&r.name);
            if !in_zone(&wire, &origin_wire) {
                return Err(format!("{} is outside the zone", r.name));
            }
            let name = written.get(&wire).unwrap_or(&r.name);
            match &r.data {
                RData::SOA(s) if wire == origin_wire => soa = Some((s.clone(), r.ttl)),
                RData::SOA(_) => return Err(format!("SOA at {} is not at the apex", r.name)),
                d => add_record(&mut records, name, r.ttl, d.clone()),
            }
        }
    }
    for (name, ttl, rdata) in split.records {
        if !in_zone(&wire_of(&name), &origin_wire) {
            return Err(format!("{name} is outside the zone"));
        }
        add_record(&mut records, &name, ttl, rdata);
    }
    Ok((records, soa))
}

/// The owner names of a master file as written (case kept), by lowercase wire form: the first field of each
/// line that starts with one, relative names completed with the `$ORIGIN` in force. Used only to restore the
/// case of names the parser has already read.
fn owner_names(text: &str, origin: &Name) -> FastMap<WireName, Name> {
    let mut out = FastMap::default();
    let mut current = origin.clone();
    let mut depth = 0i32;
    for line in text.lines() {
        let starts_field = depth == 0 && line.starts_with(|c: char| !c.is_whitespace() && c != ';' && c != '(');
        let first = line.split_whitespace().next().unwrap_or("");
        if starts_field && first.eq_ignore_ascii_case("$ORIGIN") {
            let o = line.split_whitespace().nth(1).and_then(|o| Name::from_ascii(o).ok());
            if let Some(o) = o.and_then(|o| if o.is_fqdn() { Some(o) } else { o.append_domain(&current).ok() }) {
                current = o;
            }
        } else if starts_field && !first.starts_with('$') && first != "@" {
            // `from_ascii` keeps the case (`parse` goes through IDNA, which lowercases).
            let n = Name::from_ascii(first).and_then(|n| if n.is_fqdn() { Ok(n) } else { n.append_domain(&current) });
            if let Ok(n) = n {
                out.insert(wire_of(&n), n);
            }
        }
        let code = line.split(';').next().unwrap_or(""); // comments (a `;` in a quoted string only ends this scan)
        depth += code.matches('(').count() as i32 - code.matches(')').count() as i32;
        depth = depth.max(0);
    }
    out
}

/// The line where the first entry that does not load starts: the file is cut only between entries (outside
/// parentheses and quotes), and the shortest prefix that fails is found by bisection.
fn failing_line(text: &str, path: &Path, origin: &Name) -> usize {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Cut points: line counts after which no entry is open.
    let mut cuts = vec![0usize];
    let (mut depth, mut quoted) = (0i32, false);
    for (i, l) in lines.iter().enumerate() {
        let mut esc = false;
        for c in l.chars() {
            match c {
                _ if esc => esc = false,
                '\\' => esc = true,
                '"' => quoted = !quoted,
                ';' if !quoted => break,
                '(' if !quoted => depth += 1,
                ')' if !quoted => depth -= 1,
                _ => {}
            }
        }
        if depth <= 0 && !quoted {
            depth = 0;
            cuts.push(i + 1);
        }
    }
    if cuts.last() != Some(&lines.len()) {
        cuts.push(lines.len());
    }
    let fails = |k: usize| parse_zone_text(&lines[..k].concat(), path, origin).is_err();
    // Invariant: the prefix up to cuts[lo] loads, the one up to cuts[hi] fails.
    let (mut lo, mut hi) = (0, cuts.len() - 1);
    if !fails(cuts[hi]) {
        return lines.len().max(1);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fails(cuts[mid]) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // The failing entry starts at the first non-blank, non-comment line after the last good cut.
    let mut line = cuts[lo];
    while line < cuts[hi] - 1 && lines[line].trim_start().chars().next().is_none_or(|c| c == ';') {
        line += 1;
    }
    line + 1
}

/// Loads the master files of the `[dns]` zones of a config as the DNS plane would (for `padis check`): one
/// error per zone whose file cannot be read or parsed, with `file:line`. `base`: where relative paths start.
pub fn check_zone_files(cfg: &padis_model::dns::DnsConfig, base: &Path) -> Vec<ZoneError> {
    let mut errors = Vec::new();
    for z in &cfg.zones {
        let Some(file) = &z.file else { continue };
        let origin = match Name::from_ascii(&z.name) {
            Ok(mut n) => {
                n.set_fqdn(true);
                n.to_lowercase()
            }
            Err(e) => {
                errors.push(ZoneError::Name(z.name.clone(), e.to_string()));
                continue;
            }
        };
        if let Err(e) = parse_zone_file(&z.name, &base.join(file), &origin) {
            errors.push(e);
        }
    }
    errors
}

/// Identity of a generated group (its allocation), used as the source id of its records.
fn group_id(g: &Arc<Vec<GenRecord>>) -> usize {
    Arc::as_ptr(g) as *const () as usize
}

fn soa_serial(r: &Record) -> Option<u32> {
    match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
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

/// Whether two access policies are the same.
pub fn same_policy(a: &ZonePolicy, b: &ZonePolicy) -> bool {
    a.allow_transfer == b.allow_transfer
        && a.allow_update == b.allow_update
        && a.notify == b.notify
        && a.transfer_key.as_deref() == b.transfer_key.as_deref()
        && a.update_key.as_deref() == b.update_key.as_deref()
}

/// Source id of static records in the name index.
const STATIC: usize = 0;

/// One record contributed to a name by a source (static records or one generated group).
#[derive(Debug, Clone)]
struct Contrib {
    src: usize,
    ttl: u32,
    rdata: RData,
    origin: Option<Arc<str>>,
}

/// Everything contributed to one name, and how many names with data lie below it.
#[derive(Debug)]
struct NameData {
    name: Name,
    contrib: Vec<Contrib>,
    below: u32,
    has_data: bool,
}

impl NameData {
    fn new(name: Name) -> NameData {
        NameData { name, contrib: Vec::new(), below: 0, has_data: false }
    }

    /// The RRsets of the name (static records first, duplicates merged, one TTL per set).
    /// A collision report when address records come from more than one generated source.
    fn collision(&self) -> Option<String> {
        let mut origins: Vec<&Arc<str>> = self
            .contrib
            .iter()
            .filter(|c| matches!(c.rdata, RData::A(_) | RData::AAAA(_)))
            .filter_map(|c| c.origin.as_ref())
            .collect();
        origins.sort();
        origins.dedup();
        (origins.len() > 1).then(|| {
            format!("{}: addresses published by {}", self.name, origins.iter().map(|o| o.as_ref()).collect::<Vec<_>>().join(" and "))
        })
    }

    fn rrsets(&self) -> Vec<RrSet> {
        let mut sets: Vec<RrSet> = Vec::new();
        let ordered = self.contrib.iter().filter(|c| c.src == STATIC).chain(self.contrib.iter().filter(|c| c.src != STATIC));
        for c in ordered {
            let t = c.rdata.record_type();
            match sets.iter_mut().find(|s| s.rtype == t) {
                Some(s) => {
                    if !s.rdatas.contains(&c.rdata) {
                        s.rdatas.push(c.rdata.clone());
                    }
                }
                None => sets.push(RrSet { rtype: t, ttl: c.ttl, rdatas: vec![c.rdata.clone()] }),
            }
        }
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::GenCache;
    use padis_model::{Instance, Service, ServicePort};

    fn zone_cfg(name: &str) -> DnsZone {
        let text = format!("[dns]\n[[dns.zone]]\nname = \"{name}\"\ngenerated = true\n");
        padis_model::parse_config(&text, "t.toml", Path::new(".")).unwrap().state.dns.zones[0].clone()
    }

    fn svc(name: &str, ips: &[&str]) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            zone: None,
            ports: vec![ServicePort { name: Some("http".into()), protocol: "tcp".into() }],
            instances: ips
                .iter()
                .enumerate()
                .map(|(i, ip)| Instance {
                    id: format!("{name}-{i}"),
                    addr: ip.parse().unwrap(),
                    ports: vec![8000 + i as u16],
                    weight: 1,
                    healthy: true,
                    draining: false,
                })
                .collect(),
            origin: None,
        })
    }

    fn entries(z: &ZoneData) -> Vec<(Vec<u8>, Vec<(u16, Vec<Vec<u8>>)>)> {
        let mut out: Vec<_> = z
            .fast
            .iter()
            .filter(|r| r.name() != &z.origin_wire[..])
            .map(|r| {
                let mut t: Vec<_> = r
                    .types()
                    .into_iter()
                    .map(|(t, vs)| {
                        let mut v: Vec<Vec<u8>> = vs.into_iter().map(<[u8]>::to_vec).collect();
                        v.sort();
                        (t, v)
                    })
                    .collect();
                t.sort();
                (r.name().to_vec(), t)
            })
            .collect();
        out.sort();
        out
    }

    /// Builds `steps` one after the other on one zone and checks the last against a build from scratch.
    fn check_incremental(steps: &[Vec<Arc<Service>>]) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = zone_cfg("z.test");
        let zones = [(0usize, Name::from_ascii("z.test.").unwrap(), true)];
        let bounds = HistoryBounds { changes: 8, bytes: 1 << 20 };
        let mut inc = ZoneSource::load(&cfg, Path::new("."), &dir.path().join("inc"), bounds).unwrap();
        let mut cache = GenCache::default();
        let mut last = None;
        for v in steps {
            let g = cache.generate(v, &[], &zones);
            last = inc.build(&g.by_zone[&0], ZonePolicy::default()).or(last);
        }
        let z_inc = last.unwrap();
        let mut full = ZoneSource::load(&cfg, Path::new("."), &dir.path().join("full"), bounds).unwrap();
        let mut fresh = GenCache::default();
        let g = fresh.generate(steps.last().unwrap(), &[], &zones);
        let z_full = full.build(&g.by_zone[&0], ZonePolicy::default()).unwrap();
        assert_eq!(entries(&z_inc), entries(&z_full));
        assert_eq!((z_inc.record_count, z_inc.nodes.len()), (z_full.record_count, z_full.nodes.len()));
    }

    /// Services in the same order (compared in place), shifted by an insertion (compared by name and as sets),
    /// reordered, and nearly all changed at once: the incremental build always equals the full one.
    #[test]
    fn incremental_build_follows_every_kind_of_change() {
        let many = |n: usize, third: u8| -> Vec<Arc<Service>> {
            (0..n).map(|i| svc(&format!("s{i}"), &[&format!("10.{third}.{}.1", i % 250), "10.9.9.9"])).collect()
        };
        let base = many(40, 0);
        let mut one = base.clone();
        one[7] = svc("s7", &["10.7.7.7"]);
        let mut inserted = vec![svc("first", &["10.8.8.8"])];
        inserted.extend(base.iter().cloned());
        let mut reordered = base.clone();
        reordered.reverse();
        check_incremental(&[base.clone(), one.clone()]);
        check_incremental(&[base.clone(), one.clone(), inserted.clone()]);
        check_incremental(&[base.clone(), inserted.clone(), base.clone()]);
        check_incremental(&[base.clone(), reordered, one]);
        check_incremental(&[base.clone(), many(40, 1), many(30, 2), base]);
    }

    /// Readable form of a wire name.
    fn text(w: &[u8]) -> String {
        let mut out = String::new();
        let mut pos = 0;
        while let Some(&len) = w.get(pos).filter(|l| **l > 0) {
            out.push_str(&String::from_utf8_lossy(&w[pos + 1..pos + 1 + len as usize]));
            out.push('.');
            pos += 1 + len as usize;
        }
        out
    }

    /// A change costs only the names it touches: every other name keeps its node and its pre-rendered answers
    /// (the very same allocations in the new version), the apex carries the new serial, and so do negative
    /// answers.
    #[test]
    fn a_change_touches_only_its_names() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = zone_cfg("z.test");
        let zones = [(0usize, Name::from_ascii("z.test.").unwrap(), true)];
        let mut src = ZoneSource::load(&cfg, Path::new("."), dir.path(), HistoryBounds { changes: 8, bytes: 1 << 20 }).unwrap();
        let mut cache = GenCache::default();
        let v1: Vec<Arc<Service>> =
            (0..200).map(|i| svc(&format!("s{i}"), &[&format!("10.0.{i}.1"), &format!("10.0.{i}.2")])).collect();
        let z1 = src.build(&cache.generate(&v1, &[], &zones).by_zone[&0], ZonePolicy::default()).unwrap();
        let mut v2 = v1.clone();
        v2[7] = svc("s7", &["10.0.7.1", "10.9.9.9"]); // instance s7-1 moves
        let z2 = src.build(&cache.generate(&v2, &[], &zones).by_zone[&0], ZonePolicy::default()).unwrap();

        let differ = |a: Vec<(&[u8], bool)>| {
            let mut names: Vec<String> = a.into_iter().filter(|(_, same)| !same).map(|(w, _)| text(w)).collect();
            names.sort();
            names
        };
        let fast = differ(z2.fast.iter().map(|r| (r.name(), z1.fast.get(r.name()).is_some_and(|o| o.ptr_eq(r)))).collect());
        // The service name (A), the moved instance's host name (A) and the SRV owner (its additional section
        // holds the host's address) are re-rendered, and the apex (new SOA serial); nothing else.
        assert_eq!(fast, ["_http._tcp.s7.z.test.", "s7-1.s7.z.test.", "s7.z.test.", "z.test."]);
        let nodes = differ(z2.nodes.iter().map(|(w, n)| (&w[..], z1.nodes.get(w).is_some_and(|o| Arc::ptr_eq(o, n)))).collect());
        assert_eq!(nodes, ["s7-1.s7.z.test.", "s7.z.test.", "z.test."]);
        assert_eq!((z1.fast.len(), z1.nodes.len()), (z2.fast.len(), z2.nodes.len()));
        assert!(serial_gt(z2.serial, z1.serial));
        let neg = |z: &ZoneData| z.neg_tail.windows(4).any(|w| w == z.serial.to_be_bytes());
        assert!(neg(&z1) && neg(&z2), "negative answers carry the zone's serial");
    }

    /// An incremental build (only changed names re-rendered) serves exactly what a build from scratch serves.
    #[test]
    fn incremental_build_matches_full_build() {
        let dir = std::env::temp_dir().join(format!("padis-dns-inc-{}", std::process::id()));
        let cfg = zone_cfg("z.test");
        let zones = [(0usize, Name::from_ascii("z.test.").unwrap(), true)];
        let v1 = vec![svc("a", &["10.0.0.1", "10.0.0.2"]), svc("b", &["10.0.1.1"]), svc("c", &["10.0.2.1"])];
        let v2 = vec![svc("a", &["10.0.0.1", "10.0.0.3"]), svc("c", &["10.0.2.1"]), svc("d", &["10.0.3.1"])];

        let mut inc = ZoneSource::load(&cfg, Path::new("."), &dir.join("inc"), HistoryBounds { changes: 8, bytes: 1 << 20 }).unwrap();
        let mut cache = GenCache::default();
        let g = cache.generate(&v1, &[], &zones);
        inc.build(&g.by_zone[&0], ZonePolicy::default()).unwrap();
        let g = cache.generate(&v2, &[], &zones);
        let z_inc = inc.build(&g.by_zone[&0], ZonePolicy::default()).unwrap();

        let mut full = ZoneSource::load(&cfg, Path::new("."), &dir.join("full"), HistoryBounds { changes: 8, bytes: 1 << 20 }).unwrap();
        let mut fresh = GenCache::default();
        let g = fresh.generate(&v2, &[], &zones);
        let z_full = full.build(&g.by_zone[&0], ZonePolicy::default()).unwrap();

        assert_eq!(entries(&z_inc), entries(&z_full));
        assert_eq!(z_inc.record_count, z_full.record_count);
        assert_eq!(z_inc.nodes.len(), z_full.nodes.len());
        assert!(z_inc.nodes.get(&wire_of(&Name::from_ascii("b.z.test.").unwrap())).is_none(), "removed service gone");
        let diff = z_inc.ixfr.last().unwrap();
        assert!(diff.added.iter().any(|r| r.to_string().contains("10.0.0.3")));
        assert!(diff.removed.iter().any(|r| r.to_string().contains("10.0.1.1")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
#[cfg(test)]
mod case_tests {
    use super::*;
    /// Owner names keep the case they are written in.
    #[test]
    fn owner_names_keep_their_case() {
        let origin = Name::from_ascii("case.test.").unwrap();
        let text = "$ORIGIN case.test.\n$TTL 60\nMixed.Case.test. IN A 192.0.2.2\nAlias IN CNAME Mixed\n";
        let (records, _) = parse_zone_text(text, Path::new("t"), &origin).unwrap();
        let mut names: Vec<String> = records.values().map(|(n, _)| n.to_ascii()).collect();
        names.sort();
        assert_eq!(names, ["Alias.case.test.", "Mixed.Case.test."]);
    }
}
