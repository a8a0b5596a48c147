//! Header rules of a route (`[route.headers]`), HSTS (`hsts`) and the request id (`[request_id]`): the config
//! structs, and the one parser of header value templates (`${client_ip}`, `$$` for a `$`) that validation and
//! the L7 plane both use.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::validate::Validator;

/// Header rules of a route: fields removed, set (every field of the name replaced by one) or added (appended)
/// on the request sent to the backend and on the backend's response. Applied in that order: remove, set, add.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderRules {
    /// Request fields appended (name -> value template).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub request_add: BTreeMap<String, String>,
    /// Request fields replaced: the client's fields of the name are removed, then this one is written (not
    /// written when its value expands to nothing).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub request_set: BTreeMap<String, String>,
    /// Request fields removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_remove: Vec<String>,
    /// Response fields appended.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub response_add: BTreeMap<String, String>,
    /// Response fields replaced.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub response_set: BTreeMap<String, String>,
    /// Response fields removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub response_remove: Vec<String>,
}

impl HeaderRules {
    /// Whether there is no rule at all.
    pub fn is_empty(&self) -> bool {
        *self == HeaderRules::default()
    }
}

/// HTTP Strict Transport Security of a route's responses (RFC 6797): `hsts = true` (marathon-lb's
/// `max-age=15768000`) or `hsts = { max_age = 31536000, include_subdomains = true, preload = true }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Hsts {
    /// `max-age`, in seconds.
    #[serde(default = "hsts_max_age")]
    pub max_age: u64,
    /// `includeSubDomains`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// `preload` (the preload list requires `include_subdomains` and a max-age of a year at least).
    #[serde(default)]
    pub preload: bool,
}

/// marathon-lb's `max-age` (about six months).
fn hsts_max_age() -> u64 {
    15_768_000
}

impl Default for Hsts {
    fn default() -> Self {
        Hsts { max_age: hsts_max_age(), include_subdomains: false, preload: false }
    }
}

impl Hsts {
    /// The `Strict-Transport-Security` value.
    pub fn value(&self) -> String {
        let mut v = format!("max-age={}", self.max_age);
        if self.include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        v
    }
}

/// Reads `hsts`: `true` / `false`, or a table of [`Hsts`].
pub(crate) fn hsts_setting<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Hsts>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Hsts>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("true, false or a table { max_age, include_subdomains, preload }")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then(Hsts::default))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Hsts::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(V)
}

/// The request id (`[request_id]`): each request gets one, taken from `header` when the client is in `trusted`
/// and the value is a plain token, else generated (a random UUID); it is passed to the backend in `header`, and
/// is in the access log and the `${request_id}` variable of header rules.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// The header carrying it (lowercase).
    #[serde(default = "request_id_header")]
    pub header: String,
    /// Client networks whose own request id is kept (an edge tier, internal callers); any other client's is
    /// replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted: Vec<ipnet::IpNet>,
}

fn request_id_header() -> String {
    "x-request-id".into()
}

/// A variable of a header value template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's address (the PROXY protocol's client when the listener takes it).
    ClientIp,
    /// The client's port.
    ClientPort,
    /// `http` or `https`.
    Scheme,
    /// The request id (`[request_id]`).
    RequestId,
    /// The verified subject of the client's TLS certificate; empty without one.
    TlsSubject,
    /// The TLS server name the client asked for; empty without one.
    TlsSni,
}

/// Every variable, by name.
pub const VARS: [(&str, Var); 6] = [
    ("client_ip", Var::ClientIp),
    ("client_port", Var::ClientPort),
    ("scheme", Var::Scheme),
    ("request_id", Var::RequestId),
    ("tls_subject", Var::TlsSubject),
    ("tls_sni", Var::TlsSni),
];

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Bytes written as they are.
    Literal(String),
    /// A variable's value.
    Var(Var),
}

/// Whether `b` may be in a header value (RFC 9110 §5.5: visible ASCII, obs-text, space and tab).
pub fn value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// Parses a header value template: text with `${name}` variables and `$$` for a `$`.
pub fn parse_template(t: &str) -> Result<Vec<Part>, String> {
    if t.is_empty() {
        return Err("empty value (use the *_remove list to remove a header)".into());
    }
    if t.starts_with([' ', '\t']) || t.ends_with([' ', '\t']) {
        return Err("a value cannot start or end with white space".into());
    }
    if let Some(b) = t.bytes().find(|&b| !value_byte(b)) {
        return Err(format!("control character 0x{b:02x} in the value"));
    }
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            lit.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r.find('}').ok_or("`${` without its `}`")?;
            let name = &r[..end];
            let var = VARS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| {
                let known: Vec<&str> = VARS.iter().map(|(n, _)| *n).collect();
                format!("unknown variable `${{{name}}}` (known: {})", known.join(", "))
            })?;
            if !lit.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var(var));
            rest = &r[end + 1..];
        } else {
            return Err("a `$` starts `${variable}` or `$$` (a `$`)".into());
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(Part::Literal(lit));
    }
    Ok(parts)
}

/// Fields no header rule may touch: message framing, `Host`, and the hop-by-hop fields (RFC 9110 §7.6.1),
/// which the proxy writes itself for each connection.
pub const PROTECTED: [&str; 11] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Request fields the proxy writes itself (the forwarding headers): a rule may remove the client's (the proxy
/// then writes only its own element), never set or add them.
pub const FORWARDING: [&str; 4] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-port", "forwarded"];

/// Whether `n` is a header field name (an RFC 9110 token).
pub fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl HeaderRules {
    /// Checks the rules of `route[i]` (field path `p`); `request_id` is the request id header when
    /// `[request_id]` is set.
    pub(crate) fn validate(&self, p: &str, request_id: Option<&str>, cx: &mut Validator) {
        let lists: [(&str, &Vec<String>, bool); 2] =
            [("request_remove", &self.request_remove, true), ("response_remove", &self.response_remove, false)];
        let maps: [(&str, &BTreeMap<String, String>, bool); 4] = [
            ("request_set", &self.request_set, true),
            ("request_add", &self.request_add, true),
            ("response_set", &self.response_set, false),
            ("response_add", &self.response_add, false),
        ];
        let name_check = |field: &str, n: &str, request: bool, writes: bool, cx: &mut Validator| {
            let lower = n.to_ascii_lowercase();
            if !name_ok(n) {
                cx.error(field, format!("`{n}` is not a header name"));
            } else if PROTECTED.contains(&lower.as_str()) {
                cx.error(field, format!("`{n}` is framing, Host or hop-by-hop: the proxy writes it itself"));
            } else if request && writes && FORWARDING.contains(&lower.as_str()) {
                cx.error(field, format!("`{n}` is a forwarding header the proxy writes (it can only be removed)"));
            } else if request && request_id.is_some_and(|h| h.eq_ignore_ascii_case(n)) {
                cx.error(field, format!("`{n}` is the request id header of [request_id]"));
            }
        };
        for (key, list, request) in lists {
            for (j, n) in list.iter().enumerate() {
                name_check(&format!("{p}.headers.{key}[{j}]"), n, request, false, cx);
            }
        }
        for (key, map, request) in maps {
            for (n, v) in map {
                let field = format!("{p}.headers.{key}.{n}");
                name_check(&field, n, request, true, cx);
                match parse_template(v) {
                    Err(e) => cx.error(&field, e),
                    Ok(parts) => {
                        if request_id.is_none() && parts.contains(&Part::Var(Var::RequestId)) {
                            cx.error(&field, "`${request_id}` needs a [request_id] section");
                        }
                    }
                }
            }
        }
        // The same name in two rule lists of one side contradicts itself.
        for (side, remove, set, add) in [
            ("request", &self.request_remove, &self.request_set, &self.request_add),
            ("response", &self.response_remove, &self.response_set, &self.response_add),
        ] {
            let mut seen: BTreeMap<String, &str> = BTreeMap::new();
            let all = remove
                .iter()
                .map(|n| (n, "remove"))
                .chain(set.keys().map(|n| (n, "set")))
                .chain(add.keys().map(|n| (n, "add")));
            for (n, kind) in all {
                if let Some(prev) = seen.insert(n.to_ascii_lowercase(), kind) {
                    cx.error(
                        format!("{p}.headers.{side}_{kind}"),
                        format!("`{n}` is also in {side}_{prev}: one rule per header name and side"),
                    );
                }
            }
        }
    }
}

impl Hsts {
    pub(crate) fn validate(&self, p: &str, rules: Option<&HeaderRules>, cx: &mut Validator) {
        if self.preload && (!self.include_subdomains || self.max_age < 31_536_000) {
            cx.error(
                format!("{p}.hsts"),
                "preload needs include_subdomains and a max_age of 31536000 (a year) or more",
            );
        }
        let named =
            |m: &BTreeMap<String, String>| m.keys().any(|n| n.eq_ignore_ascii_case("strict-transport-security"));
        if rules.is_some_and(|r| named(&r.response_set) || named(&r.response_add)) {
            cx.error(format!("{p}.hsts"), "Strict-Transport-Security is also set by a header rule");
        }
    }
}

impl RequestIdConfig {
    pub(crate) fn validate(&self, cx: &mut Validator) {
        let lower = self.header.to_ascii_lowercase();
        if !name_ok(&self.header) {
            cx.error("request_id.header", format!("`{}` is not a header name", self.header));
        } else if PROTECTED.contains(&lower.as_str()) || FORWARDING.contains(&lower.as_str()) {
            cx.error("request_id.header", format!("`{}` is a header the proxy writes itself", self.header));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        assert_eq!(parse_template("a").unwrap(), vec![Part::Literal("a".into())]);
        assert_eq!(
            parse_template("ip=${client_ip};$${x}").unwrap(),
            vec![Part::Literal("ip=".into()), Part::Var(Var::ClientIp), Part::Literal(";${x}".into())]
        );
        assert_eq!(parse_template("${tls_subject}").unwrap(), vec![Part::Var(Var::TlsSubject)]);
        for bad in ["", " a", "a\r\nb", "${nope}", "${client_ip", "$x", "a\0"] {
            assert!(parse_template(bad).is_err(), "{bad:?}");
        }
        assert!(parse_template("${nope}").unwrap_err().contains("client_ip"));
    }

    #[test]
    fn hsts_value() {
        assert_eq!(Hsts::default().value(), "max-age=15768000");
        let h = Hsts { max_age: 31_536_000, include_subdomains: true, preload: true };
        assert_eq!(h.value(), "max-age=31536000; includeSubDomains; preload");
    }
}
