//! Connections to backends: one pooled hyper client per group transport (protocol, TLS, timeouts), reused across
//! snapshots while the group's transport settings do not change, so keep-alive connections survive reloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use padis_model::{BackendGroup, UpstreamProtocol, UpstreamTls};
use rustls_pki_types::ServerName;

use crate::body::UpstreamBody;
use crate::error::L7Error;
use crate::tls;

/// The pooled client type.
pub(crate) type UpstreamClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// What decides whether a group's client can be kept across snapshots.
#[derive(Clone, PartialEq)]
struct TransportKey {
    protocol: UpstreamProtocol,
    tls: Option<UpstreamTls>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// A group's transport and request policy.
pub(crate) struct Upstream {
    key: TransportKey,
    /// The pooled client.
    pub client: UpstreamClient,
    /// `https` or `http`.
    pub https: bool,
    /// HTTP/2 to backends.
    pub h2: bool,
    /// Time until the response head.
    pub request_timeout: Duration,
    /// Retries after connect failures.
    pub retries: u32,
    /// Group name (metrics).
    pub group: Arc<str>,
}

fn key_of(g: &BackendGroup) -> TransportKey {
    TransportKey {
        protocol: g.protocol,
        tls: g.tls.clone(),
        connect_timeout: g.connect_timeout,
        idle_timeout: g.idle_timeout,
    }
}

fn build_client(g: &BackendGroup) -> Result<UpstreamClient, L7Error> {
    let h2 = g.protocol == UpstreamProtocol::H2;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(g.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let tls_cfg = match &g.tls {
        Some(t) => tls::client_config(t)?,
        None => tls::client_config(&UpstreamTls { insecure_skip_verify: true, ..Default::default() })?,
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_cfg).https_or_http();
    let builder = match g.tls.as_ref().and_then(|t| t.server_name.as_deref()) {
        Some(name) => {
            let sn = ServerName::try_from(name.to_string())
                .map_err(|e| L7Error::Tls(format!("group `{}`: server_name `{name}`: {e}", g.name)))?;
            builder.with_server_name_resolver(FixedServerNameResolver::new(sn))
        }
        None => builder,
    };
    let connector = if h2 { builder.enable_http2().wrap_connector(http) } else { builder.enable_http1().wrap_connector(http) };
    let mut cb = Client::builder(TokioExecutor::new());
    cb.pool_idle_timeout(g.idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(1024)
        .set_host(true)
        .http2_only(h2);
    Ok(cb.build(connector))
}

/// Builds the upstreams of every group, reusing `previous` clients whose transport did not change. A group
/// whose TLS settings cannot be loaded is left out (its requests get 503) and logged.
pub(crate) fn build_all(
    groups: &[BackendGroup],
    previous: Option<&HashMap<Arc<str>, Arc<Upstream>>>,
) -> HashMap<Arc<str>, Arc<Upstream>> {
    let mut out = HashMap::with_capacity(groups.len());
    for g in groups {
        let key = key_of(g);
        let prev = previous.and_then(|p| p.get(g.name.as_str())).filter(|u| u.key == key);
        let client = match prev {
            Some(u) => u.client.clone(),
            None => match build_client(g) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(group = %g.name, error = %e, "backend group transport not usable");
                    continue;
                }
            },
        };
        let name: Arc<str> = g.name.as_str().into();
        out.insert(
            name.clone(),
            Arc::new(Upstream {
                key,
                client,
                https: g.tls.is_some(),
                h2: g.protocol == UpstreamProtocol::H2,
                request_timeout: g.request_timeout,
                retries: g.retries,
                group: name,
            }),
        );
    }
    out
}
