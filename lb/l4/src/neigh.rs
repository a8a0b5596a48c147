//! MAC addresses of DSR backends from the kernel neighbour table (of the calling thread's network namespace).
//! A missing entry is solicited by sending one empty UDP datagram to the backend's discard port, which makes the
//! kernel resolve it; the next programming round picks the MAC up.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;

use padis_model::l4::parse_mac;

/// The MAC the kernel knows for `addr` (states REACHABLE, STALE, DELAY, PROBE, PERMANENT), if any.
pub fn lookup(addr: IpAddr) -> Option<[u8; 6]> {
    let out = Command::new("ip").args(["-j", "neigh", "show", "to", &addr.to_string()]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.iter().find_map(|e| {
        let states = e.get("state")?.as_array()?;
        let ok = states.iter().filter_map(|s| s.as_str()).any(|s| s != "FAILED" && s != "INCOMPLETE");
        ok.then(|| e.get("lladdr")?.as_str().and_then(parse_mac)).flatten()
    })
}

/// Asks the kernel to resolve `addr` (one empty datagram to port 9, "discard").
pub fn solicit(addr: IpAddr) {
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal address");
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], SocketAddr::new(addr, 9));
    }
}

/// The whole neighbour table: address -> MAC, for usable entries.
pub fn table() -> std::collections::HashMap<IpAddr, [u8; 6]> {
    let mut out = std::collections::HashMap::new();
    let Ok(o) = Command::new("ip").args(["-j", "neigh", "show"]).output() else { return out };
    let Ok(serde_json::Value::Array(v)) = serde_json::from_slice::<serde_json::Value>(&o.stdout) else { return out };
    for e in v {
        let usable = e
            .get("state")
            .and_then(|s| s.as_array())
            .is_some_and(|s| s.iter().filter_map(|s| s.as_str()).any(|s| s != "FAILED" && s != "INCOMPLETE"));
        let addr = e.get("dst").and_then(|d| d.as_str()).and_then(|d| d.parse::<IpAddr>().ok());
        let mac = e.get("lladdr").and_then(|m| m.as_str()).and_then(parse_mac);
        if let (true, Some(a), Some(m)) = (usable, addr, mac) {
            out.insert(a, m);
        }
    }
    out
}

/// `lookup`, soliciting the address when it is unknown.
pub fn resolve(addr: IpAddr) -> Option<[u8; 6]> {
    let m = lookup(addr);
    if m.is_none() {
        solicit(addr);
    }
    m
}
