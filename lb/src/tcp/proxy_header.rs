//! The PROXY protocol header (v1 text, v2 binary; haproxy's proxy-protocol.txt) a TCP listener sends to its
//! backend before the client's bytes, so the backend sees the client's address.

use std::net::{IpAddr, SocketAddr};

use padis_model::ProxyProtocol;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Both addresses in one family: IPv4 when both are (IPv4-mapped IPv6 counts as IPv4), else IPv6.
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let six = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (SocketAddr::new(s, src.port()), SocketAddr::new(d, dst.port())),
        _ => (SocketAddr::new(six(s), src.port()), SocketAddr::new(six(d), dst.port())),
    }
}

/// The header announcing a connection from `src` (the client) to `dst` (the listener address it reached).
pub(crate) fn encode(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(src, dst);
    match version {
        ProxyProtocol::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes()
        }
        ProxyProtocol::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            h.push(0x21); // version 2, PROXY command
            match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    h.push(0x11); // AF_INET, STREAM
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    let six = |ip: IpAddr| match ip {
                        IpAddr::V6(v6) => v6.octets(),
                        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    };
                    h.push(0x21); // AF_INET6, STREAM
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&six(s));
                    h.extend_from_slice(&six(d));
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_text() {
        let h = encode(ProxyProtocol::V1, a("192.0.2.1:40000"), a("198.51.100.2:443"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.1 198.51.100.2 40000 443\r\n");
        let h = encode(ProxyProtocol::V1, a("[2001:db8::1]:5"), a("198.51.100.2:443"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 5 443\r\n");
    }

    #[test]
    fn v2_binary() {
        let h = encode(ProxyProtocol::V2, a("192.0.2.1:40000"), a("[::ffff:198.51.100.2]:443"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..24], &[192, 0, 2, 1, 198, 51, 100, 2]);
        assert_eq!(&h[24..], &[0x9c, 0x40, 0x01, 0xbb]);
        let h = encode(ProxyProtocol::V2, a("[2001:db8::1]:1"), a("[2001:db8::2]:2"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
