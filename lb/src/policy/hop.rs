//! Which headers describe one connection (RFC 9110 §7.6.1) and are never forwarded, in either direction. The
//! framing headers (`Content-Length`, `Transfer-Encoding`) and `Host` can never be made hop-by-hop by naming
//! them in `Connection`: such names are ignored, as nginx and HAProxy do — removing `Content-Length` while the
//! body is forwarded by it is how one client's body becomes another client's request.

/// What a proxy does with one header field of a message it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Forwarded as received.
    Forward,
    /// Removed: it describes the connection it came on.
    HopByHop,
    /// Message framing (`Content-Length`, `Transfer-Encoding`): each path's framing layer writes it as the body it
    /// sends is framed.
    Framing,
}

/// Headers hop-by-hop by definition (and the `Proxy-*` ones a proxy consumes).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "upgrade",
];

/// Headers a `Connection` value can never name away.
const PROTECTED: [&str; 3] = ["content-length", "transfer-encoding", "host"];

/// The comma-separated tokens of a header value.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// The header names listed by the `Connection` fields of a message (borrowed from its values).
#[derive(Default)]
pub(crate) struct Connection<'a> {
    named: Vec<&'a [u8]>,
}

impl<'a> Connection<'a> {
    /// The names listed by these `Connection` field values.
    pub fn new(values: impl IntoIterator<Item = &'a [u8]>) -> Connection<'a> {
        Connection { named: values.into_iter().flat_map(tokens).collect() }
    }

    /// Whether `token` is one of the listed names (`close`, `upgrade`, ... included).
    pub fn has(&self, token: &str) -> bool {
        self.named.iter().any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// What a forwarding proxy does with the header field `name` of this message.
    pub fn class(&self, name: &str) -> Class {
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") {
            Class::Framing
        } else if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            || (!PROTECTED.iter().any(|h| name.eq_ignore_ascii_case(h)) && self.has(name))
        {
            Class::HopByHop
        } else {
            Class::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cannot_name_framing_or_host() {
        let c = Connection::new([b"keep-alive, Content-Length, X-Secret".as_slice(), b"transfer-encoding,host,TE"]);
        assert_eq!(c.class("content-length"), Class::Framing);
        assert_eq!(c.class("Transfer-Encoding"), Class::Framing);
        assert_eq!(c.class("Host"), Class::Forward);
        assert_eq!(c.class("x-secret"), Class::HopByHop);
        assert_eq!(c.class("te"), Class::HopByHop);
        assert_eq!(c.class("Upgrade"), Class::HopByHop);
        assert_eq!(c.class("accept"), Class::Forward);
        assert!(c.has("KEEP-ALIVE") && !c.has("close"));
        assert_eq!(Connection::default().class("x-secret"), Class::Forward);
    }
}
