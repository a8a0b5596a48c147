//! Named services and their instances: what DNS publishes (A/AAAA/SRV) and what sources such as Marathon fill.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// A service: a DNS name with instances (A/AAAA) and named ports (SRV).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// DNS label(s) of the service, relative to `zone` (e.g. `web` or `web.prod`).
    pub name: String,
    /// Zone it is published in (default: the first generated zone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Named ports, by index (SRV `_<name>._<protocol>.<service>`).
    #[serde(default, rename = "port")]
    pub ports: Vec<ServicePort>,
    /// Instances.
    #[serde(default, rename = "instance")]
    pub instances: Vec<Instance>,
    /// Which source produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A named port of a service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// Port name (SRV service label without `_`); unnamed ports get no SRV record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tcp` or `udp`.
    #[serde(default = "default_proto")]
    pub protocol: String,
}

fn default_proto() -> String {
    "tcp".into()
}

/// One instance of a service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    /// Stable id (e.g. a Marathon task id).
    pub id: String,
    /// Address.
    pub addr: IpAddr,
    /// Port for each of the service's ports, by index.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// SRV weight.
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// Passing its health checks; only healthy instances are published.
    #[serde(default = "default_true")]
    pub healthy: bool,
    /// Being removed: not published for new lookups.
    #[serde(default)]
    pub draining: bool,
}

fn default_weight() -> u16 {
    1
}
fn default_true() -> bool {
    true
}

impl Service {
    /// Checks names and port/instance consistency.
    pub fn validate(&self, path: &str, cx: &mut Validator) {
        if self.name.is_empty() {
            cx.error(format!("{path}.name"), "must not be empty");
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.protocol != "tcp" && p.protocol != "udp" {
                cx.error(format!("{path}.port[{i}].protocol"), format!("`{}`: expected tcp or udp", p.protocol));
            }
        }
        for (i, inst) in self.instances.iter().enumerate() {
            if inst.ports.len() > self.ports.len() && !self.ports.is_empty() {
                cx.error(format!("{path}.instance[{i}].ports"), "more ports than the service declares");
            }
        }
    }
}
