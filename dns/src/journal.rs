//! A zone's journal on disk (`<zone>.journal` in the state directory): the dynamic updates accepted since the
//! master file (replayed over it at start) and the zone's recent changes (its IXFR history), so a restart loses
//! no accepted update and secondaries can still follow incrementally. Entries are length-prefixed DNS messages:
//! an update is an UPDATE message (its update section), a change is a response whose answer section is
//! `old SOA, removed..., new SOA, added...` (the IXFR layout). The file is rewritten (compacted) to one update
//! entry holding the net changes to the master file plus the changes still kept, when it outgrows its bounds.

use std::fs;
use std::io::{Read, Write};
use std::path::PathBuf;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::update::StaticZone;
use crate::zone::{Diff, RrSet};

/// The journal of one zone cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("journal {}: {source}", path.display())]
pub struct JournalError {
    /// File.
    pub path: PathBuf,
    /// What went wrong.
    pub source: JournalFault,
}

/// What went wrong with a journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalFault {
    /// Reading, writing or replacing the file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An entry cannot be encoded as a DNS message.
    #[error(transparent)]
    Encode(#[from] hickory_proto::ProtoError),
    /// An entry is not a DNS message.
    #[error(transparent)]
    Decode(#[from] hickory_proto::serialize::binary::DecodeError),
    /// An entry is a DNS message but neither an update nor a change.
    #[error("entry at byte {0} is not an update or a change")]
    NotAnEntry(usize),
}

/// One entry read back from the journal.
#[derive(Debug)]
pub enum Entry {
    /// An accepted dynamic update (its update section).
    Update(Vec<Record>),
    /// A change of the zone's content from one serial to the next.
    Change(Box<Diff>),
}

/// The journal file of one zone, with its current size.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    entries: usize,
    bytes: u64,
    /// The file open for appending (kept open: a change is appended per serial, often several a second).
    file: Option<fs::File>,
}

impl Journal {
    /// The journal at `path` (not read yet).
    pub fn new(path: PathBuf) -> Journal {
        Journal { path, entries: 0, bytes: 0, file: None }
    }

    fn err(&self, fault: impl Into<JournalFault>) -> JournalError {
        JournalError { path: self.path.clone(), source: fault.into() }
    }

    /// Reads every entry (a missing file is an empty journal; a partial last entry, from a crash while
    /// appending, is ignored).
    pub fn read(&mut self) -> Result<Vec<Entry>, JournalError> {
        let mut f = match fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 4 <= buf.len() {
            let len = u32::from_be_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
            let Some(bytes) = buf.get(pos + 4..pos + 4 + len) else {
                tracing::warn!(journal = %self.path.display(), "journal ends with a partial entry (ignored)");
                break;
            };
            let msg = Message::from_vec(bytes).map_err(|e| self.err(e))?;
            out.push(decode(msg, len).ok_or_else(|| self.err(JournalFault::NotAnEntry(pos)))?);
            pos += 4 + len;
        }
        self.entries = out.len();
        self.bytes = pos as u64;
        Ok(out)
    }

    /// Appends an accepted update and syncs it to disk (before the client is told NOERROR).
    pub fn append_update(&mut self, origin: &Name, updates: &[Record]) -> Result<(), JournalError> {
        let bytes = encode_update(origin, updates).map_err(|e| self.err(e))?;
        self.append(&[bytes], true)
    }

    /// Appends a change encoded by [`encode_change`] (not synced: a change lost in a crash only costs
    /// secondaries an AXFR).
    pub fn append_change(&mut self, encoded: Vec<u8>) -> Result<(), JournalError> {
        self.append(&[encoded], false)
    }

    fn append(&mut self, entries: &[Vec<u8>], sync: bool) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for e in entries {
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(e);
        }
        let res = self.open().and_then(|mut f| {
            f.write_all(&buf)?;
            if sync {
                f.sync_data()?;
            }
            Ok(())
        });
        if let Err(e) = res {
            self.file = None; // reopened on the next append
            return Err(self.err(e));
        }
        self.entries += entries.len();
        self.bytes += buf.len() as u64;
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<&fs::File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            self.file = Some(fs::OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        self.file.as_ref().ok_or_else(|| std::io::Error::other("journal not open"))
    }

    /// Whether the file holds more than the zone keeps (`max_changes` changes, `max_bytes` of history):
    /// compaction is due when it is twice that.
    pub fn oversized(&self, max_changes: usize, max_bytes: u64) -> bool {
        self.entries > 2 * max_changes + 8 || self.bytes > 2 * max_bytes
    }

    /// Rewrites the journal as one update (`file` -> `statics`, if they differ) plus `changes`, atomically
    /// (a new file synced, then renamed over the old one).
    pub fn compact<'a>(
        &mut self,
        origin: &Name,
        file: &StaticZone,
        statics: &StaticZone,
        changes: impl Iterator<Item = &'a Diff>,
    ) -> Result<(), JournalError> {
        let mut entries = Vec::new();
        let base = net_update(file, statics);
        if !base.is_empty() {
            entries.push(encode_update(origin, &base).map_err(|e| self.err(e))?);
        }
        for d in changes {
            entries.push(encode_change(d).map_err(|e| self.err(e))?);
        }
        let tmp = self.path.with_extension("journal.tmp");
        let mut buf = Vec::new();
        for e in &entries {
            buf.extend_from_slice(&(e.len() as u32).to_be_bytes());
            buf.extend_from_slice(e);
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        self.file = None; // the appends go to the new file from now on
        write().map_err(|e| self.err(e))?;
        let (journal, bytes) = (self.path.display(), buf.len());
        tracing::debug!(%journal, entries = entries.len(), bytes, "journal compacted");
        self.entries = entries.len();
        self.bytes = buf.len() as u64;
        Ok(())
    }
}

fn encode_update(origin: &Name, updates: &[Record]) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut msg = Message::new(0, MessageType::Query, OpCode::Update);
    msg.add_query(Query::query(origin.clone(), RecordType::SOA));
    msg.authorities = updates.to_vec();
    msg.to_vec()
}

/// A change as the journal stores it (its length counts against the history's size bound).
pub fn encode_change(diff: &Diff) -> Result<Vec<u8>, hickory_proto::ProtoError> {
    let mut msg = Message::new(0, MessageType::Response, OpCode::Query);
    msg.answers.reserve(diff.removed.len() + diff.added.len() + 2);
    msg.answers.push(diff.from.clone());
    msg.answers.extend(diff.removed.iter().cloned());
    msg.answers.push(diff.to.clone());
    msg.answers.extend(diff.added.iter().cloned());
    msg.to_vec()
}

fn decode(msg: Message, len: usize) -> Option<Entry> {
    match (msg.metadata.message_type, msg.metadata.op_code) {
        (MessageType::Query, OpCode::Update) => Some(Entry::Update(msg.authorities)),
        (MessageType::Response, OpCode::Query) => {
            let mut it = msg.answers.into_iter();
            let from = it.next().filter(|r| r.record_type() == RecordType::SOA)?;
            let mut removed = Vec::new();
            let mut to = None;
            for r in it.by_ref() {
                if r.record_type() == RecordType::SOA {
                    to = Some(r);
                    break;
                }
                removed.push(r);
            }
            Some(Entry::Change(Box::new(Diff { from, to: to?, removed, added: it.collect(), size: len })))
        }
        _ => None,
    }
}

/// The update that turns `file` into `statics`: per name, deletions of what `statics` lacks, then additions of
/// what `file` lacks (for the apex NS set additions first: its last record cannot be deleted).
fn net_update(file: &StaticZone, statics: &StaticZone) -> Vec<Record> {
    let mut out = Vec::new();
    let empty: Vec<RrSet> = Vec::new();
    let mut names: Vec<(&Name, &Vec<RrSet>, &Vec<RrSet>)> = Vec::new();
    for (w, (n, sets)) in statics {
        names.push((n, file.get(w).map_or(&empty, |(_, s)| s), sets));
    }
    for (w, (n, sets)) in file {
        if !statics.contains_key(w) {
            names.push((n, sets, &empty));
        }
    }
    names.sort_by(|a, b| a.0.cmp(b.0));
    for (name, old, new) in names {
        let mut dels = Vec::new();
        let mut adds = Vec::new();
        for o in old {
            let n = new.iter().find(|s| s.rtype == o.rtype);
            for d in o.rdatas.iter().filter(|d| !n.is_some_and(|n| n.rdatas.contains(d))) {
                let mut r = Record::from_rdata(name.clone(), 0, d.clone());
                r.dns_class = DNSClass::NONE;
                dels.push(r);
            }
        }
        for n in new {
            let o = old.iter().find(|s| s.rtype == n.rtype);
            let same_ttl = o.is_some_and(|o| o.ttl == n.ttl);
            for d in n.rdatas.iter().filter(|d| !same_ttl || !o.is_some_and(|o| o.rdatas.contains(d))) {
                let mut r = Record::from_rdata(name.clone(), n.ttl, d.clone());
                r.dns_class = DNSClass::IN;
                adds.push(r);
            }
        }
        let ns_first = adds.iter().any(|r| matches!(r.data, RData::NS(_)));
        if ns_first {
            out.extend(adds);
            out.extend(dels);
        } else {
            out.extend(dels);
            out.extend(adds);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::wire_of;

    fn zone(text: &str) -> StaticZone {
        let origin = Name::from_ascii("j.test.").unwrap();
        let (_, sets) = hickory_proto::serialize::txt::Parser::new(text, None, Some(origin)).parse().unwrap();
        let mut z = StaticZone::default();
        for (_, set) in sets {
            for r in set.records_without_rrsigs() {
                let (_, v) = z.entry(wire_of(&r.name)).or_insert_with(|| (r.name.clone(), Vec::new()));
                match v.iter_mut().find(|s| s.rtype == r.record_type()) {
                    Some(s) => s.rdatas.push(r.data.clone()),
                    None => v.push(RrSet { rtype: r.record_type(), ttl: r.ttl, rdatas: vec![r.data.clone()] }),
                }
            }
        }
        z
    }

    /// The compacted journal replays to exactly the zone it was compacted from, and keeps the changes.
    #[test]
    fn compaction_replays_to_the_same_zone() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Name::from_ascii("j.test.").unwrap();
        let file = zone(
            "@ 60 IN NS ns1\nns1 60 IN A 192.0.2.1\na 60 IN A 192.0.2.2\na 60 IN A 192.0.2.3\nb 60 IN TXT \"x\"\n",
        );
        let statics = zone(
            "@ 60 IN NS ns2\nns1 60 IN A 192.0.2.1\nns2 60 IN A 192.0.2.9\na 30 IN A 192.0.2.2\nb 60 IN CNAME a\n\
             c 60 IN MX 10 a\n",
        );
        let soa = |s: u32| {
            let d = RData::SOA(hickory_proto::rr::rdata::SOA::new(origin.clone(), origin.clone(), s, 1, 1, 1, 1));
            Record::from_rdata(origin.clone(), 5, d)
        };
        let diff = Diff {
            from: soa(1),
            to: soa(2),
            removed: vec![Record::from_rdata(
                Name::from_ascii("a.j.test.").unwrap(),
                60,
                RData::A("192.0.2.3".parse().unwrap()),
            )],
            added: Vec::new(),
            size: 0,
        };
        let mut j = Journal::new(dir.path().join("j.journal"));
        j.compact(&origin, &file, &statics, std::iter::once(&diff)).unwrap();
        let entries = Journal::new(dir.path().join("j.journal")).read().unwrap();
        let mut replayed = file.clone();
        let mut changes = 0;
        for e in entries {
            match e {
                Entry::Update(u) => {
                    crate::update::apply(&mut replayed, &wire_of(&origin), &u);
                }
                Entry::Change(d) => {
                    changes += 1;
                    assert_eq!((d.from, d.to, d.removed.len()), (soa(1), soa(2), 1));
                }
            }
        }
        let norm = |z: &StaticZone| {
            let mut v: Vec<_> = z
                .iter()
                .map(|(w, (_, sets))| {
                    let mut s: Vec<_> = sets
                        .iter()
                        .map(|s| {
                            let mut d: Vec<String> = s.rdatas.iter().map(|d| d.to_string()).collect();
                            d.sort();
                            (u16::from(s.rtype), s.ttl, d)
                        })
                        .collect();
                    s.sort();
                    (w.to_vec(), s)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(norm(&replayed), norm(&statics));
        assert_eq!(changes, 1);
        assert!(!j.oversized(1, 1 << 20));
    }
}
