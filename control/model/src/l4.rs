//! L4 (XDP) config: `[l4]` and `[[vip]]`. Owned by the L4 data plane work; extended there.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// `[l4]`: where the XDP program runs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L4Config {
    /// Interfaces to attach the XDP program to (none = L4 disabled).
    pub interfaces: Vec<String>,
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

impl L4Config {
    /// Validates `[l4]` and the VIPs.
    pub fn validate(&self, vips: &[Vip], cx: &mut Validator) {
        let mut seen = std::collections::HashSet::new();
        for (i, v) in vips.iter().enumerate() {
            if !seen.insert((v.addr, v.port, v.protocol.clone())) {
                cx.error(format!("vip[{i}]"), format!("duplicate VIP {}:{}/{}", v.addr, v.port, v.protocol));
            }
            if v.protocol != "tcp" && v.protocol != "udp" {
                cx.error(format!("vip[{i}].protocol"), format!("`{}`: expected tcp or udp", v.protocol));
            }
        }
    }
}
