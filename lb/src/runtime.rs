//! What one snapshot compiles to for the hot path: per-listener route tables and TLS configs, the group
//! balancers (from `padis-balance`) and backend clients. Built off the hot path, swapped atomically.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use padis_balance::{Balancers, HealthRegistry};
use padis_model::tls::CertMaterial;
use padis_model::{Limits, Snapshot};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::tls::{self, Resumption};
use crate::upstream::{self, Upstream};

/// A listener's share of the runtime.
pub(crate) struct ListenerRt {
    /// Its routes.
    pub routes: RouteTable,
    /// Whether it terminates TLS.
    pub tls_required: bool,
    /// Its TLS config (absent if it could not be built: connections are then refused) and its certificates by
    /// server name.
    pub tls: Option<(Arc<ServerConfig>, Arc<tls::SniResolver>)>,
    /// Client certificate authentication (per server name): its connections do the handshake on the hyper path
    /// with the config chosen by their ClientHello's server name.
    pub client_auth: Option<Arc<tls::ClientAuthConfigs>>,
    /// Connections start on the HTTP/1.1 fast path (TLS ones whose client does not get h2 too).
    pub fast_path: bool,
    /// The TLS config of the fast path's handshakes (`tls` without h2, see `fast::fast_config`).
    pub tls_fast: Option<Arc<ServerConfig>>,
    /// `mode = "tcp"`: connections are relayed to a backend of this group (see `tcp`).
    pub tcp: Option<crate::tcp::TcpListenerRt>,
    /// `proxy_protocol`: connections come from these sources only, each starting with a PROXY header.
    pub proxy: Option<Arc<crate::proxy_protocol::Trusted>>,
    /// `allow_cidrs`: the only clients admitted (none: every client).
    pub allow: Option<Arc<crate::proxy_protocol::Trusted>>,
}

/// The compiled form of one snapshot.
pub(crate) struct Runtime {
    /// Client-side limits.
    pub limits: Limits,
    /// Per listener name.
    pub listeners: HashMap<String, ListenerRt>,
    /// Backend selection per group.
    pub balancers: Balancers,
    /// Backend clients per group.
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
    /// Metric label of each backend address.
    pub backend_labels: HashMap<SocketAddr, Arc<str>>,
    /// Backends some group still sends new requests to (weight > 0, not draining): idle connections to others
    /// are closed.
    pub accepting: HashSet<SocketAddr>,
    /// The request id (`[request_id]`).
    pub request_ids: Option<crate::policy::rules::RequestIds>,
    /// Every listener's client certificate subject header: removed from every request a client sends, on every
    /// listener (a backend behind both an mTLS and a plain listener never sees a client's copy).
    pub subject_headers: Vec<http::HeaderName>,
    /// The buckets of the routes' rate limits (kept from one snapshot to the next).
    pub rates: Arc<crate::ratelimit::RateTable>,
    keys: HashMap<String, (Arc<CertMaterial>, Arc<CertifiedKey>)>,
}

impl Runtime {
    /// Compiles `snap`, reusing what `prev` already built (balancer state, backend pools, loaded keys).
    pub fn build(
        snap: &Snapshot,
        prev: Option<&Runtime>,
        health: &HealthRegistry,
        metrics: &Metrics,
        resumption: &Resumption,
    ) -> Runtime {
        let state = &snap.state;
        let mut keys = HashMap::new();
        for c in &snap.certificates {
            let reused = prev
                .and_then(|p| p.keys.get(&c.name))
                .filter(|(m, _)| Arc::ptr_eq(m, c) || **m == **c)
                .map(|(_, k)| k.clone());
            let key = match reused {
                Some(k) => k,
                None => match tls::certified_key(c) {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::error!(certificate = %c.name, error = %e, "certificate not usable");
                        continue;
                    }
                },
            };
            metrics.cert_expiry.with_label_values(&[c.name.as_str()]).set(c.not_after_unix);
            keys.insert(c.name.clone(), (c.clone(), key));
        }
        if let Some(p) = prev {
            for name in p.keys.keys().filter(|n| !keys.contains_key(*n)) {
                let _ = metrics.cert_expiry.remove_label_values(&[name.as_str()]);
            }
        }
        let plain_keys: HashMap<String, Arc<CertifiedKey>> =
            keys.iter().map(|(n, (_, k))| (n.clone(), k.clone())).collect();
        let mut listeners = HashMap::with_capacity(state.listeners.len());
        for l in &state.listeners {
            let built = l.tls.as_ref().and_then(|t| {
                match tls::server_config(t, &snap.certificates, &plain_keys, resumption) {
                    Ok((cfg, resolver, auth)) => Some(((cfg, resolver), auth)),
                    Err(e) => {
                        tracing::error!(listener = %l.name, error = %e, "TLS config not usable; keeping the previous one");
                        let p = prev.and_then(|p| p.listeners.get(&l.name));
                        p.and_then(|p| p.tls.clone()).map(|t| (t, p.and_then(|p| p.client_auth.clone())))
                    }
                }
            });
            let (tls, client_auth) = built.map_or((None, None), |(t, a)| (Some(t), a));
            // A listener with client authentication `asks` for certificates: a listener whose config could not
            // be built is refused anyway (`tls` absent).
            let asks = l.tls.as_ref().is_some_and(|t| t.asks_client_certs());
            listeners.insert(
                l.name.clone(),
                ListenerRt {
                    routes: if l.named_routes_only {
                        let named: Vec<Arc<padis_model::Route>> =
                            state.routes.iter().filter(|r| r.listeners.contains(&l.name)).cloned().collect();
                        RouteTable::build(&l.name, &named, metrics)
                    } else {
                        RouteTable::build(&l.name, &state.routes, metrics)
                    },
                    tls_required: l.tls.is_some(),
                    tls: tls.clone(),
                    // Client certificates are asked for on the hyper path only (see `conn::handshake`).
                    fast_path: l.fast_path && !asks,
                    client_auth,
                    tls_fast: tls.as_ref().map(|(cfg, _)| crate::fast::fast_config(cfg)),
                    tcp: crate::tcp::TcpListenerRt::of(l),
                    proxy: l.proxy_protocol.as_ref().map(|p| Arc::new(crate::proxy_protocol::Trusted::new(&p.trusted))),
                    allow: (!l.allow_cidrs.is_empty())
                        .then(|| Arc::new(crate::proxy_protocol::Trusted::new(&l.allow_cidrs))),
                },
            );
        }
        let balancers = Balancers::build(snap, health, prev.map(|p| &p.balancers));
        let upstreams = upstream::build_all(&state.groups, prev.map(|p| &p.upstreams));
        let mut backend_labels = HashMap::new();
        let mut accepting = HashSet::new();
        for g in &state.groups {
            for b in &g.backends {
                backend_labels.entry(b.addr).or_insert_with(|| Arc::<str>::from(b.addr.to_string()));
                if b.accepts_new() {
                    accepting.insert(b.addr);
                }
            }
        }
        if prev.is_some() {
            let routes = state.routes.iter().map(|r| r.name.clone()).collect();
            let groups = state.groups.iter().map(|g| g.name.clone()).collect();
            let backends = backend_labels.values().map(|l| l.to_string()).collect();
            metrics.retain(&routes, &groups, &backends);
        }
        let mut subject_headers: Vec<http::HeaderName> = Vec::new();
        for t in state.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            let auths = t.client_auth.iter().chain(t.by_name.iter().filter_map(|n| n.client_auth.as_ref()));
            for a in auths {
                if let Ok(h) = http::HeaderName::from_bytes(a.subject_header.to_ascii_lowercase().as_bytes()) {
                    if !subject_headers.contains(&h) {
                        subject_headers.push(h);
                    }
                }
            }
        }
        Runtime {
            limits: state.limits.clone(),
            subject_headers,
            listeners,
            balancers,
            upstreams,
            backend_labels,
            accepting,
            request_ids: state.request_id.as_ref().and_then(crate::policy::rules::RequestIds::new),
            rates: prev
                .map_or_else(|| crate::ratelimit::RateTable::new(metrics.rate_limited.clone()), |p| p.rates.clone()),
            keys,
        }
    }
}
