//! Request heads on the fast path: parsed in place (httparse), checked against what the fast path serves, and
//! rewritten for the backend. Anything the fast path does not serve — and any doubt — is [`Parsed::Fallback`]:
//! the connection goes to the hyper path, which answers it exactly as it answers every other connection
//! (malformed heads, request smuggling attempts, upgrades, `Expect`, chunked request bodies, HTTP/1.0,
//! absolute-form targets, oversized heads or bodies).

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::{self, ClientId};

/// Header slots of one parse; a head with more goes to the hyper path (which applies `limits.max_headers`).
pub(crate) const MAX_HEADERS: usize = 128;

/// A complete request head the fast path serves, borrowing the read buffer.
pub(crate) struct Head<'h, 'b> {
    /// Bytes of the head in the buffer (the body, if any, follows).
    pub len: usize,
    pub method: &'b str,
    /// Origin-form target (path and query).
    pub target: &'b str,
    /// The Host header, as received.
    pub host: &'b str,
    /// Content-Length of the body (0: none).
    pub body: u64,
    /// The client asked to close the connection after this exchange (`Connection: close`).
    pub close: bool,
    headers: &'h [httparse::Header<'b>],
}

/// What the bytes read so far hold.
pub(crate) enum Parsed<'h, 'b> {
    /// An incomplete head.
    Partial,
    /// A head for the fast path.
    Head(Head<'h, 'b>),
    /// Something for the hyper path.
    Fallback,
}

/// Headers that describe one connection (RFC 9110 §7.6.1), removed in both directions, and the forwarding
/// headers the proxy sets itself (removed from the request, written anew).
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "proxy-authorization", "proxy-authenticate", "proxy-connection", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// The comma-separated tokens of a header value.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// Whether `name` is listed in one of the `Connection` header values of `headers`.
pub(crate) fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| tokens(h.value).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
}

/// Parses the head at the start of `buf` into `slots`.
pub(crate) fn parse<'h, 'b>(buf: &'b [u8], slots: &'h mut [httparse::Header<'b>], max_headers: usize) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Fallback,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Fallback;
    };
    if method == "CONNECT" || !target.starts_with('/') || req.headers.len() > max_headers {
        return Parsed::Fallback;
    }
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut host = None;
    let mut hosts = 0;
    let mut body = None;
    let mut close = false;
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(h.value);
        } else if n.eq_ignore_ascii_case("content-length") {
            if body.is_some() || h.value.is_empty() || h.value.len() > 18 || !h.value.iter().all(u8::is_ascii_digit) {
                return Parsed::Fallback;
            }
            body = std::str::from_utf8(h.value).ok().and_then(|v| v.parse::<u64>().ok());
        } else if n.eq_ignore_ascii_case("transfer-encoding")
            || n.eq_ignore_ascii_case("upgrade")
            || n.eq_ignore_ascii_case("expect")
        {
            return Parsed::Fallback;
        } else if n.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Fallback;
                }
                close |= t.eq_ignore_ascii_case(b"close");
            }
        }
    }
    let host = match (hosts, host.map(std::str::from_utf8)) {
        (1, Some(Ok(h))) => h,
        _ => return Parsed::Fallback,
    };
    Parsed::Head(Head { len, method, target, host, body: body.unwrap_or(0), close, headers })
}

impl Head<'_, '_> {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// Writes the head sent to the backend into `out`: the request line as HTTP/1.1, the client's headers but
    /// the hop-by-hop ones (and those its `Connection` header names), then the forwarding headers as the hyper
    /// path sets them (`headers::add_forwarded`: X-Forwarded-For and Forwarded appended to the first value
    /// received, X-Forwarded-Proto/-Port set).
    pub fn write_backend_head(&self, id: &ClientId, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let connection = self.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection"));
        let mut xff: Option<Option<&[u8]>> = None;
        let mut fwd: Option<Option<&[u8]>> = None;
        for h in self.headers {
            let n = h.name;
            if hop_by_hop(n) || (connection && named_by_connection(self.headers, n)) {
                continue;
            }
            if n.eq_ignore_ascii_case("x-forwarded-for") {
                xff.get_or_insert(Some(h.value));
            } else if n.eq_ignore_ascii_case("forwarded") {
                fwd.get_or_insert(Some(h.value));
            } else if !n.eq_ignore_ascii_case("x-forwarded-proto") && !n.eq_ignore_ascii_case("x-forwarded-port") {
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b"\r\n");
            }
        }
        let host = headers::forwarded_host(self.host);
        headers::write_forwarded(out, id, xff.flatten(), fwd.flatten(), host);
        out.extend_from_slice(b"\r\n");
    }

    /// The request's headers as a map, for selectors that hash a header or read a cookie.
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for h in self.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) {
                map.append(n, v);
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(raw: &str) -> Option<(usize, String, u64, bool)> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(raw.as_bytes(), &mut slots, 100) {
            Parsed::Head(h) => {
                let mut out = Vec::new();
                h.write_backend_head(&ClientId::new("192.0.2.7:5000".parse().unwrap(), 8080, false), &mut out);
                Some((h.len, String::from_utf8(out).unwrap(), h.body, h.close))
            }
            Parsed::Partial => Some((0, String::new(), 0, false)),
            Parsed::Fallback => None,
        }
    }

    #[test]
    fn rewrites_for_the_backend_as_the_hyper_path_does() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: www.example.com:8080\r\nConnection: keep-alive, X-Secret\r\n\
                   X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.0.0.1\r\n\
                   X-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nNEXT";
        let (len, out, body, close) = head_of(raw).unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!((body, close), (0, false));
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: www.example.com:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-port: 8080\r\n\
             forwarded: for=192.0.2.7;proto=http;host=\"www.example.com:8080\"\r\n\r\n"
        );
        let (_, _, body, close) = head_of("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\nconnection: close\r\n\r\n").unwrap();
        assert_eq!((body, close), (12, true));
        assert_eq!(head_of("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().0, 0, "partial");
    }

    #[test]
    fn everything_unusual_goes_to_the_hyper_path() {
        for raw in [
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(head_of(raw).is_none(), "{raw:?}");
        }
    }
}
