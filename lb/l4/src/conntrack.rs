//! The connection table as one map over its two halves: `CONNTRACK4` (IPv4 flows, 16-byte keys) and `CONNTRACK`
//! (IPv6 flows). Callers (sync, reports, tests) use the [`FlowKey`] form (IPv4-mapped addresses) whatever the
//! half, so the sync records and wire format do not depend on the program's key layout.

use std::os::fd::AsFd as _;

use aya::maps::{HashMap, IterableMap as _, Map, MapData, MapError};
use padis_ebpf_common::{FlowKey, FlowKey4, FlowState};

/// Handles on both halves of the connection table.
pub struct ConnTable {
    /// IPv4 flows.
    pub v4: HashMap<MapData, FlowKey4, FlowState>,
    /// IPv6 flows.
    pub v6: HashMap<MapData, FlowKey, FlowState>,
}

/// A second handle on an LRU hash map (own fd).
fn dup_lru<K: aya::Pod, V: aya::Pod>(m: &HashMap<MapData, K, V>) -> Result<HashMap<MapData, K, V>, MapError> {
    let fd = m.map().fd().as_fd().try_clone_to_owned().map_err(MapError::IoError)?;
    HashMap::try_from(Map::LruHashMap(MapData::from_fd(fd)?))
}

impl ConnTable {
    /// Second handles on both maps (for a task working next to the programmer).
    pub fn dup(&self) -> Result<ConnTable, MapError> {
        Ok(ConnTable { v4: dup_lru(&self.v4)?, v6: dup_lru(&self.v6)? })
    }

    /// The entry of `key`.
    pub fn get(&self, key: &FlowKey, flags: u64) -> Result<FlowState, MapError> {
        match key.to_v4() {
            Some(k) => self.v4.get(&k, flags),
            None => self.v6.get(key, flags),
        }
    }

    /// Inserts (or with `BPF_NOEXIST`, adds only) the entry of `key`.
    pub fn insert(&mut self, key: FlowKey, state: FlowState, flags: u64) -> Result<(), MapError> {
        match key.to_v4() {
            Some(k) => self.v4.insert(k, state, flags),
            None => self.v6.insert(key, state, flags),
        }
    }

    /// Removes the entry of `key`.
    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        match key.to_v4() {
            Some(k) => self.v4.remove(&k),
            None => self.v6.remove(key),
        }
    }

    /// Every key, IPv4 flows first (in [`FlowKey`] form).
    pub fn keys(&self) -> impl Iterator<Item = Result<FlowKey, MapError>> + '_ {
        self.v4.keys().map(|k| k.map(|k| k.to_flow_key())).chain(self.v6.keys())
    }

    /// Moves IPv4 flows found in the IPv6 map (pinned by the layout that kept every flow there) to the IPv4 map;
    /// returns how many moved.
    pub fn move_v4_from_v6(&mut self) -> u64 {
        let keys: Vec<FlowKey> = self.v6.keys().filter_map(Result::ok).filter(|k| k.to_v4().is_some()).collect();
        let mut moved = 0;
        for k in keys {
            let (Some(k4), Ok(st)) = (k.to_v4(), self.v6.get(&k, 0)) else { continue };
            if self.v4.insert(k4, st, 0).is_ok() {
                moved += 1;
            }
            let _ = self.v6.remove(&k);
        }
        moved
    }
}
