//! The fixed hashes: identical on every node and across restarts (xxh3 with constant seeds).

use std::net::{IpAddr, SocketAddr};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of request-key hashes (client IP, header, cookie) fed to Maglev.
const KEY_SEED: u64 = 0x5041_4449_535f_4b59; // "PADIS_KY"
/// Seed of sticky-cookie backend ids.
const STICKY_SEED: u64 = 0x5041_4449_535f_5354; // "PADIS_ST"

/// Hash of a request key (client IP bytes, header value or cookie value).
pub fn key_hash(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, KEY_SEED)
}

/// Hash of a client IP: IPv4 and IPv4-mapped IPv6 hash the same 4 bytes.
pub fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => key_hash(&v4.octets()),
        IpAddr::V6(v6) => key_hash(&v6.octets()),
    }
}

/// The identity bytes of a backend address, as used to order Maglev tables (IP octets then port, big endian).
pub fn addr_identity(addr: SocketAddr) -> Vec<u8> {
    let mut out = match addr.ip() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    out.extend_from_slice(&addr.port().to_be_bytes());
    out
}

/// The opaque sticky-cookie id of a backend: 12 hex digits of a stable hash of its address (not the raw IP).
pub fn sticky_id(addr: SocketAddr) -> String {
    let h = xxh3_64_with_seed(&addr_identity(addr), STICKY_SEED);
    format!("{:012x}", h >> 16)
}
