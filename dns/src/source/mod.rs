//! One zone's inputs and its build: master file + accepted updates (persisted in a journal) + generated records,
//! merged into a new immutable [`ZoneData`] whose serial is bumped (RFC 1982) only when the content changes.
//!
//! The inputs live in types that keep their own invariants: [`MasterFile`] (the file and the version read),
//! [`History`] (the IXFR changes and their journal), [`NameIndex`] (what each name is made of, by source, with
//! the empty non-terminals and the collisions in step) and [`ServedSerial`]. A build is a sequence of named steps
//! over them: take the sources into the index, rebuild the names that may have changed, give changed content its
//! serial, assemble the version.

mod history;
mod index;
mod master;
mod version;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use padis_model::dns::{DnsZone, SerialPolicy};

pub use history::HistoryBounds;
pub use master::{check_zone_files, FileError};

use crate::generate::GenRecord;
use crate::serial::{first_serial, next_serial, serial_gt};
use crate::serial_file::SerialFile;
use crate::update::StaticZone;
use crate::wire::{in_zone, wire_of, WireName};
use crate::zone::{FastSet, ZoneData, ZonePolicy};
use history::{Base, History};
use index::NameIndex;
use master::{add_record, MasterFile};
use version::{Apex, NodeUpdate};

/// A zone that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The zone name is not a DNS name.
    #[error("zone `{zone}`: invalid name: {source}")]
    Name {
        /// Zone as configured.
        zone: String,
        /// Why it is not a DNS name.
        source: hickory_proto::ProtoError,
    },
    /// The master file cannot be read.
    #[error("zone {zone}: {}: {source}", path.display())]
    Read {
        /// Zone.
        zone: String,
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The master file does not load: the entry starting at `line` is wrong.
    #[error("zone {zone}: {}:{line}: {source}", path.display())]
    Parse {
        /// Zone.
        zone: String,
        /// File.
        path: PathBuf,
        /// Line where the first entry that does not load starts.
        line: usize,
        /// What is wrong with it.
        source: Box<FileError>,
    },
    /// The journal of updates cannot be read or written.
    #[error("zone {zone}: {source}")]
    Journal {
        /// Zone.
        zone: String,
        /// Cause.
        source: crate::journal::JournalError,
    },
}

/// The serial a zone serves and the content it was last persisted for.
///
/// Invariant: `persisted` is the content hash written to `file` with `value` (`None` until this content's serial
/// is persisted); a restart on that content resumes from `value` without a bump.
struct ServedSerial {
    value: u32,
    policy: SerialPolicy,
    persisted: Option<u64>,
    file: SerialFile,
}

impl ServedSerial {
    /// The serial to resume from: the persisted one, unless the master file's serial is above it (or nothing was
    /// persisted); a new zone without a file SOA starts from the policy's first serial.
    fn resume(file: SerialFile, policy: SerialPolicy, file_serial: Option<u32>) -> ServedSerial {
        let mut s = ServedSerial { value: 0, policy, persisted: None, file };
        if let Some((value, hash)) = s.file.read() {
            s.value = value;
            s.persisted = Some(hash);
        }
        match file_serial {
            Some(f) if serial_gt(f, s.value) || s.persisted.is_none() => {
                // The file's own serial already stands for this content.
                s.value = f;
                s.persisted = None;
            }
            // A new zone: its first serial (a state directory that was wiped starts from the clock again).
            None if s.persisted.is_none() => s.value = first_serial(policy),
            _ => {}
        }
        s
    }

    /// Persists the serial as standing for the content `hash` (a failure is logged: the zone serves on).
    fn persist(&mut self, hash: u64, zone: &Name) {
        self.persisted = Some(hash);
        if let Err(e) = self.file.write(self.value, hash) {
            tracing::warn!(zone = %zone, error = %e, "cannot persist the serial");
        }
    }
}

/// The inputs and state of one zone, owned by the zone manager.
pub struct ZoneSource {
    /// Config of the zone.
    pub cfg: DnsZone,
    /// Apex.
    pub origin: Name,
    origin_wire: WireName,
    file: MasterFile,
    /// Why the serial served is not the file's, after the last file reload (a file serial not raised).
    pub serial_note: Option<String>,
    /// Master file plus accepted updates.
    pub statics: StaticZone,
    /// `statics` changed since the index took them.
    statics_dirty: bool,
    history: History,
    serial: ServedSerial,
    /// Content hash of the last published build.
    hash: u64,
    index: NameIndex,
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

/// A name from the config (absolute).
fn config_name(name: Option<String>) -> Option<Name> {
    let mut n = Name::from_ascii(name?).ok()?;
    n.set_fqdn(true);
    Some(n)
}

impl ZoneSource {
    /// Loads a zone: its master file, then the journal (updates accepted before a restart and the recent changes),
    /// and its last serial.
    pub fn load(cfg: &DnsZone, base: &Path, state_dir: &Path, bounds: HistoryBounds) -> Result<ZoneSource, ZoneError> {
        let mut origin =
            Name::from_ascii(&cfg.name).map_err(|source| ZoneError::Name { zone: cfg.name.clone(), source })?;
        origin.set_fqdn(true);
        let origin = origin.to_lowercase();
        let fname = file_name(&origin);
        let mut file = MasterFile::new(cfg.file.as_ref().map(|f| base.join(f)));
        file.reload(&cfg.name, &origin, true)?;
        file.take_serial(); // the serial to resume from is chosen below
        let policy = cfg.serial_policy.unwrap_or(match file.soa() {
            Some(_) => SerialPolicy::Increment,
            None => SerialPolicy::Unixtime,
        });
        let origin_wire = wire_of(&origin);
        let mut statics = file.records().clone();
        let mut history = History::new(state_dir.join(format!("{fname}.journal")), bounds);
        let journal_err = |source| ZoneError::Journal { zone: cfg.name.clone(), source };
        let changes = history.replay(&mut statics, &origin_wire).map_err(journal_err)?;
        let serial_file = SerialFile::new(state_dir.join(format!("{fname}.serial")));
        let serial = ServedSerial::resume(serial_file, policy, file.soa().map(|(s, _)| s.serial));
        history.resume(changes, serial.value);
        tracing::debug!(zone = %origin, serial = serial.value, changes = history.len(), "zone loaded");
        Ok(ZoneSource {
            cfg: cfg.clone(),
            index: NameIndex::new(origin.clone()),
            origin,
            origin_wire,
            file,
            serial_note: None,
            statics,
            statics_dirty: true,
            history,
            serial,
            hash: 0,
            current: None,
            error: None,
        })
    }

    /// Changes how much IXFR history is kept (applies from the next change).
    pub fn set_bounds(&mut self, bounds: HistoryBounds) {
        self.history.set_bounds(bounds);
    }

    /// The collision reports of the last build (addresses of one name from several generated sources).
    pub fn collisions(&self) -> impl Iterator<Item = &String> {
        self.index.collisions()
    }

    /// Re-reads the master file if it changed on disk (or always, with `force`). Returns whether it was read.
    /// On error the previous records stay; a file that failed to load is not read again until it changes
    /// (`Ok(false)`), unless forced.
    pub fn reload_file(&mut self, force: bool) -> Result<bool, ZoneError> {
        let Some(old) = self.file.reload(&self.cfg.name, &self.origin, force)? else { return Ok(false) };
        // Keep the records added by updates: replace only what came from the file.
        master::rebase(&mut self.statics, &old, self.file.records());
        self.statics_dirty = true;
        Ok(true)
    }

    /// Persists an accepted update (fsync'ed before the client gets NOERROR).
    pub fn append_journal(&mut self, updates: &[Record]) -> Result<(), ZoneError> {
        let zone = &self.cfg.name;
        let res = self.history.append_update(&self.origin, updates);
        res.map_err(|source| ZoneError::Journal { zone: zone.clone(), source })
    }

    /// Replaces the static records (after an accepted update); the next build applies them.
    pub fn set_statics(&mut self, statics: StaticZone) {
        self.statics = statics;
        self.statics_dirty = true;
    }

    /// Builds the next version of the zone from the static records and the `generated` groups (one per service;
    /// an unchanged service is the same `Arc`, so only changed services' names are rebuilt and re-rendered).
    /// Returns the new version when its content (serial bumped) or its policy changed, `None` otherwise.
    pub fn build(&mut self, generated: &[Arc<Vec<GenRecord>>], policy: ZonePolicy) -> Option<Arc<ZoneData>> {
        let prev = self.current.clone();
        let affected = self.take_sources(generated);
        let apex = self.apex();
        let mut update = NodeUpdate::rebuild(&mut self.index, &affected, prev.as_deref(), self.hash, &apex);
        let policy_changed = prev.as_ref().is_some_and(|p| !p.policy.same(&policy));
        let raise = self.take_file_serial(!update.changed.is_empty(), prev.is_some());
        if prev.is_some() && update.changed.is_empty() && !policy_changed && raise.is_none() {
            return None;
        }
        self.hash = update.hash;
        self.advance_serial(prev.is_none(), raise, &mut update, &apex);
        let ixfr = self.history.changes();
        let data = version::assemble(prev.as_deref(), update, self.apex(), self.serial.value, policy, ixfr);
        let data = Arc::new(data);
        self.current = Some(data.clone());
        Some(data)
    }

    /// Takes the generated groups and (when they changed) the static records into the index. Returns the names
    /// whose content or existence may have changed.
    fn take_sources(&mut self, generated: &[Arc<Vec<GenRecord>>]) -> Vec<WireName> {
        let ttl = self.cfg.ttl.as_secs() as u32;
        let mut touched: FastSet<WireName> = FastSet::default();
        self.index.set_groups(generated, ttl, &mut touched);
        if self.statics_dirty {
            self.index.set_statics(self.effective_statics(ttl), &mut touched);
            self.statics_dirty = false;
        }
        self.index.settle(touched)
    }

    /// Takes the serial of a master file read since the last build: returns it when it is above the served one
    /// (it is then taken, even with no other change). A lower or unchanged one with new content (`changed`) gets
    /// the served serial + 1, and a note says so.
    fn take_file_serial(&mut self, changed: bool, published: bool) -> Option<u32> {
        let f = self.file.take_serial()?;
        let served = self.serial.value;
        self.serial_note = None;
        if serial_gt(f, served) {
            return Some(f);
        }
        if (serial_gt(served, f) || changed) && published {
            let next = if changed { next_serial(self.serial.policy, served) } else { served };
            let note = format!(
                "zone file serial {f} is not above the served serial {served}; serving {next} (raise the file's \
                 serial above it)"
            );
            tracing::warn!(zone = %self.origin, "{note}");
            self.serial_note = Some(note);
        }
        None
    }

    /// Gives changed content (or a raised file serial) its serial: the next one (or `raise`), with the apex SOA
    /// updated, the change recorded for IXFR and the serial persisted. The first build after a load keeps the
    /// serial it resumed from when the content is the one that serial stands for (or nothing was persisted).
    fn advance_serial(&mut self, first: bool, raise: Option<u32>, update: &mut NodeUpdate, apex: &Apex) {
        if update.changed.is_empty() && (raise.is_none() || first) {
            return;
        }
        if first && self.serial.persisted.is_none() {
            self.serial.persist(update.hash, &self.origin);
            return;
        }
        if first && self.serial.persisted == Some(update.hash) {
            return;
        }
        let from = Record::from_rdata(self.origin.clone(), apex.soa_ttl, RData::SOA(apex.soa.clone()));
        self.serial.value = raise.unwrap_or_else(|| next_serial(self.serial.policy, self.serial.value));
        let (new_soa, _) = self.soa(self.serial.value);
        let to = Record::from_rdata(self.origin.clone(), apex.soa_ttl, RData::SOA(new_soa.clone()));
        update.set_apex_soa(&self.origin_wire, &new_soa);
        let diff = update.take_diff(from, to);
        let base = Base { origin: &self.origin, file: self.file.records(), statics: &self.statics };
        if first {
            // Restarted on content that differs from the last serial's: no change describes the step.
            self.history.clear(base);
        } else {
            self.history.record(diff, base);
        }
        self.serial.persist(update.hash, &self.origin);
    }

    /// The apex of the version at the served serial.
    fn apex(&self) -> Apex {
        let (soa, soa_ttl) = self.soa(self.serial.value);
        Apex { origin: self.origin.clone(), origin_wire: self.origin_wire.clone(), soa, soa_ttl }
    }

    /// The SOA at `serial` (the master file's, or one made from the config) and its TTL.
    fn soa(&self, serial: u32) -> (SOA, u32) {
        if let Some((s, ttl)) = self.file.soa() {
            let mut s = s.clone();
            s.serial = serial;
            return (s, *ttl);
        }
        let neg = self.cfg.negative_ttl.as_secs() as u32;
        let c = &self.cfg.soa;
        let or_under = |label: &str| self.origin.prepend_label(label).unwrap_or_else(|_| self.origin.clone());
        let mname = config_name(c.mname.clone().or_else(|| self.cfg.ns.first().map(|n| n.name.clone())))
            .unwrap_or_else(|| or_under("ns"));
        let rname = config_name(c.rname.clone()).unwrap_or_else(|| or_under("hostmaster"));
        let secs = |d: std::time::Duration| d.as_secs() as i32;
        let soa = SOA::new(mname, rname, serial, secs(c.refresh), secs(c.retry), secs(c.expire), neg);
        (soa, neg)
    }

    /// The static records plus the apex NS and glue from the config (when the file gives no apex NS).
    fn effective_statics(&self, ttl: u32) -> StaticZone {
        let mut map = self.statics.clone();
        let apex_has_ns = map.get(&self.origin_wire).is_some_and(|(_, s)| s.iter().any(|s| s.rtype == RecordType::NS));
        if apex_has_ns {
            return map;
        }
        let nttl = self.cfg.soa.refresh.as_secs().max(ttl as u64) as u32;
        for ns in &self.cfg.ns {
            let Some(n) = config_name(Some(ns.name.clone())) else { continue };
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
        map
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

    /// A name's fast-path entries: wire name, then each type with its sorted record data.
    type Entries = Vec<(Vec<u8>, Vec<(u16, Vec<Vec<u8>>)>)>;

    fn entries(z: &ZoneData) -> Entries {
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
        let mut src =
            ZoneSource::load(&cfg, Path::new("."), dir.path(), HistoryBounds { changes: 8, bytes: 1 << 20 }).unwrap();
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
        let fast =
            differ(z2.fast.iter().map(|r| (r.name(), z1.fast.get(r.name()).is_some_and(|o| o.ptr_eq(r)))).collect());
        // The service name (A), the moved instance's host name (A) and the SRV owner (its additional section
        // holds the host's address) are re-rendered, and the apex (new SOA serial); nothing else.
        assert_eq!(fast, ["_http._tcp.s7.z.test.", "s7-1.s7.z.test.", "s7.z.test.", "z.test."]);
        let nodes = differ(
            z2.nodes.iter().map(|(w, n)| (&w[..], z1.nodes.get(w).is_some_and(|o| Arc::ptr_eq(o, n)))).collect(),
        );
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

        let mut inc =
            ZoneSource::load(&cfg, Path::new("."), &dir.join("inc"), HistoryBounds { changes: 8, bytes: 1 << 20 })
                .unwrap();
        let mut cache = GenCache::default();
        let g = cache.generate(&v1, &[], &zones);
        inc.build(&g.by_zone[&0], ZonePolicy::default()).unwrap();
        let g = cache.generate(&v2, &[], &zones);
        let z_inc = inc.build(&g.by_zone[&0], ZonePolicy::default()).unwrap();

        let mut full =
            ZoneSource::load(&cfg, Path::new("."), &dir.join("full"), HistoryBounds { changes: 8, bytes: 1 << 20 })
                .unwrap();
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
