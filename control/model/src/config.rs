//! The desired state as written in the TOML config file (and extended by dynamic sources).
//!
//! Every struct is `deny_unknown_fields`: a typo is an error with a line number, never a silently ignored key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{bgp, dns, l4, marathon, secret::Secret, service::Service};

/// Everything Padis should serve: the whole config file, plus what dynamic sources merge in.
///
/// Routes, groups, services and VIPs are shared (`Arc`) between successive states: an item that did not change
/// is the same allocation in the next snapshot, so the reconciler, validation and the data planes can skip it
/// with a pointer comparison ([`DesiredState::same_as`], [`same_items`]).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// Admin API listener.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Process settings (read at start only).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Client-side HTTP limits and timeouts shared by all L7 listeners.
    #[serde(default)]
    pub limits: Limits,
    /// The request id of L7 requests (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<crate::headers::RequestIdConfig>,
    /// TLS settings of the whole node (session ticket keys; read at start).
    #[serde(default)]
    pub tls: TlsSettings,
    /// L7 listeners.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    /// TLS certificates, chosen by SNI on TLS listeners.
    #[serde(default, rename = "certificate")]
    pub certificates: Vec<CertificateConfig>,
    /// L7 routes (host + path prefix -> backend groups).
    #[serde(default, rename = "route")]
    pub routes: Vec<Arc<Route>>,
    /// Backend groups.
    #[serde(default, rename = "group")]
    pub groups: Vec<Arc<BackendGroup>>,
    /// Named services with instances (published in DNS).
    #[serde(default, rename = "service")]
    pub services: Vec<Arc<Service>>,
    /// L4 (XDP) settings.
    #[serde(default)]
    pub l4: l4::L4Config,
    /// L4 virtual IPs.
    #[serde(default, rename = "vip")]
    pub vips: Vec<Arc<l4::Vip>>,
    /// Authoritative DNS.
    #[serde(default)]
    pub dns: dns::DnsConfig,
    /// Marathon source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marathon: Option<marathon::MarathonConfig>,
    /// BGP announcement of VIPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<bgp::BgpConfig>,
    /// Kernel host routes for a local OSPF daemon to redistribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ospf: Option<bgp::OspfConfig>,
}

/// Whether two lists of shared items hold equal items in the same order; items that are the same allocation are
/// not compared field by field.
pub fn same_items<T: PartialEq>(a: &[Arc<T>], b: &[Arc<T>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || **x == **y)
}

impl DesiredState {
    /// Equality that compares shared items by pointer first ([`same_items`]); the same result as `==`.
    pub fn same_as(&self, other: &DesiredState) -> bool {
        // Destructured so that a new field cannot be left out of the comparison.
        let DesiredState {
            admin,
            log,
            runtime,
            limits,
            request_id,
            tls,
            listeners,
            certificates,
            routes,
            groups,
            services,
            l4,
            vips,
            dns,
            marathon,
            bgp,
            ospf,
        } = self;
        same_items(routes, &other.routes)
            && same_items(groups, &other.groups)
            && same_items(services, &other.services)
            && same_items(vips, &other.vips)
            && *admin == other.admin
            && *log == other.log
            && *runtime == other.runtime
            && *limits == other.limits
            && *request_id == other.request_id
            && *tls == other.tls
            && *listeners == other.listeners
            && *certificates == other.certificates
            && *l4 == other.l4
            && *dns == other.dns
            && *marathon == other.marathon
            && *bgp == other.bgp
            && *ospf == other.ospf
    }
}

/// The admin HTTP API (`/metrics`, `/healthz`, `/v1/state`, `/v1/config/validate`, `/v1/reload`, `/v1/drain`).
///
/// Reading endpoints are open on a loopback address without a token; endpoints that change something need the
/// bearer token over TCP, or the Unix socket (`socket`, mode 0600: the file system is the access control).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to bind; loopback by default.
    pub listen: SocketAddr,
    /// Bearer token: required by every TCP request but `/healthz` when set, and by changing endpoints over
    /// TCP always (without one they are refused over TCP). Mandatory when `listen` is not a loopback address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// File holding the token (mode 0600 or stricter), instead of `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Unix socket serving the whole API without a token (created with mode 0600; needs a restart to change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Time a client has to send a complete request head; then the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Most concurrent admin connections (TCP and socket each); more are closed at once.
    pub max_connections: usize,
    /// `false`: `/metrics` sums per-backend series over their `backend` label (one series per group, route or
    /// listener instead of one per backend: for thousands of Marathon tasks). Applied at each scrape.
    pub metrics_backend_label: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9901".parse().unwrap(),
            token: None,
            token_file: None,
            socket: None,
            header_read_timeout: Duration::from_secs(5),
            max_connections: 64,
            metrics_backend_label: true,
        }
    }
}

/// Process settings, read once at start (a change needs a restart).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads of the async runtime (0 = one per CPU).
    pub worker_threads: usize,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `padis_lb=debug,info`.
    pub level: String,
    /// Human-readable or JSON lines.
    pub format: LogFormat,
    /// One line per proxied request (target `padis::access`).
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Human, access_log: true }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Plain text for people.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Client-side limits, shared by all L7 listeners.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (request line + headers) accepted, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers accepted; more gets 431.
    pub max_headers: usize,
    /// Largest request body accepted, in bytes (0 = no limit); larger gets 413.
    pub max_body_bytes: u64,
    /// Time a client has to send a complete request head (slowloris guard); then 408 and close.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client may leave its request body without sending a byte of it; then 408, and the backend is not
    /// blamed (a stalled upload is the client's fault).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Keep-alive connections idle this long are closed.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
    /// Most concurrent client connections per listener (0 = no limit).
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per client connection.
    pub h2_max_concurrent_streams: u32,
    /// On SIGTERM, how long in-flight requests get to finish before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most concurrent connections from one client address, over all listeners (IPv6: one /64) (0 = no limit);
    /// more are closed right after accept.
    pub max_conns_per_client: usize,
    /// New connections per second accepted from one client address, over all listeners (IPv6: one /64), with a
    /// burst of one second's worth (0 = no limit); more are closed right after accept.
    pub new_conns_per_client_per_sec: u32,
    /// A client that takes none of its answer for this long (a write that cannot go on) is disconnected.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// Once a connection is being closed gracefully (idle timeout, HTTP/2 GOAWAY, listener removed), how long it
    /// gets before it is closed anyway when no request is in flight (an HTTP/2 client that never acknowledges the
    /// GOAWAY's PING).
    #[serde(with = "humantime_serde")]
    pub close_grace: Duration,
    /// HTTP/2 PING and SETTINGS frames a client may send per second, with a burst of twice that; a client
    /// sending more is disconnected (PING/SETTINGS flood).
    pub h2_max_control_frames_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 100 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            client_idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            h2_max_concurrent_streams: 256,
            shutdown_grace: Duration::from_secs(30),
            max_conns_per_client: 1024,
            new_conns_per_client_per_sec: 512,
            send_timeout: Duration::from_secs(30),
            close_grace: Duration::from_secs(5),
            h2_max_control_frames_per_sec: 100,
        }
    }
}

/// `[tls]`: TLS settings of the node, read at start.
///
/// Session tickets are sealed with keys that rotate every `ticket_key_rotation`, the previous two still
/// accepted; with `share_ticket_keys`, the keys travel encrypted over the `[l4.sync]` channel to every peer, so a
/// client resumes its session on any node. Keys exist in memory only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// How long one session ticket key seals new tickets (tickets live two rotations).
    #[serde(with = "humantime_serde")]
    pub ticket_key_rotation: Duration,
    /// Share ticket keys with the `[l4.sync]` peers (needs `[l4.sync]`).
    pub share_ticket_keys: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { ticket_key_rotation: Duration::from_secs(3600), share_ticket_keys: false }
    }
}

impl TlsSettings {
    /// Checks the rotation bounds and that sharing has a channel.
    pub fn validate(&self, sync: bool, cx: &mut crate::Validator) {
        let r = self.ticket_key_rotation;
        // Tickets live two rotations; TLS 1.3 allows seven days at most (RFC 8446 §4.6.1).
        if r < Duration::from_secs(1) || r > Duration::from_secs(3 * 86_400) || r.subsec_nanos() != 0 {
            cx.error("tls.ticket_key_rotation", format!("{r:?}: whole seconds between 1s and 3 days"));
        }
        if self.share_ticket_keys && !sync {
            cx.error("tls.share_ticket_keys", "keys are shared over the [l4.sync] channel: configure [l4.sync]");
        }
    }
}

/// An L7 listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Unique name, used by routes and metrics.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// TLS termination; plaintext (HTTP/1.1 and h2c prior knowledge) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Serve plain HTTP/1.1 requests on the event-loop fast path, plaintext or over TLS (everything else — h2c,
    /// h2 clients of a TLS listener, upgrades, chunked request bodies, HTTP/1.0, errors — is handed to the
    /// general path). Default true.
    #[serde(default = "yes")]
    pub fast_path: bool,
    /// Only the routes that name this listener in their `listeners` serve it (routes without `listeners` do
    /// not): a listener dedicated to some routes, like a Marathon app's service port.
    #[serde(default, skip_serializing_if = "is_false")]
    pub named_routes_only: bool,
    /// Which source produced this listener (`marathon:/app`); absent for the config file's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// What it serves: HTTP (routes) or a TCP proxy relaying each connection to a backend of `group`.
    #[serde(default)]
    pub mode: ListenerMode,
    /// `mode = "tcp"`: the backend group connections are relayed to (its balance, connect timeout, retries,
    /// health checks and PROXY protocol apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `mode = "tcp"`: a relayed connection with no byte in either direction for this long is closed (default:
    /// the group's `idle_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Accept the PROXY protocol header (v1 or v2) from the `trusted` sources only: the client address (ACLs,
    /// limits, `X-Forwarded-For`) is the one it carries. Other sources are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<AcceptProxy>,
    /// Client source networks allowed to connect (empty: every client). Others are reset right after accept and
    /// counted (`padis_http_connections_rejected_total{reason="acl"}`), before any byte is read: the ACL of a
    /// TCP listener (marathon-lb `BACKEND_NETWORK_ALLOWED_ACL` on a TCP port); on an HTTP listener it comes before
    /// the routes' own `allow_cidrs`. Behind `proxy_protocol`, the client is the one the header announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<ipnet::IpNet>,
}

/// A listener's acceptance of the PROXY protocol (an L4 balancer in front).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AcceptProxy {
    /// Source networks whose connections start with a PROXY header (required from them; any other source is
    /// refused).
    pub trusted: Vec<ipnet::IpNet>,
}

fn yes() -> bool {
    true
}

/// Whether two TCP listening addresses cannot both be bound: the same port, and the same address or one of them
/// the unspecified address of its family (IPv6 listeners are IPv6-only). Port 0 (any free port) never clashes.
pub fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ListenerMode {
    /// HTTP/1.1, h2c and (with `tls`) HTTPS, routed by `[[route]]`.
    #[default]
    Http,
    /// A TCP proxy (HAProxy's `mode tcp`): bytes relayed both ways to one backend of `group` per connection.
    Tcp,
}

/// The PROXY protocol header sent to a backend before a relayed TCP connection's bytes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates offered, by name (empty = all configured certificates).
    #[serde(default)]
    pub certificates: Vec<String>,
    /// Certificate for clients without SNI or with an unknown name (default: the first one).
    #[serde(default)]
    pub default_certificate: Option<String>,
    /// ALPN protocols in preference order.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Client certificate authentication of the listener (none: no certificate is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// Client certificate authentication by server name (SNI), instead of the listener's `client_auth` for
    /// these names; the first entry naming a client's server name applies (exact names before `*.parent`).
    #[serde(default, rename = "by_name", skip_serializing_if = "Vec::is_empty")]
    pub by_name: Vec<NamedClientAuth>,
}

impl ListenerTls {
    /// Whether any connection of the listener may be asked for a client certificate.
    pub fn asks_client_certs(&self) -> bool {
        self.client_auth.is_some() || self.by_name.iter().any(|n| n.client_auth.is_some())
    }
}

/// Client certificate authentication (mutual TLS) of a listener or of some of its server names.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// `required`: a client without a certificate the CAs verify is refused in the handshake; `optional`: a
    /// client may send none (and is served without the subject header), but one it sends must verify.
    pub mode: ClientAuthMode,
    /// PEM bundle of the CAs client certificates must chain to (relative to the config file).
    pub ca: PathBuf,
    /// Certificate revocation lists (PEM or DER, relative to the config file): a revoked certificate is refused.
    /// Once any is given, every certificate of a client's chain must be covered by one (unknown status refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl: Vec<PathBuf>,
    /// Request header carrying the verified certificate's subject (RFC 4514) to the backend. A copy sent by a
    /// client is always removed, on every listener.
    #[serde(default = "default_subject_header")]
    pub subject_header: String,
    /// The CA bundle and CRLs as read by validation (what the data plane uses; compared, so that a reload with
    /// a changed file publishes a new state).
    #[serde(skip)]
    pub material: ClientAuthMaterial,
}

/// The contents of a client authentication's files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAuthMaterial {
    /// CA certificates (`ca`).
    pub ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Revocation lists (all `crl` files).
    pub crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
}

/// Default [`ClientAuth::subject_header`].
pub fn default_subject_header() -> String {
    "X-Client-Cert-Subject".into()
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// No certificate, or one that does not verify: the handshake fails.
    Required,
    /// No certificate: served, without identity. One that does not verify: the handshake fails.
    Optional,
}

/// Client authentication for some server names of a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NamedClientAuth {
    /// Server names (exact, or `*.parent`), lowercase.
    pub names: Vec<String>,
    /// Their client authentication (absent: none, even if the listener has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}

/// A certificate and its key (PEM files; relative paths are relative to the config file).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// Unique name.
    pub name: String,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names served by it; taken from the certificate's subjectAltName when empty.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// An L7 route: requests whose Host and path match go to the route's backend group(s).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name, used in metrics.
    pub name: String,
    /// Listeners this route serves (empty = all).
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Host to match: exact (`api.example.com`) or wildcard (`*.example.com`); any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix to match, on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default = "default_path")]
    pub path: String,
    /// The single backend group (shorthand for a one-entry `split`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Weighted split between backend groups (canary routing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<WeightedGroup>,
    /// Answer plaintext requests with a 308 redirect to https.
    #[serde(default)]
    pub redirect_https: bool,
    /// Port of the https redirect target (default 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_port: Option<u16>,
    /// Which source produced this route (`config`, `marathon:/app`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Match `path` without regard to ASCII case (marathon-lb `PATH = "-i /a"`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub path_ignore_case: bool,
    /// `Strict-Transport-Security` on the backend's responses: `true` (`max-age=15768000`, marathon-lb
    /// `USE_HSTS`) or `{ max_age, include_subdomains, preload }`.
    #[serde(default, deserialize_with = "crate::headers::hsts_setting", skip_serializing_if = "Option::is_none")]
    pub hsts: Option<crate::headers::Hsts>,
    /// HTTP basic authentication required before forwarding (marathon-lb `AUTH`); 401 with the realm otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Client source networks allowed (empty: every client); others get 403 (marathon-lb
    /// `BACKEND_NETWORK_ALLOWED_ACL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// A request path under this prefix is forwarded with the prefix removed (`/p/x` -> `/x`; marathon-lb
    /// `HTTP_BACKEND_PROXYPASS_PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxypass_path: Option<String>,
    /// `Location` / `Content-Location` response headers pointing at a path of this host get this prefix
    /// (marathon-lb `HTTP_BACKEND_REVPROXY_PATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revproxy_path: Option<String>,
    /// Request rate limit (token bucket per client address or for the whole route); over it: 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Header rules: request and response fields removed, set or added, with variables.
    #[serde(default, skip_serializing_if = "crate::headers::HeaderRules::is_empty")]
    pub headers: crate::headers::HeaderRules,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            name: String::new(),
            listeners: Vec::new(),
            host: None,
            path: default_path(),
            group: None,
            split: Vec::new(),
            redirect_https: false,
            https_port: None,
            origin: None,
            path_ignore_case: false,
            hsts: None,
            basic_auth: None,
            allow_cidrs: Vec::new(),
            proxypass_path: None,
            revproxy_path: None,
            rate_limit: None,
            headers: crate::headers::HeaderRules::default(),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A route's request rate limit: a token bucket refilled with `rate` requests per `period`, `burst` deep.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per `period` (at least 1).
    pub rate: u32,
    /// The period of `rate` (default 1 s).
    #[serde(default = "one_second", with = "humantime_serde")]
    pub period: Duration,
    /// Requests taken at once, above which the rate applies (default: `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// One bucket per client address (IPv6: per /64), or one for all clients of the route.
    #[serde(default)]
    pub per: RateLimitKey,
    /// Client networks never limited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<ipnet::IpNet>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

/// What a rate limit's bucket is kept for.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// Each client address (IPv6: its /64).
    #[default]
    Client,
    /// The route: all its clients together.
    Route,
}

/// HTTP basic authentication of a route: a realm and users with crypt(3)-style password hashes, as in an
/// HAProxy userlist (`$2y$`/`$2b$` bcrypt, `$6$` SHA-512, `$5$` SHA-256, `$1$` MD5, DES).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// Realm sent in `WWW-Authenticate`.
    pub realm: String,
    /// Users allowed.
    pub users: Vec<BasicAuthUser>,
}

/// One user of [`BasicAuth`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthUser {
    /// User name.
    pub user: String,
    /// Password hash (crypt(3) format); never written out (the admin API shows the route without it).
    #[serde(default, skip_serializing)]
    pub hash: String,
}

/// The kind of a crypt(3) password hash Padis can verify (`bcrypt`, `sha512`, `sha256`, `md5`, `des`), or `None`
/// for others (yescrypt `$y$`, argon2, Apache `$apr1$`, plain text, …).
pub fn crypt_kind(hash: &str) -> Option<&'static str> {
    let b64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    let fields: Vec<&str> = hash.split('$').collect();
    match fields.as_slice() {
        ["", "2a" | "2b" | "2y", cost, rest] if cost.len() == 2 && rest.len() == 53 && b64(rest) => Some("bcrypt"),
        ["", "6", .., digest] if !digest.is_empty() && b64(digest) => Some("sha512"),
        ["", "5", .., digest] if !digest.is_empty() && b64(digest) => Some("sha256"),
        ["", "1", salt, digest] if salt.len() <= 8 && digest.len() == 22 && b64(digest) => Some("md5"),
        [des] if des.len() == 13 && b64(des) => Some("des"),
        _ => None,
    }
}

fn default_path() -> String {
    "/".into()
}

impl Route {
    /// The route's targets: `split`, or `group` with weight 1.
    pub fn targets(&self) -> Vec<WeightedGroup> {
        if !self.split.is_empty() {
            self.split.clone()
        } else {
            self.group.iter().map(|g| WeightedGroup { group: g.clone(), weight: 1 }).collect()
        }
    }
}

/// One side of a weighted split.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    /// Backend group name.
    pub group: String,
    /// Relative weight (0 = no new requests).
    pub weight: u32,
}

/// A group of interchangeable backends with one balancing algorithm and health policy.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendGroup {
    /// Unique name.
    pub name: String,
    /// Balancing algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// What `maglev` hashes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<HashKey>,
    /// Cookie name used by `sticky` (default `padis_sticky`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_cookie: Option<String>,
    /// Protocol spoken to the backends.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// TCP (+TLS) connect timeout.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout (until the response head arrives); then 504.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Idle pooled connections are closed after this.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Retries on another backend after a connect failure (any method: nothing of the request was sent).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Active health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// TCP listeners: the PROXY protocol header sent to the backend first (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Passive ejection after consecutive failures (on by default).
    #[serde(default = "default_passive")]
    pub passive: Option<PassiveHealth>,
    /// The backends.
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
    /// Which source produced this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_retries() -> u32 {
    2
}
fn default_passive() -> Option<PassiveHealth> {
    Some(PassiveHealth::default())
}

/// Balancing algorithm of a backend group.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two random choices on in-flight requests (weighted).
    LeastRequest,
    /// Maglev consistent hash on `hash_key`.
    Maglev,
    /// A cookie pins the client to the backend chosen first (round robin).
    Sticky,
}

/// What a consistent hash is computed on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's value.
    Header(String),
    /// A cookie's value.
    Cookie(String),
}

impl TryFrom<String> for HashKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "client_ip" {
            Ok(HashKey::ClientIp)
        } else if let Some(h) = s.strip_prefix("header:").filter(|h| !h.is_empty()) {
            Ok(HashKey::Header(h.to_ascii_lowercase()))
        } else if let Some(c) = s.strip_prefix("cookie:").filter(|c| !c.is_empty()) {
            Ok(HashKey::Cookie(c.to_string()))
        } else {
            Err(format!("hash_key `{s}`: expected `client_ip`, `header:NAME` or `cookie:NAME`"))
        }
    }
}

impl From<HashKey> for String {
    fn from(k: HashKey) -> String {
        match k {
            HashKey::ClientIp => "client_ip".into(),
            HashKey::Header(h) => format!("header:{h}"),
            HashKey::Cookie(c) => format!("cookie:{c}"),
        }
    }
}

/// Protocol to the backends.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (with pooled keep-alive connections).
    #[default]
    Http1,
    /// HTTP/2 (h2 over TLS via ALPN, or h2c prior knowledge in plaintext).
    H2,
}

/// TLS towards backends.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// SNI / verified name (default: the backend's IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM CA bundle to verify backends (default: the webpki roots are not shipped; a CA is required unless
    /// `insecure_skip_verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Do not verify the backend certificate (test setups only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM certificate chain presented to backends that ask for one (backend mTLS); with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// An active health check.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP GET or TCP connect.
    #[serde(default)]
    pub kind: HealthKind,
    /// Path requested by HTTP checks.
    #[serde(default = "default_path")]
    pub path: String,
    /// Host header of HTTP checks (default: the backend address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Expected status (default: any 2xx or 3xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// A substring the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// Time between checks.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time a check may take.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive successes that mark a backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that mark a backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Port probed instead of each backend's own (HAProxy `check port`); a backend's `check_port` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// HTTP GET `path`, check status and body.
    #[default]
    Http,
    /// TCP connect only.
    Tcp,
}

/// Passive ejection: a backend failing `consecutive_failures` requests in a row (5xx or connect errors) is
/// ejected for `base_ejection`, doubling on each repeat up to `max_ejection`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Failures in a row that eject.
    pub consecutive_failures: u32,
    /// First ejection time.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Longest ejection time.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// One backend of a group.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Address (its identity: health state follows it across reloads).
    pub addr: SocketAddr,
    /// Relative weight; 0 drains it (no new requests, in-flight ones finish).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Being removed by its source (e.g. a Marathon task being killed): treated as weight 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Port of this backend its group's active health check probes (default: the check's `port`, else `addr`'s);
    /// marathon-lb `BACKEND_HEALTHCHECK_PORT_INDEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_port: Option<u16>,
}

fn default_weight() -> u32 {
    1
}

impl Backend {
    /// Whether the backend may take new requests or flows.
    pub fn accepts_new(&self) -> bool {
        self.weight > 0 && !self.draining
    }
}
