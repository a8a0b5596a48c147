//! `padis status`: a readable view of `/v1/state` from a running daemon's admin API.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use padis_model::Secret;
use serde_json::Value;

/// Where the CLI reaches the admin API.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// TCP, with the bearer token if one is given.
    Tcp {
        /// Address.
        addr: SocketAddr,
        /// Bearer token.
        token: Option<Secret>,
    },
    /// The daemon's Unix socket (`[admin] socket`): no token needed.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { addr, .. } => write!(f, "{addr}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Errors of `padis status`, `padis drain`, `padis reload`.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The admin API is not reachable.
    #[error("cannot reach the admin API at {endpoint}: {source}")]
    Connect {
        /// Address or socket tried.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("admin API request failed: {0}")]
    Http(String),
    /// The API answered with an error status.
    #[error("admin API answered {0}: {1}")]
    Status(u16, String),
    /// The body was not the expected JSON.
    #[error("admin API sent invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// GETs `path` from the admin API.
pub async fn fetch(endpoint: &Endpoint, path: &str) -> Result<Bytes, StatusError> {
    request(http::Method::GET, endpoint, path).await
}

/// POSTs (with an empty body) to `path` of the admin API.
pub async fn post(endpoint: &Endpoint, path: &str) -> Result<Bytes, StatusError> {
    request(http::Method::POST, endpoint, path).await
}

async fn request(method: http::Method, endpoint: &Endpoint, path: &str) -> Result<Bytes, StatusError> {
    let connect_err = |source| StatusError::Connect { endpoint: endpoint.to_string(), source };
    let (sender, host, token) = match endpoint {
        Endpoint::Tcp { addr, token } => {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(connect_err)?;
            (handshake(stream).await?, addr.to_string(), token.as_ref())
        }
        Endpoint::Unix(p) => {
            let stream = tokio::net::UnixStream::connect(p).await.map_err(connect_err)?;
            (handshake(stream).await?, "localhost".to_string(), None)
        }
    };
    let mut sender = sender;
    let mut req = http::Request::builder().method(method).uri(path).header(http::header::HOST, host);
    if let Some(t) = token {
        let mut v = http::HeaderValue::from_str(&format!("Bearer {}", t.expose()))
            .map_err(|_| StatusError::Http("the token contains characters not allowed in a header".into()))?;
        v.set_sensitive(true);
        req = req.header(http::header::AUTHORIZATION, v);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| StatusError::Http(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| StatusError::Http(e.to_string()))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| StatusError::Http(e.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err(StatusError::Status(status.as_u16(), String::from_utf8_lossy(&body).trim().to_string()));
    }
    Ok(body)
}

async fn handshake<S>(stream: S) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, StatusError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| StatusError::Http(e.to_string()))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Renders `/v1/state` as tables.
pub fn render(state: &Value) -> String {
    let mut out = String::new();
    let snap = &state["snapshot"];
    let _ = writeln!(
        out,
        "padis {}  generation {}  config {}",
        state["version"].as_str().unwrap_or("?"),
        state["generation"],
        snap["config_path"].as_str().unwrap_or("-")
    );
    let reload = &state["last_reload"];
    if reload["ok"] == Value::Bool(false) {
        let _ = writeln!(out, "LAST RELOAD FAILED (running config kept):");
        for e in reload["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {}", e.as_str().unwrap_or(""));
        }
    }
    let restart: Vec<&str> =
        reload["restart_required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !restart.is_empty() {
        let _ = writeln!(out, "RESTART REQUIRED for changed settings read at start: {}", restart.join(", "));
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let sources: Vec<Vec<String>> = snap["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let age = s["last_ok_unix_ms"]
                .as_u64()
                .map(|t| format!("{:.1}s ago", now_ms.saturating_sub(t) as f64 / 1000.0))
                .unwrap_or_else(|| "never".into());
            let detail = &state["sources"][text(&s["name"])];
            let rejected = detail["rejected"].as_array().map_or(0, Vec::len);
            let problems = detail["problems"].as_array().map_or(0, Vec::len);
            let word = if s["ok"] != Value::Bool(true) {
                "FAILING".to_string()
            } else if rejected > 0 || problems > 0 {
                format!("DEGRADED ({rejected} rejected, {problems} problems)")
            } else {
                "ok".into()
            };
            vec![text(&s["name"]), word, age, text(&s["last_error"])]
        })
        .collect();
    table(&mut out, "SOURCES", &["SOURCE", "STATE", "LAST GOOD", "ERROR"], &sources);
    let mut rejected = Vec::new();
    for (source, detail) in state["sources"].as_object().into_iter().flatten() {
        for r in detail["rejected"].as_array().into_iter().flatten() {
            rejected.push(vec![
                source.clone(),
                text(&r["kind"]),
                text(&r["name"]),
                text(&r["origin"]),
                text(&r["reason"]),
                text(&r["message"]),
            ]);
        }
    }
    if !rejected.is_empty() {
        table(&mut out, "REJECTED SOURCE ITEMS", &["SOURCE", "KIND", "NAME", "ORIGIN", "REASON", "WHY"], &rejected);
    }
    let st = &snap["state"];
    let listeners: Vec<Vec<String>> = st["listener"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| vec![text(&l["name"]), text(&l["bind"]), if l["tls"].is_null() { "plain".into() } else { "tls".into() }])
        .collect();
    table(&mut out, "LISTENERS", &["NAME", "BIND", "PROTOCOL"], &listeners);
    let routes: Vec<Vec<String>> = st["route"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let targets = match r["split"].as_array() {
                Some(s) => s.iter().map(|w| format!("{}({})", text(&w["group"]), w["weight"])).collect::<Vec<_>>().join(","),
                None => text(&r["group"]),
            };
            vec![
                text(&r["name"]),
                r["host"].as_str().unwrap_or("*").to_string(),
                text(&r["path"]),
                targets,
                if r["redirect_https"] == Value::Bool(true) { "https".into() } else { "".into() },
            ]
        })
        .collect();
    table(&mut out, "ROUTES", &["NAME", "HOST", "PATH", "GROUPS", "REDIRECT"], &routes);
    // Backends with their health, when the health plane reports it.
    let health = &state["planes"]["health"];
    let mut rows = Vec::new();
    for g in st["group"].as_array().into_iter().flatten() {
        for b in g["backend"].as_array().into_iter().flatten() {
            let addr = text(&b["addr"]);
            let h = health
                .as_array()
                .into_iter()
                .flatten()
                .find(|h| text(&h["group"]) == text(&g["name"]) && text(&h["backend"]) == addr);
            let state = if b["draining"] == Value::Bool(true) || b["weight"] == 0 {
                "draining".to_string()
            } else {
                h.map(health_word).unwrap_or_else(|| "unchecked".into())
            };
            rows.push(vec![text(&g["name"]), text(&g["balance"]), addr, b["weight"].to_string(), state]);
        }
    }
    table(&mut out, "BACKENDS", &["GROUP", "BALANCE", "BACKEND", "WEIGHT", "HEALTH"], &rows);
    // Every other plane report, generically.
    if let Some(planes) = state["planes"].as_object() {
        for (name, v) in planes {
            if name == "health" {
                continue;
            }
            let _ = writeln!(out, "\n{}", name.to_uppercase());
            generic(&mut out, v, 1);
        }
    }
    out
}

fn health_word(h: &Value) -> String {
    let word = match (h["usable"].as_bool(), h["up"].as_bool()) {
        (Some(true), _) => "up".to_string(),
        (Some(false), Some(true)) => "ejected".into(),
        (Some(false), _) | (None, Some(false)) => "down".into(),
        (None, Some(true)) => "up".into(),
        _ => "?".into(),
    };
    match h["last_check_error"].as_str() {
        Some(e) if word != "up" => format!("{word} ({e})"),
        _ => word,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(out: &mut String, title: &str, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "\n{title}");
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let _ = write!(s, " {:<w$}", c, w = widths.get(i).copied().unwrap_or(0));
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for r in rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

/// Renders any JSON: objects as `key: value` lines, arrays of objects as tables.
fn generic(out: &mut String, v: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                match val {
                    Value::Object(_) => {
                        let _ = writeln!(out, "{pad}{k}:");
                        generic(out, val, depth + 1);
                    }
                    Value::Array(a) if a.iter().any(|x| x.is_object()) => {
                        let _ = writeln!(out, "{pad}{k}:");
                        generic(out, val, depth + 1);
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{k}: {}", text(val));
                    }
                }
            }
        }
        Value::Array(a) if a.iter().all(|x| x.is_object()) && !a.is_empty() => {
            let mut cols: Vec<String> = Vec::new();
            for x in a {
                for (k, val) in x.as_object().into_iter().flatten() {
                    if !val.is_object() && !val.is_array() && !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            let rows: Vec<Vec<String>> = a.iter().map(|x| cols.iter().map(|c| text(&x[c])).collect()).collect();
            let header: Vec<String> = cols.iter().map(|c| c.to_uppercase()).collect();
            let mut t = String::new();
            table(&mut t, "", &header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
            for l in t.lines().skip(2) {
                let _ = writeln!(out, "{pad}{}", l.trim_start());
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", text(other));
        }
    }
}
