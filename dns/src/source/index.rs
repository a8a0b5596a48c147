//! What each name of a zone is made of, by source (the static records, one generated group per service), kept
//! in step with the sources so that a build only revisits the names whose contributions changed.

use std::sync::Arc;

use hickory_proto::rr::{Name, RData};

use crate::generate::GenRecord;
use crate::update::StaticZone;
use crate::wire::{parent, wire_of, WireName};
use crate::zone::{FastMap, FastSet, RrSet};

/// Source id of static records.
const STATIC: usize = 0;

/// The records generated for one service; its allocation identifies it as a source.
type Group = Arc<Vec<GenRecord>>;

/// The contributions to every name of a zone, with the structure derived from them.
///
/// Invariants, true after every [`NameIndex::settle`] and [`NameIndex::content`] of the names it returned:
/// - every name with contributions, with a name with data below it, or at the apex has an entry, and no other;
/// - `has_data` says whether a name has contributions, and `below` counts the names with data below it (an
///   empty non-terminal is a name with `below > 0` and no data);
/// - the contributions are those of `groups` and `statics`, the sources of the last build;
/// - `collisions` holds exactly the names whose addresses come from more than one generated source.
pub struct NameIndex {
    origin: Name,
    origin_wire: WireName,
    names: FastMap<WireName, NameData>,
    /// The generated groups of the last build, in the order they came.
    groups: Vec<Group>,
    /// The static records of the last build (master file, updates, config NS).
    statics: StaticZone,
    collisions: FastMap<WireName, String>,
}

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

impl NameIndex {
    /// The index of an empty zone at `origin`.
    pub fn new(origin: Name) -> NameIndex {
        NameIndex {
            origin_wire: wire_of(&origin),
            origin,
            names: FastMap::default(),
            groups: Vec::new(),
            statics: StaticZone::default(),
            collisions: FastMap::default(),
        }
    }

    /// The collision reports (addresses published for one name by several generated sources).
    pub fn collisions(&self) -> impl Iterator<Item = &String> {
        self.collisions.values()
    }

    /// Takes `generated` as the generated groups (records with `ttl`); adds to `touched` the names of the groups
    /// that went away or came.
    pub fn set_groups(&mut self, generated: &[Group], ttl: u32, touched: &mut FastSet<WireName>) {
        let (gone, came) = self.regroup(generated);
        for g in &gone {
            for r in g.iter() {
                touched.insert(self.withdraw(wire_of(&r.name), group_id(g)));
            }
        }
        for g in &came {
            for r in g.iter() {
                let c = Contrib { src: group_id(g), ttl, rdata: r.rdata.clone(), origin: Some(r.origin.clone()) };
                touched.insert(self.contribute(wire_of(&r.name), &r.name, c));
            }
        }
    }

    /// Takes `statics` as the static records; adds to `touched` the names they had and have.
    pub fn set_statics(&mut self, statics: StaticZone, touched: &mut FastSet<WireName>) {
        let before: Vec<WireName> = self.statics.keys().cloned().collect();
        for w in before {
            touched.insert(self.withdraw(w, STATIC));
        }
        for (w, (n, sets)) in &statics {
            for set in sets {
                for d in &set.rdatas {
                    let c = Contrib { src: STATIC, ttl: set.ttl, rdata: d.clone(), origin: None };
                    self.contribute(w.clone(), n, c);
                }
            }
            touched.insert(w.clone());
        }
        self.statics = statics;
    }

    /// Brings the presence of the `touched` names (and the apex) up to date, and the counts of names with data
    /// below their ancestors. Returns every name whose content or existence may have changed, sorted; each must
    /// then go through [`NameIndex::content`].
    pub fn settle(&mut self, mut touched: FastSet<WireName>) -> Vec<WireName> {
        touched.insert(self.origin_wire.clone());
        self.names.entry(self.origin_wire.clone()).or_insert_with(|| NameData::new(self.origin.clone()));
        let mut affected: Vec<WireName> = touched.iter().cloned().collect();
        for w in &touched {
            let Some(nd) = self.names.get_mut(w) else { continue };
            let has = !nd.contrib.is_empty();
            if has == nd.has_data {
                continue;
            }
            nd.has_data = has;
            let name = nd.name.clone();
            self.count_below(w, name, has, &mut affected);
        }
        affected.sort_unstable();
        affected.dedup();
        affected
    }

    /// The RRsets of the name `w` now (static records first, duplicates merged, one TTL per set), with its owner
    /// name; `None` when the name no longer exists (it leaves the index). Its collision report follows.
    pub fn content(&mut self, w: &WireName) -> Option<(Name, Vec<RrSet>)> {
        let is_apex = **w == *self.origin_wire;
        let exists = self.names.get(w).is_some_and(|nd| nd.has_data || nd.below > 0) || is_apex;
        if !exists {
            self.names.remove(w);
            self.collisions.remove(w);
            return None;
        }
        let nd = self.names.get(w)?;
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
        Some((nd.name.clone(), nd.rrsets()))
    }

    /// Replaces the kept groups by `generated`; returns the groups that went away and those that came.
    /// Groups usually come in the same order (one per service), so a positional pointer comparison finds the few
    /// that changed without hashing or touching the others; any shift falls back to a set comparison.
    fn regroup(&mut self, generated: &[Group]) -> (Vec<Group>, Vec<Group>) {
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

    /// Removes what the source `src` contributed to `w`; returns `w`.
    fn withdraw(&mut self, w: WireName, src: usize) -> WireName {
        if let Some(nd) = self.names.get_mut(&w) {
            nd.contrib.retain(|c| c.src != src);
        }
        w
    }

    /// Adds `c` to the name `w` (owner `name`); returns `w`.
    fn contribute(&mut self, w: WireName, name: &Name, c: Contrib) -> WireName {
        self.names.entry(w.clone()).or_insert_with(|| NameData::new(name.clone())).contrib.push(c);
        w
    }

    /// The name `w` (owner `name`) gained (`has`) or lost its data: counts it in or out of the names below each
    /// of its ancestors up to the apex, which are added to `affected`.
    fn count_below(&mut self, w: &[u8], mut name: Name, has: bool, affected: &mut Vec<WireName>) {
        let mut cur = w;
        while let Some(p) = parent(cur) {
            if p.len() < self.origin_wire.len() {
                break;
            }
            name = name.base_name();
            let pw: WireName = p.into();
            let pd = self.names.entry(pw.clone()).or_insert_with(|| NameData::new(name.clone()));
            if has {
                pd.below += 1;
            } else {
                pd.below = pd.below.saturating_sub(1);
            }
            affected.push(pw);
            cur = p;
        }
    }
}

/// Identity of a generated group (its allocation), used as the source id of its records.
fn group_id(g: &Group) -> usize {
    Arc::as_ptr(g) as *const () as usize
}

impl NameData {
    fn new(name: Name) -> NameData {
        NameData { name, contrib: Vec::new(), below: 0, has_data: false }
    }

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
            let by = origins.iter().map(|o| o.as_ref()).collect::<Vec<_>>().join(" and ");
            format!("{}: addresses published by {by}", self.name)
        })
    }

    /// The RRsets of the name (static records first, duplicates merged, one TTL per set).
    fn rrsets(&self) -> Vec<RrSet> {
        let mut sets: Vec<RrSet> = Vec::new();
        let statics = self.contrib.iter().filter(|c| c.src == STATIC);
        for c in statics.chain(self.contrib.iter().filter(|c| c.src != STATIC)) {
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
