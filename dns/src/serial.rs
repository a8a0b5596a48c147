//! Zone serial arithmetic (RFC 1982) and the serial policies.

use padis_model::dns::SerialPolicy;

/// RFC 1982: whether `a` is greater than `b`.
pub fn serial_gt(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// The clock as a serial (seconds since the Unix epoch, truncated to 32 bits).
pub fn unix_now() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
}

/// The serial after `serial` under `policy` (always greater in RFC 1982 arithmetic).
pub fn next_serial(policy: SerialPolicy, serial: u32) -> u32 {
    let inc = serial.wrapping_add(1);
    match policy {
        SerialPolicy::Unixtime if serial_gt(unix_now(), inc) => unix_now(),
        _ => inc,
    }
}

/// The first serial of a zone with no serial of its own (no SOA in a file, nothing persisted).
pub fn first_serial(policy: SerialPolicy) -> u32 {
    match policy {
        SerialPolicy::Unixtime => unix_now(),
        SerialPolicy::Increment => 1,
    }
}
