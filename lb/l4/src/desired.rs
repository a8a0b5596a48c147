//! What the maps should hold, computed from a snapshot: VIPs with their flags, ACL, usable backends and the
//! backends' MAC addresses (DSR) — independent of BPF, so it is easy to test and to diff.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use padis_ebpf_common::{config_flags, vip_flags, GlobalConfig, SrcLimitConfig, VipKey};
use padis_model::l4::{parse_mac, Forwarding, L4Config, Scheduler, SourceLimit, Vip, VipHash, VipPolicy};

/// Maps an address to its 16-byte form (IPv4-mapped for IPv4).
pub fn addr16(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One backend of a VIP as it should be programmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBackend {
    /// Address.
    pub addr: IpAddr,
    /// Weight (0 = draining).
    pub weight: u32,
    /// Health allows new flows.
    pub usable: bool,
}

/// One VIP as it should be programmed.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredVip {
    /// Name.
    pub name: String,
    /// Map key.
    pub key: VipKey,
    /// `vip_flags::*`.
    pub flags: u32,
    /// Maglev table size (prime).
    pub table_size: u32,
    /// Backends.
    pub backends: Vec<DesiredBackend>,
    /// Allowed client prefixes (empty: all).
    pub allow: Vec<IpNet>,
}

/// Everything the maps should hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Desired {
    /// VIPs.
    pub vips: Vec<DesiredVip>,
    /// Global settings.
    pub global: GlobalConfig,
    /// The per-source-prefix new-flow limit (all zero: off).
    pub src_limit: SrcLimitConfig,
    /// MAC of each backend that DSR needs and that is known.
    pub macs: BTreeMap<IpAddr, [u8; 6]>,
    /// `scheduler = "naive"` (benchmark control case): this node's seed. `None`: Maglev.
    pub naive_seed: Option<u64>,
}

/// The policy of `vip` (defaults when `[l4.vip.<name>]` is absent).
pub fn policy<'a>(l4: &'a L4Config, vip: &Vip) -> std::borrow::Cow<'a, VipPolicy> {
    match l4.vip.get(&vip.name) {
        Some(p) => std::borrow::Cow::Borrowed(p),
        None => std::borrow::Cow::Owned(VipPolicy::default()),
    }
}

/// Port the health check of `vip` connects to.
pub fn health_port(l4: &L4Config, vip: &Vip) -> u16 {
    policy(l4, vip).health_port.unwrap_or(vip.port)
}

/// Global settings from `[l4]`.
pub fn global(l4: &L4Config) -> GlobalConfig {
    let v6 = l4.encap_source_v6.octets();
    GlobalConfig {
        encap_src_v4: l4.encap_source_v4.octets(),
        encap_src_v6: v6,
        next_hop_mac: l4.next_hop_mac.as_deref().and_then(parse_mac).unwrap_or_default(),
        mtu: l4.mtu,
        max_new_flows_per_sec: l4.max_new_flows_per_sec,
        flags: if l4.sync.is_some() { config_flags::SYNC } else { 0 },
    }
}

/// The `SRC_LIMIT` value of `[l4.source_limit]` (all zero when absent: the program skips the limit).
pub fn src_limit(limit: Option<&SourceLimit>) -> SrcLimitConfig {
    let Some(l) = limit else { return SrcLimitConfig::default() };
    let interval_ns = 1_000_000_000 / u64::from(l.new_flows_per_sec.max(1));
    let v4 = u32::MAX.checked_shl(32 - u32::from(l.prefix_v4.min(32))).unwrap_or(0);
    let v6 = u128::MAX.checked_shl(128 - u32::from(l.prefix_v6.min(128))).unwrap_or(0).to_be_bytes();
    let word = |i: usize| u32::from_ne_bytes([v6[i], v6[i + 1], v6[i + 2], v6[i + 3]]);
    SrcLimitConfig {
        interval_ns,
        tolerance_ns: u64::from(l.effective_burst().max(1) - 1) * interval_ns,
        mask_v6: [word(0), word(4), word(8), word(12)],
        mask_v4: u32::from_ne_bytes(v4.to_be_bytes()),
        pad: 0,
    }
}

/// Computes the desired map contents. `usable(vip, backend:health_port)` says whether health allows new flows;
/// `mac(addr)` resolves a DSR backend's MAC (static `[l4.neighbors]` entries win).
pub fn compute(
    l4: &L4Config,
    vips: &[std::sync::Arc<Vip>],
    usable: &dyn Fn(&str, SocketAddr) -> bool,
    mac: &mut dyn FnMut(IpAddr) -> Option<[u8; 6]>,
) -> Desired {
    let naive_seed = (l4.scheduler == Scheduler::Naive).then(|| crate::naive::node_seed(&crate::sync::node_name(l4)));
    let src_limit = src_limit(l4.source_limit.as_ref());
    let mut out = Desired { global: global(l4), src_limit, naive_seed, ..Default::default() };
    for v in vips {
        let p = policy(l4, v);
        let mut flags = 0;
        if p.hash == VipHash::Source {
            flags |= vip_flags::HASH_SRC_ONLY;
        }
        if !p.allow.is_empty() {
            flags |= vip_flags::ACL;
        }
        if p.forwarding == Forwarding::Ipip {
            flags |= vip_flags::IPIP;
        }
        let hport = health_port(l4, v);
        let backends = v
            .backends
            .iter()
            .map(|b| DesiredBackend {
                addr: b.addr,
                weight: b.weight,
                usable: usable(&v.name, SocketAddr::new(b.addr, hport)),
            })
            .collect();
        if p.forwarding == Forwarding::Dsr {
            for b in &v.backends {
                if out.macs.contains_key(&b.addr) {
                    continue;
                }
                let m = l4.neighbors.get(&b.addr).and_then(|m| parse_mac(m)).or_else(|| mac(b.addr));
                if let Some(m) = m {
                    out.macs.insert(b.addr, m);
                }
            }
        }
        out.vips.push(DesiredVip {
            name: v.name.clone(),
            key: VipKey { addr: addr16(v.addr), port: v.port.to_be(), proto: v.ip_proto(), pad: 0 },
            flags,
            table_size: p.effective_table_size(),
            backends,
            allow: p.allow.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use padis_ebpf_common::vip_flags;

    #[test]
    fn compute_flags_keys_health_and_macs() {
        let toml = r#"
[l4]
next_hop_mac = "02:00:00:00:00:fe"
[l4.neighbors]
"10.0.0.1" = "02:00:00:00:00:01"
[l4.vip.dns]
hash = "source"
allow = ["10.0.0.0/8"]
forwarding = "ipip"
[[vip]]
name = "web"
addr = "192.0.2.1"
port = 80
backend = [{ addr = "10.0.0.1" }, { addr = "10.0.0.2", weight = 0 }]
[[vip]]
name = "dns"
addr = "192.0.2.1"
port = 53
protocol = "udp"
backend = [{ addr = "10.0.0.3" }]
"#;
        let v = padis_model::parse_config(toml, "t.toml", Path::new(".")).unwrap();
        let mut asked = Vec::new();
        let usable = |vip: &str, a: std::net::SocketAddr| !(vip == "web" && a.ip().to_string() == "10.0.0.2");
        let d = super::compute(&v.state.l4, &v.state.vips, &usable, &mut |a| {
            asked.push(a);
            (a.to_string() == "10.0.0.2").then_some([2, 0, 0, 0, 0, 2])
        });
        let web = &d.vips[0];
        assert_eq!(web.key.port, 80u16.to_be());
        assert_eq!(web.key.proto, 6);
        assert_eq!(web.key.addr[10..], [0xff, 0xff, 192, 0, 2, 1]);
        assert_eq!(web.flags, 0);
        assert_eq!(web.table_size, 65537);
        assert!(web.backends[0].usable && !web.backends[1].usable);
        let dns = &d.vips[1];
        assert_eq!(dns.flags, vip_flags::HASH_SRC_ONLY | vip_flags::ACL | vip_flags::IPIP);
        // Static neighbour wins; only DSR backends without one are resolved; IPIP backends need no MAC.
        let a1: IpAddr = "10.0.0.1".parse().unwrap();
        let a2: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(asked, vec![a2]);
        assert_eq!(d.macs.get(&a1), Some(&[2, 0, 0, 0, 0, 1]));
        assert_eq!(d.macs.get(&a2), Some(&[2, 0, 0, 0, 0, 2]));
        assert_eq!(d.global.next_hop_mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(d.global.encap_src_v4, [172, 16, 0, 0]);
        assert_eq!(d.src_limit, padis_ebpf_common::SrcLimitConfig::default(), "no [l4.source_limit]: off");
    }

    #[test]
    fn source_limit_masks_and_timing() {
        use padis_model::l4::SourceLimit;
        let l = SourceLimit { new_flows_per_sec: 100, burst: Some(5), prefix_v4: 24, prefix_v6: 48 };
        let c = super::src_limit(Some(&l));
        assert_eq!((c.interval_ns, c.tolerance_ns), (10_000_000, 40_000_000));
        // Masks are ANDed with the address words as they lie in memory.
        let a4 = [198u8, 51, 100, 7];
        assert_eq!((u32::from_ne_bytes(a4) & c.mask_v4).to_ne_bytes(), [198, 51, 100, 0]);
        let a6: std::net::Ipv6Addr = "2001:db8:aaaa:bbbb::7".parse().unwrap();
        let o = a6.octets();
        let word = |i: usize| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
        let masked: Vec<u8> = (0..4).flat_map(|i| (word(i) & c.mask_v6[i]).to_ne_bytes()).collect();
        assert_eq!(masked, "2001:db8:aaaa::".parse::<std::net::Ipv6Addr>().unwrap().octets());
        let full = super::src_limit(Some(&SourceLimit { burst: None, prefix_v4: 32, prefix_v6: 128, ..l }));
        assert_eq!((full.mask_v4, full.mask_v6, full.tolerance_ns), (u32::MAX, [u32::MAX; 4], 99 * 10_000_000));
    }
}
