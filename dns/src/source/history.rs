//! A zone's recent changes (its IXFR history), bounded, and the journal that keeps them on disk with the
//! accepted updates.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use hickory_proto::rr::{Name, RData, Record};

use crate::journal::{encode_change, Entry, Journal, JournalError};
use crate::update::{self, StaticZone};
use crate::zone::Diff;

/// How long the IXFR history of a zone may get.
#[derive(Debug, Clone, Copy)]
pub struct HistoryBounds {
    /// Most changes kept.
    pub changes: usize,
    /// Most bytes of changes kept.
    pub bytes: u64,
}

/// What a compacted journal is written against: the zone's records as its master file has them and as they are
/// now (master file plus accepted updates).
pub struct Base<'a> {
    /// Apex.
    pub origin: &'a Name,
    /// The master file's records.
    pub file: &'a StaticZone,
    /// The static records now.
    pub statics: &'a StaticZone,
}

/// The changes of a zone, oldest first, and its journal.
///
/// Invariants: the changes follow each other without a gap (each one's `from` serial is the previous one's
/// `to`); `bytes` is the sum of their sizes; they stay within `bounds` (the oldest go first); the journal holds
/// at least the changes kept.
pub struct History {
    journal: Journal,
    changes: VecDeque<Arc<Diff>>,
    bytes: u64,
    bounds: HistoryBounds,
}

impl History {
    /// An empty history journaled at `journal` (not read yet).
    pub fn new(journal: PathBuf, bounds: HistoryBounds) -> History {
        History { journal: Journal::new(journal), changes: VecDeque::new(), bytes: 0, bounds }
    }

    /// Changes how much history is kept (applies from the next change).
    pub fn set_bounds(&mut self, bounds: HistoryBounds) {
        self.bounds = bounds;
    }

    /// The changes kept, oldest first.
    pub fn changes(&self) -> Vec<Arc<Diff>> {
        self.changes.iter().cloned().collect()
    }

    /// Number of changes kept.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Reads the journal: replays its updates over `statics` and returns its changes, oldest first.
    pub fn replay(&mut self, statics: &mut StaticZone, origin_wire: &[u8]) -> Result<Vec<Diff>, JournalError> {
        let mut changes = Vec::new();
        for e in self.journal.read()? {
            match e {
                Entry::Update(u) => {
                    update::apply(statics, origin_wire, &u);
                }
                Entry::Change(d) => changes.push(*d),
            }
        }
        Ok(changes)
    }

    /// Keeps, of the journaled `changes`, those that lead without a gap to `serial` (the one the zone resumes
    /// from).
    pub fn resume(&mut self, changes: Vec<Diff>, serial: u32) {
        let mut tail = Vec::new();
        let mut want = serial;
        for d in changes.into_iter().rev() {
            if soa_serial(&d.to) != Some(want) {
                break;
            }
            want = soa_serial(&d.from).unwrap_or(want);
            tail.push(d);
        }
        for d in tail.into_iter().rev() {
            self.push(Arc::new(d));
        }
    }

    /// Persists an accepted update (fsync'ed before the client gets NOERROR).
    pub fn append_update(&mut self, origin: &Name, updates: &[Record]) -> Result<(), JournalError> {
        self.journal.append_update(origin, updates)
    }

    /// Adds the change `diff` (its size set here) and journals it; a change too large to encode empties the
    /// history instead (secondaries then take an AXFR).
    pub fn record(&mut self, mut diff: Diff, base: Base<'_>) {
        match encode_change(&diff) {
            Ok(bytes) => {
                diff.size = bytes.len();
                if self.push(Arc::new(diff)) {
                    if let Err(e) = self.journal.append_change(bytes) {
                        tracing::warn!(zone = %base.origin, error = %e, "change not journaled");
                    }
                }
                if self.journal.oversized(self.bounds.changes, self.bounds.bytes) {
                    self.compact(base);
                }
            }
            Err(e) => {
                tracing::warn!(zone = %base.origin, error = %e, "change too large to keep; IXFR falls back to AXFR");
                self.clear(base);
            }
        }
    }

    /// Forgets the history (the content changed in a way no change describes).
    pub fn clear(&mut self, base: Base<'_>) {
        self.changes.clear();
        self.bytes = 0;
        self.compact(base);
    }

    /// Adds a change, dropping the oldest beyond the bounds. Returns whether it was kept.
    fn push(&mut self, d: Arc<Diff>) -> bool {
        self.bytes += d.size as u64;
        self.changes.push_back(d);
        while self.changes.len() > self.bounds.changes || self.bytes > self.bounds.bytes {
            match self.changes.pop_front() {
                Some(old) => self.bytes -= old.size as u64,
                None => break,
            }
        }
        !self.changes.is_empty()
    }

    fn compact(&mut self, base: Base<'_>) {
        let res = self.journal.compact(base.origin, base.file, base.statics, self.changes.iter().map(|d| &**d));
        if let Err(e) = res {
            tracing::warn!(zone = %base.origin, error = %e, "journal not compacted");
        }
    }
}

fn soa_serial(r: &Record) -> Option<u32> {
    match &r.data {
        RData::SOA(s) => Some(s.serial),
        _ => None,
    }
}
