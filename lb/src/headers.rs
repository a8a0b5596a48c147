//! Header rewriting: hop-by-hop headers removed in both directions (RFC 9110 §7.6.1), forwarding headers added
//! (`X-Forwarded-For`/`-Proto`/`-Port`, RFC 7239 `Forwarded`).

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::policy::hop::{Class, Connection};
use crate::policy::rules::{Side, Vars};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection(headers).has("upgrade")
}

/// Whether the `Connection` fields of `headers` list `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection(headers).has(token)
}

/// The names the `Connection` fields of `headers` list.
fn connection(headers: &HeaderMap) -> Connection<'_> {
    Connection::new(headers.get_all(header::CONNECTION).iter().map(HeaderValue::as_bytes))
}

/// Removes what the request policy calls hop-by-hop (`policy::hop`: `Connection` and the headers it names but
/// the framing ones and `Host`, `Keep-Alive`, `TE`, `Trailer`, `Proxy-*`, `Upgrade` unless `keep_upgrade` — then
/// `Connection: upgrade` is put back), and `Transfer-Encoding`, which hyper writes anew as it frames the body.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let dropped: Vec<HeaderName> = {
        let conn = connection(headers);
        headers
            .keys()
            .filter(|n| match conn.class(n.as_str()) {
                Class::HopByHop => !(keep_upgrade && *n == header::UPGRADE),
                Class::Framing => *n == header::TRANSFER_ENCODING,
                Class::Forward => false,
            })
            .cloned()
            .collect()
    };
    for n in dropped {
        headers.remove(n);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sets the request id field (`policy::identify` chose the id): the client's fields of that name replaced.
pub(crate) fn set_request_id(headers: &mut HeaderMap, name: &HeaderName, id: &str) {
    headers.remove(name);
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(name.clone(), v);
    }
}

/// Removes the fields a side of the route's header rules drops (`policy::rules::Side::drops`).
pub(crate) fn drop_fields(headers: &mut HeaderMap, side: &Side) {
    for n in side.dropped() {
        headers.remove(n);
    }
}

/// Appends the fields a side of the route's header rules writes (`policy::rules::Side::each`).
pub(crate) fn write_fields(headers: &mut HeaderMap, side: &Side, vars: &Vars<'_>) {
    let mut scratch = Vec::new();
    side.each(vars, &mut scratch, |n, v| {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append(n.clone(), v);
        }
    });
}

/// What the forwarding headers say about one client connection, formatted once per connection.
pub(crate) struct ClientId {
    /// `X-Forwarded-For` element (the client IP).
    xff: Box<str>,
    /// `Forwarded` element without host (`for=...;proto=...`).
    forwarded: Box<str>,
    /// Local port.
    port: HeaderValue,
    https: bool,
    /// The client's verified certificate (mTLS listeners).
    pub cert: Option<ClientCert>,
}

/// A client certificate verified in the handshake: its subject, and the header the listener passes it in.
#[derive(Debug, Clone)]
pub(crate) struct ClientCert {
    /// The listener's `subject_header` (lowercase).
    pub header: HeaderName,
    /// The subject, RFC 4514.
    pub subject: HeaderValue,
}

impl ClientId {
    /// Formats the identity of a client connected from `client` to local port `port`.
    pub fn new(client: SocketAddr, port: u16, https: bool) -> ClientId {
        let ip = client.ip().to_canonical();
        let proto = if https { "https" } else { "http" };
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        ClientId {
            xff: ip.to_string().into(),
            forwarded: forwarded.into(),
            port: HeaderValue::from(port),
            https,
            cert: None,
        }
    }

    /// The identity with the client's verified certificate.
    pub fn with_cert(self, cert: Option<ClientCert>) -> ClientId {
        ClientId { cert, ..self }
    }
}

/// Removes every configured subject header (`strip`: a client's copy is never passed on, whatever the listener)
/// and sets the one of the client's verified certificate.
pub(crate) fn set_client_cert(headers: &mut HeaderMap, strip: &[HeaderName], id: &ClientId) {
    for h in strip {
        headers.remove(h);
    }
    if let Some(c) = &id.cert {
        headers.insert(c.header.clone(), c.subject.clone());
    }
}

/// Whether a header value is what `HeaderValue::to_str` accepts (visible ASCII and tab): only such a previous
/// `X-Forwarded-For`/`Forwarded` value is kept when the proxy appends its own element.
fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
}

/// How a Host header value goes into `Forwarded`'s `host=` (RFC 7239 §5.3): as received, port included, as a
/// token (`false`) or quoted (`true`: a port's `:`, an IPv6 literal); `None` (left out) when it is empty or not a
/// plain authority.
pub(crate) fn forwarded_host(h: &str) -> Option<(&str, bool)> {
    let authority = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']');
    if h.is_empty() || !h.bytes().all(authority) {
        return None;
    }
    Some((h, !h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))))
}

/// Appends `, ` after a kept previous value.
fn previous(prev: Option<&[u8]>) -> impl Iterator<Item = &[u8]> {
    prev.filter(|p| visible(p)).into_iter().flat_map(|p| [p, b", ".as_slice()])
}

/// The `Forwarded` element of this client for a request whose Host is `host`, after the previous value.
fn forwarded_parts<'a>(
    id: &'a ClientId,
    prev: Option<&'a [u8]>,
    host: Option<(&'a str, bool)>,
) -> impl Iterator<Item = &'a [u8]> {
    let host: [&[u8]; 3] = match host {
        Some((h, false)) => [b";host=", h.as_bytes(), b""],
        Some((h, true)) => [b";host=\"", h.as_bytes(), b"\""],
        None => [b"", b"", b""],
    };
    previous(prev).chain(std::iter::once(id.forwarded.as_bytes())).chain(host)
}

/// Writes the forwarding headers of a request sent over HTTP/1.1 into `out` (lowercase names, CRLF after each),
/// with the same values [`add_forwarded`] gives: `prev_xff`/`prev_fwd` are the first `X-Forwarded-For` and
/// `Forwarded` values the client sent, `host` the request's Host as [`forwarded_host`] reads it.
pub(crate) fn write_forwarded(
    out: &mut Vec<u8>,
    id: &ClientId,
    prev_xff: Option<&[u8]>,
    prev_fwd: Option<&[u8]>,
    host: Option<(&str, bool)>,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    previous(prev_xff).for_each(|p| out.extend_from_slice(p));
    out.extend_from_slice(id.xff.as_bytes());
    out.extend_from_slice(if id.https {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    out.extend_from_slice(b"x-forwarded-port: ");
    out.extend_from_slice(id.port.as_bytes());
    out.extend_from_slice(b"\r\nforwarded: ");
    forwarded_parts(id, prev_fwd, host).for_each(|p| out.extend_from_slice(p));
    out.extend_from_slice(b"\r\n");
    if let Some(c) = &id.cert {
        out.extend_from_slice(c.header.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(c.subject.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `name`'s first value with this proxy's element appended, as a new single value.
fn append_value<'a>(headers: &mut HeaderMap, name: &HeaderName, parts: impl Iterator<Item = &'a [u8]>) {
    let value: Vec<u8> = parts.flat_map(|p| p.iter().copied()).collect();
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(name.clone(), v);
    }
}

/// Adds the forwarding headers (`X-Forwarded-For` and `Forwarded` appended, `X-Forwarded-Proto`/`-Port` set).
/// `Forwarded`'s `host=` is the request's Host header as received (see [`forwarded_host`]).
pub(crate) fn add_forwarded(headers: &mut HeaderMap, id: &ClientId) {
    // Values are cheap clones (shared bytes) taken before the map changes.
    let prev_xff = headers.get(&X_FORWARDED_FOR).cloned();
    append_value(
        headers,
        &X_FORWARDED_FOR,
        previous(prev_xff.as_ref().map(HeaderValue::as_bytes)).chain([id.xff.as_bytes()]),
    );
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if id.https { "https" } else { "http" }));
    headers.insert(X_FORWARDED_PORT.clone(), id.port.clone());
    let host = headers.get(header::HOST).cloned();
    let prev_fwd = headers.get(header::FORWARDED).cloned();
    let host = host.as_ref().and_then(|v| v.to_str().ok()).and_then(forwarded_host);
    let parts = forwarded_parts(id, prev_fwd.as_ref().map(HeaderValue::as_bytes), host);
    append_value(headers, &header::FORWARDED, parts);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none() && h.get("te").is_none());
        assert!(h.get(header::UPGRADE).is_none() && h.get(header::CONNECTION).is_none());
        h.insert(header::HOST, HeaderValue::from_static("a.example"));
        add_forwarded(&mut h, &ClientId::new("[::1]:5000".parse().unwrap(), 8443, true));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https;host=a.example");
        assert_eq!(h["x-forwarded-port"], "8443");
        // Connection never names the framing headers or Host away (nginx, HAProxy).
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Content-Length, transfer-encoding, host, x-a"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(
            (h.len(), &h[header::CONTENT_LENGTH], &h[header::HOST]),
            (2, &HeaderValue::from_static("5"), &HeaderValue::from_static("a"))
        );
    }

    #[test]
    fn forwarded_host_keeps_the_port_quoted() {
        let id = ClientId::new("192.0.2.7:5000".parse().unwrap(), 8443, true);
        for (host, want) in [
            ("a.example:8443", "for=192.0.2.7;proto=https;host=\"a.example:8443\""),
            ("[2001:db8::1]:8443", "for=192.0.2.7;proto=https;host=\"[2001:db8::1]:8443\""),
            ("bad\"host", "for=192.0.2.7;proto=https"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            add_forwarded(&mut h, &id);
            assert_eq!(h["forwarded"], want, "{host}");
        }
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &id);
        assert_eq!(h["forwarded"], "for=192.0.2.7;proto=https");
    }
}
