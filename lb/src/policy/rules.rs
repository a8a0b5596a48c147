//! Phase 3, the route's header rules and the request id, decided once for both paths: which fields of the
//! client's request (or the backend's response) are dropped ([`Side::drops`]) and which are written after the
//! others ([`Side::each`], with their variables expanded). The hyper path applies them to its header maps, the
//! fast path while it writes the head: each path only writes what this module says.
//!
//! A `set` rule drops every field of its name and writes one; its value expanding to nothing (a variable
//! without a value, such as `${tls_subject}` without a client certificate) writes none, so a client can never
//! pass its own value for it. A value that would not be a valid field value is not written either; white space
//! left at either end by an empty variable is trimmed.

use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderName, HeaderValue};
use ipnet::IpNet;
use padis_model::headers::{parse_template, value_byte, Part, Var};

/// A header value with variables.
struct Template {
    parts: Vec<Part>,
    /// The value when it has no variable.
    literal: Option<HeaderValue>,
}

/// One field a rule writes.
struct Rule {
    name: HeaderName,
    value: Template,
}

/// The rules of one side (request or response) of a route.
#[derive(Default)]
pub(crate) struct Side {
    /// Names whose fields are dropped (`remove` and `set`).
    drop: Vec<HeaderName>,
    /// Fields written: `set` ones, then `add` ones.
    write: Vec<Rule>,
}

/// A route's header rules.
#[derive(Default)]
pub(crate) struct HeaderRules {
    pub request: Side,
    pub response: Side,
}

/// What the variables of a request expand to.
pub(crate) struct Vars<'a> {
    pub client: SocketAddr,
    pub https: bool,
    /// Empty without `[request_id]`.
    pub request_id: &'a str,
    pub tls_subject: Option<&'a str>,
    pub sni: Option<&'a str>,
}

fn template(t: &str) -> Option<Template> {
    let parts = parse_template(t).ok()?;
    let literal = match parts.as_slice() {
        [Part::Literal(l)] => Some(HeaderValue::from_str(l).ok()?),
        _ => None,
    };
    Some(Template { parts, literal })
}

fn name(n: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(n.as_bytes()).ok()
}

impl Side {
    fn compile<'a>(
        remove: &[String],
        set: impl Iterator<Item = (&'a String, &'a String)>,
        add: impl Iterator<Item = (&'a String, &'a String)>,
    ) -> Side {
        let mut s = Side { drop: remove.iter().filter_map(|n| name(n)).collect(), write: Vec::new() };
        for (n, v) in set {
            // Validation refused anything that would not compile.
            let (Some(n), Some(value)) = (name(n), template(v)) else { continue };
            s.drop.push(n.clone());
            s.write.push(Rule { name: n, value });
        }
        for (n, v) in add {
            if let (Some(n), Some(value)) = (name(n), template(v)) {
                s.write.push(Rule { name: n, value });
            }
        }
        s
    }

    /// Whether a field `name` of the message is dropped.
    pub fn drops(&self, name: &str) -> bool {
        self.drop.iter().any(|d| d.as_str().eq_ignore_ascii_case(name))
    }

    /// The names dropped (lowercase).
    pub fn dropped(&self) -> &[HeaderName] {
        &self.drop
    }

    /// Calls `f` with each field written, in order, its value expanded into `scratch`; values that expand to
    /// nothing or to an invalid field value are skipped.
    pub fn each(&self, vars: &Vars<'_>, scratch: &mut Vec<u8>, mut f: impl FnMut(&HeaderName, &[u8])) {
        for r in &self.write {
            if let Some(l) = &r.value.literal {
                f(&r.name, l.as_bytes());
                continue;
            }
            scratch.clear();
            for p in &r.value.parts {
                match p {
                    Part::Literal(l) => scratch.extend_from_slice(l.as_bytes()),
                    Part::Var(v) => expand(*v, vars, scratch),
                }
            }
            // A variable expanding to nothing at either end leaves no white space there.
            let v = scratch.trim_ascii();
            if !v.is_empty() && v.iter().all(|&b| value_byte(b)) {
                f(&r.name, v);
            }
        }
    }
}

/// Writes a variable's value.
fn expand(v: Var, vars: &Vars<'_>, out: &mut Vec<u8>) {
    use std::fmt::Write as _;
    struct W<'a>(&'a mut Vec<u8>);
    impl std::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    }
    match v {
        Var::ClientIp => {
            let _ = write!(W(out), "{}", vars.client.ip().to_canonical());
        }
        Var::ClientPort => {
            let _ = write!(W(out), "{}", vars.client.port());
        }
        Var::Scheme => out.extend_from_slice(if vars.https { b"https" } else { b"http" }),
        Var::RequestId => out.extend_from_slice(vars.request_id.as_bytes()),
        Var::TlsSubject => out.extend_from_slice(vars.tls_subject.unwrap_or("").as_bytes()),
        Var::TlsSni => out.extend_from_slice(vars.sni.unwrap_or("").as_bytes()),
    }
}

impl HeaderRules {
    /// The rules of route `r` (its `[route.headers]` and `hsts`), or `None` when it has none.
    pub fn compile(r: &padis_model::Route) -> Option<HeaderRules> {
        let h = &r.headers;
        if h.is_empty() && r.hsts.is_none() {
            return None;
        }
        let hsts = r.hsts.as_ref().map(|h| ("strict-transport-security".to_string(), h.value()));
        Some(HeaderRules {
            request: Side::compile(&h.request_remove, h.request_set.iter(), h.request_add.iter()),
            response: Side::compile(
                &h.response_remove,
                h.response_set.iter().chain(hsts.as_ref().map(|(n, v)| (n, v))),
                h.response_add.iter(),
            ),
        })
    }
}

/// The request id: the header it is in, and the clients whose own id is kept.
pub(crate) struct RequestIds {
    pub header: HeaderName,
    trusted: Vec<IpNet>,
}

/// The longest request id taken from a client.
const MAX_ID: usize = 128;

/// Whether a client's request id is a plain token worth keeping (1 to 128 characters of letters, digits and
/// `-_.:+/=@`).
fn plain_id(v: &[u8]) -> bool {
    (1..=MAX_ID).contains(&v.len()) && v.iter().all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

impl RequestIds {
    /// The `[request_id]` of a config.
    pub fn new(c: &padis_model::RequestIdConfig) -> Option<RequestIds> {
        Some(RequestIds { header: name(&c.header)?, trusted: c.trusted.clone() })
    }

    /// The id of a request from `client` whose first field of the id header is `incoming`, written into `out`:
    /// that value when the client is trusted and it is a plain token, else a new random UUID (version 4).
    pub fn take(&self, client: IpAddr, incoming: Option<&[u8]>, out: &mut String) {
        out.clear();
        let client = client.to_canonical();
        if let Some(v) = incoming.filter(|v| plain_id(v)) {
            if self.trusted.iter().any(|n| n.contains(&client)) {
                // A plain token is ASCII.
                out.push_str(std::str::from_utf8(v).unwrap_or_default());
                return;
            }
        }
        let r = fastrand::u128(..);
        let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for i in 0..32 {
            if matches!(i, 8 | 12 | 16 | 20) {
                out.push('-');
            }
            out.push(char::from(HEX[(r >> (124 - 4 * i)) as usize & 0xf]));
        }
    }
}

/// A W3C Trace Context `traceparent` value (version, trace-id, parent-id, flags: `00-<32 hex>-<16 hex>-<2 hex>`),
/// for the access log: the value when it is valid (its first 55 characters for a later version), else `None`.
/// The field itself is passed on as received.
pub(crate) fn traceparent(v: Option<&[u8]>) -> Option<&str> {
    let v = v?;
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |s: &[u8]| s.iter().all(|&b| b == b'0');
    if v.len() < 55 || (v.len() > 55 && (v[55] != b'-' || &v[..2] == b"00")) {
        return None;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let ok = [v[2], v[35], v[52]] == [b'-'; 3]
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && !zero(trace)
        && hex(parent)
        && !zero(parent)
        && hex(flags);
    ok.then(|| std::str::from_utf8(&v[..55]).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use padis_model::{HeaderRules as Config, Hsts, Route};

    fn vars<'a>(subject: Option<&'a str>) -> Vars<'a> {
        Vars {
            client: "[::ffff:192.0.2.7]:5000".parse().unwrap(),
            https: true,
            request_id: "rid-1",
            tls_subject: subject,
            sni: Some("a.test"),
        }
    }

    fn written(s: &Side, v: &Vars<'_>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        s.each(v, &mut Vec::new(), |n, v| out.push((n.to_string(), String::from_utf8_lossy(v).into_owned())));
        out
    }

    #[test]
    fn rules_drop_and_write_in_order() {
        let mut c = Config { request_remove: vec!["X-Internal".into()], ..Config::default() };
        c.request_set.insert("X-Client".into(), "${client_ip}:${client_port} ${scheme}".into());
        c.request_set.insert("X-Subject".into(), "${tls_subject}".into());
        c.request_add.insert("X-Trace".into(), "id=${request_id};sni=${tls_sni};$$".into());
        c.response_remove = vec!["server".into()];
        let r = Route { name: "r".into(), headers: c, hsts: Some(Hsts::default()), ..Route::default() };
        let rules = HeaderRules::compile(&r).unwrap();
        assert!(
            rules.request.drops("x-internal") && rules.request.drops("X-CLIENT") && rules.request.drops("x-subject")
        );
        assert!(!rules.request.drops("x-trace") && !rules.request.drops("accept"));
        assert_eq!(
            written(&rules.request, &vars(None)),
            [("x-client", "192.0.2.7:5000 https"), ("x-trace", "id=rid-1;sni=a.test;$")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // A subject: written; one that would break the head: not.
        let w = written(&rules.request, &vars(Some("CN=partner,O=Bank")));
        assert_eq!(w[1], ("x-subject".to_string(), "CN=partner,O=Bank".to_string()));
        assert_eq!(written(&rules.request, &vars(Some("CN=a\r\nX-Evil: 1"))).len(), 2);
        assert!(rules.response.drops("Server") && rules.response.drops("strict-transport-security"));
        assert_eq!(
            written(&rules.response, &vars(None)),
            [("strict-transport-security".to_string(), "max-age=15768000".to_string())]
        );
        assert!(HeaderRules::compile(&Route::default()).is_none());
    }

    #[test]
    fn request_ids() {
        let ids = RequestIds::new(&padis_model::RequestIdConfig {
            header: "x-request-id".into(),
            trusted: vec!["10.0.0.0/8".parse().unwrap()],
        })
        .unwrap();
        let mut out = String::new();
        ids.take("10.1.2.3".parse().unwrap(), Some(b"abc-123"), &mut out);
        assert_eq!(out, "abc-123");
        ids.take("::ffff:10.1.2.3".parse().unwrap(), Some(b"abc-123"), &mut out);
        assert_eq!(out, "abc-123", "IPv4-mapped");
        for (client, incoming) in [
            ("192.0.2.1", Some(b"abc-123".as_slice())),
            ("10.1.2.3", Some(b"a b".as_slice())),
            ("10.1.2.3", Some([b'a'; 129].as_slice())),
            ("10.1.2.3", None),
        ] {
            ids.take(client.parse().unwrap(), incoming, &mut out);
            let b = out.as_bytes();
            assert_eq!(b.len(), 36, "{out}");
            assert!([8, 13, 18, 23].iter().all(|&i| b[i] == b'-') && b[14] == b'4', "{out}");
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{out}");
        }
        let first = out.clone();
        ids.take("192.0.2.1".parse().unwrap(), None, &mut out);
        assert_ne!(first, out);
    }

    #[test]
    fn traceparents() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(Some(ok.as_bytes())), Some(ok));
        let later = format!("{}{}", ok.replacen("00", "01", 1), "-extra");
        assert_eq!(traceparent(Some(later.as_bytes())).map(str::len), Some(55));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(traceparent(Some(bad.as_bytes())), None, "{bad}");
        }
        assert_eq!(traceparent(None), None);
    }
}
