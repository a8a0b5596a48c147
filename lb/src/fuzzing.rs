//! Entry points for the fuzz targets (`tests/fuzz`): the fast path's request-head parser, chunked decoder and
//! response framing, with the request policy's admission phase. Not a stable API.
//!
//! The fast path keeps its parsers private to `fast`; this module compiles the very same source files
//! (`fast/request.rs`, `fast/chunked.rs`, `fast/response.rs`, by `#[path]`) as its own children, so the targets
//! run the code the proxy runs without widening the fast path's visibility.

#[allow(dead_code, unused_imports, clippy::duplicate_mod)] // the same file as in `fast`, on purpose
#[path = "fast/chunked.rs"]
mod chunked;
#[allow(dead_code, unused_imports, clippy::duplicate_mod)] // the same file as in `fast`, on purpose
#[path = "fast/request.rs"]
mod request;
#[allow(dead_code, unused_imports, clippy::duplicate_mod)] // the same file as in `fast`, on purpose
#[path = "fast/response.rs"]
mod response;

use std::net::SocketAddr;

use http::HeaderValue;

use crate::headers::ClientId;
use crate::policy;

/// A request head read by a plaintext listener's fast path: parsed in place; a head the fast path takes goes
/// through the policy's admission (Host, target normalisation) and is written for the backend. Returns the
/// backend head when the fast path forwards one.
///
/// Checks: the backend head is one complete HTTP/1.1 request head (nothing after it), with no
/// `Transfer-Encoding`, and the `Content-Length` the fast path frames the body by (the smuggling case of issue
/// 11: a framing header must never be dropped as hop-by-hop); the admitted target is normalised (admitting it
/// again changes nothing).
pub fn request_head(data: &[u8]) -> Option<Vec<u8>> {
    let mut slots = [httparse::EMPTY_HEADER; request::MAX_HEADERS];
    let head = match request::parse(data, &mut slots, 100) {
        request::Parsed::Head(h) => h,
        request::Parsed::Partial | request::Parsed::Fallback => return None,
    };
    assert!(head.len <= data.len());
    let _ = (head.path(), head.header_map());
    let mut host = String::new();
    let admitted = policy::admit(&head.policy_head(), &mut host).ok()?;
    let again = policy::Head { target: &admitted.target, ..head.policy_head() };
    let twice = policy::admit(&again, &mut String::new()).expect("an admitted head stays admitted");
    assert_eq!(twice.target, admitted.target, "target normalisation is not idempotent");
    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap_or_else(|_| unreachable!());
    let id = ClientId::new(client, 80, false);
    let mut out = Vec::new();
    let request_id = http::HeaderName::from_static("x-request-id");
    let vars = vars(client);
    let edits =
        request::Edits { strip: &[], request_id: Some((&request_id, "rid-1")), rules: Some((&rules().request, &vars)) };
    head.write_backend_head(&admitted.target, &id, &edits, &mut out);

    let mut slots = [httparse::EMPTY_HEADER; request::MAX_HEADERS + 8];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the backend head"),
        other => panic!("backend head does not parse ({other:?}): {:?}", String::from_utf8_lossy(&out)),
    }
    let field = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    assert_eq!(field("transfer-encoding"), 0, "Transfer-Encoding on a fast-path request");
    let length = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
    let length = length.and_then(|h| std::str::from_utf8(h.value).ok()).and_then(|v| v.parse::<u64>().ok());
    assert_eq!(length.unwrap_or(0), head.body, "the backend frames the body by another length");
    assert!(field("content-length") <= 1);
    assert_eq!(field("x-request-id"), 1, "the request id replaces the client's");
    assert_eq!(field("x-internal"), 0, "a removed field reached the backend");
    assert_eq!(field("x-client"), 1, "a set field is written once");
    Some(out)
}

/// A chunked body through the decoder, whole and cut into pieces (the first byte chooses the cuts). Returns the
/// bytes that belong to the body and whether it is complete, or `None` for a malformed body.
///
/// Checks: the outcome does not depend on the cuts; a complete body takes no byte beyond its end.
pub fn chunked_body(data: &[u8]) -> Option<(usize, bool)> {
    let (seed, body) = data.split_first()?;
    let whole = feed(body, body.len().max(1));
    let cut = feed(body, usize::from(seed % 16) + 1);
    assert_eq!(whole, cut, "the chunked decoder depends on how the body was cut");
    whole
}

fn feed(body: &[u8], step: usize) -> Option<(usize, bool)> {
    let mut c = chunked::Chunked::default();
    let mut taken = 0;
    for piece in body.chunks(step) {
        let (n, done) = c.advance(piece).ok()?;
        assert!(n <= piece.len());
        taken += n;
        if done {
            return Some((taken, true));
        }
        assert_eq!(n, piece.len(), "an incomplete body left bytes unread");
    }
    Some((taken, false))
}

/// Header rules for the fuzz targets: a removed, a set and an added field on each side.
fn rules() -> &'static policy::rules::HeaderRules {
    static RULES: std::sync::OnceLock<Option<policy::rules::HeaderRules>> = std::sync::OnceLock::new();
    let r = RULES.get_or_init(|| {
        let mut h = padis_model::HeaderRules {
            request_remove: vec!["x-internal".into()],
            ..padis_model::HeaderRules::default()
        };
        h.request_set.insert("x-client".into(), "${client_ip}:${client_port}".into());
        h.request_add.insert("x-added".into(), "id=${request_id}".into());
        h.response_remove = vec!["server".into()];
        h.response_set.insert("x-request-id".into(), "${request_id}".into());
        let route = padis_model::Route {
            name: "r".into(),
            headers: h,
            hsts: Some(padis_model::Hsts::default()),
            ..Default::default()
        };
        policy::rules::HeaderRules::compile(&route)
    });
    r.as_ref().unwrap_or_else(|| unreachable!("the route has rules"))
}

fn vars(client: SocketAddr) -> policy::rules::Vars<'static> {
    policy::rules::Vars { client, https: false, request_id: "rid-1", tls_subject: None, sni: None }
}

/// A backend's response head and body bytes. The first byte: bit 0 the request was HEAD, bit 1 a sticky cookie
/// is added, bit 2 the client connection closes after it, bit 3 the route has response header rules. Returns the
/// head written for the client.
///
/// Checks: the head written for the client is one complete HTTP/1.1 response head with at most one way of
/// framing (never both `Content-Length` and `Transfer-Encoding`), `connection: close` when the body ends with the
/// backend's close; the body framing takes the rest whole or in pieces alike.
pub fn response_head(data: &[u8]) -> Option<Vec<u8>> {
    let (flags, buf) = data.split_first()?;
    let cookie = HeaderValue::from_static("padis=b1; Path=/");
    let set_cookie = (flags & 2 != 0).then_some(&cookie);
    let mut out = Vec::new();
    let vars = vars("192.0.2.7:40000".parse().unwrap_or_else(|_| unreachable!()));
    let rules = (flags & 8 != 0).then(|| (&rules().response, &vars));
    let head = match response::parse(buf, flags & 1 != 0, rules, set_cookie, flags & 4 != 0, &mut out) {
        response::Parsed::Head(h) => h,
        response::Parsed::Informational(n) => {
            assert!(n <= buf.len());
            return Some(out);
        }
        response::Parsed::Partial | response::Parsed::Bad => return None,
    };
    assert!(head.len <= buf.len());
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "bytes after the client head"),
        other => panic!("client head does not parse ({other:?}): {:?}", String::from_utf8_lossy(&out)),
    }
    let field = |name: &str| resp.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    assert!(
        field("content-length") == 0 || field("transfer-encoding") == 0,
        "Content-Length and Transfer-Encoding to the client: {:?}",
        String::from_utf8_lossy(&out)
    );
    if rules.is_some() {
        assert_eq!((field("server"), field("x-request-id"), field("strict-transport-security")), (0, 1, 1));
    }
    if matches!(head.framing, response::Framing::Close) {
        assert!(head.close_client && !head.reusable, "a close-delimited body on a kept-alive connection");
    }
    let body = &buf[head.len..];
    let mut whole = head.framing.clone();
    let mut cut = head.framing;
    let all = whole.advance(body).ok();
    let mut pieces = Some((0, false));
    for p in body.chunks(3) {
        match pieces {
            Some((t, false)) => pieces = cut.advance(p).ok().map(|(n, d)| (t + n, d)),
            _ => break,
        }
    }
    if !body.is_empty() {
        assert_eq!(all, pieces, "the response framing depends on how the body was cut");
    }
    Some(out)
}

/// A connection's first bytes on a `proxy_protocol` listener through the PROXY header parser
/// (`proxy_protocol::parse`). Returns the header's length when the bytes start with a whole header.
///
/// Checks: the outcome does not depend on how the bytes arrived (every prefix of a header is incomplete, every
/// longer input gives the same header; a refused input is not a header with more bytes, and is refused for the
/// same kind of reason); a header never claims more bytes than it has; the addresses it announces, written
/// again in the same version, read back the same.
pub fn proxy_header(data: &[u8]) -> Option<usize> {
    use crate::proxy_protocol::{parse, Parsed, MAX_HEADER};
    let whole = parse(data);
    // Prefixes up to a bound: a header is at most MAX_HEADER long, and the check is quadratic.
    for cut in 0..data.len().min(MAX_HEADER + 1).min(600) {
        let part = parse(&data[..cut]);
        match (&whole, &part) {
            (_, Parsed::Incomplete) => {}
            (Parsed::Header { len, .. }, p) => {
                assert!(cut >= *len && *p == whole, "prefix of {cut} bytes: {p:?}, whole: {whole:?}")
            }
            (Parsed::Invalid { missing, .. }, Parsed::Invalid { missing: m, .. }) => {
                assert_eq!(missing, m, "prefix of {cut} bytes refused for another reason")
            }
            (w, p) => panic!("prefix of {cut} bytes: {p:?}, whole: {w:?}"),
        }
    }
    let Parsed::Header { len, announced } = whole else { return None };
    assert!(len <= data.len() && len <= MAX_HEADER, "a header of {len} bytes in {}", data.len());
    if let Some(a) = announced {
        let again = if data[0] == b'P' {
            let family = if a.client.is_ipv4() { "TCP4" } else { "TCP6" };
            let (c, l) = (a.client, a.local);
            format!("PROXY {family} {} {} {} {}\r\n", c.ip(), l.ip(), c.port(), l.port()).into_bytes()
        } else {
            let mut h = data[..16].to_vec();
            let (family, addrs): (u8, Vec<u8>) = match (a.client.ip(), a.local.ip()) {
                (std::net::IpAddr::V4(c), std::net::IpAddr::V4(l)) => (0x11, [c.octets(), l.octets()].concat()),
                (std::net::IpAddr::V6(c), std::net::IpAddr::V6(l)) => (0x21, [c.octets(), l.octets()].concat()),
                other => panic!("one header, two address families: {other:?}"),
            };
            h[13] = family;
            h[14..16].copy_from_slice(&u16::try_from(addrs.len() + 4).unwrap_or(0).to_be_bytes());
            h.extend_from_slice(&addrs);
            h.extend_from_slice(&a.client.port().to_be_bytes());
            h.extend_from_slice(&a.local.port().to_be_bytes());
            h
        };
        match parse(&again) {
            Parsed::Header { len: l, announced: Some(b) } => assert!(l == again.len() && b == a, "{b:?} != {a:?}"),
            other => panic!("announced {a:?}, written again: {other:?}"),
        }
    }
    Some(len)
}
