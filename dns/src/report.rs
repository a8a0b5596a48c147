//! What `/v1/state` and `padis status` show about DNS.

use std::net::SocketAddr;

use serde::Serialize;

/// State of the DNS plane.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DnsReport {
    /// Bound addresses (UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// Zones served.
    pub zones: Vec<ZoneReport>,
    /// Name collisions between generated records.
    pub collisions: Vec<String>,
    /// Config or generation problems (the previous state stays served).
    pub errors: Vec<String>,
}

/// One zone.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneReport {
    /// Apex.
    pub name: String,
    /// Current serial.
    pub serial: u32,
    /// Records.
    pub records: usize,
    /// Names (with empty non-terminals).
    pub names: usize,
    /// Publishes generated records.
    pub generated: bool,
    /// Master file.
    pub file: Option<String>,
    /// Last load error of the master file.
    pub error: Option<String>,
}
