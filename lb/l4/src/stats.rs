//! Reading the per-CPU counters (summed over CPUs).

use padis_ebpf_common::{map_names as n, stat, Counters};
use serde::Serialize;

use crate::error::map_err;
use crate::loader::Maps;
use crate::L4Error;

fn sum(
    map: &aya::maps::PerCpuArray<aya::maps::MapData, Counters>,
    idx: u32,
    name: &'static str,
) -> Result<Counters, L4Error> {
    let v = map.get(&idx, 0).map_err(map_err(name))?;
    Ok(v.iter().fold(Counters::default(), |a, c| Counters { packets: a.packets + c.packets, bytes: a.bytes + c.bytes }))
}

/// A summed counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<Counters> for Count {
    fn from(c: Counters) -> Count {
        Count { packets: c.packets, bytes: c.bytes }
    }
}

/// Global counters by name (`stat::NAMES`).
pub fn global(maps: &Maps) -> Result<Vec<(&'static str, Count)>, L4Error> {
    (0..stat::COUNT).map(|i| Ok((stat::NAMES[i as usize], sum(&maps.stats, i, n::STATS)?.into()))).collect()
}

/// One global counter.
pub fn global_one(maps: &Maps, idx: u32) -> Result<Count, L4Error> {
    Ok(sum(&maps.stats, idx, n::STATS)?.into())
}

/// Counters of VIP `id`.
pub fn vip(maps: &Maps, id: u32) -> Result<Count, L4Error> {
    Ok(sum(&maps.vip_stats, id, n::VIP_STATS)?.into())
}

/// New flows of VIP `id` dropped by the per-source-prefix limit.
pub fn vip_rate_drops(maps: &Maps, id: u32) -> Result<Count, L4Error> {
    Ok(sum(&maps.vip_rate_drops, id, n::VIP_RATE_DROPS)?.into())
}

/// Counters of backend slot `idx`.
pub fn backend(maps: &Maps, idx: u32) -> Result<Count, L4Error> {
    Ok(sum(&maps.backend_stats, idx, n::BACKEND_STATS)?.into())
}
