//! The route table, compiled once per snapshot and listener: Host (exact, then `*.suffix` wildcard — longest
//! suffix first —, then any host) and path prefix on segment boundaries (longest wins). A lookup is a few hash
//! probes, with no allocation.

use std::collections::HashMap;
use std::sync::Arc;

use padis_model::Route;
use prometheus::Histogram;

use crate::metrics::Metrics;

/// A route ready for the hot path.
pub(crate) struct CompiledRoute {
    /// Route name (metrics, access log).
    pub name: Arc<str>,
    /// `redirect_https` with the target port, honoured on plaintext listeners.
    pub redirect_https: Option<u16>,
    /// Backend groups with cumulative weights.
    targets: Vec<(Arc<str>, u64)>,
    total_weight: u64,
    /// Request duration histogram of this route.
    pub duration: Histogram,
    /// Access rules (source networks, basic auth, path rewrites, rate limit); `None` when the route has none.
    pub access: Option<crate::access::RouteAccess>,
    /// Header rules (and HSTS); `None` when the route has none.
    pub headers: Option<crate::policy::rules::HeaderRules>,
}

impl CompiledRoute {
    /// Picks a group by weight (`None` when every weight is 0 or no group is configured).
    pub fn pick_group(&self) -> Option<&Arc<str>> {
        match self.targets.len() {
            0 => None,
            1 if self.total_weight > 0 => Some(&self.targets[0].0),
            _ if self.total_weight == 0 => None,
            _ => {
                let r = fastrand::u64(0..self.total_weight);
                self.targets.iter().find(|(_, cum)| r < *cum).map(|(g, _)| g)
            }
        }
    }
}

/// Path prefixes of one host, normalised without trailing `/` (the root is `""`).
#[derive(Default)]
struct PathTable {
    prefixes: HashMap<Box<str>, Arc<CompiledRoute>>,
    /// Prefixes matched without regard to ASCII case (`path_ignore_case`), lowercase.
    folded: HashMap<Box<str>, Arc<CompiledRoute>>,
}

impl PathTable {
    fn lookup(&self, path: &str) -> Option<&Arc<CompiledRoute>> {
        if self.prefixes.is_empty() && self.folded.is_empty() {
            return None;
        }
        let mut p = path.strip_suffix('/').unwrap_or(path);
        // Only tables with case-insensitive prefixes pay for a lowercase copy (same byte offsets as `p`).
        let lower = (!self.folded.is_empty()).then(|| p.to_ascii_lowercase());
        loop {
            if let Some(r) = self.prefixes.get(p) {
                return Some(r);
            }
            if let Some(r) = lower.as_deref().and_then(|l| self.folded.get(&l[..p.len()])) {
                return Some(r);
            }
            if p.is_empty() {
                return None;
            }
            p = match p.rfind('/') {
                Some(i) => &p[..i],
                None => "",
            };
        }
    }
}

/// The routes one listener serves.
#[derive(Default)]
pub(crate) struct RouteTable {
    exact: HashMap<Box<str>, PathTable>,
    wildcard: HashMap<Box<str>, PathTable>,
    any: PathTable,
}

fn normalise_prefix(path: &str) -> Box<str> {
    let p = path.trim_end_matches('/');
    p.into()
}

impl RouteTable {
    /// Compiles the routes that serve `listener` (in config order: on a duplicate host+path the first wins).
    pub fn build<R: std::borrow::Borrow<Route>>(listener: &str, routes: &[R], metrics: &Metrics) -> RouteTable {
        let mut t = RouteTable::default();
        for r in routes.iter().map(std::borrow::Borrow::borrow) {
            if !r.listeners.is_empty() && !r.listeners.iter().any(|l| l == listener) {
                continue;
            }
            let mut total = 0u64;
            let targets = r
                .targets()
                .into_iter()
                .map(|wg| {
                    total += u64::from(wg.weight);
                    (Arc::<str>::from(wg.group), total)
                })
                .collect();
            let compiled = Arc::new(CompiledRoute {
                name: r.name.as_str().into(),
                redirect_https: r.redirect_https.then(|| r.https_port.unwrap_or(443)),
                targets,
                total_weight: total,
                duration: metrics.duration.with_label_values(&[r.name.as_str()]),
                access: crate::access::RouteAccess::compile(r),
                headers: crate::policy::rules::HeaderRules::compile(r),
            });
            let table = match r.host.as_deref().map(str::to_ascii_lowercase) {
                None => &mut t.any,
                Some(h) if h == "*" => &mut t.any,
                Some(h) => match h.strip_prefix("*.") {
                    Some(suffix) => t.wildcard.entry(suffix.into()).or_default(),
                    None => t.exact.entry(h.into()).or_default(),
                },
            };
            if r.path_ignore_case {
                table.folded.entry(normalise_prefix(&r.path.to_ascii_lowercase())).or_insert(compiled);
            } else {
                table.prefixes.entry(normalise_prefix(&r.path)).or_insert(compiled);
            }
        }
        t
    }

    /// The route for `host` (lowercase, no port) and `path`.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<CompiledRoute>> {
        if let Some(r) = self.exact.get(host).and_then(|t| t.lookup(path)) {
            return Some(r);
        }
        if !self.wildcard.is_empty() {
            let mut rest = host;
            while let Some(i) = rest.find('.') {
                rest = &rest[i + 1..];
                if let Some(r) = self.wildcard.get(rest).and_then(|t| t.lookup(path)) {
                    return Some(r);
                }
            }
        }
        self.any.lookup(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, path: &str) -> Route {
        Route {
            name: name.into(),
            listeners: vec![],
            host: host.map(Into::into),
            path: path.into(),
            group: Some("g".into()),
            split: vec![],
            redirect_https: false,
            https_port: None,
            origin: None,
            ..Default::default()
        }
    }

    #[test]
    fn precedence_and_segments() {
        let reg = prometheus::Registry::new();
        let m = Metrics::register(&reg).unwrap();
        let routes = vec![
            route("any", None, "/"),
            route("api", None, "/api"),
            route("wild", Some("*.example.com"), "/"),
            route("exact", Some("www.example.com"), "/"),
            route("exact-x", Some("www.example.com"), "/x/y/"),
        ];
        let t = RouteTable::build("l", &routes, &m);
        let name = |h: &str, p: &str| t.lookup(h, p).map(|r| r.name.to_string()).unwrap_or_default();
        assert_eq!(name("other", "/"), "any");
        assert_eq!(name("other", "/api"), "api");
        assert_eq!(name("other", "/api/v1"), "api");
        assert_eq!(name("other", "/apix"), "any");
        assert_eq!(name("a.example.com", "/api"), "wild");
        assert_eq!(name("a.b.example.com", "/"), "wild");
        assert_eq!(name("www.example.com", "/x/y"), "exact-x");
        assert_eq!(name("www.example.com", "/x/y/z"), "exact-x");
        assert_eq!(name("www.example.com", "/x/yz"), "exact");
    }

    /// Case-insensitive prefixes (marathon-lb `PATH = "-i /Api"`) beside case-sensitive ones: longest first.
    #[test]
    fn case_insensitive_prefixes() {
        let reg = prometheus::Registry::new();
        let m = Metrics::register(&reg).unwrap();
        let mut ci = route("ci", Some("ci.example.com"), "/Api");
        ci.path_ignore_case = true;
        let routes = vec![ci, route("cs", Some("ci.example.com"), "/api/v2")];
        let t = RouteTable::build("l", &routes, &m);
        let name = |h: &str, p: &str| t.lookup(h, p).map(|r| r.name.to_string()).unwrap_or_default();
        assert_eq!(name("ci.example.com", "/API/x"), "ci");
        assert_eq!(name("ci.example.com", "/api"), "ci");
        assert_eq!(name("ci.example.com", "/api/v2/x"), "cs");
        assert_eq!(name("ci.example.com", "/API/V2"), "ci");
        assert_eq!(name("ci.example.com", "/apix"), "");
    }
}
