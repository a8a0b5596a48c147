//! TLS: the per-listener rustls server configs (certificates chosen by SNI, ALPN, TLS 1.2/1.3, session tickets and
//! a session cache kept across snapshots) and the client configs used towards TLS backends.

use std::collections::HashMap;
use std::sync::Arc;

use padis_model::tls::CertMaterial;
use padis_model::{ListenerTls, UpstreamTls};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::error::L7Error;

/// The crypto provider used everywhere (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Resumption state shared by every server config the plane ever builds, so tickets and cached sessions survive
/// snapshot changes.
pub(crate) struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    pub fn new() -> Result<Resumption, L7Error> {
        Ok(Resumption {
            ticketer: rustls::crypto::ring::Ticketer::new()?,
            cache: rustls::server::ServerSessionMemoryCache::new(20_000),
        })
    }
}

/// Certificates by SNI: exact name, then `*.parent` wildcard, then the listener default.
/// The listener's certificates by server name (exact, then `*.parent`, then the default).
#[derive(Debug)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// The certificate for `name` (lowercase, no trailing dot; `None`: the default).
    fn pick(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        if let Some(name) = name {
            if let Some(k) = self.exact.get(name) {
                return Some(k);
            }
            if let Some(k) = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
                return Some(k);
            }
        }
        self.default.as_ref()
    }

    /// Whether a connection made for server name `a` would have got the certificate `b` gets: a request for
    /// host `b` on a connection for `a` is misdirected otherwise (RFC 9110 §15.5.20).
    pub fn same_certificate(&self, a: &str, b: &str) -> bool {
        match (self.pick(Some(a)), self.pick(Some(b))) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            (None, None) => true,
            _ => false,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        self.pick(name.as_deref()).cloned()
    }
}

/// Loads a certificate's key for rustls.
pub(crate) fn certified_key(cert: &CertMaterial) -> Result<Arc<CertifiedKey>, L7Error> {
    let key = rustls::crypto::ring::sign::any_supported_type(&cert.key)
        .map_err(|source| L7Error::CertificateKey { name: cert.name.clone(), source })?;
    Ok(Arc::new(CertifiedKey::new(cert.chain.clone(), key)))
}

/// Builds a listener's server config from the snapshot's certificates. `keys` caches loaded keys by name.
pub(crate) fn server_config(
    tls: &ListenerTls,
    certs: &[Arc<CertMaterial>],
    keys: &HashMap<String, Arc<CertifiedKey>>,
    resumption: &Resumption,
) -> Result<(Arc<ServerConfig>, Arc<SniResolver>), L7Error> {
    let offered: Vec<&Arc<CertMaterial>> =
        certs.iter().filter(|c| tls.certificates.is_empty() || tls.certificates.iter().any(|n| n == &c.name)).collect();
    let mut resolver = SniResolver { exact: HashMap::new(), wildcard: HashMap::new(), default: None };
    for c in &offered {
        let Some(key) = keys.get(&c.name) else { continue };
        for n in &c.server_names {
            match n.strip_prefix("*.") {
                Some(parent) => resolver.wildcard.entry(parent.to_string()).or_insert_with(|| key.clone()),
                None => resolver.exact.entry(n.clone()).or_insert_with(|| key.clone()),
            };
        }
    }
    let default_name = tls.default_certificate.as_deref().or(offered.first().map(|c| c.name.as_str()));
    resolver.default = default_name.and_then(|n| keys.get(n)).cloned();
    let resolver = Arc::new(resolver);
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    cfg.ticketer = resumption.ticketer.clone();
    cfg.session_storage = resumption.cache.clone();
    Ok((Arc::new(cfg), resolver))
}

/// The client config towards a group's TLS backends (ALPN is set by the connector from the group protocol).
/// Relative CA paths were made absolute by validation.
pub(crate) fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, L7Error> {
    Ok(padis_balance::client_tls_config(tls, std::path::Path::new(""))?)
}

/// The verified subject of the client's certificate, as the `${tls_subject}` variable of header rules gives it;
/// `None` without one. Client certificate authentication fills it in (until then no listener asks for a client
/// certificate, and the variable expands to nothing: a rule setting a header from it writes none).
pub(crate) fn client_subject(_conn: &rustls::CommonState) -> Option<Arc<str>> {
    None
}
