//! DNS config: `[dns]`. Owned by the DNS work; extended there.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// `[dns]`: the authoritative server.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// UDP+TCP addresses to serve on (none = DNS disabled).
    pub listen: Vec<SocketAddr>,
}

impl DnsConfig {
    /// Validates `[dns]`.
    pub fn validate(&self, _cx: &mut Validator) {}
}
