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
    /// `ok`: serving its file's current content; `stale`: serving an older version (its file does not load
    /// now, see `error`); `failed`: never loaded, not served (queries get REFUSED).
    pub state: &'static str,
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
    /// Why the serial served is not the file's (a file serial not raised above the served one).
    pub serial_note: Option<String>,
}
