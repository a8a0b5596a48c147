//! Header rewriting: hop-by-hop headers removed in both directions (RFC 9110 §7.6.1), forwarding headers added
//! (`X-Forwarded-For`/`-Proto`/`-Port`, RFC 7239 `Forwarded`).

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether the request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))).unwrap_or(false))
}

/// Removes hop-by-hop headers: `Connection` and the headers it names, `Keep-Alive`, `TE`, `Transfer-Encoding`,
/// `Proxy-*`, and `Upgrade` unless `keep_upgrade` (then `Connection: upgrade` is put back).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|n| !(keep_upgrade && n == header::UPGRADE))
            .collect();
        for n in named {
            headers.remove(n);
        }
        headers.remove(header::CONNECTION);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(&PROXY_CONNECTION);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
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
        ClientId { xff: ip.to_string().into(), forwarded: forwarded.into(), port: HeaderValue::from(port), https }
    }
}

fn append_value(headers: &mut HeaderMap, name: &HeaderName, parts: &[&str]) {
    let prev = headers.get(name).and_then(|v| v.to_str().ok());
    let len = prev.map(|p| p.len() + 2).unwrap_or(0) + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut buf = String::with_capacity(len);
    if let Some(p) = prev {
        buf.push_str(p);
        buf.push_str(", ");
    }
    for p in parts {
        buf.push_str(p);
    }
    if let Ok(v) = HeaderValue::try_from(buf) {
        headers.insert(name.clone(), v);
    }
}

/// Adds the forwarding headers (`X-Forwarded-For` and `Forwarded` appended, `X-Forwarded-Proto`/`-Port` set).
/// `Forwarded`'s `host=` is the request's Host header as received, port included (RFC 7239 §5.3), quoted when
/// it is not a token (a port's `:`, an IPv6 literal); left out when the Host is absent or not a plain authority.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, id: &ClientId) {
    append_value(headers, &X_FORWARDED_FOR, &[&id.xff]);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if id.https { "https" } else { "http" }));
    headers.insert(X_FORWARDED_PORT.clone(), id.port.clone());
    let host = headers.get(header::HOST).cloned();
    let host = host.as_ref().and_then(|v| v.to_str().ok()).filter(|h| {
        !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']'))
    });
    match host {
        Some(h) if h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) => {
            append_value(headers, &header::FORWARDED, &[&id.forwarded, ";host=", h])
        }
        Some(h) => append_value(headers, &header::FORWARDED, &[&id.forwarded, ";host=\"", h, "\""]),
        None => append_value(headers, &header::FORWARDED, &[&id.forwarded]),
    }
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
