//! A zone's master file: reading it (with `file:line` errors), the version last read, and how its records are
//! merged with the records accepted by dynamic updates.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData};
use hickory_proto::serialize::txt::Parser;

use super::ZoneError;
use crate::update::StaticZone;
use crate::wire::{in_zone, wire_of, WireName};
use crate::zone::{FastMap, RrSet};

/// What identifies a version of a file on disk: modification time and length.
type Stamp = (SystemTime, u64);

/// The records of a master file and its SOA (with the SOA's TTL).
pub type FileContent = (StaticZone, Option<(SOA, u32)>);

/// Why a master file does not load.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Master file syntax, as hickory's parser reports it.
    #[error(transparent)]
    Syntax(#[from] hickory_proto::serialize::txt::ParseError),
    /// A DNSSEC record of a pre-signed zone does not parse (hickory's parser does not take them: Padis does).
    #[error("{0}")]
    Dnssec(String),
    /// A record's owner name is outside the zone.
    #[error("{0} is outside the zone")]
    OutsideZone(Name),
    /// An SOA record below the apex.
    #[error("SOA at {0} is not at the apex")]
    SoaNotAtApex(Name),
}

/// A zone's master file and the version of it last read.
///
/// Invariants: `records` and `soa` are those of the version `stamp` names (the last one that loaded); a version
/// that failed to load is remembered in `bad_stamp` and not read again until it changes (unless forced);
/// `pending_serial` is the SOA serial of a version read since the zone's last build, until the build takes it.
#[derive(Default)]
pub struct MasterFile {
    path: Option<PathBuf>,
    stamp: Option<Stamp>,
    bad_stamp: Option<Stamp>,
    records: StaticZone,
    soa: Option<(SOA, u32)>,
    pending_serial: Option<u32>,
}

impl MasterFile {
    /// The file at `path` (none: a zone without a master file), not read yet.
    pub fn new(path: Option<PathBuf>) -> MasterFile {
        MasterFile { path, ..MasterFile::default() }
    }

    /// The records of the version last read (SOA apart).
    pub fn records(&self) -> &StaticZone {
        &self.records
    }

    /// The SOA of the version last read, with its TTL.
    pub fn soa(&self) -> Option<&(SOA, u32)> {
        self.soa.as_ref()
    }

    /// Takes the serial of a version read since the last call.
    pub fn take_serial(&mut self) -> Option<u32> {
        self.pending_serial.take()
    }

    /// Re-reads the file if it changed on disk (or always, with `force`). Returns the records it held before when
    /// it was read, `None` when it was not (no file, unchanged, or a version that already failed to load). On
    /// error the previous version stays.
    pub fn reload(&mut self, zone: &str, origin: &Name, force: bool) -> Result<Option<StaticZone>, ZoneError> {
        let Some(path) = &self.path else { return Ok(None) };
        let meta = fs::metadata(path).map_err(|source| read_error(zone, path, source))?;
        let stamp = (meta.modified().unwrap_or(std::time::UNIX_EPOCH), meta.len());
        if !force && (self.stamp == Some(stamp) || self.bad_stamp == Some(stamp)) {
            return Ok(None);
        }
        let (records, soa) = match parse_zone_file(zone, path, origin) {
            Ok(x) => x,
            Err(e) => {
                self.bad_stamp = Some(stamp);
                return Err(e);
            }
        };
        self.bad_stamp = None;
        self.pending_serial = soa.as_ref().map(|(s, _)| s.serial);
        self.soa = soa;
        self.stamp = Some(stamp);
        Ok(Some(std::mem::replace(&mut self.records, records)))
    }
}

/// Replaces in `statics` (master file plus updates) the records of the file's version `old` by those of `new`,
/// keeping the records added by updates (an RRset type the new file has replaces the one there).
pub fn rebase(statics: &mut StaticZone, old: &StaticZone, new: &StaticZone) {
    for (w, (_, sets)) in old {
        if let Some((_, cur)) = statics.get_mut(w) {
            cur.retain(|s| !sets.contains(s));
        }
    }
    for (w, (n, sets)) in new {
        let (_, cur) = statics.entry(w.clone()).or_insert_with(|| (n.clone(), Vec::new()));
        for s in sets {
            if !cur.iter().any(|c| c.rtype == s.rtype) {
                cur.push(s.clone());
            }
        }
    }
    statics.retain(|_, (_, s)| !s.is_empty());
}

/// Adds one record to `map` (into the RRset of its type, whose TTL stays the first one's; duplicates dropped).
pub fn add_record(map: &mut StaticZone, name: &Name, ttl: u32, rdata: RData) {
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

/// Parses a master file of the zone `origin` (named `zone` in errors): its records (SOA apart). Errors name the
/// file and the line of the first entry that does not load (`path:line: message`).
pub fn parse_zone_file(zone: &str, path: &Path, origin: &Name) -> Result<FileContent, ZoneError> {
    let text = fs::read_to_string(path).map_err(|source| read_error(zone, path, source))?;
    match parse_zone_text(&text, path, origin) {
        Ok(x) => Ok(x),
        Err(source) => {
            let line = failing_line(&text, path, origin);
            Err(ZoneError::Parse { zone: zone.to_string(), path: path.to_path_buf(), line, source: Box::new(source) })
        }
    }
}

fn read_error(zone: &str, path: &Path, source: std::io::Error) -> ZoneError {
    ZoneError::Read { zone: zone.to_string(), path: path.to_path_buf(), source }
}

fn parse_zone_text(text: &str, path: &Path, origin: &Name) -> Result<FileContent, FileError> {
    let origin_wire = wire_of(origin);
    // A pre-signed zone: its DNSSEC records are taken out and encoded here (hickory's parser refuses them).
    let split = crate::dnssec::split(text, origin).map_err(|(_, m)| FileError::Dnssec(m))?;
    let (_, sets) = Parser::new(split.text.as_str(), Some(path.to_path_buf()), Some(origin.clone())).parse()?;
    // hickory's parser gives owner names in lower case: take them as written from the file.
    let written = owner_names(text, origin);
    let mut records = StaticZone::default();
    let mut soa = None;
    for (_, set) in sets {
        for r in set.records_without_rrsigs() {
            let wire = wire_of(&r.name);
            if !in_zone(&wire, &origin_wire) {
                return Err(FileError::OutsideZone(r.name.clone()));
            }
            let name = written.get(&wire).unwrap_or(&r.name);
            match &r.data {
                RData::SOA(s) if wire == origin_wire => soa = Some((s.clone(), r.ttl)),
                RData::SOA(_) => return Err(FileError::SoaNotAtApex(r.name.clone())),
                d => add_record(&mut records, name, r.ttl, d.clone()),
            }
        }
    }
    for (name, ttl, rdata) in split.records {
        if !in_zone(&wire_of(&name), &origin_wire) {
            return Err(FileError::OutsideZone(name));
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
                errors.push(ZoneError::Name { zone: z.name.clone(), source: e });
                continue;
            }
        };
        if let Err(e) = parse_zone_file(&z.name, &base.join(file), &origin) {
            errors.push(e);
        }
    }
    errors
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
