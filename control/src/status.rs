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

/// Renders `/v1/state` as tables: one per section, columns aligned (an empty cell keeps its column), a plane
/// that is not configured as one `disabled` line.
pub fn render(state: &Value) -> String {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    render_at(state, now_ms)
}

/// [`render`] with the current time given (Unix ms), for the ages it shows.
pub fn render_at(state: &Value, now_ms: u64) -> String {
    let mut out = String::new();
    let snap = &state["snapshot"];
    let _ = writeln!(
        out,
        "padis {}  generation {}  config {}",
        state["version"].as_str().unwrap_or("?"),
        state["generation"],
        snap["config_path"].as_str().unwrap_or("-")
    );
    reload_section(&mut out, &state["last_reload"], now_ms);
    sources_section(&mut out, state, now_ms);
    let st = &snap["state"];
    l7_sections(&mut out, st, &state["planes"]["health"]);
    let planes = &state["planes"];
    l7_binds(&mut out, &planes["l7"]);
    l4_section(&mut out, &planes["l4"]);
    dns_section(&mut out, &planes["dns"]);
    routing_section(&mut out, &planes["routing"]);
    marathon_section(&mut out, &planes["marathon"]);
    // A plane this version of the CLI does not know yet: its scalar fields as a table, never a raw dump.
    for (name, v) in planes.as_object().into_iter().flatten() {
        if ["health", "l7", "l4", "dns", "routing", "marathon"].contains(&name.as_str()) {
            continue;
        }
        let rows = flatten(v, "");
        Table::new(&["FIELD", "VALUE"]).rows(rows).print(&mut out, &name.to_uppercase());
    }
    out
}

fn reload_section(out: &mut String, reload: &Value, now_ms: u64) {
    let when = reload["at_unix"].as_f64().map(|t| age(now_ms, (t * 1000.0) as u64)).unwrap_or_default();
    if reload["ok"] == Value::Bool(false) {
        let _ = writeln!(out, "LAST RELOAD FAILED {when} (running config kept):");
        for e in reload["errors"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {}", e.as_str().unwrap_or(""));
        }
    } else if reload["ok"] == Value::Bool(true) {
        let _ = writeln!(out, "last reload ok {when}");
    }
    let restart: Vec<&str> =
        reload["restart_required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !restart.is_empty() {
        let _ = writeln!(out, "RESTART REQUIRED for changed settings read at start: {}", restart.join(", "));
    }
}

fn sources_section(out: &mut String, state: &Value, now_ms: u64) {
    let mut t = Table::new(&["SOURCE", "STATE", "LAST GOOD", "ERROR"]);
    for s in state["snapshot"]["sources"].as_array().into_iter().flatten() {
        let last_good = s["last_ok_unix_ms"].as_u64().map(|t| age(now_ms, t)).unwrap_or_else(|| "never".into());
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
        t.row(vec![text(&s["name"]), word, last_good, text(&s["last_error"])]);
    }
    t.print(out, "SOURCES");
    let mut t = Table::new(&["SOURCE", "KIND", "NAME", "ORIGIN", "REASON", "WHY"]);
    for (source, detail) in state["sources"].as_object().into_iter().flatten() {
        for r in detail["rejected"].as_array().into_iter().flatten() {
            t.row(vec![
                source.clone(),
                text(&r["kind"]),
                text(&r["name"]),
                text(&r["origin"]),
                text(&r["reason"]),
                text(&r["message"]),
            ]);
        }
    }
    if !t.rows.is_empty() {
        t.print(out, "REJECTED SOURCE ITEMS");
    }
}

fn l7_sections(out: &mut String, st: &Value, health: &Value) {
    let mut t = Table::new(&["NAME", "BIND", "PROTOCOL"]);
    for l in st["listener"].as_array().into_iter().flatten() {
        let proto = match (l["mode"].as_str(), l["tls"].is_null()) {
            (Some("tcp"), _) => "tcp",
            (_, true) => "http",
            (_, false) => "https",
        };
        t.row(vec![text(&l["name"]), text(&l["bind"]), proto.into()]);
    }
    t.print(out, "LISTENERS");
    let mut t = Table::new(&["NAME", "HOST", "PATH", "GROUPS", "REDIRECT"]);
    for r in st["route"].as_array().into_iter().flatten() {
        let targets = match r["split"].as_array() {
            Some(s) => {
                s.iter().map(|w| format!("{}({})", text(&w["group"]), w["weight"])).collect::<Vec<_>>().join(",")
            }
            None => text(&r["group"]),
        };
        let redirect = if r["redirect_https"] == Value::Bool(true) { "https" } else { "" };
        t.row(vec![
            text(&r["name"]),
            r["host"].as_str().unwrap_or("*").to_string(),
            text(&r["path"]),
            targets,
            redirect.into(),
        ]);
    }
    t.print(out, "ROUTES");
    // Backends with their health, when the health plane reports it.
    let mut t = Table::new(&["GROUP", "BALANCE", "BACKEND", "WEIGHT", "HEALTH"]);
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
            t.row(vec![text(&g["name"]), text(&g["balance"]), addr, text(&b["weight"]), state]);
        }
    }
    t.print(out, "BACKENDS");
}

/// Listeners that could not be bound (a port another process holds): retried with each new snapshot.
fn l7_binds(out: &mut String, l7: &Value) {
    let failures = l7["bind_failures"].as_object();
    if let Some(f) = failures.filter(|f| !f.is_empty()) {
        let mut t = Table::new(&["LISTENER", "ERROR"]);
        for (name, e) in f {
            t.row(vec![name.clone(), text(e)]);
        }
        t.print(out, "LISTENERS NOT BOUND (retried with each new state)");
    }
}

fn l4_section(out: &mut String, l4: &Value) {
    if l4.is_null() || l4["enabled"] == Value::Bool(false) {
        let _ = writeln!(out, "\nL4 (XDP): disabled (no [l4] interfaces)");
        return;
    }
    if let Some(s) = l4["state"].as_str() {
        let _ = writeln!(out, "\nL4 (XDP): {s}");
        return;
    }
    let ifaces: Vec<String> = l4["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| format!("{} ({})", text(&i[0]), text(&i[1])))
        .collect();
    let _ = writeln!(
        out,
        "\nL4 (XDP): {}  generation {}  programming ok {} failed {}{}",
        if ifaces.is_empty() { "not attached".to_string() } else { ifaces.join(", ") },
        l4["generation"],
        l4["applies_ok"],
        l4["applies_failed"],
        l4["last_error"].as_str().map(|e| format!("  LAST ERROR: {e}")).unwrap_or_default()
    );
    let mut vips = Table::new(&["VIP", "ADDRESS", "TABLE", "BACKENDS", "PACKETS", "BYTES"]).numeric(&[2, 4, 5]);
    let mut backends =
        Table::new(&["VIP", "BACKEND", "WEIGHT", "USABLE", "IN TABLE", "MAC", "PACKETS", "BYTES"]).numeric(&[2, 6, 7]);
    for v in l4["vips"].as_array().into_iter().flatten() {
        let bs = v["backends"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let in_table = bs.iter().filter(|b| b["in_table"] == Value::Bool(true)).count();
        vips.row(vec![
            text(&v["name"]),
            text(&v["vip"]),
            text(&v["table_size"]),
            format!("{in_table}/{}", bs.len()),
            text(&v["packets"]),
            text(&v["bytes"]),
        ]);
        for b in bs {
            backends.row(vec![
                text(&v["name"]),
                text(&b["addr"]),
                text(&b["weight"]),
                yes_no(&b["usable"]),
                yes_no(&b["in_table"]),
                text(&b["mac"]),
                text(&b["packets"]),
                text(&b["bytes"]),
            ]);
        }
    }
    vips.print(out, "L4 VIPS");
    backends.print(out, "L4 BACKENDS (counters over all VIPs)");
    let mut counters = Table::new(&["EVENT", "PACKETS", "BYTES"]).numeric(&[1, 2]);
    for (name, c) in l4["stats"].as_object().into_iter().flatten() {
        counters.row(vec![name.clone(), text(&c["packets"]), text(&c["bytes"])]);
    }
    counters.print(out, "L4 COUNTERS");
    let sync = &l4["sync"];
    if sync.is_object() {
        let _ = writeln!(
            out,
            "\nL4 CONNECTION-TABLE SYNC: node {}  {}  sent {} received {} inserted {} auth failures {} malformed {}",
            text(&sync["node"]),
            if sync["ready"] == Value::Bool(true) { "ready" } else { "NOT READY (VIPs not announced)" },
            sync["records_sent"],
            sync["records_received"],
            sync["records_inserted"],
            sync["auth_failures"],
            sync["malformed"]
        );
        let mut t = Table::new(&["PEER", "UP", "LAST HELLO", "NODE"]);
        for p in sync["peers"].as_array().into_iter().flatten() {
            let hello = p["last_hello_ms"].as_u64().map(|ms| format!("{:.1}s ago", ms as f64 / 1000.0));
            t.row(vec![text(&p["addr"]), yes_no(&p["up"]), hello.unwrap_or_else(|| "never".into()), text(&p["node"])]);
        }
        t.print(out, "L4 SYNC PEERS");
    }
}

fn dns_section(out: &mut String, dns: &Value) {
    let zones = dns["zones"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let listen: Vec<String> = dns["listen"].as_array().into_iter().flatten().map(text).collect();
    if let Some(s) = dns["state"].as_str() {
        let _ = writeln!(out, "\nDNS: {s}");
        return;
    }
    if zones.is_empty() && listen.is_empty() {
        let _ = writeln!(out, "\nDNS: disabled (no [dns] zones)");
        return;
    }
    let _ = writeln!(out, "\nDNS: listening on {}", if listen.is_empty() { "-".into() } else { listen.join(", ") });
    let mut t = Table::new(&["ZONE", "STATE", "SERIAL", "RECORDS", "NAMES", "SOURCE", "PROBLEM"]).numeric(&[2, 3, 4]);
    for z in zones {
        let source = match (z["generated"] == Value::Bool(true), z["file"].as_str()) {
            (true, Some(f)) => format!("generated + {f}"),
            (true, None) => "generated".into(),
            (false, Some(f)) => f.to_string(),
            (false, None) => String::new(),
        };
        let problem = [z["error"].as_str(), z["serial_note"].as_str()].into_iter().flatten().collect::<Vec<_>>();
        t.row(vec![
            text(&z["name"]),
            text(&z["state"]),
            text(&z["serial"]),
            text(&z["records"]),
            text(&z["names"]),
            source,
            problem.join("; "),
        ]);
    }
    t.print(out, "DNS ZONES");
    let mut t = Table::new(&["KIND", "MESSAGE"]);
    for e in dns["errors"].as_array().into_iter().flatten() {
        t.row(vec!["error".into(), text(e)]);
    }
    for c in dns["collisions"].as_array().into_iter().flatten() {
        t.row(vec!["collision".into(), text(c)]);
    }
    if !t.rows.is_empty() {
        t.print(out, "DNS PROBLEMS");
    }
}

fn routing_section(out: &mut String, routing: &Value) {
    if routing.is_null() {
        let _ = writeln!(out, "\nROUTING (BGP/OSPF): disabled (no [bgp] or [ospf])");
        return;
    }
    if let Some(s) = routing["state"].as_str() {
        let _ = writeln!(out, "\nROUTING (BGP/OSPF): {s}");
        return;
    }
    let peers = routing["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if peers.is_empty() {
        let _ = writeln!(out, "\nBGP: disabled (no [bgp] peers)");
    } else {
        let mut t =
            Table::new(&["PEER", "AS", "STATE", "UP FOR", "ROUTES", "HOLD", "FLAPS", "DRAINING", "BFD", "LAST ERROR"])
                .numeric(&[4, 6]);
        for p in peers {
            let bfd = if p["bfd"].is_object() {
                format!("{} (router {})", text(&p["bfd"]["state"]), text(&p["bfd"]["remote_state"]))
            } else {
                String::new()
            };
            t.row(vec![
                text(&p["address"]),
                text(&p["asn"]),
                text(&p["state"]),
                p["uptime_secs"].as_u64().map(duration).unwrap_or_default(),
                text(&p["routes_announced"]),
                p["hold_time_secs"].as_u64().map(|h| format!("{h}s")).unwrap_or_default(),
                text(&p["flaps"]),
                if p["draining"] == Value::Bool(true) { "yes".into() } else { String::new() },
                bfd,
                text(&p["last_error"]),
            ]);
        }
        t.print(out, "BGP PEERS");
    }
    let ospf = &routing["ospf"];
    if ospf.is_object() {
        let _ = writeln!(
            out,
            "\nOSPF: {} kernel routes installed{}",
            ospf["routes_installed"],
            ospf["last_error"].as_str().map(|e| format!("  LAST ERROR: {e}")).unwrap_or_default()
        );
    }
}

fn marathon_section(out: &mut String, m: &Value) {
    if m.is_null() {
        let _ = writeln!(out, "\nMARATHON: disabled (no [marathon])");
        return;
    }
    let _ = writeln!(
        out,
        "\nMARATHON: {}  groups {}  routes {}  services {}  VIPs {}",
        if m["status"]["ok"] == Value::Bool(true) {
            "ok".to_string()
        } else {
            format!("FAILING: {}", text(&m["status"]["last_error"]))
        },
        m["groups"],
        m["routes"],
        m["services"],
        m["vips"]
    );
    let mut t = Table::new(&["APP", "PROBLEM"]);
    for p in m["problems"].as_array().into_iter().flatten() {
        match p {
            Value::Object(_) => {
                let app = [&p["app"], &p["app_id"], &p["id"]].into_iter().find(|v| !v.is_null()).map(text);
                let what = [&p["message"], &p["problem"], &p["error"]].into_iter().find(|v| !v.is_null()).map(text);
                t.row(vec![app.unwrap_or_default(), what.unwrap_or_else(|| p.to_string())]);
            }
            other => t.row(vec![String::new(), text(other)]),
        }
    }
    if !t.rows.is_empty() {
        t.print(out, "MARATHON APP PROBLEMS");
    }
}

/// `(field path, value)` rows of every scalar in `v` (arrays by index).
fn flatten(v: &Value, prefix: &str) -> Vec<Vec<String>> {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => m.iter().flat_map(|(k, x)| flatten(x, &join(k))).collect(),
        Value::Array(a) if !a.is_empty() => {
            a.iter().enumerate().flat_map(|(i, x)| flatten(x, &join(&i.to_string()))).collect()
        }
        other => vec![vec![prefix.to_string(), text(other)]],
    }
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

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => String::new(),
    }
}

/// `"12.3s ago"` from a Unix time in ms.
fn age(now_ms: u64, then_ms: u64) -> String {
    format!("{:.1}s ago", now_ms.saturating_sub(then_ms) as f64 / 1000.0)
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A table with a header: every column as wide as its widest cell, numbers right-aligned, empty cells kept.
struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            right: vec![false; header.len()],
            rows: Vec::new(),
        }
    }

    /// Right-aligns the columns `cols` (counters).
    fn numeric(mut self, cols: &[usize]) -> Table {
        for &c in cols {
            if let Some(r) = self.right.get_mut(c) {
                *r = true;
            }
        }
        self
    }

    fn row(&mut self, mut cells: Vec<String>) {
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    fn rows(mut self, rows: Vec<Vec<String>>) -> Table {
        for r in rows {
            self.row(r);
        }
        self
    }

    fn print(&self, out: &mut String, title: &str) {
        let _ = writeln!(out, "\n{title}");
        if self.rows.is_empty() {
            let _ = writeln!(out, "  (none)");
            return;
        }
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            // Two spaces before each column (a header of two words stays readable as one).
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                // One line per row: a line break inside a cell (an error message) would break the columns.
                let c = c.replace(['\n', '\r', '\t'], " ");
                if self.right[i] {
                    let _ = write!(s, "  {:>w$}", c, w = widths[i]);
                } else {
                    let _ = write!(s, "  {:<w$}", c, w = widths[i]);
                }
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(&self.header));
        for r in &self.rows {
            let _ = writeln!(out, "{}", line(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW_MS: u64 = 1_700_000_010_000;

    fn full_state() -> Value {
        json!({
            "version": "0.1.0",
            "generation": 7,
            "snapshot": {
                "config_path": "/etc/padis/padis.toml",
                "sources": [{"name": "file", "ok": true, "last_ok_unix_ms": 1_700_000_000_000u64, "last_error": null}],
                "state": {
                    "listener": [
                        {"name": "web", "bind": "0.0.0.0:80"},
                        {"name": "tls", "bind": "0.0.0.0:443", "tls": {}},
                    ],
                    "route": [{"name": "r", "group": "g", "path": null}],
                    "group": [
                        {"name": "g", "balance": "round_robin", "backend": [{"addr": "10.0.0.1:80", "weight": 1}]},
                    ],
                },
            },
            "last_reload": {"ok": true, "at_unix": 1_700_000_005.0, "errors": [], "restart_required": []},
            "sources": {},
            "planes": {
                "health": [{"group": "g", "backend": "10.0.0.1:80", "up": false, "usable": false,
                            "last_check_error": "connection refused"}],
                "l4": {
                    "enabled": true, "interfaces": [["eth0", "native"]], "generation": 7, "applies_ok": 3,
                    "applies_failed": 0, "last_error": null,
                    "vips": [{"name": "web-vip", "vip": "192.0.2.1:80/tcp", "table_size": 65537, "packets": 1234,
                              "bytes": 99999, "backends": [
                                {"addr": "10.0.0.1", "weight": 1, "usable": true, "in_table": true, "mac": null,
                                 "packets": 1234, "bytes": 99999},
                                {"addr": "10.0.0.2", "weight": 1, "usable": false, "in_table": false,
                                 "mac": "02:00:00:00:00:02", "packets": 0, "bytes": 0}]}],
                    "stats": {"ct_hit": {"packets": 5, "bytes": 300}, "forwarded": {"packets": 1234, "bytes": 99999}},
                },
                "dns": {
                    "listen": ["0.0.0.0:53"],
                    "zones": [
                        {"name": "example.com", "state": "ok", "serial": 2024010101u32, "records": 12, "names": 5,
                         "generated": false, "file": "example.com.zone", "error": null, "serial_note": null},
                        {"name": "svc.example.com", "state": "stale", "serial": 3, "records": 4, "names": 2,
                         "generated": true, "file": null, "error": "line 3: bad TTL\nsecond line", "serial_note": null},
                    ],
                    "collisions": [], "errors": [],
                },
                "routing": {"peers": [
                    {"address": "192.0.2.254", "asn": 65000, "state": "established", "uptime_secs": 3725,
                     "flaps": 1, "routes_announced": 2, "hold_time_secs": 90, "draining": false, "last_error": null,
                     "bfd": {"state": "up", "remote_state": "up"}},
                    {"address": "192.0.2.253", "asn": 65000, "state": "active", "uptime_secs": null, "flaps": 0,
                     "routes_announced": 0, "hold_time_secs": null, "draining": false,
                     "last_error": "connection refused"},
                ], "ospf": null},
            },
        })
    }

    /// The column where each header word starts, for a table whose headers are single words.
    fn starts(line: &str) -> Vec<usize> {
        let b = line.as_bytes();
        (0..b.len()).filter(|&i| b[i] != b' ' && (i == 0 || b[i - 1] == b' ')).collect()
    }

    fn block<'a>(out: &'a str, title: &str) -> Vec<&'a str> {
        let mut lines = out.lines().skip_while(|l| *l != title).skip(1);
        let mut v = Vec::new();
        for l in lines.by_ref() {
            if l.is_empty() {
                break;
            }
            v.push(l);
        }
        v
    }

    #[test]
    fn every_plane_is_a_table_and_nothing_is_dumped() {
        let out = render_at(&full_state(), NOW_MS);
        for needle in [
            "generation 7",
            "last reload ok 5.0s ago",
            "L4 (XDP): eth0 (native)  generation 7  programming ok 3 failed 0",
            "L4 VIPS",
            "DNS ZONES",
            "BGP PEERS",
            "2024010101",
            "1h2m",
            "up (router up)",
            "down (connection refused)",
            "MARATHON: disabled (no [marathon])",
        ] {
            assert!(out.contains(needle), "missing {needle:?} in\n{out}");
        }
        // No JSON anywhere: every value went into a cell.
        assert!(!out.contains('{') && !out.contains("\":"), "{out}");
        // A line break inside a cell does not break the table.
        assert_eq!(block(&out, "DNS ZONES").len(), 3, "{out}");
    }

    #[test]
    fn columns_stay_aligned_with_empty_cells() {
        let out = render_at(&full_state(), NOW_MS);
        // L4 backends: one has no MAC (empty cell in the middle); the counters after it stay in their columns.
        let rows = block(&out, "L4 BACKENDS (counters over all VIPs)");
        assert_eq!(rows.len(), 3, "{out}");
        let header = rows[0];
        let col = |name: &str| header.find(name).unwrap();
        for r in &rows[1..] {
            assert_eq!(r.len(), header.len(), "rows end with the right-aligned BYTES column:\n{out}");
            assert_eq!(&r[col("BACKEND")..col("BACKEND") + 7], "10.0.0.", "{out}");
        }
        assert!(rows[1][col("MAC")..col("PACKETS")].trim().is_empty(), "{out}");
        // BGP peers: a peer with no uptime, no hold time and no BFD keeps every later column in place.
        let rows = block(&out, "BGP PEERS");
        let h = starts(rows[0]);
        let last_error = rows[0].find("LAST ERROR").unwrap();
        assert_eq!(rows[2].find("connection refused"), Some(last_error), "{out}");
        assert_eq!(starts(rows[1])[..3], h[..3], "{out}");
        assert_eq!(starts(rows[2])[..3], h[..3], "{out}");
    }

    #[test]
    fn planes_not_configured_say_disabled_in_one_line() {
        let state = json!({
            "version": "0.1.0", "generation": 1,
            "snapshot": {"sources": [], "state": {}},
            "last_reload": {"ok": false, "at_unix": 1_700_000_009.0, "errors": ["padis.toml:3:1: x: bad"]},
            "sources": {},
            "planes": {"health": [], "l4": {"enabled": false}, "dns": {"listen": [], "zones": []}},
        });
        let out = render_at(&state, NOW_MS);
        for line in [
            "L4 (XDP): disabled (no [l4] interfaces)",
            "DNS: disabled (no [dns] zones)",
            "ROUTING (BGP/OSPF): disabled (no [bgp] or [ospf])",
            "MARATHON: disabled (no [marathon])",
            "LAST RELOAD FAILED 1.0s ago (running config kept):",
            "  padis.toml:3:1: x: bad",
        ] {
            assert!(out.lines().any(|l| l == line), "missing line {line:?} in\n{out}");
        }
        assert!(!out.contains("L4 VIPS") && !out.contains("DNS ZONES") && !out.contains("BGP PEERS"), "{out}");
    }

    #[test]
    fn listeners_not_bound_are_listed() {
        let mut state = full_state();
        state["planes"]["l7"] = json!({"bind_failures": {}});
        let out = render_at(&state, NOW_MS);
        assert!(!out.contains("NOT BOUND") && !out.contains("\nL7\n"), "{out}");
        state["planes"]["l7"] = json!({"bind_failures": {"web": "Address already in use (os error 98)"}});
        let out = render_at(&state, NOW_MS);
        let rows = block(&out, "LISTENERS NOT BOUND (retried with each new state)");
        assert_eq!(rows, ["  LISTENER  ERROR", "  web       Address already in use (os error 98)"], "{out}");
    }

    #[test]
    fn an_unknown_plane_is_a_field_table() {
        let mut state = full_state();
        state["planes"]["future"] = json!({"a": 1, "b": {"c": [true, "x"]}});
        let out = render_at(&state, NOW_MS);
        let rows = block(&out, "FUTURE");
        assert_eq!(rows, ["  FIELD  VALUE", "  a      1", "  b.c.0  true", "  b.c.1  x"], "{out}");
    }
}
