//! BGP / OSPF announcement config: `[bgp]`, `[[bgp.peer]]`, `[ospf]`. Owned by the routing work.
//!
//! ```toml
//! [bgp]
//! asn = 4200000001            # 4-octet ASN
//! router_id = "192.0.2.10"
//! hold_time = "90s"           # proposed; the session uses min(ours, peer's)
//! drain_wait = "15s"          # GRACEFUL_SHUTDOWN announced this long before the withdraw
//! graceful_restart = "120s"   # RFC 4724 restart time: routers keep our routes across an upgrade (or a crash)
//!
//! [[bgp.peer]]
//! address = "192.0.2.1"
//! asn = 65000
//! next_hop6 = "2001:db8::10"  # next hop of IPv6 VIPs on this IPv4 session
//! bfd = true                  # single-hop BFD with this router
//! password_file = "/etc/padis/bgp-r1.key"   # TCP MD5 signature key (RFC 2385), mode 0600; or `password`
//! gtsm = true                 # RFC 5082: send TTL 255, accept only TTL >= 254 (directly connected router)
//!
//! [bgp.bfd]
//! interval = "300ms"          # Desired Min TX / Required Min RX once Up
//! multiplier = 3              # Detect Mult
//!
//! [ospf]
//! table = 100                 # kernel table a local BIRD/FRR redistributes
//! mode = "route"              # or "address" (VIP on `interface`)
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::{self, Secret};
use crate::validate::Validator;

/// Longest TCP MD5 key (bytes) Linux takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_MD5_KEY: usize = 80;

/// `[bgp]`: the announce-only BGP speaker.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// Our AS number (4-octet, RFC 6793).
    pub asn: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Hold time we propose (the session uses the smaller of ours and the peer's). At least 3 s.
    #[serde(default = "default_hold", with = "humantime_serde")]
    pub hold_time: Duration,
    /// First delay before reconnecting after a failed or lost session; doubled per failure up to 8x.
    #[serde(default = "default_retry", with = "humantime_serde")]
    pub connect_retry: Duration,
    /// On drain: how long GRACEFUL_SHUTDOWN is announced before everything is withdrawn.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_wait: Duration,
    /// Local address for outgoing sessions (and the listening address for passive peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<IpAddr>,
    /// TCP port on which passive peers connect to us.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// MED sent on normal announcements (none if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub med: Option<u32>,
    /// The routers we peer with.
    #[serde(default, rename = "peer")]
    pub peers: Vec<BgpPeer>,
    /// `[bgp.bfd]`: timers of the BFD sessions (RFC 5880/5881) of peers with `bfd = true`.
    #[serde(default)]
    pub bfd: BfdTimers,
    /// Graceful restart (RFC 4724) as the restarting speaker: the restart time advertised (1-4095 s). Routers
    /// that support it keep our routes while our session is down for that long (an upgrade hands the session
    /// over this way; a crash too), and drop the ones we do not announce again before our End-of-RIB. Absent:
    /// not advertised (routes go with the session).
    #[serde(default, with = "humantime_serde::option", skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<Duration>,
}

/// `[bgp.bfd]`: single-hop BFD timers shared by every peer with `bfd = true`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BfdTimers {
    /// Desired Min TX and Required Min RX once the session is Up (1 s at least while it is not).
    #[serde(default = "default_bfd_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Detect Mult: packets the router may miss before it declares us down.
    #[serde(default = "default_bfd_multiplier")]
    pub multiplier: u8,
}

impl Default for BfdTimers {
    fn default() -> Self {
        Self { interval: default_bfd_interval(), multiplier: default_bfd_multiplier() }
    }
}

/// `[[bgp.peer]]`: one router.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    /// The router's address.
    pub address: IpAddr,
    /// The router's AS number (same as ours = iBGP).
    pub asn: u32,
    /// The router's BGP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Next hop for VIPs of `next_hop`'s family (default: our address on the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<IpAddr>,
    /// Next hop for IPv6 VIPs when the session runs over IPv4 (MP-BGP needs an IPv6 next hop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop6: Option<Ipv6Addr>,
    /// Wait for the router to connect instead of connecting.
    #[serde(default)]
    pub passive: bool,
    /// TTL of our packets for a multihop session (default: 1 for eBGP, 64 for iBGP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multihop: Option<u8>,
    /// Run a single-hop BFD session with the router (timers in `[bgp.bfd]`); its failure tears the BGP
    /// session down at once.
    #[serde(default)]
    pub bfd: bool,
    /// TCP MD5 signature key shared with the router (RFC 2385): every segment of the session is signed and
    /// unsigned or wrongly signed ones are dropped by the kernel. Never shown; prefer `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// File holding the MD5 key (owner-only: mode 0600 or 0400; relative to the config file), read when the
    /// config is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// GTSM (RFC 5082) for a directly connected router: we send with TTL 255 and accept only TTL >= 254.
    #[serde(default)]
    pub gtsm: bool,
}

fn default_hold() -> Duration {
    Duration::from_secs(90)
}
fn default_retry() -> Duration {
    Duration::from_secs(5)
}
fn default_drain() -> Duration {
    Duration::from_secs(15)
}
fn default_port() -> u16 {
    179
}
fn default_bfd_interval() -> Duration {
    Duration::from_millis(300)
}
fn default_bfd_multiplier() -> u8 {
    3
}

impl BgpPeer {
    /// Whether the session is iBGP (same AS on both sides).
    pub fn is_ibgp(&self, local_asn: u32) -> bool {
        self.asn == local_asn
    }
}

impl BgpConfig {
    /// Reads every peer's `password_file` into `password` (when the config file is loaded); a file that cannot be
    /// read or that group or others may access is an error at its `password_file`.
    pub fn resolve_secrets(&mut self, cx: &mut Validator, base: &Path) {
        for (i, p) in self.peers.iter_mut().enumerate() {
            let (inline, file) = (format!("bgp.peer[{i}].password"), format!("bgp.peer[{i}].password_file"));
            secret::resolve(cx, &inline, &mut p.password, &file, p.password_file.as_deref(), base);
        }
    }

    /// Validates `[bgp]` and its peers.
    pub fn validate(&self, cx: &mut Validator) {
        if self.asn == 0 || self.asn == 23456 {
            cx.error("bgp.asn", "must not be 0 or AS_TRANS (23456)");
        }
        if self.router_id.is_unspecified() {
            cx.error("bgp.router_id", "must not be 0.0.0.0");
        }
        if self.graceful_restart.is_some_and(|t| t < Duration::from_secs(1) || t > Duration::from_secs(4095)) {
            cx.error("bgp.graceful_restart", "restart time must be between 1s and 4095s (12 bits, RFC 4724)");
        }
        if self.hold_time < Duration::from_secs(3) || self.hold_time > Duration::from_secs(65535) {
            cx.error("bgp.hold_time", "must be between 3s and 65535s");
        }
        if self.connect_retry < Duration::from_millis(100) || self.connect_retry > Duration::from_secs(3600) {
            cx.error("bgp.connect_retry", "must be between 100ms and 1h");
        }
        if self.drain_wait > Duration::from_secs(600) {
            cx.error("bgp.drain_wait", "must be at most 10m");
        }
        if let Some(a) = self.local_address {
            if a.is_unspecified() || a.is_multicast() {
                cx.error("bgp.local_address", "must be a unicast address");
            }
        }
        if self.listen_port == 0 {
            cx.error("bgp.listen_port", "must not be 0");
        }
        if self.peers.is_empty() {
            cx.error("bgp", "at least one [[bgp.peer]] is needed");
        }
        if self.bfd.interval < Duration::from_millis(10) || self.bfd.interval > Duration::from_secs(60) {
            cx.error("bgp.bfd.interval", "must be between 10ms and 60s");
        }
        if self.bfd.multiplier == 0 {
            cx.error("bgp.bfd.multiplier", "must be 1..255");
        }
        let mut seen = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let at = |f: &str| format!("bgp.peer[{i}].{f}");
            if p.address.is_unspecified() || p.address.is_multicast() {
                cx.error(at("address"), "must be a unicast address");
            }
            if !seen.insert(p.address) {
                cx.error(at("address"), format!("duplicate peer {}", p.address));
            }
            if p.asn == 0 || p.asn == 23456 {
                cx.error(at("asn"), "must not be 0 or AS_TRANS (23456)");
            }
            if p.port == 0 {
                cx.error(at("port"), "must not be 0");
            }
            if let Some(a) = self.local_address {
                if a.is_ipv4() != p.address.is_ipv4() {
                    cx.error(at("address"), "not of the same family as bgp.local_address");
                }
            }
            if let Some(nh) = p.next_hop {
                if nh.is_unspecified() || nh.is_multicast() {
                    cx.error(at("next_hop"), "must be a unicast address");
                }
                if nh.is_ipv6() && p.next_hop6.is_some() {
                    cx.error(at("next_hop6"), "next_hop is already IPv6");
                }
            }
            if let Some(nh) = p.next_hop6 {
                if nh.is_unspecified() || nh.is_multicast() {
                    cx.error(at("next_hop6"), "must be a unicast address");
                }
            }
            if p.multihop == Some(0) {
                cx.error(at("multihop"), "TTL must be 1..255");
            }
            if let Some(k) = &p.password {
                if k.is_empty() || k.expose().len() > MAX_MD5_KEY {
                    let f = if p.password_file.is_some() { "password_file" } else { "password" };
                    cx.error(at(f), format!("a TCP MD5 key of 1 to {MAX_MD5_KEY} bytes"));
                }
            }
            if p.gtsm && p.multihop.is_some() {
                cx.error(at("gtsm"), "GTSM is for directly connected routers (RFC 5082): not with multihop");
            }
            if p.bfd && p.multihop.is_some_and(|t| t > 1) {
                cx.error(at("bfd"), "BFD is single-hop (RFC 5881): not with multihop > 1");
            }
        }
    }
}

/// `[ospf]`: VIP host routes for a local OSPF daemon (BIRD, FRR) to redistribute.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OspfConfig {
    /// Kernel routing table that holds the VIP host routes (`mode = "route"`). Not 0 and not 255 (local).
    #[serde(deserialize_with = "table_id")]
    pub table: u32,
    /// `route`: a host route per VIP in `table`; `address`: the VIP as a /32 or /128 on `interface`.
    #[serde(default)]
    pub mode: OspfMode,
    /// Interface of the routes (route mode) or that carries the addresses (address mode).
    #[serde(default = "default_iface", deserialize_with = "iface_name")]
    pub interface: String,
}

/// How VIPs are put into the kernel for OSPF.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OspfMode {
    /// A host route in the configured table.
    #[default]
    Route,
    /// The VIP address on the interface (`lo` or a dummy interface).
    Address,
}

fn default_iface() -> String {
    "lo".into()
}

fn table_id<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let t = u32::deserialize(d)?;
    if t == 0 || t == 255 {
        return Err(serde::de::Error::custom(format!("table {t} is reserved (0 = unspec, 255 = local)")));
    }
    Ok(t)
}

fn iface_name<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    let ok = !s.is_empty()
        && s.len() < 16
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(serde::de::Error::custom(format!("`{s}` is not an interface name")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn errors(text: &str) -> String {
        match crate::parse_config(text, "t.toml", Path::new(".")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_section_parses_with_defaults() {
        let v = crate::parse_config(
            "[bgp]\nasn = 4200000001\nrouter_id = \"10.0.0.1\"\n[[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 65000\n\
             [ospf]\ntable = 100\n",
            "t.toml",
            Path::new("."),
        )
        .map_err(|e| e.to_string())
        .unwrap();
        let b = v.state.bgp.unwrap();
        assert_eq!(b.hold_time.as_secs(), 90);
        assert_eq!(b.peers[0].port, 179);
        assert!(!b.peers[0].bfd && !b.peers[0].gtsm && b.peers[0].password.is_none());
        assert_eq!((b.bfd.interval.as_millis(), b.bfd.multiplier), (300, 3));
        let o = v.state.ospf.unwrap();
        assert_eq!((o.table, o.mode, o.interface.as_str()), (100, super::OspfMode::Route, "lo"));
    }

    #[test]
    fn bad_values_are_reported_with_lines() {
        let e = errors(
            "[bgp]\nasn = 65001\nrouter_id = \"0.0.0.0\"\nhold_time = \"2s\"\n[[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 0\n",
        );
        assert!(e.contains("t.toml:3") && e.contains("bgp.router_id"), "{e}");
        assert!(e.contains("t.toml:4") && e.contains("bgp.hold_time"), "{e}");
        assert!(e.contains("bgp.peer[0].asn"), "{e}");
        let e = errors("[bgp]\nasn = 65001\nrouter_id = \"10.0.0.1\"\ngraceful_restart = \"2h\"\n[[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 65000\n");
        assert!(e.contains("t.toml:4") && e.contains("bgp.graceful_restart"), "{e}");
        let e = errors("[bgp]\nasn = 65001\nrouter_id = \"10.0.0.1\"\n");
        assert!(e.contains("at least one"), "{e}");
        let e = errors(
            "[bgp]\nasn = 65001\nrouter_id = \"10.0.0.1\"\n[bgp.bfd]\ninterval = \"1ms\"\nmultiplier = 0\n\
             [[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 65000\nmultihop = 3\nbfd = true\n",
        );
        assert!(e.contains("t.toml:5") && e.contains("bgp.bfd.interval"), "{e}");
        assert!(e.contains("t.toml:6") && e.contains("bgp.bfd.multiplier"), "{e}");
        assert!(e.contains("bgp.peer[0].bfd") && e.contains("single-hop"), "{e}");
        let e = errors(
            "[bgp]\nasn = 65001\nrouter_id = \"10.0.0.1\"\n[[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 65000\n\
             multihop = 2\ngtsm = true\npassword = \"\"\n",
        );
        assert!(e.contains("t.toml:8") && e.contains("bgp.peer[0].gtsm"), "{e}");
        assert!(e.contains("t.toml:9") && e.contains("bgp.peer[0].password") && e.contains("1 to 80"), "{e}");
        let e = errors("[ospf]\ntable = 255\n");
        assert!(e.contains("t.toml:2") && e.contains("reserved"), "{e}");
        let e = errors("[ospf]\ntable = 10\nmode = \"tunnel\"\n");
        assert!(e.contains("t.toml:3"), "{e}");
    }

    /// The MD5 key comes from an owner-only file, relative to the config file, and is never serialized.
    #[test]
    fn md5_password_from_a_private_file_is_never_shown() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("padis-bgp-md5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("r1.key");
        std::fs::write(&key, "s3cret-md5\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = "[bgp]\nasn = 65001\nrouter_id = \"10.0.0.1\"\n[[bgp.peer]]\naddress = \"10.0.0.2\"\nasn = 65000\n\
                    password_file = \"r1.key\"\ngtsm = true\n";
        let v = crate::parse_config(text, "t.toml", &dir).map_err(|e| e.to_string()).unwrap();
        let p = &v.state.bgp.as_ref().unwrap().peers[0];
        assert_eq!(p.password.as_ref().map(|s| s.expose()), Some("s3cret-md5"));
        assert!(p.gtsm);
        let shown = format!("{:?} {}", v.state, serde_json::to_string(&v.state).unwrap());
        assert!(!shown.contains("s3cret-md5") && shown.contains("<redacted>"), "{shown}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = crate::parse_config(text, "t.toml", &dir).unwrap_err().to_string();
        assert!(e.contains("t.toml:7:1: bgp.peer[0].password_file") && e.contains("mode 0644"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let both = text.replace("gtsm = true", "password = \"x\"");
        let e = crate::parse_config(&both, "t.toml", &dir).unwrap_err().to_string();
        assert!(e.contains("set either"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
