//! The map layout the program expects, checked against maps pinned by an earlier Padis before they are reused.
//! aya reuses a pinned map by name whatever its definition, so a map pinned by a build with another key or value
//! layout would be handed to a program that misreads it. An incompatible instance is replaced as a whole (its ids
//! tie the maps together); maps a newer layout adds are simply created next to the reused ones.

use std::mem::size_of;
use std::path::Path;

use aya::maps::{MapInfo, MapType};
use padis_ebpf_common::{
    defaults, flows4::FlowBucket4, map_names as n, stat, AclData, BackendInfo, Counters, FlowKey, FlowState,
    GlobalConfig, RateState, SrcLimitConfig, VipKey, VipMeta, VipSlot, VIP_PORTS_LEN,
};

use crate::L4Error;

/// One map's definition, as far as compatibility goes.
struct Def {
    name: &'static str,
    kind: MapType,
    key: usize,
    value: usize,
    /// `max_entries` when the program depends on it (counter indexes, one-entry maps); None: sized by `[l4]`, a
    /// pinned size is kept.
    max: Option<u32>,
}

fn defs() -> [Def; 18] {
    let d = |name, kind, key, value, max| Def { name, kind, key, value, max };
    [
        d(n::VIPS, MapType::Hash, size_of::<VipKey>(), size_of::<VipMeta>(), None),
        d(n::VIP_ADDRS, MapType::Hash, 16, 4, None),
        d(n::VIP_BY_ID, MapType::Array, 4, size_of::<VipSlot>(), None),
        d(n::VIP_PORTS, MapType::Array, 4, 4, Some(VIP_PORTS_LEN)),
        d(n::RINGS, MapType::Array, 4, 4, None),
        d(n::BACKENDS, MapType::Array, 4, size_of::<BackendInfo>(), None),
        d(n::CONNTRACK, MapType::LruHash, size_of::<FlowKey>(), size_of::<FlowState>(), None),
        d(n::FLOWS4, MapType::Array, 4, size_of::<FlowBucket4>(), None),
        d(n::ACL, MapType::LpmTrie, 4 + size_of::<AclData>(), 4, Some(defaults::MAX_ACL)),
        d(n::CONFIG, MapType::Array, 4, size_of::<GlobalConfig>(), Some(1)),
        d(n::VIP_STATS, MapType::PerCpuArray, 4, size_of::<Counters>(), None),
        d(n::BACKEND_STATS, MapType::PerCpuArray, 4, size_of::<Counters>(), None),
        d(n::STATS, MapType::PerCpuArray, 4, size_of::<Counters>(), Some(stat::COUNT)),
        d(n::FLOW_RATE, MapType::PerCpuArray, 4, size_of::<RateState>(), Some(1)),
        d(n::SYNC_RING, MapType::RingBuf, 0, 0, Some(defaults::SYNC_RING_BYTES)),
        d(n::SRC_LIMIT, MapType::Array, 4, size_of::<SrcLimitConfig>(), Some(1)),
        d(n::SRC_RATE, MapType::LruHash, 16, 8, None),
        d(n::VIP_RATE_DROPS, MapType::PerCpuArray, 4, size_of::<Counters>(), None),
    ]
}

/// Why a pinned map cannot be reused, if it cannot.
fn mismatch(def: &Def, info: &MapInfo) -> Option<String> {
    let kind = info.map_type().ok();
    if kind != Some(def.kind) {
        return Some(format!("type {kind:?}, expected {:?}", def.kind));
    }
    let (k, v) = (info.key_size() as usize, info.value_size() as usize);
    if (k, v) != (def.key, def.value) {
        return Some(format!("key/value {k}/{v} bytes, expected {}/{}", def.key, def.value));
    }
    match def.max {
        Some(m) if info.max_entries() != m => Some(format!("{} entries, expected {m}", info.max_entries())),
        _ => None,
    }
}

/// What [`check_pins`] found in a pin directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PinCheck {
    /// Maps of the current layout that were not pinned (created at load).
    pub missing: Vec<&'static str>,
    /// True if the directory held an incompatible layout, whose map pins were removed.
    pub replaced: bool,
}

/// Checks the maps pinned in `dir` against the current layout. If any is incompatible, every map pin of the
/// instance is removed (links stay: the new program takes them over) and the state starts empty: logged as a
/// warning with the reasons.
pub fn check_pins(dir: &Path) -> Result<PinCheck, L4Error> {
    let mut check = PinCheck::default();
    let mut reasons = Vec::new();
    let mut present = Vec::new();
    for def in defs() {
        let path = dir.join(def.name);
        if !path.exists() {
            check.missing.push(def.name);
            continue;
        }
        present.push(path.clone());
        match MapInfo::from_pin(&path) {
            Ok(info) => {
                if let Some(why) = mismatch(&def, &info) {
                    reasons.push(format!("{}: {why}", def.name));
                }
            }
            Err(e) => reasons.push(format!("{}: unreadable ({e})", def.name)),
        }
    }
    if !reasons.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            reasons = %reasons.join("; "),
            "pinned L4 maps have an incompatible layout (older Padis): replaced by fresh maps, connection state lost"
        );
        for p in present {
            std::fs::remove_file(&p).map_err(|source| L4Error::Bpffs { path: p.clone(), source })?;
        }
        check.replaced = true;
        check.missing = defs().iter().map(|d| d.name).collect();
    }
    Ok(check)
}
