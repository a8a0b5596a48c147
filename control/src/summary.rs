//! A short description of a desired state: what `padis check` prints and `/v1/config/validate` returns.

use padis_model::DesiredState;
use serde_json::{json, Value};

/// Counts and names of what the state would run.
pub fn summary(s: &DesiredState) -> Value {
    json!({
        "admin": s.admin.listen.to_string(),
        "listeners": s.listeners.iter().map(|l| json!({
            "name": l.name, "bind": l.bind.to_string(), "tls": l.tls.is_some(),
        })).collect::<Vec<_>>(),
        "routes": s.routes.len(),
        "groups": s.groups.iter().map(|g| json!({
            "name": g.name, "balance": g.balance, "backends": g.backends.len(),
            "health": g.health.as_ref().map(|h| h.kind),
        })).collect::<Vec<_>>(),
        "certificates": s.certificates.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "services": s.services.len(),
        "vips": s.vips.len(),
        "l4": &s.l4,
        "dns": &s.dns,
        "marathon": s.marathon.is_some(),
        "bgp": s.bgp.is_some(),
    })
}

/// Human-readable text of [`summary`], for `padis check`.
pub fn render(s: &DesiredState) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "admin API   {}", s.admin.listen);
    for l in &s.listeners {
        let _ = writeln!(
            out,
            "listener    {:<16} {:<22} {}",
            l.name,
            l.bind,
            if l.tls.is_some() { "tls" } else { "plain" }
        );
    }
    for c in &s.certificates {
        let _ = writeln!(out, "certificate {:<16} {}", c.name, c.cert.display());
    }
    for r in &s.routes {
        let targets: Vec<String> = r.targets().iter().map(|t| format!("{}({})", t.group, t.weight)).collect();
        let _ = writeln!(
            out,
            "route       {:<16} {}{} -> {}{}",
            r.name,
            r.host.as_deref().unwrap_or("*"),
            r.path,
            targets.join(", "),
            if r.redirect_https { " [redirect https]" } else { "" }
        );
    }
    for g in &s.groups {
        let _ = writeln!(
            out,
            "group       {:<16} {:?} {} backend(s){}",
            g.name,
            g.balance,
            g.backends.len(),
            g.health.as_ref().map(|h| format!(", {:?} check every {:?}", h.kind, h.interval)).unwrap_or_default()
        );
    }
    if !s.vips.is_empty() {
        let _ = writeln!(out, "l4          {} VIP(s); {}", s.vips.len(), compact(&s.l4));
    }
    let dns = compact(&s.dns);
    if dns != "{}" && !dns.contains("\"listen\":[]") {
        let _ = writeln!(out, "dns         {dns}");
    }
    if !s.services.is_empty() {
        let _ = writeln!(out, "services    {}", s.services.len());
    }
    if s.marathon.is_some() {
        let _ = writeln!(out, "marathon    enabled");
    }
    if s.bgp.is_some() {
        let _ = writeln!(out, "bgp         enabled");
    }
    out
}

/// One-line JSON of a config section (sections owned by other modules are shown as they serialize).
fn compact<T: serde::Serialize>(v: &T) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    if s.len() > 160 {
        format!("{}…", &s[..s.floor_char_boundary(160)])
    } else {
        s
    }
}
