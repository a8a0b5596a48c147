//! Access rules of a route, as pure functions the request policy calls (marathon-lb's `AUTH`,
//! `BACKEND_NETWORK_ALLOWED_ACL`, `USE_HSTS`, `HTTP_BACKEND_PROXYPASS_PATH` and `HTTP_BACKEND_REVPROXY_PATH`):
//!
//! - source networks: a client outside `allow_cidrs` gets 403 (HAProxy `http-request deny if !network_allowed`);
//! - HTTP basic authentication: `Authorization: Basic` checked against crypt(3) hashes (bcrypt, SHA-512/256,
//!   MD5, DES crypt, verified by `pwhash`); the computed hash is compared in constant time, and an unknown user
//!   costs the same hash computation as a known one. 401 carries `WWW-Authenticate: Basic realm="…"`. Verified
//!   credentials are remembered by their SHA-256 only, so a client does not pay a bcrypt per request;
//! - the request rate limit (`crate::ratelimit`), checked by `policy::limit_rate`;
//! - path rewrites: the request path under `proxypass_path` goes to the backend without it, and a `Location` /
//!   `Content-Location` of the backend on this host gets `revproxy_path` in front.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine;
use ipnet::IpNet;
use padis_model::Route;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Verified credentials remembered per route, at most this many (then forgotten all at once).
const CACHE_MAX: usize = 256;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// The client's address is outside the allowed networks: 403.
    Forbidden,
    /// Credentials missing or wrong: 401 with this `WWW-Authenticate` value.
    Unauthorized(String),
}

/// A route's basic authentication, ready to check.
struct Auth {
    /// `Basic realm="…"`.
    challenge: String,
    users: Vec<(String, String)>,
    /// SHA-256 of `user:password` pairs verified before.
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// The access rules of one route; `None` from [`RouteAccess::compile`] when the route has none.
pub(crate) struct RouteAccess {
    allow: Vec<IpNet>,
    auth: Option<Auth>,
    proxypass: Option<Box<str>>,
    revproxy: Option<Box<str>>,
    /// The route's request rate limit (`crate::ratelimit`).
    pub limit: Option<crate::ratelimit::RouteLimit>,
}

impl std::fmt::Debug for RouteAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteAccess")
            .field("allow", &self.allow)
            .field("auth", &self.auth.as_ref().map(|a| &a.challenge))
            .field("proxypass", &self.proxypass)
            .field("revproxy", &self.revproxy)
            .field("limit", &self.limit)
            .finish()
    }
}

impl RouteAccess {
    /// The rules of `r`, or `None` when it has none (the common case costs nothing per request).
    pub fn compile(r: &Route) -> Option<RouteAccess> {
        if r.allow_cidrs.is_empty()
            && r.basic_auth.is_none()
            && r.proxypass_path.is_none()
            && r.revproxy_path.is_none()
            && r.rate_limit.is_none()
        {
            return None;
        }
        let auth = r.basic_auth.as_ref().map(|a| Auth {
            challenge: format!("Basic realm=\"{}\"", a.realm),
            users: a.users.iter().map(|u| (u.user.clone(), u.hash.clone())).collect(),
            verified: Mutex::new(HashSet::new()),
        });
        Some(RouteAccess {
            allow: r.allow_cidrs.clone(),
            auth,
            proxypass: r.proxypass_path.as_deref().map(|p| p.trim_end_matches('/').into()),
            revproxy: r.revproxy_path.as_deref().map(|p| p.trim_end_matches('/').into()),
            limit: r.rate_limit.as_ref().map(|l| crate::ratelimit::RouteLimit::new(&r.name, l)),
        })
    }

    /// The access phase: the client's address first, then its credentials.
    pub fn check(&self, client: IpAddr, authorization: Option<&[u8]>) -> Result<(), Denied> {
        if !self.allows_source(client) {
            return Err(Denied::Forbidden);
        }
        match &self.auth {
            Some(a) if !a.verify(authorization) => Err(Denied::Unauthorized(a.challenge.clone())),
            _ => Ok(()),
        }
    }

    /// Whether `client` is in the allowed networks (every client when none are set).
    pub fn allows_source(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&client))
    }

    /// The target the backend receives: a path under `proxypass_path` loses that prefix (`/p/x?q` -> `/x?q`,
    /// `/p` -> `/`); other targets are unchanged.
    pub fn backend_target<'a>(&self, target: &'a str) -> Cow<'a, str> {
        let Some(prefix) = self.proxypass.as_deref() else { return Cow::Borrowed(target) };
        match target.strip_prefix(prefix) {
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '?']) => {
                let rest = rest.strip_prefix('/').unwrap_or(rest);
                Cow::Owned(format!("/{rest}"))
            }
            _ => Cow::Borrowed(target),
        }
    }

    /// A backend's `Location` / `Content-Location` value as the client should see it: a path, or an absolute
    /// URL on `host` (the request's Host, any port), gets `revproxy_path` in front. `None`: unchanged.
    pub fn client_location(&self, value: &str, host: &str) -> Option<String> {
        let prefix = self.revproxy.as_deref()?;
        let (origin, path) = if value.starts_with('/') && !value.starts_with("//") {
            ("", value)
        } else {
            let rest = value.strip_prefix("http://").or_else(|| value.strip_prefix("https://"))?;
            let end = rest.find('/').unwrap_or(rest.len());
            let authority = &rest[..end];
            let name = authority
                .rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(authority, |(h, _)| h);
            if !name.eq_ignore_ascii_case(host) {
                return None;
            }
            let split = value.len() - rest.len() + end;
            (&value[..split], if end == rest.len() { "/" } else { &value[split..] })
        };
        if path == prefix || path.starts_with(&format!("{prefix}/")) {
            return None;
        }
        Some(format!("{origin}{prefix}{path}"))
    }
}

impl RouteAccess {
    /// Whether the route's requests are served by the hyper path only: the rules change the request or the
    /// response (not only admit or refuse it). (A rate limit does not: both paths take from its bucket where the
    /// request is served, `policy::limit_rate`.)
    pub fn rewrites(&self) -> bool {
        self.proxypass.is_some() || self.revproxy.is_some()
    }

    /// Applies the response-side rules to a backend's response head for a request to `host`: `Location` /
    /// `Content-Location` under `revproxy_path`.
    pub fn rewrite_response(&self, headers: &mut http::HeaderMap, host: &str) {
        if self.revproxy.is_some() {
            for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
                let new = headers.get(&name).and_then(|v| v.to_str().ok()).and_then(|v| self.client_location(v, host));
                if let Some(v) = new.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                    headers.insert(name, v);
                }
            }
        }
    }
}

impl Auth {
    /// Whether `Authorization` carries the password of one of the users.
    fn verify(&self, authorization: Option<&[u8]>) -> bool {
        let Some(decoded) = authorization.and_then(basic_credentials) else { return false };
        let Some((user, password)) = decoded.split_once(':') else { return false };
        let key: [u8; 32] = Sha256::digest(decoded.as_bytes()).into();
        if self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
            return true;
        }
        // Every user name is compared; the hash of the matching user (or the first, for an unknown name, so both
        // take as long) is computed from the password and compared in constant time.
        let mut found: Option<&str> = None;
        for (u, h) in &self.users {
            if bool::from(u.as_bytes().ct_eq(user.as_bytes())) && found.is_none() {
                found = Some(h);
            }
        }
        let Some(stored) = found.or_else(|| self.users.first().map(|(_, h)| h.as_str())) else { return false };
        let ok = match pwhash::unix::crypt(password, stored) {
            Ok(computed) => bool::from(computed.as_bytes().ct_eq(stored.as_bytes())) && found.is_some(),
            Err(_) => false,
        };
        if ok {
            let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if v.len() >= CACHE_MAX {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

/// `user:password` of a `Basic` authorization value.
fn basic_credentials(v: &[u8]) -> Option<String> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use padis_model::{BasicAuth, BasicAuthUser};

    fn route(f: impl FnOnce(&mut Route)) -> RouteAccess {
        let mut r = Route { name: "r".into(), group: Some("g".into()), ..Route::default() };
        f(&mut r);
        RouteAccess::compile(&r).expect("rules")
    }

    fn basic(user: &str, password: &str) -> Vec<u8> {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))).into_bytes()
    }

    #[test]
    fn no_rules_compile_to_nothing() {
        assert!(RouteAccess::compile(&Route::default()).is_none());
    }

    #[test]
    fn source_networks() {
        let a = route(|r| r.allow_cidrs = vec!["10.1.40.0/24".parse().unwrap(), "10.1.55.43/32".parse().unwrap()]);
        assert!(a.allows_source("10.1.40.7".parse().unwrap()));
        assert!(a.allows_source("10.1.55.43".parse().unwrap()));
        assert!(a.allows_source("::ffff:10.1.40.9".parse().unwrap()), "IPv4-mapped clients are IPv4");
        assert!(!a.allows_source("10.1.55.44".parse().unwrap()));
        assert!(!a.allows_source("::1".parse().unwrap()));
        assert_eq!(a.check("10.1.41.1".parse().unwrap(), None), Err(Denied::Forbidden));
        assert_eq!(a.check("10.1.40.1".parse().unwrap(), None), Ok(()));
    }

    /// Hashes of every kind HAProxy's `password` takes through crypt(3), for the password `s3cret` (the old kinds
    /// on purpose: estates still carry them).
    #[test]
    #[allow(deprecated)]
    fn basic_auth_with_each_hash_kind() {
        let hashes = [
            pwhash::bcrypt::hash_with(
                pwhash::bcrypt::BcryptSetup {
                    cost: Some(4),
                    variant: Some(pwhash::bcrypt::BcryptVariant::V2y),
                    ..Default::default()
                },
                "s3cret",
            )
            .unwrap(),
            pwhash::sha512_crypt::hash("s3cret").unwrap(),
            pwhash::sha256_crypt::hash("s3cret").unwrap(),
            pwhash::md5_crypt::hash("s3cret").unwrap(),
            pwhash::unix_crypt::hash("s3cret").unwrap(),
        ];
        for hash in hashes {
            assert!(padis_model::crypt_kind(&hash).is_some(), "{hash}");
            let a = route(|r| {
                r.basic_auth = Some(BasicAuth {
                    realm: "Staff only".into(),
                    users: vec![BasicAuthUser { user: "alice".into(), hash: hash.clone() }],
                })
            });
            let ip: IpAddr = "127.0.0.1".parse().unwrap();
            let challenge = Err(Denied::Unauthorized("Basic realm=\"Staff only\"".into()));
            assert_eq!(a.check(ip, None), challenge, "{hash}");
            assert_eq!(a.check(ip, Some(&basic("alice", "wrong"))), challenge);
            assert_eq!(a.check(ip, Some(&basic("bob", "s3cret"))), challenge, "an unknown user with the password");
            assert_eq!(a.check(ip, Some(b"Bearer abc")), challenge);
            assert_eq!(a.check(ip, Some(b"Basic !!!")), challenge);
            assert_eq!(a.check(ip, Some(&basic("alice", "s3cret"))), Ok(()), "{hash}");
            // Remembered: the same credentials again, and still nothing else.
            assert_eq!(a.check(ip, Some(&basic("alice", "s3cret"))), Ok(()));
            assert_eq!(a.check(ip, Some(&basic("alice", "s3cret2"))), challenge);
            assert_eq!(a.check(ip, Some(b"basic YWxpY2U6czNjcmV0")), Ok(()), "scheme case-insensitive");
        }
    }

    #[test]
    fn proxypass_strips_the_prefix_on_segment_boundaries() {
        let a = route(|r| r.proxypass_path = Some("/api".into()));
        assert_eq!(a.backend_target("/api/v1/x?q=1"), "/v1/x?q=1");
        assert_eq!(a.backend_target("/api"), "/");
        assert_eq!(a.backend_target("/api?x"), "/?x");
        assert_eq!(a.backend_target("/api/"), "/");
        assert_eq!(a.backend_target("/apix"), "/apix");
        assert_eq!(a.backend_target("/other"), "/other");
        let a = route(|r| r.proxypass_path = Some("/api/".into()));
        assert_eq!(a.backend_target("/api/v1"), "/v1");
    }

    #[test]
    fn revproxy_prefixes_locations_on_this_host() {
        let a = route(|r| r.revproxy_path = Some("/ext".into()));
        assert_eq!(a.client_location("/login?next=/", "a.test").as_deref(), Some("/ext/login?next=/"));
        assert_eq!(a.client_location("http://a.test/login", "a.test").as_deref(), Some("http://a.test/ext/login"));
        assert_eq!(a.client_location("https://A.test:8443/x", "a.test").as_deref(), Some("https://A.test:8443/ext/x"));
        assert_eq!(a.client_location("http://a.test", "a.test").as_deref(), Some("http://a.test/ext/"));
        assert_eq!(a.client_location("http://b.test/login", "a.test"), None, "another host");
        assert_eq!(a.client_location("//b.test/x", "a.test"), None);
        assert_eq!(a.client_location("/ext/already", "a.test"), None);
        assert_eq!(a.client_location("relative", "a.test"), None);
        let none = route(|r| r.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(none.client_location("/x", "a.test"), None);
    }

    #[test]
    fn response_rules() {
        let a = route(|r| r.revproxy_path = Some("/ext".into()));
        let mut h = http::HeaderMap::new();
        h.insert(http::header::LOCATION, http::HeaderValue::from_static("/login"));
        h.insert(http::header::CONTENT_LOCATION, http::HeaderValue::from_static("http://other.test/x"));
        a.rewrite_response(&mut h, "a.test");
        assert_eq!(h[http::header::LOCATION], "/ext/login");
        assert_eq!(h[http::header::CONTENT_LOCATION], "http://other.test/x");
        assert!(a.rewrites());
        assert!(!route(|r| r.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()]).rewrites());
    }
}
