//! Response heads on the fast path: parsed in place, their body framing found (RFC 9112 §6.3), and rewritten for
//! the client (hop-by-hop headers removed, a sticky cookie or `connection: close` added). The body then passes
//! through unchanged; [`Framing`] tracks where it ends.

use std::time::Duration;

use http::HeaderValue;

use super::chunked::{ChunkError, Chunked};
use crate::policy::hop::{tokens, Class, Connection};
use crate::policy::rules::{Side, Vars};
use crate::policy::{self, ResponseFraming};

/// Header slots of a response head; more is a bad response.
const MAX_HEADERS: usize = 100;

/// How a response body ends.
#[derive(Debug, Clone)]
pub(crate) enum Framing {
    /// No body (HEAD, 204, 304), or it is over.
    Empty,
    /// This many bytes left.
    Length(u64),
    /// Chunked, passed through as is.
    Chunked(Chunked),
    /// Until the backend closes the connection.
    Close,
}

impl Framing {
    /// Takes the part of `buf` that belongs to the body: bytes taken and whether the body is complete.
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), ChunkError> {
        match self {
            Framing::Empty => Ok((0, true)),
            Framing::Length(left) => {
                let n = (buf.len() as u64).min(*left);
                *left -= n;
                Ok((n as usize, *left == 0))
            }
            Framing::Chunked(c) => c.advance(buf),
            Framing::Close => Ok((buf.len(), false)),
        }
    }
}

/// A response head, rewritten.
pub(crate) struct Head {
    /// Bytes of the head in the backend buffer.
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection can carry another request once the body is over.
    pub reusable: bool,
    /// The backend's `Keep-Alive: timeout=N`.
    pub keep_alive: Option<Duration>,
    /// The client connection must close after this response (its end is the backend's close).
    pub close_client: bool,
}

/// What the bytes read from the backend hold.
pub(crate) enum Parsed {
    /// An incomplete head.
    Partial,
    /// A 1xx head (other than 101), written out; its length. The final head follows.
    Informational(usize),
    /// The final head, written out.
    Head(Head),
    /// Not a response this proxy can forward (malformed, conflicting lengths, an unasked-for 101).
    Bad,
}

/// The `timeout=N` parameter of a `Keep-Alive` header value (RFC 2068 §19.7.1.1), in seconds.
pub(crate) fn keep_alive_timeout(v: &[u8]) -> Option<Duration> {
    tokens(v).find_map(|p| {
        let p = std::str::from_utf8(p).ok()?;
        let (k, n) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("timeout").then(|| n.trim().parse::<u64>().ok().map(Duration::from_secs))?
    })
}

/// Parses the response head at the start of `buf` (the answer to a HEAD request when `head_request`) and, when
/// it is complete, writes it for the client into `out`, with the route's response header `rules` applied to a
/// final head (as the hyper path applies them), `set_cookie` added and `connection: close` when `close_client`
/// (or when the body ends with the backend's close).
pub(crate) fn parse(
    buf: &[u8],
    head_request: bool,
    rules: Option<(&Side, &Vars<'_>)>,
    set_cookie: Option<&HeaderValue>,
    close_client: bool,
    out: &mut Vec<u8>,
) -> Parsed {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Bad,
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else { return Parsed::Bad };
    if status == 101 || !(100..1000).contains(&status) {
        return Parsed::Bad;
    }
    let headers = &*resp.headers;
    let informational = status < 200;
    let mut length: Option<u64> = None;
    let mut lengths = ResponseFraming { lengths: 0, lengths_agree: true, transfer_encoding: false };
    let mut chunked = None;
    let mut backend_close = version == 0;
    let mut keep_alive = None;
    for h in headers {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-length") {
            let v =
                std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            lengths.lengths += 1;
            match (v.and_then(|v| v.parse::<u64>().ok()), length) {
                (Some(l), None) => length = Some(l),
                (Some(l), Some(prev)) if l == prev => {}
                _ => lengths.lengths_agree = false,
            }
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            lengths.transfer_encoding = true;
            chunked = Some(tokens(h.value).last().is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
        } else if n.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    backend_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    backend_close = false;
                }
            }
        } else if n.eq_ignore_ascii_case("keep-alive") {
            keep_alive = keep_alive_timeout(h.value);
        }
    }
    if policy::check_response(lengths).is_err() {
        return Parsed::Bad;
    }
    let framing = if informational || head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked(Chunked::default()),
            (Some(false), _) => Framing::Close,
            (None, Some(l)) => Framing::Length(l),
            (None, None) => Framing::Close,
        }
    };
    let until_close = matches!(framing, Framing::Close);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let connection =
        Connection::new(headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")).map(|h| h.value));
    for h in headers {
        // Framing headers pass through with the body, whose framing is kept.
        if connection.class(h.name) == Class::HopByHop
            || (!informational && rules.is_some_and(|(r, _)| r.drops(h.name)))
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if informational {
        out.extend_from_slice(b"\r\n");
        return Parsed::Informational(len);
    }
    if let Some((r, vars)) = rules {
        r.each(vars, &mut Vec::new(), |n, v| super::request::write_field(out, n.as_str(), v));
    }
    if let Some(c) = set_cookie {
        out.extend_from_slice(b"set-cookie: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let close_client = close_client || until_close;
    if close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Parsed::Head(Head { len, status, framing, reusable: !backend_close && !until_close, keep_alive, close_client })
}

/// A status code (100-999) as three ASCII digits.
fn itoa3(n: u16) -> [u8; 3] {
    [b'0' + (n / 100) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(raw: &str, head_request: bool, close: bool) -> Option<(String, Head)> {
        let mut out = Vec::new();
        match parse(raw.as_bytes(), head_request, None, None, close, &mut out) {
            Parsed::Head(h) => Some((String::from_utf8(out).unwrap(), h)),
            _ => None,
        }
    }

    #[test]
    fn framing_and_rewrite() {
        let (out, h) = rewrite(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=7\r\n\r\nhello",
            false,
            false,
        )
        .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert!(matches!(h.framing, Framing::Length(5)) && h.reusable && !h.close_client);
        assert_eq!(h.keep_alive, Some(Duration::from_secs(7)));
        let (out, h) = rewrite("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n");
        assert!(matches!(h.framing, Framing::Chunked(_)) && h.reusable && h.close_client);
        let (out, h) = rewrite("HTTP/1.0 200 OK\r\n\r\n", false, false).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");
        assert!(matches!(h.framing, Framing::Close) && !h.reusable && h.close_client);
        let (_, h) = rewrite("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false).unwrap();
        assert!(matches!(h.framing, Framing::Empty), "HEAD");
        let (_, h) = rewrite("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", false, false).unwrap();
        assert!(matches!(h.framing, Framing::Empty));
        // Connection cannot name the framing headers away: the client reads the body by the length it has.
        let (out, h) =
            rewrite("HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\n", false, false)
                .unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert!(matches!(h.framing, Framing::Length(5)));
        let (_, h) =
            rewrite("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", false, false).unwrap();
        assert!(!h.reusable && !h.close_client);
    }

    #[test]
    fn informational_and_bad_heads() {
        let mut out = Vec::new();
        assert!(matches!(
            parse(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200", false, None, None, false, &mut out),
            Parsed::Informational(40)
        ));
        assert_eq!(out, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        for bad in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(matches!(parse(bad.as_bytes(), false, None, None, false, &mut Vec::new()), Parsed::Bad), "{bad:?}");
        }
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nA: b\r\n", false, None, None, false, &mut Vec::new()),
            Parsed::Partial
        ));
    }
}
