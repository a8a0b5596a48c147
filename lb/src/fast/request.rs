//! Request heads on the fast path: parsed in place (httparse), checked against what the fast path's framing
//! serves, and written for the backend. Anything the fast path does not frame — and any doubt — is
//! [`Parsed::Fallback`]: the connection goes to the hyper path, which answers it exactly as it answers every other
//! connection (malformed heads, request smuggling attempts, upgrades, `Expect`, chunked request bodies, HTTP/1.0,
//! absolute-form targets, oversized heads or bodies). Every decision about the request itself (Host, target,
//! route, hop-by-hop headers) is the request policy's (`crate::policy`), which the hyper path calls too.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::{self, ClientId};
use crate::policy;
use crate::policy::hop::{tokens, Class, Connection};
use crate::policy::rules::{Side, Vars};

/// Header slots of one parse; a head with more goes to the hyper path (which applies `limits.max_headers`).
pub(crate) const MAX_HEADERS: usize = 128;

/// What the request policy changes in the head beyond hop-by-hop and forwarding headers: the request id field
/// (`policy::identify`) and the route's header rules (`policy::rules`).
pub(crate) struct Edits<'a> {
    /// Every configured client-certificate subject header: a client's copy is never passed on.
    pub strip: &'a [HeaderName],
    pub request_id: Option<(&'a HeaderName, &'a str)>,
    pub rules: Option<(&'a Side, &'a Vars<'a>)>,
}

impl Edits<'_> {
    /// No change.
    #[cfg(test)]
    pub const NONE: Edits<'static> = Edits { strip: &[], request_id: None, rules: None };
}

/// A complete request head the fast path serves, borrowing the read buffer.
pub(crate) struct Head<'h, 'b> {
    /// Bytes of the head in the buffer (the body, if any, follows).
    pub len: usize,
    pub method: &'b str,
    /// Origin-form target (path and query).
    pub target: &'b str,
    /// The first Host field, as received, and how many there are.
    pub host: Option<&'b [u8]>,
    pub host_fields: usize,
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

/// Parses the head at the start of `buf` into `slots`.
pub(crate) fn parse<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut [httparse::Header<'b>],
    max_headers: usize,
) -> Parsed<'h, 'b> {
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
    let mut host_fields = 0;
    let mut body = None;
    let mut close = false;
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("host") {
            host_fields += 1;
            host = host.or(Some(h.value));
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
    Parsed::Head(Head { len, method, target, host, host_fields, body: body.unwrap_or(0), close, headers })
}

impl<'b> Head<'_, 'b> {
    /// The head as the request policy's admission phase reads it.
    pub fn policy_head(&self) -> policy::Head<'b> {
        policy::Head {
            authority: None,
            host_fields: self.host_fields,
            host: self.host,
            target: self.target,
            length_and_chunked: false,
            // Upgrades and chunked bodies go to the hyper path.
            upgrade_with_body: false,
        }
    }

    /// The path part of the target, as received (the access log's).
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target, |(p, _)| p)
    }

    /// The header fields.
    pub fn headers(&self) -> &[httparse::Header<'b>] {
        self.headers
    }

    /// Writes the head sent to the backend into `out`: the request line as HTTP/1.1 with the policy's `target`,
    /// the client's headers but those the policy calls hop-by-hop, then the forwarding headers as the hyper path
    /// sets them (`headers::add_forwarded`: X-Forwarded-For and Forwarded appended to the first value received,
    /// X-Forwarded-Proto/-Port set), then the request id and the fields the route's rules write — dropping the
    /// client's fields the policy says (the id's, and those the rules remove or set) as the hyper path does, and the
    /// client's copies of the subject headers (`edits.strip`, see `headers::set_client_cert`).
    pub fn write_backend_head(&self, target: &str, id: &ClientId, edits: &Edits<'_>, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let connection =
            Connection::new(self.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).map(|h| h.value));
        let mut xff: Option<Option<&[u8]>> = None;
        let mut fwd: Option<Option<&[u8]>> = None;
        for h in self.headers {
            let n = h.name;
            if connection.class(n) == Class::HopByHop
                || edits.strip.iter().any(|s| n.eq_ignore_ascii_case(s.as_str()))
                || edits.request_id.is_some_and(|(h, _)| n.eq_ignore_ascii_case(h.as_str()))
                || edits.rules.is_some_and(|(r, _)| r.drops(n))
            {
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
        let host = self.host.and_then(|h| std::str::from_utf8(h).ok()).and_then(headers::forwarded_host);
        headers::write_forwarded(out, id, xff.flatten(), fwd.flatten(), host);
        if let Some((h, v)) = edits.request_id {
            write_field(out, h.as_str(), v.as_bytes());
        }
        if let Some((rules, vars)) = edits.rules {
            rules.each(vars, &mut Vec::new(), |n, v| write_field(out, n.as_str(), v));
        }
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

/// Writes one field (`name: value` CRLF).
pub(crate) fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(raw: &str) -> Option<(usize, String, u64, bool)> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse(raw.as_bytes(), &mut slots, 100) {
            Parsed::Head(h) => {
                let mut out = Vec::new();
                let mut host = String::new();
                let admitted = policy::admit(&h.policy_head(), &mut host).ok()?;
                h.write_backend_head(
                    &admitted.target,
                    &ClientId::new("192.0.2.7:5000".parse().unwrap(), 8080, false),
                    &Edits { strip: &[http::HeaderName::from_static("x-client-cert-subject")], ..Edits::NONE },
                    &mut out,
                );
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
                   X-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Client-Cert-Subject: CN=forged\r\n\
                   Accept: */*\r\n\r\nNEXT";
        let (len, out, body, close) = head_of(raw).unwrap();
        assert_eq!(len, raw.len() - 4);
        assert_eq!((body, close), (0, false));
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: www.example.com:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-port: 8080\r\n\
             forwarded: for=192.0.2.7;proto=http;host=\"www.example.com:8080\"\r\n\r\n"
        );
        let (_, _, body, close) =
            head_of("POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 12\r\nconnection: close\r\n\r\n").unwrap();
        assert_eq!((body, close), (12, true));
        assert_eq!(head_of("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().0, 0, "partial");
        // Connection never names the framing headers or Host away: the backend reads the body by its length.
        let raw = "POST /a/../b HTTP/1.1\r\nHost: a\r\nConnection: Content-Length, host, x-y\r\nContent-Length: 3\r\nX-Y: 1\r\n\r\n";
        let (_, out, body, _) = head_of(raw).unwrap();
        assert_eq!(body, 3);
        assert!(out.starts_with("POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nx-forwarded-for: "), "{out}");
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
