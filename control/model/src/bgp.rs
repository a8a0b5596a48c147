//! BGP / OSPF announcement config: `[bgp]`, `[ospf]`. Owned by the routing work; extended there.

use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// `[bgp]`: the announce-only BGP speaker.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// Our AS number.
    pub asn: u32,
}

/// `[ospf]`: host routes for a local OSPF daemon.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OspfConfig {
    /// Kernel routing table that holds the VIP host routes.
    pub table: u32,
}

impl BgpConfig {
    /// Validates `[bgp]`.
    pub fn validate(&self, cx: &mut Validator) {
        if self.asn == 0 {
            cx.error("bgp.asn", "must not be 0");
        }
    }
}
