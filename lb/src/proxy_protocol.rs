//! Accepting the PROXY protocol (haproxy's proxy-protocol.txt, v1 text and v2 binary) on a listener with
//! `proxy_protocol = { trusted = [...] }`: an L4 balancer in front announces the client's address, which then is
//! the connection's client address everywhere (ACLs, per-client limits, `X-Forwarded-For`, the balancers, the
//! PROXY header a TCP listener sends on).
//!
//! The decision, shared by every kind of listener (fast path, hyper path, TCP mode), before any other byte is
//! read: a connection from a source outside `trusted` is refused at accept (a PROXY header from it is never
//! read, so it can claim nothing); a connection from a trusted source must start with a complete header within
//! the header timeout, else it is refused. Every refusal is counted in `padis_http_connections_rejected_total`
//! (reasons `proxy_untrusted`, `proxy_header_missing`, `proxy_header_invalid`, `proxy_header_timeout`).
//!
//! The header is parsed by the `ppp` crate. It is read with `MSG_PEEK` first and then consumed to its exact
//! length, so not one byte after it is taken from the stream: whatever the connection carries next (TLS, HTTP,
//! relayed TCP bytes) is read by its own path as if the header had never been there. `LOCAL` (v2) and `UNKNOWN`
//! (v1) headers, and v2 headers of other address families (UNIX, unspecified), keep the connection's own
//! addresses, as the protocol says.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest header accepted (a v2 header's TLVs included; a v1 header is at most 107 bytes).
pub(crate) const MAX_HEADER: usize = 4096;
/// The longest v1 header (the protocol's limit, CRLF included).
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// What a v1 header starts with.
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The sources a listener takes a PROXY header from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trusted(Box<[IpNet]>);

impl Trusted {
    /// The trusted networks of a listener's `proxy_protocol` (or the networks of its `allow_cidrs`).
    pub fn new(nets: &[IpNet]) -> Trusted {
        Trusted(nets.into())
    }

    /// Whether a connection from `ip` (IPv4-mapped IPv6 counts as IPv4) is from a trusted source.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The addresses a header announces: the client's and the one it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announced {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

/// What a byte prefix of a connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The start of a header: more bytes are needed.
    Incomplete,
    /// A whole header of `len` bytes; `None` when it announces no addresses (keep the connection's own).
    Header { len: usize, announced: Option<Announced> },
    /// Not a PROXY header (`missing`), or a malformed one.
    Invalid { missing: bool, why: String },
}

fn invalid(why: impl Into<String>) -> Parsed {
    Parsed::Invalid { missing: false, why: why.into() }
}

/// Reads the header at the start of `buf` (the bytes a connection sent so far). The result does not depend on
/// how the bytes arrived: a prefix of a header is `Incomplete`, never `Invalid`.
pub(crate) fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return parse_v2(buf);
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return parse_v1(buf);
    }
    Parsed::Invalid { missing: true, why: "the connection does not start with a PROXY header".into() }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    if buf.len() >= 16 {
        let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > MAX_HEADER {
            return invalid(format!("v2 header of {len} bytes (at most {MAX_HEADER})"));
        }
    }
    let h = match ppp::v2::Header::try_from(buf) {
        Ok(h) => h,
        Err(e) if e.is_incomplete() => return Parsed::Incomplete,
        Err(e) => return invalid(format!("v2: {e}")),
    };
    let announced = match (h.command, h.protocol, h.addresses) {
        (ppp::v2::Command::Local, _, _) => None,
        (_, ppp::v2::Protocol::Datagram, _) => return invalid("v2: a datagram (UDP) header on a stream"),
        (_, _, ppp::v2::Addresses::IPv4(a)) => Some(Announced {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            local: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        (_, _, ppp::v2::Addresses::IPv6(a)) => Some(Announced {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            local: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        (_, _, ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified) => None,
    };
    Parsed::Header { len: h.len(), announced }
}

fn parse_v1(buf: &[u8]) -> Parsed {
    // The text header is parsed whole: a line cut short may look malformed (`ppp` reads `... 80 ` as a bad port).
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            invalid("v1 header without CRLF within 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let line = &buf[..=end];
    let h = match ppp::v1::Header::try_from(line) {
        Ok(h) => h,
        Err(e) => return invalid(format!("v1: {e}")),
    };
    if h.header.len() != line.len() {
        return invalid("v1: a CR inside the header");
    }
    let announced = match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(Announced {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            local: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        ppp::v1::Addresses::Tcp6(a) => Some(Announced {
            client: SocketAddr::new(a.source_address.into(), a.source_port),
            local: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }),
        ppp::v1::Addresses::Unknown => None,
    };
    Parsed::Header { len: line.len(), announced }
}

/// Why a connection from a trusted source was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    /// The connection closed before a whole header.
    #[error("connection closed before a whole PROXY header")]
    Closed,
    /// No whole header within the header timeout.
    #[error("no whole PROXY header within {0:?}")]
    Timeout(Duration),
    /// The first bytes are not a PROXY header.
    #[error("no PROXY header: {0}")]
    Missing(String),
    /// A malformed header.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// Reading failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl HeaderError {
    /// The `reason` label of `padis_http_connections_rejected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HeaderError::Closed | HeaderError::Missing(_) | HeaderError::Io(_) => "proxy_header_missing",
            HeaderError::Timeout(_) => "proxy_header_timeout",
            HeaderError::Invalid(_) => "proxy_header_invalid",
        }
    }
}

/// The `reason` label of a connection refused because its source is not trusted.
pub(crate) const UNTRUSTED: &str = "proxy_untrusted";

/// Reads the PROXY header a connection from a trusted source starts with, within `timeout`, taking exactly its
/// bytes from the stream. `Ok(None)`: a header announcing no addresses.
pub(crate) async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<Option<Announced>, HeaderError> {
    match tokio::time::timeout(timeout, read_header_inner(stream)).await {
        Ok(r) => r,
        Err(_) => Err(HeaderError::Timeout(timeout)),
    }
}

async fn read_header_inner(stream: &mut TcpStream) -> Result<Option<Announced>, HeaderError> {
    // Bytes of the header taken from the stream so far (a header that came in several segments).
    let mut taken: Vec<u8> = Vec::new();
    let mut peeked = [0u8; 512];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let mut view = taken.clone();
        view.extend_from_slice(&peeked[..n]);
        match parse(&view) {
            Parsed::Header { len, announced } => {
                // The rest of the header is in the socket's buffer (it was peeked): take exactly that much.
                let mut rest = vec![0u8; len - taken.len()];
                stream.read_exact(&mut rest).await?;
                return Ok(announced);
            }
            Parsed::Incomplete if view.len() >= MAX_HEADER => {
                return Err(HeaderError::Invalid(format!("longer than {MAX_HEADER} bytes")));
            }
            // Every byte seen belongs to the header: take them, and wait for more.
            Parsed::Incomplete => {
                stream.read_exact(&mut peeked[..n]).await?;
                taken.extend_from_slice(&peeked[..n]);
            }
            Parsed::Invalid { missing: true, why } => return Err(HeaderError::Missing(why)),
            Parsed::Invalid { missing: false, why } => return Err(HeaderError::Invalid(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A header as a balancer sends it (`v2`: binary, else text).
    fn encode(v2: bool, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        if !v2 {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            return format!("PROXY {family} {} {} {} {}\r\n", src.ip(), dst.ip(), src.port(), dst.port()).into_bytes();
        }
        let mut h = V2_SIGNATURE.to_vec();
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.extend_from_slice(&[0x21, 0x11, 0, 12]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                h.extend_from_slice(&[0x21, 0x21, 0, 36]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
            }
            _ => unreachable!("one family"),
        }
        h.extend_from_slice(&src.port().to_be_bytes());
        h.extend_from_slice(&dst.port().to_be_bytes());
        h
    }

    /// Every cut of `bytes` is `Incomplete` until the header is whole.
    fn prefixes_incomplete(bytes: &[u8], len: usize) {
        for cut in 0..len {
            assert_eq!(
                parse(&bytes[..cut]),
                Parsed::Incomplete,
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn v1_and_v2_round_trip_with_the_sending_side() {
        for (src, dst) in [("192.0.2.1:40000", "198.51.100.2:443"), ("[2001:db8::1]:5", "[2001:db8::2]:80")] {
            for version in [false, true] {
                let mut bytes = encode(version, a(src), a(dst));
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                prefixes_incomplete(&bytes, len);
                let want = Some(Announced { client: a(src), local: a(dst) });
                assert_eq!(parse(&bytes), Parsed::Header { len, announced: want }, "v2 {version} {src}");
            }
        }
    }

    #[test]
    fn local_unknown_and_refusals() {
        let local = [&V2_SIGNATURE[..], &[0x20, 0x00, 0, 0]].concat();
        assert_eq!(parse(&local), Parsed::Header { len: 16, announced: None });
        assert_eq!(parse(b"PROXY UNKNOWN\r\nx"), Parsed::Header { len: 15, announced: None });
        let missing = |b: &[u8]| matches!(parse(b), Parsed::Invalid { missing: true, .. });
        let bad = |b: &[u8]| matches!(parse(b), Parsed::Invalid { missing: false, .. });
        assert!(missing(b"GET / HTTP/1.1\r\n") && missing(b"\x16\x03\x01") && missing(b"PRI * HTTP/2.0"));
        assert!(bad(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n") && bad(b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"));
        assert!(bad(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n") && parse(b"PROX") == Parsed::Incomplete);
        assert!(bad(&[&V1_PREFIX[..], &[b'x'; 200]].concat()), "no CRLF within 107 bytes");
        // v2: version 1 in the version nibble, a UDP header, a length over the limit.
        assert!(bad(&[&V2_SIGNATURE[..], &[0x11, 0x11, 0, 12], &[0; 12]].concat()));
        assert!(bad(&[&V2_SIGNATURE[..], &[0x21, 0x12, 0, 12], &[0; 12]].concat()));
        assert!(bad(&[&V2_SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat()));
        // A v2 header with a TLV: its whole length is consumed.
        let mut tlv = encode_v2_with_tlv();
        let len = tlv.len();
        tlv.extend_from_slice(b"rest");
        assert!(matches!(parse(&tlv), Parsed::Header { len: l, announced: Some(_) } if l == len));
    }

    fn encode_v2_with_tlv() -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12 + 7]);
        h.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187]);
        h.extend_from_slice(&[0x05, 0, 4, b'a', b'b', b'c', b'd']); // PP2_TYPE_UNIQUE_ID
        h
    }

    #[test]
    fn trusted_sources() {
        let t = Trusted::new(&["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        assert!(t.contains("10.1.2.3".parse().unwrap()) && t.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()) && !t.contains("11.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn reads_exactly_the_header_over_a_socket() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let header = encode(false, a("192.0.2.9:1234"), a("192.0.2.1:80"));
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // The header in three segments, then the first bytes of the client's own protocol.
            for part in [&header[..3], &header[3..20], &header[20..]] {
                s.write_all(part).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            s.write_all(b"hello").await.unwrap();
            s
        });
        let (mut s, _) = l.accept().await.unwrap();
        let got = read_header(&mut s, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got, Some(Announced { client: a("192.0.2.9:1234"), local: a("192.0.2.1:80") }));
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello", "the bytes after the header stay in the stream");
        let _keep = client.await.unwrap();
        // A trusted source that sends no header in time.
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        let e = read_header(&mut s, Duration::from_millis(100)).await.unwrap_err();
        assert_eq!(e.label(), "proxy_header_timeout");
        drop(c);
    }
}
