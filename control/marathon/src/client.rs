//! HTTP(S) client for Marathon's REST API and event stream: several URLs, leader following (redirects, 503 from
//! non-leaders, dead members skipped), basic or bearer auth, TLS with a configurable CA, size and time limits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use padis_model::marathon::{MarathonAuth, MarathonConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tracing::{debug, warn};

use crate::apps::{Apps, ParseCache};
use crate::MarathonError;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// A Marathon client following the leader.
pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    urls: Vec<String>,
    /// Base URL that answered last (configured or learned from a redirect).
    current: Mutex<Option<String>>,
    auth: Option<HeaderValue>,
    timeout: Duration,
    max_body: usize,
}

fn config_err(m: impl Into<String>) -> MarathonError {
    MarathonError::Config(m.into())
}

fn auth_header(a: &MarathonAuth) -> Result<Option<HeaderValue>, MarathonError> {
    let env =
        |name: &str| std::env::var(name).map_err(|_| config_err(format!("environment variable {name} is not set")));
    let value = if let Some(user) = &a.user {
        let password = match (&a.password, &a.password_env) {
            (Some(p), _) => p.expose().to_string(),
            (None, Some(e)) => env(e)?,
            (None, None) => return Err(config_err("auth.user needs a password")),
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {token}")
    } else {
        let token = match (&a.token, &a.token_env, &a.token_file) {
            (Some(t), _, _) => t.expose().to_string(),
            (None, Some(e), _) => env(e)?,
            (None, None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| config_err(format!("auth.token_file {}: {e}", f.display())))?
                .trim()
                .to_string(),
            _ => return Ok(None),
        };
        format!("Bearer {token}")
    };
    let mut h =
        HeaderValue::from_str(&value).map_err(|_| config_err("auth: credentials contain invalid characters"))?;
    h.set_sensitive(true);
    Ok(Some(h))
}

fn tls_config(cfg: &MarathonConfig) -> Result<rustls::ClientConfig, MarathonError> {
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .map_err(|e| config_err(format!("ca {}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| config_err(format!("ca {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(config_err(format!("ca {}: no certificate", path.display())));
            }
            for c in certs {
                roots.add(c).map_err(|e| config_err(format!("ca {}: {e}", path.display())))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for c in native.certs {
                // Unparseable system certificates are skipped, as browsers do.
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `scheme://authority[/prefix]` with no trailing slash.
fn normalize(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// The base URL a redirect points to: the location minus the requested path (and query).
fn base_of(location: &Uri, path: &str) -> Option<String> {
    let scheme = location.scheme_str()?;
    let authority = location.authority()?;
    let req_path = path.split('?').next().unwrap_or(path);
    let prefix = location.path().strip_suffix(req_path).unwrap_or("");
    Some(normalize(&format!("{scheme}://{authority}{prefix}")))
}

impl Client {
    /// A client for `cfg.urls`.
    pub fn new(cfg: &MarathonConfig) -> Result<Client, MarathonError> {
        if cfg.urls.is_empty() {
            return Err(config_err("no URL"));
        }
        for u in &cfg.urls {
            u.parse::<Uri>().map_err(|e| config_err(format!("url `{u}`: {e}")))?;
        }
        let auth = match &cfg.auth {
            Some(a) => auth_header(a)?,
            None => None,
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(cfg)?)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HyperClient::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(Client {
            http,
            urls: cfg.urls.iter().map(|u| normalize(u)).collect(),
            current: Mutex::new(None),
            auth,
            timeout: cfg.request_timeout,
            max_body: cfg.max_body_bytes,
        })
    }

    /// The base URL that answered last.
    pub fn current(&self) -> Option<String> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    fn candidates(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(self.urls.len() + 1);
        if let Some(c) = self.current() {
            out.push(c);
        }
        for u in &self.urls {
            if !out.contains(u) {
                out.push(u.clone());
            }
        }
        out
    }

    fn set_current(&self, base: Option<String>) {
        if let Ok(mut c) = self.current.lock() {
            *c = base;
        }
    }

    /// GETs `path` from the leader: tries the last good URL first, then the others; follows redirects; skips
    /// members answering 503 (not the leader) or not answering. Returns the response head (2xx only).
    async fn get(&self, path: &str, accept: &'static str) -> Result<Response<Incoming>, MarathonError> {
        let mut last = MarathonError::NoLeader("no URL tried".into());
        for start in self.candidates() {
            let mut base = start;
            let mut hops = 0;
            loop {
                let url = format!("{base}{path}");
                let uri: Uri = match url.parse() {
                    Ok(u) => u,
                    Err(e) => {
                        last = config_err(format!("url `{url}`: {e}"));
                        break;
                    }
                };
                let mut req = Request::get(uri).header(ACCEPT, accept);
                if let Some(a) = &self.auth {
                    req = req.header(AUTHORIZATION, a.clone());
                }
                let req = req.body(Empty::new()).map_err(|e| config_err(e.to_string()))?;
                let resp = match tokio::time::timeout(self.timeout, self.http.request(req)).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        debug!(%url, error = %e, "marathon unreachable");
                        last = MarathonError::Unreachable { url, message: error_chain(&e) };
                        break;
                    }
                    Err(_) => {
                        last = MarathonError::Unreachable { url, message: "timed out".into() };
                        break;
                    }
                };
                let status = resp.status();
                if status.is_success() {
                    self.set_current(Some(base));
                    return Ok(resp);
                }
                if status.is_redirection() {
                    let target = resp
                        .headers()
                        .get(LOCATION)
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| resolve(&url, l))
                        .and_then(|l| base_of(&l, path));
                    match target {
                        Some(next) if hops < MAX_REDIRECTS => {
                            debug!(from = %base, to = %next, "marathon redirect to the leader");
                            hops += 1;
                            base = next;
                            continue;
                        }
                        _ => {
                            last = MarathonError::NoLeader(format!("{url}: redirect loop or bad Location"));
                            break;
                        }
                    }
                }
                if status == StatusCode::SERVICE_UNAVAILABLE || status.is_server_error() {
                    last = MarathonError::NoLeader(format!("{url}: HTTP {}", status.as_u16()));
                    break;
                }
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    warn!(%url, status = status.as_u16(), "marathon rejected the credentials");
                }
                return Err(MarathonError::Status { url, status: status.as_u16() });
            }
        }
        self.set_current(None);
        Err(last)
    }

    /// `GET /v2/apps?embed=apps.tasks`, parsed (on a blocking thread: 10,000 tasks are several megabytes).
    /// `cache` holds the apps of the previous body: unchanged apps are not parsed again.
    pub async fn apps(&self, cache: Arc<Mutex<ParseCache>>) -> Result<Apps, MarathonError> {
        let path = "/v2/apps?embed=apps.tasks";
        let resp = self.get(path, "application/json").await?;
        let url = format!("{}{path}", self.current().unwrap_or_default());
        let limit = self.max_body;
        let body = tokio::time::timeout(self.timeout, Limited::new(resp.into_body(), limit).collect())
            .await
            .map_err(|_| MarathonError::Unreachable { url: url.clone(), message: "body timed out".into() })?
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    MarathonError::TooLarge { url: url.clone(), limit }
                } else {
                    MarathonError::Unreachable { url: url.clone(), message: e.to_string() }
                }
            })?
            .to_bytes();
        let parsed = tokio::task::spawn_blocking(move || {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            Apps::from_json_reusing(&body, &mut cache)
        })
        .await
        .map_err(|e| MarathonError::Unreachable { url: url.clone(), message: format!("parser task: {e}") })?;
        parsed.map_err(|source| MarathonError::Json { url, source })
    }

    /// Opens `GET /v2/events` (SSE) with the given event type filter.
    pub async fn events(&self, types: &[&str]) -> Result<Response<Incoming>, MarathonError> {
        let query: Vec<String> = types.iter().map(|t| format!("event_type={t}")).collect();
        let path = format!("/v2/events?{}", query.join("&"));
        self.get(&path, "text/event-stream").await
    }
}

/// Resolves a Location header against the request URL.
fn resolve(url: &str, location: &str) -> Option<Uri> {
    let loc: Uri = location.parse().ok()?;
    if loc.scheme().is_some() {
        return Some(loc);
    }
    let base: Uri = url.parse().ok()?;
    let abs = format!("{}://{}{}", base.scheme_str()?, base.authority()?, loc.path_and_query()?.as_str());
    abs.parse().ok()
}

/// An error with its causes (hyper's errors hide the interesting part in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_bases() {
        let l: Uri = "http://m2:8080/v2/apps?embed=apps.tasks".parse().unwrap();
        assert_eq!(base_of(&l, "/v2/apps?embed=apps.tasks").as_deref(), Some("http://m2:8080"));
        let l: Uri = "https://m2/marathon/v2/events?event_type=x".parse().unwrap();
        assert_eq!(base_of(&l, "/v2/events?event_type=x").as_deref(), Some("https://m2/marathon"));
        assert_eq!(
            resolve("http://a:1/v2/apps", "/v2/apps").map(|u| u.to_string()).as_deref(),
            Some("http://a:1/v2/apps")
        );
    }
}
