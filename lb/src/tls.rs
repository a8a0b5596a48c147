//! TLS: the per-listener rustls server configs (certificates chosen by SNI, ALPN, TLS 1.2/1.3, session tickets and
//! a session cache kept across snapshots), client certificate authentication (per listener or per server name:
//! CA bundle, CRLs, required or optional; see [`ClientAuthConfigs`]) and the client configs used towards TLS
//! backends (with a client certificate for backend mTLS).

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderName;
use padis_model::tls::CertMaterial;
use padis_model::{ClientAuth, ClientAuthMode, ListenerTls, UpstreamTls};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::error::L7Error;

/// The crypto provider used everywhere (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Resumption state shared by every server config the plane ever builds, so tickets and cached sessions survive
/// snapshot changes. Tickets are sealed with the node's rotating (and maybe shared) keys (see `padis-tickets`).
pub(crate) struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    cache: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    pub fn new(keys: Arc<padis_tickets::TicketKeys>) -> Resumption {
        Resumption {
            ticketer: Arc::new(padis_tickets::Ticketer(keys)),
            cache: rustls::server::ServerSessionMemoryCache::new(20_000),
        }
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

/// The verifier of a client authentication: the CA bundle as trust anchors, the CRLs (a revoked certificate, or
/// one whose status no CRL gives once CRLs are configured, is refused), anonymous clients allowed when `optional`.
/// The files' contents were read by validation (`auth.material`).
pub(crate) fn client_verifier(auth: &ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, L7Error> {
    let err = |message: String| L7Error::ClientAuth { message };
    let mut roots = rustls::RootCertStore::empty();
    for c in &auth.material.ca {
        roots.add(c.clone()).map_err(|e| err(format!("{}: {e}", auth.ca.display())))?;
    }
    let crls = auth.material.crls.clone();
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls);
    if auth.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| err(format!("{}: {e}", auth.ca.display())))
}

/// The header a client authentication passes the verified subject in.
fn subject_header(auth: &ClientAuth) -> Result<HeaderName, L7Error> {
    HeaderName::from_bytes(auth.subject_header.to_ascii_lowercase().as_bytes())
        .map_err(|e| L7Error::ClientAuth { message: format!("subject_header `{}`: {e}", auth.subject_header) })
}

/// The server configs of a listener that asks for client certificates: one per client authentication, chosen by
/// the server name of the ClientHello (exact name, then `*.parent`, then the listener's own), with the header
/// that carries the subject of a certificate verified by it.
pub(crate) struct ClientAuthConfigs {
    exact: HashMap<String, Mtls>,
    wildcard: HashMap<String, Mtls>,
    listener: Mtls,
}

/// One server config and its subject header (none: no client certificate asked for).
#[derive(Clone)]
pub(crate) struct Mtls {
    pub config: Arc<ServerConfig>,
    pub header: Option<HeaderName>,
}

impl ClientAuthConfigs {
    /// The config for a ClientHello asking for `name` (lowercase, no trailing dot).
    pub fn pick(&self, name: Option<&str>) -> &Mtls {
        if let Some(name) = name {
            if let Some(m) = self.exact.get(name) {
                return m;
            }
            if let Some(m) = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
                return m;
            }
        }
        &self.listener
    }

    /// Whether a connection made for server name `sni` was authenticated as a request for `host` must be.
    pub fn same_auth(&self, sni: Option<&str>, host: &str) -> bool {
        Arc::ptr_eq(&self.pick(sni).config, &self.pick(Some(host)).config)
    }
}

/// What [`server_config`] builds for a listener: its server config, its certificate resolver, and its configs by
/// server name when it asks for client certificates.
pub(crate) type ListenerConfigs = (Arc<ServerConfig>, Arc<SniResolver>, Option<Arc<ClientAuthConfigs>>);

/// Builds a listener's server config from the snapshot's certificates. `keys` caches loaded keys by name. A
/// listener with client authentication also gets its configs by server name.
pub(crate) fn server_config(
    tls: &ListenerTls,
    certs: &[Arc<CertMaterial>],
    keys: &HashMap<String, Arc<CertifiedKey>>,
    resumption: &Resumption,
) -> Result<ListenerConfigs, L7Error> {
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
    let build = |auth: Option<&ClientAuth>| -> Result<Mtls, L7Error> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let (builder, header) = match auth {
            Some(a) => (builder.with_client_cert_verifier(client_verifier(a)?), Some(subject_header(a)?)),
            None => (builder.with_no_client_auth(), None),
        };
        let mut cfg = builder.with_cert_resolver(resolver.clone());
        cfg.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        cfg.ticketer = resumption.ticketer.clone();
        cfg.session_storage = resumption.cache.clone();
        Ok(Mtls { config: Arc::new(cfg), header })
    };
    let listener = build(tls.client_auth.as_ref())?;
    if !tls.asks_client_certs() {
        return Ok((listener.config, resolver, None));
    }
    let mut configs = ClientAuthConfigs { exact: HashMap::new(), wildcard: HashMap::new(), listener: listener.clone() };
    for n in &tls.by_name {
        let m = build(n.client_auth.as_ref())?;
        for name in &n.names {
            match name.strip_prefix("*.") {
                Some(parent) => configs.wildcard.entry(parent.to_string()).or_insert_with(|| m.clone()),
                None => configs.exact.entry(name.clone()).or_insert_with(|| m.clone()),
            };
        }
    }
    Ok((listener.config, resolver, Some(Arc::new(configs))))
}

/// The client config towards a group's TLS backends (ALPN is set by the connector from the group protocol).
/// Relative CA paths were made absolute by validation.
pub(crate) fn client_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, L7Error> {
    Ok(padis_balance::client_tls_config(tls, std::path::Path::new(""))?)
}

/// The verified subject of the client's certificate (RFC 4514, escaped to visible ASCII: it always fits a
/// header), as the subject header and the `${tls_subject}` variable of header rules give it; `None` without one
/// (no certificate asked for, or none sent to an `optional` listener). A resumed session keeps its certificate.
pub(crate) fn client_subject(conn: &rustls::CommonState) -> Option<Arc<str>> {
    let leaf = conn.peer_certificates()?.first()?;
    padis_model::tls::subject(leaf.as_ref()).map(Arc::from)
}
