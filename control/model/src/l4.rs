//! L4 (XDP) config: `[l4]` and `[[vip]]`. Owned by the L4 data plane work; extended there.
//!
//! ```toml
//! [l4]
//! interfaces = ["eth1"]          # none = L4 off
//! instance = "default"           # maps pinned in /sys/fs/bpf/padis/<instance>/
//! next_hop_mac = "02:00:00:00:00:01"   # needed by `forwarding = "ipip"` VIPs
//!
//! [l4.neighbors]                 # static MACs for DSR backends (default: the kernel neighbour table)
//! "10.1.0.11" = "02:00:00:00:01:11"
//!
//! [l4.vip.dns-udp]               # per-VIP policy, by VIP name (all optional)
//! hash = "source"                # hash on the client address only
//! allow = ["10.0.0.0/8"]         # ACL: allowed client prefixes (empty = everyone)
//! health = { kind = "tcp" }
//! forwarding = "dsr"             # or "ipip"
//!
//! [[vip]]
//! name = "dns-udp"
//! addr = "192.0.2.10"
//! port = 53
//! protocol = "udp"
//! [[vip.backend]]
//! addr = "10.1.0.11"
//! weight = 1                     # 0 = draining: no new flows, established ones stay
//! ```
//!
//! Connection-table sync among Padis nodes (see the README, "L4: connection-table sync"), and the benchmark
//! control case:
//!
//! ```toml
//! [l4]
//! scheduler = "maglev"           # or "naive": per-node random tables, no sync (benchmark control case only)
//! node_id = "gw1"                # default: the host name
//!
//! [l4.sync]                      # read at start (restart to change)
//! listen = "10.0.0.2:7400"
//! peers = ["10.0.0.2:7400", "10.0.0.3:7400"]   # may list this node itself (ignored)
//! key_file = "/etc/padis/sync.key"              # shared secret (HMAC-SHA256), >= 16 bytes, relative to this file
//! batch_interval = "10ms"
//! dump_rate = 50000              # records/s of a bulk dump to a (re)starting peer
//! refresh_interval = "30s"       # anti-entropy: re-announce the whole table after this pause ("0s": off)
//! refresh_rate = 5000            # records/s of a re-announcement pass
//! ```
//!
//! Per-source-prefix new-flow limit (SYN floods from few sources dropped in XDP, counted per VIP):
//!
//! ```toml
//! [l4]
//! max_sources = 65536            # prefixes tracked (LRU; read at start)
//!
//! [l4.source_limit]
//! new_flows_per_sec = 200        # sustained new flows per source prefix (all VIPs together)
//! burst = 400                    # default: new_flows_per_sec
//! prefix_v4 = 32                 # IPv4 sources are grouped by this prefix length
//! prefix_v6 = 64
//! ```
//!
//! Per-VIP policy lives in `[l4.vip.<name>]` rather than in `[[vip]]` so that sources producing VIPs (Marathon)
//! keep a small, stable `Vip` type.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::HealthCheck;
use crate::validate::Validator;

/// Largest Maglev table a VIP may use (the BPF ring stride; a prime).
pub const MAX_TABLE_SIZE: u32 = 65537;

/// `[l4]`: where the XDP program runs and how.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L4Config {
    /// Interfaces to attach the XDP program to (none = L4 disabled).
    pub interfaces: Vec<String>,
    /// Instance name: maps and links are pinned under `/sys/fs/bpf/padis/<instance>/`.
    pub instance: String,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// Leave the program attached (and forwarding from its pinned maps) when Padis stops, so a restart loses no
    /// traffic; the next start takes the attachment over. Off: detach on shutdown (maps stay pinned).
    pub keep_attached: bool,
    /// Connection-table size (entries, LRU).
    pub max_flows: u32,
    /// Most VIPs.
    pub max_vips: u32,
    /// Most distinct backends (over all VIPs).
    pub max_backends: u32,
    /// New connection-table entries allowed per CPU per second (0 = unlimited): a flood of new flows beyond it is
    /// still balanced (by Maglev) but cannot evict established flows.
    pub max_new_flows_per_sec: u32,
    /// Source prefixes the per-source new-flow limit tracks (an LRU: the least recently seen are forgotten).
    pub max_sources: u32,
    /// Per-source-prefix new-flow limit (none: off), on top of `max_new_flows_per_sec`.
    pub source_limit: Option<SourceLimit>,
    /// Largest IP packet (outer header included) the IPIP egress carries; bigger ones get ICMP "too big".
    pub mtu: u16,
    /// MAC address of the next hop towards IPIP backends (`aa:bb:cc:dd:ee:ff`).
    pub next_hop_mac: Option<String>,
    /// IPIP outer source (IPv4) base: the last 16 bits carry a flow hash.
    pub encap_source_v4: Ipv4Addr,
    /// IPIP outer source (IPv6) base: the last 32 bits carry a flow hash.
    pub encap_source_v6: Ipv6Addr,
    /// Static neighbour entries: backend address -> MAC (DSR); others come from the kernel neighbour table.
    pub neighbors: BTreeMap<IpAddr, String>,
    /// Per-VIP policy, by VIP name.
    pub vip: BTreeMap<String, VipPolicy>,
    /// How VIP lookup tables are filled.
    pub scheduler: Scheduler,
    /// This node's name (seeds the `naive` scheduler, names the node in sync messages); default: the host name.
    pub node_id: Option<String>,
    /// Connection-table sync among Padis nodes (none: off).
    pub sync: Option<SyncConfig>,
}

/// `[l4.source_limit]`: new flows (packets that would create a connection-table entry: TCP SYNs, first packets
/// of UDP flows) per source prefix, over all VIPs, enforced in XDP; beyond it they are dropped and counted per VIP.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceLimit {
    /// Sustained new flows per second per source prefix.
    pub new_flows_per_sec: u32,
    /// New flows a prefix may open at once after a quiet spell (default: `new_flows_per_sec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// IPv4 sources are grouped by this prefix length (1..=32).
    #[serde(default = "default_prefix_v4")]
    pub prefix_v4: u8,
    /// IPv6 sources are grouped by this prefix length (1..=128).
    #[serde(default = "default_prefix_v6")]
    pub prefix_v6: u8,
}

fn default_prefix_v4() -> u8 {
    32
}

fn default_prefix_v6() -> u8 {
    64
}

/// Most `new_flows_per_sec` and `burst` of `[l4.source_limit]`.
pub const MAX_SOURCE_RATE: u32 = 100_000_000;

impl SourceLimit {
    /// The burst in force.
    pub fn effective_burst(&self) -> u32 {
        self.burst.unwrap_or(self.new_flows_per_sec)
    }

    fn validate(&self, cx: &mut Validator) {
        if !(1..=MAX_SOURCE_RATE).contains(&self.new_flows_per_sec) {
            let rate = self.new_flows_per_sec;
            cx.error("l4.source_limit.new_flows_per_sec", format!("{rate}: between 1 and {MAX_SOURCE_RATE}"));
        }
        if let Some(b) = self.burst {
            if !(1..=MAX_SOURCE_RATE).contains(&b) {
                cx.error("l4.source_limit.burst", format!("{b}: between 1 and {MAX_SOURCE_RATE}"));
            }
        }
        if !(1..=32).contains(&self.prefix_v4) {
            cx.error("l4.source_limit.prefix_v4", format!("{}: a prefix length between 1 and 32", self.prefix_v4));
        }
        if !(1..=128).contains(&self.prefix_v6) {
            cx.error("l4.source_limit.prefix_v6", format!("{}: a prefix length between 1 and 128", self.prefix_v6));
        }
    }
}

/// How each VIP's lookup table is filled.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Maglev, from the sorted backend set: every node builds the same table; churn moves few entries.
    #[default]
    Maglev,
    /// Benchmark control case (LVS without sync): a per-node random permutation of the backends, seeded from
    /// `node_id`; tables differ between nodes and are reshuffled on every change. Not for production.
    Naive,
}

/// `[l4.sync]`: connection-table synchronisation among Padis nodes (LVS sync daemon style). Read at start.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// UDP address to receive peers' messages on (and to send from).
    pub listen: SocketAddr,
    /// Peers' `listen` addresses (this node's own may be listed: it is skipped).
    pub peers: Vec<SocketAddr>,
    /// File holding the shared HMAC-SHA256 key (relative to the config file's directory; at least 16 bytes;
    /// surrounding whitespace ignored). Absolute after validation.
    pub key_file: PathBuf,
    /// Longest a new flow waits before it is sent (records are also sent as soon as a datagram is full).
    #[serde(default = "default_batch_interval", with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Records per second of a bulk dump sent to a peer that (re)starts.
    #[serde(default = "default_dump_rate")]
    pub dump_rate: u32,
    /// Anti-entropy: the whole connection table is re-announced to every peer this long after the previous pass
    /// ended (a record lost on UDP or on a full ring is known at the next pass); `0s`: never.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Records per second of a re-announcement pass (bounds its cost; a pass over a large table takes longer).
    #[serde(default = "default_refresh_rate")]
    pub refresh_rate: u32,
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_refresh_rate() -> u32 {
    5_000
}

fn default_batch_interval() -> Duration {
    Duration::from_millis(10)
}

fn default_dump_rate() -> u32 {
    50_000
}

/// Smallest accepted sync key (bytes).
pub const MIN_SYNC_KEY: usize = 16;

/// Reads a sync key file: its content without surrounding whitespace.
pub fn read_sync_key(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = raw.trim_ascii().to_vec();
    if key.len() < MIN_SYNC_KEY {
        return Err(format!("{}: key of {} bytes, need at least {MIN_SYNC_KEY}", path.display(), key.len()));
    }
    Ok(key)
}

impl SyncConfig {
    fn validate(&self, l4: &L4Config, cx: &mut Validator) {
        if l4.scheduler == Scheduler::Naive {
            cx.error("l4.sync", "the naive scheduler is the no-sync control case: remove [l4.sync] or use maglev");
        }
        if self.listen.port() == 0 {
            cx.error("l4.sync.listen", "needs a fixed port (peers send to it)");
        }
        if self.listen.ip().is_unspecified() {
            cx.error("l4.sync.listen", format!("`{}`: use this node's address (peers recognise it)", self.listen));
        }
        let mut seen = HashSet::new();
        let others = self.peers.iter().filter(|p| **p != self.listen).count();
        if others == 0 {
            cx.error("l4.sync.peers", "needs at least one peer other than `listen`");
        }
        for (i, p) in self.peers.iter().enumerate() {
            if !seen.insert(*p) {
                cx.error(format!("l4.sync.peers[{i}]"), format!("duplicate peer {p}"));
            }
            if p.port() == 0 || p.ip().is_unspecified() {
                cx.error(format!("l4.sync.peers[{i}]"), format!("`{p}`: expected a peer's address and port"));
            }
            if p.is_ipv4() != self.listen.is_ipv4() {
                cx.error(format!("l4.sync.peers[{i}]"), format!("`{p}`: not of the address family of `listen`"));
            }
        }
        if let Err(e) = read_sync_key(&self.key_file) {
            cx.error("l4.sync.key_file", e);
        }
        if self.batch_interval < Duration::from_millis(1) || self.batch_interval > Duration::from_secs(1) {
            cx.error("l4.sync.batch_interval", format!("{:?}: must be between 1ms and 1s", self.batch_interval));
        }
        if self.dump_rate < 100 {
            cx.error("l4.sync.dump_rate", format!("{}: at least 100 records/s", self.dump_rate));
        }
        if !self.refresh_interval.is_zero() && self.refresh_interval < Duration::from_secs(1) {
            cx.error("l4.sync.refresh_interval", format!("{:?}: 0s (off) or at least 1s", self.refresh_interval));
        }
        if !(100..=1_000_000).contains(&self.refresh_rate) {
            cx.error("l4.sync.refresh_rate", format!("{}: between 100 and 1000000 records/s", self.refresh_rate));
        }
    }
}

impl Default for L4Config {
    fn default() -> Self {
        L4Config {
            interfaces: Vec::new(),
            instance: "default".into(),
            xdp_mode: XdpMode::Auto,
            keep_attached: false,
            max_flows: 1 << 20,
            max_vips: 256,
            max_backends: 4096,
            max_new_flows_per_sec: 125_000,
            max_sources: 65536,
            source_limit: None,
            mtu: 1500,
            next_hop_mac: None,
            encap_source_v4: Ipv4Addr::new(172, 16, 0, 0),
            encap_source_v6: Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            neighbors: BTreeMap::new(),
            vip: BTreeMap::new(),
            scheduler: Scheduler::Maglev,
            node_id: None,
            sync: None,
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic with a warning.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic (skb) mode only.
    Generic,
}

/// How a VIP reaches its backends.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// Direct server return by MAC rewrite: backends on the same L2 segment hold the VIP on `lo`.
    #[default]
    Dsr,
    /// IP-in-IP (IPv6: IPv6) encapsulation to the backend through `[l4].next_hop_mac` (Katran's mode).
    Ipip,
}

/// What the backend choice hashes.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VipHash {
    /// The 5-tuple.
    #[default]
    Flow,
    /// The client address only (UDP services whose clients change ports).
    Source,
}

/// Per-VIP L4 policy (`[l4.vip.<name>]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipPolicy {
    /// Forwarding mode.
    #[serde(default)]
    pub forwarding: Forwarding,
    /// Hash input.
    #[serde(default)]
    pub hash: VipHash,
    /// Allowed client prefixes (empty: everyone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<IpNet>,
    /// Maglev table size (a prime >= 100 x backends, <= 65537); default 65537.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Active health check of the backends (none: always up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// Port the health check connects to (default: the VIP port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_port: Option<u16>,
}

impl VipPolicy {
    /// Maglev table size in force.
    pub fn effective_table_size(&self) -> u32 {
        self.table_size.unwrap_or(MAX_TABLE_SIZE)
    }
}

/// A virtual IP service balanced in XDP.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// Unique name (also published in DNS).
    pub name: String,
    /// Virtual address.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// `tcp` or `udp`.
    #[serde(default = "default_proto")]
    pub protocol: String,
    /// Backends (real servers).
    #[serde(default, rename = "backend")]
    pub backends: Vec<VipBackend>,
    /// Which source produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

fn default_proto() -> String {
    "tcp".into()
}

/// A real server behind a VIP.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VipBackend {
    /// Address.
    pub addr: IpAddr,
    /// Relative weight (0 = draining).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl Vip {
    /// IP protocol number (6 or 17).
    pub fn ip_proto(&self) -> u8 {
        if self.protocol == "udp" {
            17
        } else {
            6
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d: &u32| d * d <= n).all(|d| !n.is_multiple_of(d))
}

impl L4Config {
    /// Validates `[l4]` and the VIPs.
    pub fn validate(&self, vips: &[std::sync::Arc<Vip>], cx: &mut Validator) {
        if self.instance.is_empty() || !self.instance.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            cx.error("l4.instance", format!("`{}`: expected letters, digits, - or _", self.instance));
        }
        if let Some(m) = &self.next_hop_mac {
            if parse_mac(m).is_none() {
                cx.error("l4.next_hop_mac", format!("`{m}`: expected a MAC address like 02:00:00:00:00:01"));
            }
        }
        if self.mtu < 1280 {
            cx.error("l4.mtu", format!("{}: must be at least 1280", self.mtu));
        }
        if self.max_vips == 0 || self.max_backends == 0 || self.max_flows == 0 {
            cx.error("l4", "max_vips, max_backends and max_flows must be positive");
        }
        if !(1..=1 << 24).contains(&self.max_sources) {
            cx.error("l4.max_sources", format!("{}: between 1 and {}", self.max_sources, 1 << 24));
        }
        if let Some(s) = &self.source_limit {
            s.validate(cx);
        }
        // VIP ids and backend indexes are 16 bits in the IPv4 connection table.
        if self.max_vips > 65536 || self.max_backends > 65536 {
            cx.error("l4", "max_vips and max_backends must be at most 65536");
        }
        if vips.len() > self.max_vips as usize {
            cx.error("vip", format!("{} VIPs but l4.max_vips = {}", vips.len(), self.max_vips));
        }
        if let Some(id) = &self.node_id {
            if id.is_empty() || id.len() > 64 || id.chars().any(|c| c.is_control() || c.is_whitespace()) {
                cx.error("l4.node_id", format!("`{id}`: 1 to 64 printable characters without spaces"));
            }
        }
        if let Some(s) = &self.sync {
            s.validate(self, cx);
        }
        for (a, m) in &self.neighbors {
            if parse_mac(m).is_none() {
                cx.error(format!("l4.neighbors.{a}"), format!("`{m}`: expected a MAC address"));
            }
        }
        for name in self.vip.keys() {
            if !vips.iter().any(|v| &v.name == name) {
                cx.error(format!("l4.vip.{name}"), format!("no [[vip]] named `{name}`"));
            }
        }
        let default_policy = VipPolicy::default();
        let mut seen = HashSet::new();
        let mut names = HashSet::new();
        let mut all_backends = HashSet::new();
        for (i, v) in vips.iter().enumerate() {
            let p = self.vip.get(&v.name).unwrap_or(&default_policy);
            let pk = format!("l4.vip.{}", v.name);
            if !seen.insert((v.addr, v.port, v.protocol.clone())) {
                cx.error(format!("vip[{i}]"), format!("duplicate VIP {}:{}/{}", v.addr, v.port, v.protocol));
            }
            if !names.insert(v.name.as_str()) {
                cx.error(format!("vip[{i}].name"), format!("duplicate VIP name `{}`", v.name));
            }
            if v.protocol != "tcp" && v.protocol != "udp" {
                cx.error(format!("vip[{i}].protocol"), format!("`{}`: expected tcp or udp", v.protocol));
            }
            if v.port == 0 {
                cx.error(format!("vip[{i}].port"), "port 0 is not a service port");
            }
            if p.forwarding == Forwarding::Ipip && self.next_hop_mac.is_none() {
                cx.error(format!("{pk}.forwarding"), "ipip needs l4.next_hop_mac");
            }
            for (j, a) in p.allow.iter().enumerate() {
                if a.addr() != a.network() {
                    cx.error(format!("{pk}.allow[{j}]"), format!("`{a}` has host bits set (network is {})", a.trunc()));
                }
            }
            let n = v.backends.len() as u64;
            let size = p.effective_table_size();
            if let Some(s) = p.table_size {
                if !is_prime(s) || s > MAX_TABLE_SIZE {
                    cx.error(format!("{pk}.table_size"), format!("{s}: must be a prime <= {MAX_TABLE_SIZE}"));
                }
            }
            if n * 100 > size as u64 {
                cx.error(
                    format!("vip[{i}].backend"),
                    format!("{n} backends need a Maglev table of at least {} slots (table_size {size})", n * 100),
                );
            }
            let mut addrs = HashSet::new();
            for (j, b) in v.backends.iter().enumerate() {
                all_backends.insert(b.addr);
                if !addrs.insert(b.addr) {
                    cx.error(format!("vip[{i}].backend[{j}].addr"), format!("duplicate backend {}", b.addr));
                }
                if p.forwarding == Forwarding::Dsr && b.addr.is_ipv4() != v.addr.is_ipv4() {
                    cx.error(
                        format!("vip[{i}].backend[{j}].addr"),
                        "DSR backends must be of the VIP's address family (use forwarding = \"ipip\")",
                    );
                }
            }
        }
        if all_backends.len() > self.max_backends as usize {
            cx.error("vip", format!("{} backends but l4.max_backends = {}", all_backends.len(), self.max_backends));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn check(toml: &str) -> Result<crate::Valid, String> {
        crate::parse_config(toml, "l4.toml", Path::new(".")).map_err(|e| e.to_string())
    }

    const VIP: &str =
        "[[vip]]\nname = \"web\"\naddr = \"192.0.2.1\"\nport = 80\n[[vip.backend]]\naddr = \"10.0.0.1\"\n";

    #[test]
    fn valid_policy_and_neighbors() {
        let v = check(&format!(
            "[l4]\ninterfaces = [\"eth0\"]\nnext_hop_mac = \"02:00:00:00:00:01\"\n[l4.neighbors]\n\"10.0.0.1\" = \"02:00:00:00:00:02\"\n[l4.vip.web]\nforwarding = \"ipip\"\nhash = \"source\"\nallow = [\"10.0.0.0/8\"]\ntable_size = 101\n{VIP}"
        ))
        .unwrap();
        let p = &v.state.l4.vip["web"];
        assert_eq!(
            (p.forwarding, p.hash, p.effective_table_size()),
            (super::Forwarding::Ipip, super::VipHash::Source, 101)
        );
        assert_eq!(v.state.l4.neighbors.len(), 1);
    }

    #[test]
    fn errors_point_at_the_field() {
        let e = check(&format!("[l4.vip.web]\nforwarding = \"ipip\"\n{VIP}")).unwrap_err();
        assert!(e.contains("l4.toml:") && e.contains("next_hop_mac"), "{e}");
        let e = check(&format!("[l4.vip.web]\ntable_size = 100\n{VIP}")).unwrap_err();
        assert!(e.contains("must be a prime"), "{e}");
        let e = check(&format!("[l4.vip.nope]\nhash = \"source\"\n{VIP}")).unwrap_err();
        assert!(e.contains("no [[vip]] named `nope`"), "{e}");
        let e = check(&format!("[l4.vip.web]\nallow = [\"10.0.0.1/8\"]\n{VIP}")).unwrap_err();
        assert!(e.contains("host bits"), "{e}");
        let e = check(&format!("[l4]\nmtu = 1000\n{VIP}")).unwrap_err();
        assert!(e.contains("at least 1280"), "{e}");
        let e = check(&VIP.replace("addr = \"10.0.0.1\"", "addr = \"fd00::1\"")).unwrap_err();
        assert!(e.contains("address family"), "{e}");
    }

    fn sync_toml(key: &std::path::Path, extra: &str) -> String {
        format!(
            "[l4]\n{extra}\n[l4.sync]\nlisten = \"10.0.0.2:7400\"\npeers = [\"10.0.0.2:7400\", \"10.0.0.3:7400\"]\nkey_file = \"{}\"\nbatch_interval = \"20ms\"\n{VIP}",
            key.display()
        )
    }

    #[test]
    fn sync_config() {
        let dir = std::env::temp_dir().join(format!("padis-l4-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("sync.key");
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        let v = check(&sync_toml(&key, "node_id = \"gw1\"")).unwrap();
        let s = v.state.l4.sync.as_ref().unwrap();
        assert_eq!(s.batch_interval, std::time::Duration::from_millis(20));
        assert_eq!(s.dump_rate, 50_000);
        assert_eq!(super::read_sync_key(&key).unwrap(), b"0123456789abcdef0123");
        assert_eq!(v.state.l4.scheduler, super::Scheduler::Maglev);

        let e = check(&sync_toml(&key, "scheduler = \"naive\"")).unwrap_err();
        assert!(e.contains("l4.toml:") && e.contains("naive scheduler is the no-sync control case"), "{e}");
        let e = check(&sync_toml(&key, "").replace("20ms", "5s")).unwrap_err();
        assert!(e.contains("l4.sync.batch_interval") && e.contains("between 1ms and 1s"), "{e}");
        let e = check(&sync_toml(&key, "").replace("\"10.0.0.3:7400\"", "\"10.0.0.2:7400\"")).unwrap_err();
        assert!(e.contains("duplicate peer") && e.contains("at least one peer"), "{e}");
        let e =
            check(&sync_toml(&key, "").replace("listen = \"10.0.0.2:7400\"", "listen = \"[::1]:7400\"")).unwrap_err();
        assert!(e.contains("address family"), "{e}");
        let e = check(&sync_toml(&dir.join("none"), "")).unwrap_err();
        assert!(e.contains("l4.sync.key_file") && e.contains("No such file"), "{e}");
        std::fs::write(&key, "short\n").unwrap();
        let e = check(&sync_toml(&key, "")).unwrap_err();
        assert!(e.contains("need at least 16"), "{e}");
        // A relative key file is resolved against the config file's directory (like group CA files).
        std::fs::write(&key, "0123456789abcdef0123\n").unwrap();
        let v = crate::parse_config(&sync_toml(std::path::Path::new("sync.key"), ""), "l4.toml", &dir).unwrap();
        let s = v.state.l4.sync.as_ref().unwrap();
        assert_eq!(s.key_file, key);
        assert_eq!((s.refresh_interval, s.refresh_rate), (std::time::Duration::from_secs(30), 5_000));
        let e = check(&sync_toml(std::path::Path::new("sync.key"), "")).unwrap_err();
        assert!(e.contains("l4.sync.key_file") && e.contains("./sync.key") && e.contains("No such file"), "{e}");
        let e = check(&sync_toml(&key, "").replace("batch_interval", "refresh_interval = \"500ms\"\nbatch_interval"))
            .unwrap_err();
        assert!(e.contains("l4.sync.refresh_interval") && e.contains("at least 1s"), "{e}");
        let v =
            check(&sync_toml(&key, "").replace("batch_interval", "refresh_interval = \"0s\"\nbatch_interval")).unwrap();
        assert!(v.state.l4.sync.as_ref().unwrap().refresh_interval.is_zero());
        let e = check(&sync_toml(&key, "").replace("batch_interval", "refresh_rate = 10\nbatch_interval")).unwrap_err();
        assert!(e.contains("l4.sync.refresh_rate"), "{e}");
        let e = check(&sync_toml(&key, "").replace("batch_interval", "batch_intervall")).unwrap_err();
        assert!(e.contains("batch_intervall"), "{e}");
        let e = check(&format!("[l4]\nnode_id = \"a b\"\n{VIP}")).unwrap_err();
        assert!(e.contains("l4.node_id"), "{e}");
        let v = check(&format!("[l4]\nscheduler = \"naive\"\n{VIP}")).unwrap();
        assert_eq!(v.state.l4.scheduler, super::Scheduler::Naive);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn source_limit() {
        let v = check(&format!("[l4.source_limit]\nnew_flows_per_sec = 50\nprefix_v6 = 56\n{VIP}")).unwrap();
        let s = v.state.l4.source_limit.as_ref().unwrap();
        assert_eq!((s.new_flows_per_sec, s.effective_burst(), s.prefix_v4, s.prefix_v6), (50, 50, 32, 56));
        assert_eq!(v.state.l4.max_sources, 65536);
        assert!(check(VIP).unwrap().state.l4.source_limit.is_none(), "off by default");
        let bad = "[l4.source_limit]\nnew_flows_per_sec = 0\nburst = 0\nprefix_v4 = 33\n";
        let e = check(&format!("{bad}{VIP}")).unwrap_err();
        for field in ["new_flows_per_sec", "burst", "prefix_v4"] {
            assert!(e.contains(&format!("l4.source_limit.{field}")), "{field}: {e}");
        }
        let e = check(&format!("[l4.source_limit]\nnew_flows_per_sec = 5\nprefix_v6 = 0\n{VIP}")).unwrap_err();
        assert!(e.contains("l4.toml:") && e.contains("l4.source_limit.prefix_v6"), "{e}");
        let e = check(&format!("[l4.source_limit]\nburst = 5\n{VIP}")).unwrap_err();
        assert!(e.contains("new_flows_per_sec"), "{e}");
        let e = check(&format!("[l4]\nmax_sources = 0\n{VIP}")).unwrap_err();
        assert!(e.contains("l4.max_sources"), "{e}");
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(super::parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(super::parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(super::parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(super::parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
