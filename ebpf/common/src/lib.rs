//! Types shared by the Padis XDP program and its userspace loader (map keys and values).
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, so the eBPF program (built for the bpf
//! target) and `padis-l4` (userspace, feature `user`) agree byte for byte. Addresses are always 16 bytes: IPv4 is
//! stored IPv4-mapped (`::ffff:a.b.c.d`). Ports are in network byte order, as they are on the wire. The flow hash
//! lives here too, so userspace and tests can predict the program's choice.
#![no_std]

/// Names of the BPF maps (the program's `#[map]` statics and the pin file names).
pub mod map_names {
    /// `HashMap<VipKey, VipMeta>`.
    pub const VIPS: &str = "VIPS";
    /// `HashMap<[u8; 16], u32>`: addresses that carry at least one VIP (value: number of VIPs).
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    /// `Array<u32>`: Maglev lookup tables, `RING_STRIDE` entries per ring slot; values are backend indexes.
    pub const RINGS: &str = "RINGS";
    /// `Array<BackendInfo>`, indexed by backend index.
    pub const BACKENDS: &str = "BACKENDS";
    /// `LruHashMap<FlowKey, FlowState>`: the connection table of IPv6 flows.
    pub const CONNTRACK: &str = "CONNTRACK";
    /// `Array<FlowBucket4>` (mmapable): the connection table of IPv4 flows, 4-way set-associative (see
    /// [`flows4`](super::flows4)).
    pub const FLOWS4: &str = "FLOWS4";
    /// `LruHashMap<FlowKey4, FlowState>`: where IPv4 flows were kept before `FLOWS4` (pinned by an older Padis;
    /// its entries move to `FLOWS4` at load).
    pub const CONNTRACK4: &str = "CONNTRACK4";
    /// `Array<VipSlot>`, indexed by VIP id: what a connection-table hit needs of its VIP (no `VIPS` lookup).
    pub const VIP_BY_ID: &str = "VIP_BY_ID";
    /// `Array<u32>` indexed by destination port (host order): `port_flags::*` of the VIPs on that port.
    pub const VIP_PORTS: &str = "VIP_PORTS";
    /// `LpmTrie<AclData, u32>`: allowed source prefixes per VIP.
    pub const ACL: &str = "ACL";
    /// `Array<GlobalConfig>` with one entry.
    pub const CONFIG: &str = "CONFIG";
    /// `PerCpuArray<Counters>` indexed by VIP id.
    pub const VIP_STATS: &str = "VIP_STATS";
    /// `PerCpuArray<Counters>` indexed by backend index.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `PerCpuArray<Counters>` indexed by `stat::*`.
    pub const STATS: &str = "STATS";
    /// `PerCpuArray<RateState>` with one entry: new-flow insertion budget.
    pub const FLOW_RATE: &str = "FLOW_RATE";
    /// `RingBuf` of [`SyncRecord`](super::SyncRecord)s: new connection-table entries, for peer sync.
    pub const SYNC_RING: &str = "SYNC_RING";
    /// `Array<SrcLimitConfig>` with one entry: the per-source-prefix new-flow limit (see
    /// [`SrcLimitConfig`](super::SrcLimitConfig)).
    pub const SRC_LIMIT: &str = "SRC_LIMIT";
    /// `LruHashMap<[u32; 4], u64>`: per source prefix (masked address, IPv4-mapped for IPv4), the time its next
    /// new flow is due at the sustained rate (GCRA's theoretical arrival time, ns of the coarse clock).
    pub const SRC_RATE: &str = "SRC_RATE";
    /// `PerCpuArray<Counters>` indexed by VIP id: new flows dropped by the per-source-prefix limit.
    pub const VIP_RATE_DROPS: &str = "VIP_RATE_DROPS";
    /// All of them (the maps `padis-l4` pins).
    pub const ALL: [&str; 18] = [
        VIPS,
        VIP_ADDRS,
        RINGS,
        BACKENDS,
        CONNTRACK,
        FLOWS4,
        VIP_BY_ID,
        VIP_PORTS,
        ACL,
        CONFIG,
        VIP_STATS,
        BACKEND_STATS,
        STATS,
        FLOW_RATE,
        SYNC_RING,
        SRC_LIMIT,
        SRC_RATE,
        VIP_RATE_DROPS,
    ];
}

/// Entries reserved per Maglev ring slot in `RINGS` (the largest table size, a prime).
pub const RING_STRIDE: u32 = 65537;
/// Compiled-in `max_entries` of the maps; the loader may override them.
pub mod defaults {
    /// VIPs (`VIPS`, `VIP_STATS`).
    pub const MAX_VIPS: u32 = 256;
    /// Ring slots in `RINGS` (two per VIP leave room for a swap).
    pub const MAX_RINGS: u32 = 2 * MAX_VIPS;
    /// Backends (`BACKENDS`, `BACKEND_STATS`).
    pub const MAX_BACKENDS: u32 = 4096;
    /// Connection-table entries.
    pub const MAX_FLOWS: u32 = 1 << 20;
    /// ACL prefixes over all VIPs.
    pub const MAX_ACL: u32 = 16384;
    /// Bytes of the `SYNC_RING` ring buffer (a power of two): ~18k records.
    pub const SYNC_RING_BYTES: u32 = 1 << 20;
    /// Source prefixes tracked by the per-source new-flow limit (`SRC_RATE`, LRU).
    pub const MAX_SOURCES: u32 = 65536;
}

/// Per-VIP flags (`VipMeta::flags`).
pub mod vip_flags {
    /// Hash on the source address only (the source port is ignored, also in the connection table).
    pub const HASH_SRC_ONLY: u32 = 1;
    /// Enforce the VIP's ACL: sources outside its allowed prefixes are dropped.
    pub const ACL: u32 = 2;
    /// Forward by IP-in-IP encapsulation to the backend (else: DSR by MAC rewrite).
    pub const IPIP: u32 = 4;
}

/// Bits of a `VIP_PORTS` entry: which VIPs listen on the port. A packet whose port and protocol have no VIP is
/// passed without any hash lookup; one whose VIPs all hash the full 5-tuple looks its connection entry up first.
pub mod port_flags {
    /// A TCP VIP uses the port.
    pub const TCP: u32 = 1;
    /// A UDP VIP uses the port.
    pub const UDP: u32 = 2;
    /// A TCP VIP on the port hashes on the source address only (its connection key depends on the VIP).
    pub const TCP_SRC_ONLY: u32 = 4;
    /// A UDP VIP on the port hashes on the source address only.
    pub const UDP_SRC_ONLY: u32 = 8;
    /// The bits of IP protocol `proto` (6 or 17): (uses the port, some VIP hashes on the source only).
    pub const fn of(proto: u8) -> (u32, u32) {
        if proto == 6 {
            (TCP, TCP_SRC_ONLY)
        } else {
            (UDP, UDP_SRC_ONLY)
        }
    }
}

/// Number of `VIP_PORTS` entries (one per port).
pub const VIP_PORTS_LEN: u32 = 65536;

/// Backend flags (`BackendInfo::flags`).
pub mod backend_flags {
    /// The slot holds a configured backend; established flows may use it.
    pub const ALIVE: u8 = 1;
    /// The backend address is IPv6.
    pub const V6: u8 = 2;
}

/// Indexes of global counters in `STATS`.
pub mod stat {
    /// Connection-table hit.
    pub const CT_HIT: u32 = 0;
    /// Connection-table miss (a Maglev lookup was done).
    pub const CT_MISS: u32 = 1;
    /// New flow not inserted: the per-CPU insertion budget was spent (flood protection).
    pub const CT_INSERT_SKIPPED: u32 = 2;
    /// Dropped: IP fragment to a VIP address.
    pub const DROP_FRAGMENT: u32 = 3;
    /// Dropped: IPv4 options or IPv6 extension headers to a VIP address.
    pub const DROP_IP_OPTIONS: u32 = 4;
    /// Dropped: source not allowed by the VIP's ACL.
    pub const DROP_ACL: u32 = 5;
    /// Dropped: the VIP has no usable backend.
    pub const DROP_NO_BACKEND: u32 = 6;
    /// Dropped: truncated or malformed headers to a VIP address.
    pub const DROP_MALFORMED: u32 = 7;
    /// Dropped: encapsulation failed (headroom) or the packet is too big and may not be fragmented.
    pub const DROP_ENCAP: u32 = 8;
    /// ICMP "fragmentation needed" sent back to a client (encapsulated packet would exceed the MTU).
    pub const ICMP_TOO_BIG_SENT: u32 = 9;
    /// ICMP error about a VIP flow forwarded to the flow's backend.
    pub const ICMP_FORWARDED: u32 = 10;
    /// Packets forwarded (all VIPs).
    pub const FORWARDED: u32 = 11;
    /// Packets passed to the kernel stack (not for a VIP).
    pub const PASSED: u32 = 12;
    /// New connection-table entry not announced for peer sync: `SYNC_RING` was full.
    pub const SYNC_RING_FULL: u32 = 13;
    /// Number of counters.
    pub const COUNT: u32 = 14;
    /// Names, in index order (used for metrics labels).
    pub const NAMES: [&str; COUNT as usize] = [
        "ct_hit",
        "ct_miss",
        "ct_insert_skipped",
        "drop_fragment",
        "drop_ip_options",
        "drop_acl",
        "drop_no_backend",
        "drop_malformed",
        "drop_encap",
        "icmp_too_big_sent",
        "icmp_forwarded",
        "forwarded",
        "passed",
        "sync_ring_full",
    ];
}

/// Key of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VipKey {
    /// Address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port: u16,
    /// IP protocol (6 = TCP, 17 = UDP).
    pub proto: u8,
    /// Zero.
    pub pad: u8,
}

/// Value of `VIPS`. Replaced as a whole (one map update), which is what makes a table swap atomic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index in `VIP_STATS` and in ACL keys.
    pub id: u32,
    /// `vip_flags::*`.
    pub flags: u32,
    /// Ring slot in `RINGS` holding this VIP's Maglev table.
    pub ring: u32,
    /// Maglev table size (a prime <= `RING_STRIDE`); 0 = no usable backend.
    pub table_size: u32,
}

/// Value of `VIP_BY_ID`: the VIP an id belongs to (checked against the packet on a connection-table hit, so an
/// entry of a removed VIP whose id was reused never forwards) and its flags. All zero: no VIP has the id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipSlot {
    /// The VIP (`pad` = 1 when the slot is in use).
    pub key: VipKey,
    /// `vip_flags::*`.
    pub flags: u32,
}

/// Value of `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendInfo {
    /// Address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
    /// MAC address to send to (DSR: the backend's own; IPIP: unused, the next hop's is global).
    pub mac: [u8; 6],
    /// `backend_flags::*`.
    pub flags: u8,
    /// Zero.
    pub pad: u8,
}

/// Key of `CONNTRACK`, also the input of the flow hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source address (IPv4-mapped for IPv4).
    pub src: [u8; 16],
    /// Destination (VIP) address.
    pub dst: [u8; 16],
    /// Source port, network byte order (0 for `HASH_SRC_ONLY` VIPs).
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// Key of `CONNTRACK4`: an IPv4 flow. The flow hash and the sync records still use the [`FlowKey`] form.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey4 {
    /// Source address.
    pub src: [u8; 4],
    /// Destination (VIP) address.
    pub dst: [u8; 4],
    /// Source port, network byte order (0 for `HASH_SRC_ONLY` VIPs).
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 3],
}

impl FlowKey {
    /// The `CONNTRACK4` form of an IPv4 flow (both addresses IPv4-mapped), else None (an IPv6 flow).
    pub fn to_v4(&self) -> Option<FlowKey4> {
        let (src, dst) = (unmapped(&self.src)?, unmapped(&self.dst)?);
        Some(FlowKey4 { src, dst, sport: self.sport, dport: self.dport, proto: self.proto, pad: [0; 3] })
    }
}

impl FlowKey4 {
    /// The [`FlowKey`] form (IPv4-mapped addresses).
    pub fn to_flow_key(&self) -> FlowKey {
        FlowKey {
            src: v4_mapped(self.src),
            dst: v4_mapped(self.dst),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }
}

/// The IPv4 address of an IPv4-mapped one.
fn unmapped(a: &[u8; 16]) -> Option<[u8; 4]> {
    if a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff {
        Some([a[12], a[13], a[14], a[15]])
    } else {
        None
    }
}

/// Value of `CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    /// Backend index.
    pub backend: u32,
    /// VIP id the flow belongs to.
    pub vip: u32,
}

/// Data part of an `ACL` key: VIP id (big endian, so the prefix covers it first) then source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AclData {
    /// VIP id, big endian.
    pub vip: [u8; 4],
    /// Source address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
}

/// Prefix length of an `ACL` key that matches `addr_prefix` bits of an address (IPv4: pass `96 + len`).
pub const fn acl_prefix_len(addr_prefix: u32) -> u32 {
    32 + addr_prefix
}

/// Value of `CONFIG[0]`: settings that apply to all VIPs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GlobalConfig {
    /// IPIP outer source base (IPv4); the low 16 bits are replaced by the flow hash.
    pub encap_src_v4: [u8; 4],
    /// IPIP outer source base (IPv6); the low 32 bits are replaced by the flow hash.
    pub encap_src_v6: [u8; 16],
    /// MAC of the next hop towards IPIP backends.
    pub next_hop_mac: [u8; 6],
    /// Largest IP packet (outer headers included) the egress link carries.
    pub mtu: u16,
    /// New connection-table entries allowed per CPU per second (0 = unlimited).
    pub max_new_flows_per_sec: u32,
    /// `config_flags::*`.
    pub flags: u32,
}

/// Value of `SRC_LIMIT[0]`: the per-source-prefix new-flow limit, a GCRA (the token bucket as a single due time
/// per prefix). A packet that would create a connection-table entry from a prefix whose due time is more than
/// `tolerance_ns` ahead of now is dropped and counted for its VIP (`VIP_RATE_DROPS`); otherwise the prefix's due
/// time advances by `interval_ns`. Masks are written by `padis-l4` so the program only ANDs words.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SrcLimitConfig {
    /// Nanoseconds per new flow at the sustained rate (1e9 / rate); 0: the limit is off.
    pub interval_ns: u64,
    /// How far ahead of now a prefix's due time may be: (burst - 1) x `interval_ns`.
    pub tolerance_ns: u64,
    /// IPv6 prefix mask, as the four words of the address in memory order.
    pub mask_v6: [u32; 4],
    /// IPv4 prefix mask, as the last word of the IPv4-mapped address in memory order.
    pub mask_v4: u32,
    /// Zero.
    pub pad: u32,
}

/// Global flags (`GlobalConfig::flags`).
pub mod config_flags {
    /// Connection-table sync among Padis nodes is on: new entries are announced in `SYNC_RING`.
    pub const SYNC: u32 = 1;
}

/// A new connection-table entry, as the program announces it in `SYNC_RING` (node-local ids: userspace
/// translates them to identities before sending them to peers).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncRecord {
    /// The flow (connection-table key).
    pub key: FlowKey,
    /// Its entry.
    pub state: FlowState,
}

/// A packets + bytes counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes (Ethernet frame as received).
    pub bytes: u64,
}

/// Value of `FLOW_RATE[0]` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    /// Start of the current one-second window, ns (bpf_ktime_get_ns).
    pub window_start_ns: u64,
    /// Insertions in the window.
    pub inserted: u64,
}

/// The IPv4 connection table (`FLOWS4`): an array of buckets of [`flows4::WAYS`] 16-byte entries, one cache line
/// per bucket. The program and `padis-l4` (which maps the array into its memory) read and write entries as two
/// 64-bit words with the same rules, so either side can add, find or drop an entry while the other runs.
///
/// A flow's bucket is picked by [`flows4::hash`] of its 16-byte key. Its entry holds word 0 = source address
/// (32 bits, bytes as on the wire), source port (16, as on the wire), VIP id (16); word 1 = backend index (16),
/// last use (16, in ~1.07 s units of the coarse clock), a tag of the destination (16: more bits of the hash,
/// telling apart flows of one client address and port to different VIPs) and a check (16, never 0) over the
/// rest, so a reader that meets an entry half rewritten by another CPU sees a miss, not another flow's backend.
/// `word 1 == 0` is an empty slot. A new flow takes a free slot of its bucket or the one least recently used.
///
/// As with Katran's LRU, the table is a cache: a flow whose entry is pushed out keeps its backend through the
/// Maglev table unless the backend set changed meanwhile. It has twice as many slots as `l4.max_flows`, so its
/// buckets seldom overflow before the table is full.
pub mod flows4 {
    /// Entries per bucket.
    pub const WAYS: usize = 4;
    /// Mask of word 0's address and port (the part a lookup compares before the VIP is known).
    pub const IDENT: u64 = 0xffff_ffff_ffff;
    /// Most VIP ids and backend indexes an entry holds (16 bits each).
    pub const MAX_ID: u32 = 0xffff;

    /// A bucket.
    #[repr(C, align(64))]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct FlowBucket4 {
        /// Entry `i` is words `2i` (key) and `2i + 1` (state).
        pub w: [u64; 2 * WAYS],
    }

    /// The 64-bit hash of a [`FlowKey4`](super::FlowKey4) given as its four words in memory order: the low bits
    /// pick the bucket, bits 40..56 are the destination tag.
    #[inline(always)]
    pub fn hash(k: &[u32; 4]) -> u64 {
        let a = (k[0] as u64) | ((k[1] as u64) << 32);
        let b = (k[2] as u64) | ((k[3] as u64) << 32);
        let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        h ^= h >> 29;
        h = h.wrapping_mul(0x1656_67B1_9E37_79F9);
        h ^ (h >> 32)
    }

    /// Word 0 of a flow's entry without its VIP: source address and port.
    #[inline(always)]
    pub fn ident(k: &[u32; 4]) -> u64 {
        (k[0] as u64) | (((k[2] & 0xffff) as u64) << 32)
    }

    /// The destination tag of a flow whose hash is `h`.
    #[inline(always)]
    pub fn tag(h: u64) -> u64 {
        (h >> 40) & 0xffff
    }

    /// The check of an entry (never 0).
    #[inline(always)]
    pub fn check(w0: u64, backend: u64, tag: u64) -> u64 {
        let x = (w0 ^ backend ^ (tag << 16)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (x >> 48) | 1
    }

    /// Word 0 of an entry.
    #[inline(always)]
    pub fn word0(ident: u64, vip: u32) -> u64 {
        ident | ((vip as u64 & 0xffff) << 48)
    }

    /// Word 1 of an entry.
    #[inline(always)]
    pub fn word1(w0: u64, backend: u32, tag: u64, now: u64) -> u64 {
        let b = backend as u64 & 0xffff;
        b | ((now & 0xffff) << 16) | (tag << 32) | (check(w0, b, tag) << 48)
    }

    /// The (backend, VIP id) of an entry whose word 1 carries `tag`, or None when it does not or is not whole.
    #[inline(always)]
    pub fn state(w0: u64, w1: u64, tag: u64) -> Option<(u32, u32)> {
        let backend = w1 & 0xffff;
        if (w1 >> 32) & 0xffff != tag || w1 >> 48 != check(w0, backend, tag) {
            return None;
        }
        Some((backend as u32, (w0 >> 48) as u32))
    }

    /// Time since an entry's last use (0..=0xffff units), `now` in the same units; a free slot is the oldest.
    #[inline(always)]
    pub fn age(w1: u64, now: u64) -> u64 {
        if w1 == 0 {
            1 << 20
        } else {
            now.wrapping_sub(w1 >> 16) & 0xffff
        }
    }

    /// The current time in entry units (~1.07 s) from nanoseconds.
    #[inline(always)]
    pub fn units(ns: u64) -> u64 {
        (ns >> 30) & 0xffff
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all these types are repr(C), contain only integers and byte arrays, and have no implicit padding.
    unsafe impl aya::Pod for super::flows4::FlowBucket4 {}
    unsafe impl aya::Pod for super::VipKey {}
    unsafe impl aya::Pod for super::VipMeta {}
    unsafe impl aya::Pod for super::BackendInfo {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKey4 {}
    unsafe impl aya::Pod for super::VipSlot {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::AclData {}
    unsafe impl aya::Pod for super::GlobalConfig {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::RateState {}
    unsafe impl aya::Pod for super::SyncRecord {}
    unsafe impl aya::Pod for super::SrcLimitConfig {}
}

/// Compile-time layout checks: the program and userspace share these types byte for byte (and `aya::Pod` above
/// relies on them having no implicit padding), so each one's size is the sum of its fields' and its alignment is
/// what the map definitions in `padis-l4`'s `layout.rs` assume.
mod layout_asserts {
    use super::*;
    use core::mem::{align_of, size_of};

    macro_rules! layout {
        ($t:ty, size = $size:expr, align = $align:expr, fields = $fields:expr) => {
            const _: () = assert!(size_of::<$t>() == $size, concat!("size of ", stringify!($t)));
            const _: () = assert!(align_of::<$t>() == $align, concat!("alignment of ", stringify!($t)));
            const _: () = assert!($size == $fields, concat!("implicit padding in ", stringify!($t)));
        };
    }

    layout!(VipKey, size = 20, align = 2, fields = 16 + 2 + 1 + 1);
    layout!(VipMeta, size = 16, align = 4, fields = 4 * 4);
    layout!(VipSlot, size = 24, align = 4, fields = 20 + 4);
    layout!(BackendInfo, size = 24, align = 1, fields = 16 + 6 + 1 + 1);
    layout!(FlowKey, size = 40, align = 2, fields = 16 + 16 + 2 + 2 + 1 + 3);
    layout!(FlowKey4, size = 16, align = 2, fields = 4 + 4 + 2 + 2 + 1 + 3);
    layout!(FlowState, size = 8, align = 4, fields = 4 + 4);
    layout!(AclData, size = 20, align = 1, fields = 4 + 16);
    layout!(GlobalConfig, size = 36, align = 4, fields = 4 + 16 + 6 + 2 + 4 + 4);
    layout!(SrcLimitConfig, size = 40, align = 8, fields = 8 + 8 + 16 + 4 + 4);
    layout!(SyncRecord, size = 48, align = 4, fields = 40 + 8);
    layout!(Counters, size = 16, align = 8, fields = 8 + 8);
    layout!(RateState, size = 16, align = 8, fields = 8 + 8);
    layout!(flows4::FlowBucket4, size = 64, align = 64, fields = 8 * 2 * flows4::WAYS);
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

/// Fixed seed of the flow hash: every Padis node must compute the same hash.
pub const FLOW_HASH_SEED: u32 = 0x5061_6469; // "Padi"

/// The flow hash (MurmurHash3 rounds over the key words, fixed seed). Identical on every node and in userspace.
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, word(&k.src, 0));
    h = mix(h, word(&k.src, 4));
    h = mix(h, word(&k.src, 8));
    h = mix(h, word(&k.src, 12));
    h = mix(h, word(&k.dst, 0));
    h = mix(h, word(&k.dst, 4));
    h = mix(h, word(&k.dst, 8));
    h = mix(h, word(&k.dst, 12));
    h = mix(h, ((k.sport as u32) << 16) | k.dport as u32);
    h = mix(h, k.proto as u32);
    h ^= 40;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// IPv4-mapped form of an IPv4 address (network order bytes).
pub const fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}
