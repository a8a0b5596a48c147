//! Loading the XDP object with aya (maps optionally pinned per instance), attaching it to interfaces through
//! pinned bpf links, and running it on test packets (`BPF_PROG_TEST_RUN`).

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{TestRun, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use padis_ebpf_common::{
    flows4, map_names as n, AclData, BackendInfo, Counters, FlowKey, FlowKey4, FlowState, GlobalConfig, SrcLimitConfig,
    VipKey, VipMeta, VipSlot, RING_STRIDE,
};

use crate::conntrack::{ConnTable, FlowTable4};

use crate::error::map_err;
use crate::L4Error;

/// Name of the program in the object.
pub const PROGRAM_NAME: &str = "padis_xdp";
/// Name of the benchmark floor program (swap MACs, XDP_TX).
pub const FLOOR_NAME: &str = "padis_floor";

/// Sizes and persistence of one loaded balancer.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Directory to pin (and reuse) the maps in; `None`: private maps (tests, benchmarks).
    pub pin_dir: Option<PathBuf>,
    /// Connection-table entries.
    pub max_flows: u32,
    /// VIPs.
    pub max_vips: u32,
    /// Backends.
    pub max_backends: u32,
    /// Source prefixes tracked by the per-source new-flow limit (`SRC_RATE`).
    pub max_sources: u32,
}

impl LoadOptions {
    /// Small private maps, for tests and benchmarks.
    pub fn private(max_vips: u32, max_backends: u32, max_flows: u32) -> LoadOptions {
        LoadOptions { pin_dir: None, max_flows, max_vips, max_backends, max_sources: 1024 }
    }

    /// Buckets of the IPv4 connection table: twice `max_flows` slots, rounded up to a power of two.
    pub fn flow_buckets(&self) -> u32 {
        let slots = (u64::from(self.max_flows) * 2).next_power_of_two().min(1 << 31);
        (slots / flows4::WAYS as u64).max(1) as u32
    }

    /// Ring slots: one per VIP plus spares, so a freed table is not rewritten while packets may still read it.
    pub fn max_rings(&self) -> u32 {
        self.max_vips + (self.max_vips / 4).max(8)
    }
}

/// Typed handles on the balancer's maps.
pub struct Maps {
    /// VIP -> meta.
    pub vips: HashMap<MapData, VipKey, VipMeta>,
    /// VIP id -> VIP key and flags (what a connection-table hit checks).
    pub vip_by_id: Array<MapData, VipSlot>,
    /// Destination port -> `port_flags::*`.
    pub vip_ports: Array<MapData, u32>,
    /// Addresses carrying VIPs.
    pub vip_addrs: HashMap<MapData, [u8; 16], u32>,
    /// Maglev rings.
    pub rings: Array<MapData, u32>,
    /// Backends by index.
    pub backends: Array<MapData, BackendInfo>,
    /// Connection table (both halves).
    pub conntrack: ConnTable,
    /// ACL prefixes.
    pub acl: LpmTrie<MapData, AclData, u32>,
    /// Global settings.
    pub config: Array<MapData, GlobalConfig>,
    /// The per-source-prefix new-flow limit.
    pub src_limit: Array<MapData, SrcLimitConfig>,
    /// Per-VIP counters of new flows dropped by that limit.
    pub vip_rate_drops: PerCpuArray<MapData, Counters>,
    /// Per-VIP counters.
    pub vip_stats: PerCpuArray<MapData, Counters>,
    /// Per-backend counters.
    pub backend_stats: PerCpuArray<MapData, Counters>,
    /// Global counters.
    pub stats: PerCpuArray<MapData, Counters>,
    /// New connection-table entries for peer sync (taken by the sync daemon when sync is on).
    pub sync_ring: Option<RingBuf<MapData>>,
}

/// One attachment of the program to an interface, held through a pinned bpf link.
#[derive(Debug)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Mode actually used.
    pub mode: &'static str,
    link: Option<FdLink>,
    pin: Option<PathBuf>,
}

impl Attachment {
    /// Detaches (and removes the pin), or with `keep` leaves the program attached for the next start.
    pub fn release(mut self, keep: bool) {
        if let Some(pin) = self.pin.take() {
            if !keep {
                if let Err(e) = std::fs::remove_file(&pin) {
                    tracing::warn!(path = %pin.display(), error = %e, "removing XDP link pin");
                }
            }
        }
        // Dropping the last fd of an unpinned link detaches the program.
        drop(self.link.take());
        if !keep {
            tracing::info!(iface = %self.iface, "XDP program detached");
        }
    }
}

/// The loaded XDP balancer: program + maps.
pub struct Balancer {
    ebpf: Ebpf,
    /// Map handles.
    pub maps: Maps,
    /// Options it was loaded with.
    pub options: LoadOptions,
    /// True when the maps came from existing pins (a restart).
    pub reused_pins: bool,
}

/// The mapped IPv4 connection table of `buckets` buckets.
fn flows4(ebpf: &mut Ebpf, buckets: u32) -> Result<FlowTable4, L4Error> {
    let data = match ebpf.take_map(n::FLOWS4).ok_or(L4Error::MissingMap(n::FLOWS4))? {
        aya::maps::Map::Array(d) => d,
        _ => return Err(L4Error::MissingMap(n::FLOWS4)),
    };
    FlowTable4::map(data, buckets).map_err(map_err(n::FLOWS4))
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, L4Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf.take_map(name).ok_or(L4Error::MissingMap(name))?;
    T::try_from(m).map_err(map_err(name))
}

impl Balancer {
    /// Loads (and verifies) the program; maps are created, or reused from `pin_dir`.
    pub fn load(options: LoadOptions) -> Result<Balancer, L4Error> {
        let rings = options.max_rings().checked_mul(RING_STRIDE).ok_or(L4Error::Capacity("ring slots"))?;
        let pins = match &options.pin_dir {
            Some(d) => Some(crate::layout::check_pins(d)?),
            None => None,
        };
        let reused_pins = options.pin_dir.as_ref().is_some_and(|d| d.join(n::VIPS).exists());
        // The IPv4 table's size: a pinned one keeps its own (its entries are where they are).
        let pinned4 = options.pin_dir.as_ref().map(|d| d.join(n::FLOWS4)).filter(|p| p.exists());
        let buckets = match pinned4.as_ref().map(aya::maps::MapInfo::from_pin) {
            Some(Ok(info)) => info.max_entries(),
            _ => options.flow_buckets(),
        };
        let mask = buckets - 1;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(n::VIPS, options.max_vips)
            .map_max_entries(n::VIP_ADDRS, options.max_vips)
            .map_max_entries(n::VIP_BY_ID, options.max_vips)
            .map_max_entries(n::VIP_STATS, options.max_vips)
            .map_max_entries(n::VIP_RATE_DROPS, options.max_vips)
            .map_max_entries(n::SRC_RATE, options.max_sources)
            .map_max_entries(n::RINGS, rings)
            .map_max_entries(n::BACKENDS, options.max_backends)
            .map_max_entries(n::BACKEND_STATS, options.max_backends)
            .map_max_entries(n::CONNTRACK, options.max_flows)
            .map_max_entries(n::FLOWS4, buckets)
            .override_global("FLOW_BUCKET_MASK", &mask, true);
        if let Some(dir) = &options.pin_dir {
            for name in n::ALL {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(crate::PROGRAM)?;
        let prog: &mut Xdp = ebpf.program_mut(PROGRAM_NAME).ok_or(L4Error::MissingProgram("padis_xdp"))?.try_into()?;
        prog.load()?;
        let maps = Maps {
            vips: take(&mut ebpf, n::VIPS)?,
            vip_by_id: take(&mut ebpf, n::VIP_BY_ID)?,
            vip_ports: take(&mut ebpf, n::VIP_PORTS)?,
            vip_addrs: take(&mut ebpf, n::VIP_ADDRS)?,
            rings: take(&mut ebpf, n::RINGS)?,
            backends: take(&mut ebpf, n::BACKENDS)?,
            conntrack: ConnTable { v4: flows4(&mut ebpf, buckets)?, v6: take(&mut ebpf, n::CONNTRACK)? },
            acl: take(&mut ebpf, n::ACL)?,
            config: take(&mut ebpf, n::CONFIG)?,
            src_limit: take(&mut ebpf, n::SRC_LIMIT)?,
            vip_rate_drops: take(&mut ebpf, n::VIP_RATE_DROPS)?,
            vip_stats: take(&mut ebpf, n::VIP_STATS)?,
            backend_stats: take(&mut ebpf, n::BACKEND_STATS)?,
            stats: take(&mut ebpf, n::STATS)?,
            sync_ring: Some(take(&mut ebpf, n::SYNC_RING)?),
        };
        let mut bal = Balancer { ebpf, maps, options, reused_pins };
        if let (true, Some(dir)) =
            (reused_pins && pins.is_some_and(|c| c.missing.contains(&n::FLOWS4)), &bal.options.pin_dir)
        {
            bal.upgrade_v4_flows(&dir.clone())?;
        }
        Ok(bal)
    }

    /// Moves the IPv4 flows of maps pinned by an older Padis into `FLOWS4`: `CONNTRACK4` (an LRU hash; its pin is
    /// removed after), and the IPv4-mapped keys of `CONNTRACK` (the layout that kept every flow there).
    fn upgrade_v4_flows(&mut self, dir: &Path) -> Result<(), L4Error> {
        let old = dir.join(n::CONNTRACK4);
        let mut moved = 0;
        if old.exists() {
            let data = MapData::from_pin(&old).map_err(map_err(n::CONNTRACK4))?;
            let mut lru: HashMap<MapData, FlowKey4, FlowState> =
                HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err(n::CONNTRACK4))?;
            moved += self.maps.conntrack.v4.absorb(&mut lru, |k| Some(*k));
            std::fs::remove_file(&old).map_err(|source| L4Error::Bpffs { path: old.clone(), source })?;
        }
        let ct = &mut self.maps.conntrack;
        moved += ct.v4.absorb(&mut ct.v6, FlowKey::to_v4);
        tracing::info!(moved, "L4 layout upgrade: IPv4 connection entries moved to FLOWS4");
        Ok(())
    }

    fn program(&self) -> Result<&Xdp, L4Error> {
        Ok(self.ebpf.program(PROGRAM_NAME).ok_or(L4Error::MissingProgram("padis_xdp"))?.try_into()?)
    }

    /// Loads the benchmark floor program of the same object (swap MACs, XDP_TX) next to the balancer.
    pub fn load_floor(&mut self) -> Result<(), L4Error> {
        let prog: &mut Xdp =
            self.ebpf.program_mut(FLOOR_NAME).ok_or(L4Error::MissingProgram("padis_floor"))?.try_into()?;
        prog.load()?;
        Ok(())
    }

    /// Runs the floor program once on `input` (see [`Balancer::load_floor`]): verdict and kernel-measured ns.
    pub fn test_run_floor(&self, input: &[u8]) -> Result<(u32, f64), L4Error> {
        let prog: &Xdp = self.ebpf.program(FLOOR_NAME).ok_or(L4Error::MissingProgram("padis_floor"))?.try_into()?;
        let mut out = vec![0u8; input.len() + 512];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    /// Runs the floor program `repeat` times on `input`: mean kernel-measured ns per run.
    pub fn test_run_floor_repeat(&self, input: &[u8], repeat: u32) -> Result<f64, L4Error> {
        let prog: &Xdp = self.ebpf.program(FLOOR_NAME).ok_or(L4Error::MissingProgram("padis_floor"))?.try_into()?;
        let mut out = vec![0u8; input.len() + 512];
        let r = prog.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        Ok(r.duration.as_nanos() as f64)
    }

    /// Runs the balancer once on `input`: verdict and kernel-measured ns.
    pub fn test_run_timed(&self, input: &[u8]) -> Result<(u32, f64), L4Error> {
        let mut out = vec![0u8; input.len() + 512];
        let r = self.program()?.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, L4Error> {
        Ok(self.ebpf.program_mut(PROGRAM_NAME).ok_or(L4Error::MissingProgram("padis_xdp"))?.try_into()?)
    }

    /// Runs the program once on `input` (BPF_PROG_TEST_RUN): verdict and output frame.
    pub fn test_run(&self, input: &[u8]) -> Result<(u32, Vec<u8>), L4Error> {
        let mut out = vec![0u8; input.len() + 512];
        let r = self.program()?.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs the program `repeat` times on `input` in the kernel; returns the mean duration per run in ns.
    /// (The kernel re-runs on its own output: only meaningful for paths that leave the frame unchanged, or
    /// whose rewrite is idempotent.)
    pub fn test_run_repeat(&self, input: &[u8], repeat: u32) -> Result<(u32, f64), L4Error> {
        let mut out = vec![0u8; input.len() + 512];
        let r = self.program()?.test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })?;
        Ok((r.return_value, r.duration.as_nanos() as f64))
    }

    /// Attaches to `iface`: native mode (falling back to generic with a warning when `fallback`), or generic when
    /// `generic`. With `pin_dir`, the link is pinned there (taking over an existing pinned attachment atomically).
    pub fn attach(
        &mut self,
        iface: &str,
        generic: bool,
        fallback: bool,
        pin_dir: Option<&Path>,
    ) -> Result<Attachment, L4Error> {
        let pin = pin_dir.map(|d| d.join(format!("link_{iface}")));
        let attach_err = |source| L4Error::Attach { iface: iface.to_string(), source };
        if let Some(p) = pin.as_ref().filter(|p| p.exists()) {
            match PinnedLink::from_pin(p) {
                Ok(pinned) => {
                    let fd: FdLink = pinned.into();
                    let xdp_link = aya::programs::xdp::XdpLink::try_from(fd).map_err(attach_err)?;
                    let prog = self.program_mut()?;
                    let id = prog.attach_to_link(xdp_link)?;
                    let link = prog.take_link(id)?;
                    let fd: FdLink = link.try_into().map_err(attach_err)?;
                    tracing::info!(iface, "XDP program took over the pinned attachment");
                    return Ok(Attachment { iface: iface.into(), mode: "pinned", link: Some(fd), pin });
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "stale XDP link pin removed");
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let prog = self.program_mut()?;
        let (id, mode) = if generic {
            (prog.attach(iface, XdpMode::Skb)?, "generic")
        } else {
            match prog.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, "native"),
                Err(e) if fallback => {
                    tracing::warn!(iface, error = %e, "native XDP unavailable, falling back to generic mode");
                    (prog.attach(iface, XdpMode::Skb)?, "generic")
                }
                Err(e) => return Err(e.into()),
            }
        };
        let link = prog.take_link(id)?;
        let fd: FdLink = link.try_into().map_err(attach_err)?;
        let fd = match &pin {
            Some(p) => {
                let pinned = fd.pin(p).map_err(|source| L4Error::PinLink { iface: iface.to_string(), source })?;
                pinned.into()
            }
            None => fd,
        };
        tracing::info!(iface, mode, "XDP program attached");
        Ok(Attachment { iface: iface.into(), mode, link: Some(fd), pin })
    }
}
