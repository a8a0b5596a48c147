//! Validation: a config is checked completely before it can become a [`Snapshot`](crate::Snapshot).

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml_edit::Document;

use crate::error::{ConfigError, ConfigErrors};
use crate::locate::{line_col, locate};
use crate::secret;
use crate::tls::{self, CertMaterial};
use crate::{Balance, DesiredState, HealthKind, ListenerMode};

/// Collects validation errors by field path (`route[2].group`).
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<(String, String)>,
}

impl Validator {
    /// Records that `field` is wrong.
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push((field.into(), message.into()));
    }

    /// Whether nothing was recorded.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A validated state, with its certificates loaded. Only [`validate_state`] makes one.
#[derive(Debug)]
pub struct Valid {
    /// The file (or source) it came from.
    pub origin: Option<String>,
    /// The state.
    pub state: DesiredState,
    /// Certificates in `state.certificates` order.
    pub certificates: Vec<Arc<CertMaterial>>,
}

/// Reads and validates a config file.
pub fn load_config(path: &Path) -> Result<Valid, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors::single(&origin, format!("cannot read: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse_config(&text, &origin, base)
}

/// Parses and validates config text. `origin` names it in errors; `base` resolves relative paths.
pub fn parse_config(text: &str, origin: &str, base: &Path) -> Result<Valid, ConfigErrors> {
    let state: DesiredState = toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(s) => {
                let (l, c) = line_col(text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigErrors(vec![ConfigError {
            origin: origin.to_string(),
            line,
            column,
            field: String::new(),
            message: e.message().trim().to_string(),
        }])
    })?;
    let doc = Document::parse(text.to_string()).ok();
    let mut valid = check(state, origin, base, Some((text, doc.as_ref())), None, None)?;
    valid.origin = Some(origin.to_string());
    Ok(valid)
}

/// Validates a state that did not come from text (e.g. config merged with Marathon apps).
///
/// `certificates`: material already loaded for the same `[[certificate]]` entries (by a previous validation of
/// the config file); when given, certificate files are not read again.
pub fn validate_state(
    state: DesiredState,
    origin: &str,
    base: &Path,
    certificates: Option<Vec<Arc<CertMaterial>>>,
) -> Result<Valid, ConfigErrors> {
    check(state, origin, base, None, certificates, None)
}

/// [`validate_state`] for a new version of a state that passed it: routes, groups, services and VIPs that are
/// the same allocation as in `previous` are not checked again on their own (their checks do not depend on other
/// items); checks across items (unique names, references, route and VIP clashes) run on the whole state, without
/// allocating per item. The errors are the ones [`validate_state`] reports.
///
/// `previous` must have passed [`validate_state`] (or this function) with the same `base`.
pub fn validate_update(
    state: DesiredState,
    origin: &str,
    base: &Path,
    certificates: Option<Vec<Arc<CertMaterial>>>,
    previous: &DesiredState,
) -> Result<Valid, ConfigErrors> {
    check(state, origin, base, None, certificates, Some(previous))
}

/// Items of a previously validated list, recognised by allocation: at the same position (the common case),
/// else through a pointer set built on first need.
struct Known<'a, T> {
    previous: &'a [Arc<T>],
    set: OnceCell<HashSet<usize>>,
}

impl<'a, T> Known<'a, T> {
    fn new(previous: Option<&'a [Arc<T>]>) -> Known<'a, T> {
        Known { previous: previous.unwrap_or(&[]), set: OnceCell::new() }
    }

    /// Whether `item` (at position `i`) was validated before. The previous list keeps its items alive, so an
    /// address seen there cannot belong to a new item.
    fn contains(&self, i: usize, item: &Arc<T>) -> bool {
        if self.previous.is_empty() {
            return false;
        }
        if self.previous.get(i).is_some_and(|p| Arc::ptr_eq(p, item)) {
            return true;
        }
        let set = self.set.get_or_init(|| self.previous.iter().map(|p| Arc::as_ptr(p) as usize).collect());
        set.contains(&(Arc::as_ptr(item) as usize))
    }
}

fn check(
    mut state: DesiredState,
    origin: &str,
    base: &Path,
    text: Option<(&str, Option<&Document<String>>)>,
    preloaded: Option<Vec<Arc<CertMaterial>>>,
    previous: Option<&DesiredState>,
) -> Result<Valid, ConfigErrors> {
    let mut cx = Validator::default();
    // Secrets given as files are read when the config file is loaded (a state merged later carries them).
    if text.is_some() {
        resolve_secrets(&mut state, base, &mut cx);
    }
    // A TCP listener's TLS offers no ALPN unless the file names protocols: the bytes it relays are the backend's
    // protocol, and the default (`h2`, `http/1.1`) is the HTTP listeners'.
    if let Some((_, Some(doc))) = text {
        let tables = doc.get("listener").and_then(|l| l.as_array_of_tables());
        for (i, l) in state.listeners.iter_mut().enumerate() {
            let named =
                || tables.and_then(|t| t.get(i)).and_then(|t| t.get("tls")).and_then(|t| t.get("alpn")).is_some();
            if l.mode == ListenerMode::Tcp && !named() {
                if let Some(t) = l.tls.as_mut() {
                    t.alpn.clear();
                }
            }
        }
    }
    // Data planes get absolute paths: they never need to know where the config file was. (Joining an absolute
    // path changes nothing, so groups already made absolute are not copied.)
    for g in &mut state.groups {
        if g.tls.as_ref().and_then(|t| t.ca.as_ref()).is_some_and(|ca| ca.is_relative()) {
            if let Some(ca) = Arc::make_mut(g).tls.as_mut().and_then(|t| t.ca.as_mut()) {
                *ca = base.join(&*ca);
            }
        }
    }
    for g in &mut state.groups {
        let t = g.tls.as_ref();
        let relative = |p: Option<&PathBuf>| p.is_some_and(|p| p.is_relative());
        if t.is_some_and(|t| relative(t.cert.as_ref()) || relative(t.key.as_ref())) {
            if let Some(t) = Arc::make_mut(g).tls.as_mut() {
                for p in [t.cert.as_mut(), t.key.as_mut()].into_iter().flatten() {
                    *p = base.join(&*p);
                }
            }
        }
    }
    // Client authentication: paths made absolute, CA bundles and CRLs read into the state (data planes never
    // read them; a changed file is a changed state, so a reload applies a new CRL).
    for (i, l) in state.listeners.iter_mut().enumerate() {
        let Some(t) = l.tls.as_mut() else { continue };
        let listener = t.client_auth.as_mut().map(|a| (format!("listener[{i}].tls.client_auth"), a));
        let named = t.by_name.iter_mut().enumerate().filter_map(|(j, n)| {
            n.client_auth.as_mut().map(|a| (format!("listener[{i}].tls.by_name[{j}].client_auth"), a))
        });
        for (p, a) in listener.into_iter().chain(named) {
            a.ca = base.join(&a.ca);
            match tls::load_ca_bundle(&a.ca) {
                Ok(c) => a.material.ca = c,
                Err(e) => cx.error(format!("{p}.ca"), e),
            }
            a.material.crls.clear();
            for (j, c) in a.crl.iter_mut().enumerate() {
                *c = base.join(&*c);
                match tls::load_crls(c) {
                    Ok(crls) => a.material.crls.extend(crls),
                    Err(e) => cx.error(format!("{p}.crl[{j}]"), e),
                }
            }
        }
    }
    if let Some(s) = state.l4.sync.as_mut() {
        s.key_file = base.join(&s.key_file);
    }
    let certificates = check_l7(&state, base, &mut cx, preloaded, previous);
    let known = Known::new(previous.map(|p| &p.services[..]));
    for (i, s) in state.services.iter().enumerate() {
        if !known.contains(i, s) {
            s.validate(&format!("service[{i}]"), &mut cx);
        }
    }
    if let Some(r) = &state.request_id {
        r.validate(&mut cx);
    }
    state.l4.validate(&state.vips, &mut cx);
    state.tls.validate(state.l4.sync.is_some(), &mut cx);
    state.dns.validate(&mut cx);
    if let Some(m) = &state.marathon {
        m.validate(&mut cx);
    }
    if let Some(b) = &state.bgp {
        b.validate(&mut cx);
    }
    if cx.errors.is_empty() {
        return Ok(Valid { origin: None, state, certificates });
    }
    let errors = cx
        .errors
        .into_iter()
        .map(|(field, message)| {
            let pos = text.and_then(|(t, doc)| locate(t, doc, &field));
            ConfigError { origin: origin.to_string(), line: pos.map(|p| p.0), column: pos.map(|p| p.1), field, message }
        })
        .collect();
    Err(ConfigErrors(errors))
}

/// Request headers a client certificate's subject cannot be passed in: the proxy writes or consumes them.
const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "proxy-authorization",
];

/// A client authentication's subject header is a header name Padis may write (its files were read by `check`).
fn check_client_auth(cx: &mut Validator, p: &str, a: &crate::ClientAuth) {
    let h = &a.subject_header;
    let token = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        cx.error(format!("{p}.subject_header"), format!("`{h}`: not a header field name"));
    } else if RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(h)) || h.starts_with(':') {
        cx.error(format!("{p}.subject_header"), format!("`{h}`: written by the proxy itself; choose another name"));
    }
}

/// Reads every `*_file` secret of the config into its inline field ([`secret::resolve`]).
fn resolve_secrets(state: &mut DesiredState, base: &Path, cx: &mut Validator) {
    let admin = &mut state.admin;
    secret::resolve(cx, "admin.token", &mut admin.token, "admin.token_file", admin.token_file.as_deref(), base);
    if let Some(a) = state.marathon.as_mut().and_then(|m| m.auth.as_mut()) {
        let (f, inline) = (a.password_file.as_deref(), &mut a.password);
        secret::resolve(cx, "marathon.auth.password", inline, "marathon.auth.password_file", f, base);
        let (f, inline) = (a.token_file.as_deref(), &mut a.token);
        secret::resolve(cx, "marathon.auth.token", inline, "marathon.auth.token_file", f, base);
    }
    state.dns.resolve_secrets(cx, base);
    if let Some(b) = state.bgp.as_mut() {
        b.resolve_secrets(cx, base);
    }
}

fn unique<'a>(cx: &mut Validator, what: &str, names: impl Iterator<Item = &'a str>) {
    let mut seen = HashSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            cx.error(format!("{what}[{i}].name"), "must not be empty");
        } else if !seen.insert(n) {
            cx.error(format!("{what}[{i}].name"), format!("duplicate name `{n}`"));
        }
    }
}

/// Checks a host pattern: an exact name or `*.suffix`, letters, digits, `-` and `.` only.
fn host_ok(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && host == host.to_ascii_lowercase()
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn check_l7(
    s: &DesiredState,
    base: &Path,
    cx: &mut Validator,
    preloaded: Option<Vec<Arc<CertMaterial>>>,
    previous: Option<&DesiredState>,
) -> Vec<Arc<CertMaterial>> {
    if !s.admin.listen.ip().is_loopback() && s.admin.token.as_ref().is_none_or(|t| t.is_empty()) {
        cx.error("admin.listen", "a non-loopback admin address needs a bearer `token` (or `token_file`) in [admin]");
    }
    if s.admin.token.as_ref().is_some_and(|t| t.is_empty()) {
        cx.error("admin.token", "must not be empty");
    }
    if s.admin.max_connections == 0 {
        cx.error("admin.max_connections", "must be at least 1");
    }
    if s.admin.header_read_timeout.is_zero() {
        cx.error("admin.header_read_timeout", "must be greater than 0");
    }
    if s.log.level.trim().is_empty() {
        cx.error("log.level", "must not be empty");
    }
    if s.limits.max_header_bytes < 1024 {
        cx.error("limits.max_header_bytes", "must be at least 1024");
    }
    if s.limits.body_read_timeout < std::time::Duration::from_millis(100) {
        cx.error("limits.body_read_timeout", "must be at least 100ms");
    }
    if s.limits.max_headers == 0 {
        cx.error("limits.max_headers", "must be at least 1");
    }
    if s.limits.h2_max_concurrent_streams == 0 {
        cx.error("limits.h2_max_concurrent_streams", "must be at least 1");
    }
    if s.limits.send_timeout < std::time::Duration::from_millis(100) {
        cx.error("limits.send_timeout", "must be at least 100ms");
    }
    if s.limits.close_grace.is_zero() {
        cx.error("limits.close_grace", "must be more than 0");
    }
    if s.limits.h2_max_control_frames_per_sec == 0 {
        cx.error("limits.h2_max_control_frames_per_sec", "must be at least 1");
    }

    // Certificates.
    unique(cx, "certificate", s.certificates.iter().map(|c| c.name.as_str()));
    let reuse = preloaded
        .filter(|p| p.len() == s.certificates.len() && p.iter().zip(&s.certificates).all(|(m, c)| m.name == c.name));
    let certificates = match reuse {
        Some(certs) => certs,
        None => {
            let mut certificates = Vec::new();
            for (i, c) in s.certificates.iter().enumerate() {
                match tls::load(&c.name, &c.cert, &c.key, &c.server_names, base) {
                    Ok(m) => certificates.push(Arc::new(m)),
                    Err(e) => cx.error(format!("certificate[{i}].cert"), e),
                }
            }
            certificates
        }
    };
    let cert_names: HashSet<&str> = s.certificates.iter().map(|c| c.name.as_str()).collect();

    // Listeners.
    unique(cx, "listener", s.listeners.iter().map(|l| l.name.as_str()));
    // Addresses bound so far, by port: the same address, or the unspecified one beside another, cannot both be
    // bound (port 0, any free port used by tests, never clashes).
    let mut binds: HashMap<u16, Vec<std::net::SocketAddr>> = HashMap::new();
    for (i, l) in s.listeners.iter().enumerate() {
        let same_port = binds.entry(l.bind.port()).or_default();
        if same_port.iter().any(|b| crate::binds_overlap(*b, l.bind)) {
            cx.error(format!("listener[{i}].bind"), format!("{} is bound by another listener", l.bind));
        }
        same_port.push(l.bind);
        if l.bind == s.admin.listen {
            cx.error(format!("listener[{i}].bind"), "same address as the admin API");
        }
        if l.mode == ListenerMode::Http && l.group.is_some() {
            cx.error(format!("listener[{i}].group"), "only used with mode = \"tcp\" (HTTP listeners use routes)");
        }
        if l.mode == ListenerMode::Http && l.idle_timeout.is_some() {
            cx.error(format!("listener[{i}].idle_timeout"), "only used with mode = \"tcp\"");
        }
        if l.idle_timeout.is_some_and(|t| t.is_zero()) {
            cx.error(format!("listener[{i}].idle_timeout"), "must be greater than 0");
        }
        if l.proxy_protocol.as_ref().is_some_and(|p| p.trusted.is_empty()) {
            cx.error(format!("listener[{i}].proxy_protocol.trusted"), "empty: no source could connect");
        }
        if let Some(t) = &l.tls {
            if s.certificates.is_empty() {
                cx.error(format!("listener[{i}].tls"), "a TLS listener needs at least one [[certificate]]");
            }
            for (j, c) in t.certificates.iter().enumerate() {
                if !cert_names.contains(c.as_str()) {
                    cx.error(format!("listener[{i}].tls.certificates[{j}]"), format!("no certificate named `{c}`"));
                }
            }
            if let Some(d) = &t.default_certificate {
                let offered = t.certificates.is_empty() || t.certificates.contains(d);
                if !cert_names.contains(d.as_str()) || !offered {
                    cx.error(
                        format!("listener[{i}].tls.default_certificate"),
                        format!("`{d}` is not offered by this listener"),
                    );
                }
            }
            for (j, a) in t.alpn.iter().enumerate() {
                if a != "h2" && a != "http/1.1" {
                    cx.error(format!("listener[{i}].tls.alpn[{j}]"), format!("`{a}`: expected h2 or http/1.1"));
                }
            }
            if let Some(a) = &t.client_auth {
                check_client_auth(cx, &format!("listener[{i}].tls.client_auth"), a);
            }
            let mut named = HashSet::new();
            for (j, n) in t.by_name.iter().enumerate() {
                let p = format!("listener[{i}].tls.by_name[{j}]");
                if n.names.is_empty() {
                    cx.error(format!("{p}.names"), "empty: name at least one server name");
                }
                for (k, name) in n.names.iter().enumerate() {
                    let bare = name.strip_prefix("*.").unwrap_or(name);
                    if !host_ok(bare) || bare.contains('*') || name.to_ascii_lowercase() != *name {
                        cx.error(
                            format!("{p}.names[{k}]"),
                            format!("`{name}`: expected a lowercase server name or `*.parent`"),
                        );
                    } else if !named.insert(name.as_str()) {
                        cx.error(format!("{p}.names[{k}]"), format!("`{name}` is named by an earlier entry"));
                    }
                }
                if let Some(a) = &n.client_auth {
                    check_client_auth(cx, &format!("{p}.client_auth"), a);
                }
            }
        }
    }
    let listener_names: HashSet<&str> = s.listeners.iter().map(|l| l.name.as_str()).collect();

    // Groups.
    unique(cx, "group", s.groups.iter().map(|g| g.name.as_str()));
    let known = Known::new(previous.map(|p| &p.groups[..]));
    for (i, g) in s.groups.iter().enumerate() {
        if known.contains(i, g) {
            continue;
        }
        let p = format!("group[{i}]");
        let mut addrs = HashSet::new();
        for (j, b) in g.backends.iter().enumerate() {
            if !addrs.insert(b.addr) {
                cx.error(format!("{p}.backend[{j}].addr"), format!("duplicate backend {}", b.addr));
            }
            if b.addr.port() == 0 {
                cx.error(format!("{p}.backend[{j}].addr"), "port must not be 0");
            }
            if b.check_port == Some(0) {
                cx.error(format!("{p}.backend[{j}].check_port"), "must not be 0");
            }
        }
        if g.hash_key.is_some() && g.balance != Balance::Maglev {
            cx.error(format!("{p}.hash_key"), "only used with balance = \"maglev\"");
        }
        if g.sticky_cookie.is_some() && g.balance != Balance::Sticky {
            cx.error(format!("{p}.sticky_cookie"), "only used with balance = \"sticky\"");
        }
        if g.connect_timeout.is_zero() {
            cx.error(format!("{p}.connect_timeout"), "must be greater than 0");
        }
        if g.request_timeout.is_zero() {
            cx.error(format!("{p}.request_timeout"), "must be greater than 0");
        }
        if let Some(t) = &g.tls {
            if t.ca.is_none() && !t.insecure_skip_verify {
                cx.error(format!("{p}.tls.ca"), "a CA file is required (or insecure_skip_verify = true)");
            }
            if let Some(ca) = &t.ca {
                if !base.join(ca).is_file() {
                    cx.error(format!("{p}.tls.ca"), format!("{}: no such file", base.join(ca).display()));
                }
            }
            match (&t.cert, &t.key) {
                (Some(cert), Some(key)) => {
                    if let Err(e) = tls::load(&g.name, cert, key, &[], base) {
                        cx.error(format!("{p}.tls.cert"), e);
                    }
                }
                (Some(_), None) => cx.error(format!("{p}.tls.cert"), "a client certificate needs its `key`"),
                (None, Some(_)) => cx.error(format!("{p}.tls.key"), "`key` without `cert`"),
                (None, None) => {}
            }
        }
        if let Some(h) = &g.health {
            if h.rise == 0 {
                cx.error(format!("{p}.health.rise"), "must be at least 1");
            }
            if h.fall == 0 {
                cx.error(format!("{p}.health.fall"), "must be at least 1");
            }
            if h.port == Some(0) {
                cx.error(format!("{p}.health.port"), "must not be 0");
            }
            if h.interval.is_zero() {
                cx.error(format!("{p}.health.interval"), "must be greater than 0");
            }
            if h.timeout.is_zero() || h.timeout > h.interval {
                cx.error(format!("{p}.health.timeout"), "must be greater than 0 and at most the interval");
            }
            if let Some(st) = h.expect_status {
                if !(100..=599).contains(&st) {
                    cx.error(format!("{p}.health.expect_status"), "must be an HTTP status (100-599)");
                }
            }
            if h.kind == HealthKind::Http && !h.path.starts_with('/') {
                cx.error(format!("{p}.health.path"), "must start with `/`");
            }
        }
        if let Some(ps) = &g.passive {
            if ps.consecutive_failures == 0 {
                cx.error(format!("{p}.passive.consecutive_failures"), "must be at least 1");
            }
            if ps.base_ejection.is_zero() || ps.max_ejection < ps.base_ejection {
                cx.error(format!("{p}.passive.max_ejection"), "need 0 < base_ejection <= max_ejection");
            }
        }
    }
    let group_names: HashSet<&str> = s.groups.iter().map(|g| g.name.as_str()).collect();
    for (i, l) in s.listeners.iter().enumerate().filter(|(_, l)| l.mode == ListenerMode::Tcp) {
        match &l.group {
            None => cx.error(format!("listener[{i}].group"), "a mode = \"tcp\" listener needs a group"),
            Some(g) if !group_names.contains(g.as_str()) => {
                cx.error(format!("listener[{i}].group"), format!("no group named `{g}`"))
            }
            Some(g) => {
                if s.groups.iter().any(|x| x.name == *g && x.tls.is_some()) {
                    let why = format!("`{g}` has tls: a TCP listener relays bytes as they are");
                    cx.error(format!("listener[{i}].group"), why);
                }
            }
        }
    }
    let tcp_groups: HashSet<&str> =
        s.listeners.iter().filter(|l| l.mode == ListenerMode::Tcp).filter_map(|l| l.group.as_deref()).collect();
    for (i, g) in s.groups.iter().enumerate() {
        if g.proxy_protocol.is_some() && !tcp_groups.contains(g.name.as_str()) {
            let why = "only sent by mode = \"tcp\" listeners; none uses this group";
            cx.error(format!("group[{i}].proxy_protocol"), why);
        }
    }
    let tcp_listeners: HashSet<&str> =
        s.listeners.iter().filter(|l| l.mode == ListenerMode::Tcp).map(|l| l.name.as_str()).collect();

    // Routes. Checks of a route alone are skipped for a known one; references and clashes are always checked,
    // and the field path is only formatted for an error.
    unique(cx, "route", s.routes.iter().map(|r| r.name.as_str()));
    let known = Known::new(previous.map(|p| &p.routes[..]));
    let mut keys: HashMap<(Option<&str>, &str, Vec<&str>), usize> = HashMap::with_capacity(s.routes.len());
    for (i, r) in s.routes.iter().enumerate() {
        let p = || format!("route[{i}]");
        let alone = !known.contains(i, r);
        for (j, l) in r.listeners.iter().enumerate() {
            if !listener_names.contains(l.as_str()) {
                cx.error(format!("{}.listeners[{j}]", p()), format!("no listener named `{l}`"));
            } else if tcp_listeners.contains(l.as_str()) {
                cx.error(format!("{}.listeners[{j}]", p()), format!("`{l}` is a mode = \"tcp\" listener (no routes)"));
            }
        }
        if alone {
            if let Some(h) = &r.host {
                if !host_ok(h) {
                    cx.error(format!("{}.host", p()), format!("`{h}`: expected a lowercase host name or `*.suffix`"));
                }
            }
            if !r.path.starts_with('/') {
                cx.error(format!("{}.path", p()), "must start with `/`");
            }
            for (field, v) in [("proxypass_path", &r.proxypass_path), ("revproxy_path", &r.revproxy_path)] {
                if v.as_deref().is_some_and(|v| !v.starts_with('/') || v.contains(char::is_whitespace)) {
                    cx.error(format!("{}.{field}", p()), "must start with `/` and contain no space");
                }
            }
            if let Some(a) = &r.basic_auth {
                if a.users.is_empty() || a.users.iter().any(|u| u.user.is_empty() || u.user.contains(':')) {
                    cx.error(format!("{}.basic_auth.users", p()), "needs users with a name without `:`");
                }
                if let Some(u) = a.users.iter().find(|u| crate::crypt_kind(&u.hash).is_none()) {
                    cx.error(
                        format!("{}.basic_auth.users", p()),
                        format!("user `{}`: unsupported password hash (bcrypt, $6$, $5$, $1$ or DES crypt)", u.user),
                    );
                }
                if a.realm.contains(['"', '\\']) || a.realm.chars().any(char::is_control) {
                    cx.error(format!("{}.basic_auth.realm", p()), "no `\"`, `\\` or control characters");
                }
            }
            if let Some(l) = &r.rate_limit {
                if l.rate == 0 || l.period.is_zero() || l.burst == Some(0) {
                    cx.error(format!("{}.rate_limit", p()), "rate, period and burst must be greater than 0");
                }
            }
            r.headers.validate(&p(), s.request_id.as_ref().map(|r| r.header.as_str()), cx);
            if let Some(h) = &r.hsts {
                h.validate(&p(), Some(&r.headers), cx);
            }
            match (&r.group, r.split.is_empty()) {
                (Some(_), false) => cx.error(format!("{}.split", p()), "use either `group` or `split`, not both"),
                (None, true) if !r.redirect_https => {
                    cx.error(format!("{}.group", p()), "a route needs `group` or `split`")
                }
                _ => {}
            }
        }
        if let Some(g) = &r.group {
            if !group_names.contains(g.as_str()) {
                cx.error(format!("{}.group", p()), format!("no group named `{g}`"));
            }
        }
        for (j, w) in r.split.iter().enumerate() {
            if !group_names.contains(w.group.as_str()) {
                cx.error(format!("{}.split[{j}].group", p()), format!("no group named `{}`", w.group));
            }
        }
        if alone && !r.split.is_empty() && r.split.iter().all(|w| w.weight == 0) {
            cx.error(format!("{}.split", p()), "at least one weight must be greater than 0");
        }
        let mut ls: Vec<&str> = r.listeners.iter().map(String::as_str).collect();
        ls.sort_unstable();
        let path = r.path.trim_end_matches('/');
        if let Some(first) = keys.insert((r.host.as_deref(), path, ls), i) {
            cx.error(
                format!("{}.path", p()),
                format!("same host, path and listeners as route `{}`", s.routes[first].name),
            );
        }
    }
    certificates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Valid, ConfigErrors> {
        parse_config(text, "test.toml", Path::new("."))
    }

    #[test]
    fn minimal_config_is_valid() {
        let v = parse(
            r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[group]]
name = "app"
[[group.backend]]
addr = "127.0.0.1:9000"

[[route]]
name = "all"
group = "app"
"#,
        )
        .unwrap();
        assert_eq!(v.state.routes[0].path, "/");
        assert_eq!(v.state.groups[0].backends[0].weight, 1);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = parse(
            "[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:8080\"\n\n[[route]]\nname = \"r\"\ngroup = \"missing\"\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].to_string(), "test.toml:7:1: route[0].group: no group named `missing`");
    }

    /// Header rules, HSTS and the request id: every wrong part refused with its line, the good ones taken.
    #[test]
    fn header_rules() {
        let head = "[[group]]\nname = \"g\"\n[[group.backend]]\naddr = \"127.0.0.1:1\"\n[[route]]\nname = \"r\"\ngroup = \"g\"\n";
        let good = format!(
            "[request_id]\ntrusted = [\"10.0.0.0/8\"]\n{head}hsts = {{ max_age = 31536000, include_subdomains = true, preload = true }}\n\
             [route.headers]\nrequest_remove = [\"X-Internal\", \"x-forwarded-for\"]\n\
             request_set = {{ \"X-Client\" = \"${{client_ip}}:${{client_port}}\", \"x-subject\" = \"${{tls_subject}}\" }}\n\
             request_add = {{ \"x-trace\" = \"${{request_id}} $$\" }}\nresponse_remove = [\"server\"]\n"
        );
        let v = parse(&good).unwrap();
        let r = &v.state.routes[0];
        assert_eq!(r.hsts.as_ref().unwrap().value(), "max-age=31536000; includeSubDomains; preload");
        assert_eq!(r.headers.request_set.len(), 2);
        assert_eq!(v.state.request_id.as_ref().unwrap().header, "x-request-id");
        let v = parse(&format!("{head}hsts = true\n")).unwrap();
        assert_eq!(v.state.routes[0].hsts, Some(crate::Hsts::default()));
        assert!(parse(&format!("{head}hsts = false\n")).unwrap().state.routes[0].hsts.is_none());
        let e = parse(&format!("{head}hsts = {{ max_age = 1, bogus = 1 }}\n")).unwrap_err();
        assert_eq!(e.0[0].line, Some(8), "{e}");

        let bad = format!(
            "{head}hsts = {{ max_age = 600, preload = true }}\n\
             [route.headers]\n\
             request_set = {{ \"Content-Length\" = \"1\", \"x-a\" = \"${{nope}}\", \"x-forwarded-for\" = \"1\" }}\n\
             request_add = {{ \"x-b\" = \"${{request_id}}\", \"bad name\" = \"1\", \"x-c\" = \"a\\r\\nb\" }}\n\
             request_remove = [\"Transfer-Encoding\", \"host\", \"x-a\"]\n\
             response_set = {{ \"connection\" = \"close\", \"strict-transport-security\" = \"max-age=1\" }}\n\
             response_add = {{ \"x-d\" = \"\" }}\n"
        );
        let e = parse(&bad).unwrap_err();
        let text = e.to_string();
        for want in [
            "test.toml:8:1: route[0].hsts: preload needs include_subdomains",
            "route[0].headers.request_set.Content-Length: `Content-Length` is framing, Host or hop-by-hop",
            "route[0].headers.request_set.x-a: unknown variable `${nope}`",
            "route[0].headers.request_set.x-forwarded-for: `x-forwarded-for` is a forwarding header",
            "route[0].headers.request_add.x-b: `${request_id}` needs a [request_id] section",
            "route[0].headers.request_add.bad name: `bad name` is not a header name",
            "route[0].headers.request_add.x-c: control character 0x0d",
            "route[0].headers.request_remove[0]: `Transfer-Encoding` is framing",
            "route[0].headers.request_remove[1]: `host` is framing",
            "route[0].headers.request_set: `x-a` is also in request_remove",
            "route[0].headers.response_set.connection: `connection` is framing",
            "route[0].hsts: Strict-Transport-Security is also set by a header rule",
            "route[0].headers.response_add.x-d: empty value",
        ] {
            assert!(text.contains(want), "{want}\nnot in:\n{text}");
        }
        assert_eq!(e.0.len(), 13, "{text}");
        let line = |field: &str| e.0.iter().find(|x| x.field == field).and_then(|x| x.line);
        assert_eq!(line("route[0].headers.request_set.Content-Length"), Some(10));
        assert_eq!(line("route[0].headers.request_add.x-b"), Some(11));
        assert_eq!(line("route[0].headers.request_remove[0]"), Some(12));
        assert_eq!(line("route[0].headers.response_add.x-d"), Some(14));
        let e = parse(&format!("[request_id]\nheader = \"x-forwarded-for\"\n{head}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.toml:2:1: request_id.header: `x-forwarded-for` is a header the proxy writes itself"
        );
        let e = parse(&format!("[request_id]\n{head}[route.headers]\nrequest_set = {{ \"X-Request-Id\" = \"1\" }}\n"))
            .unwrap_err();
        assert!(e.to_string().contains("`X-Request-Id` is the request id header of [request_id]"), "{e}");
    }

    #[test]
    fn syntax_and_unknown_fields_have_lines() {
        let e = parse("[[listener]]\nname = \"web\"\nbnd = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.0[0].line, Some(3), "{e}");
        assert!(e.to_string().contains("bnd"), "{e}");
        let e = parse("[[group]]\nname = \"g\"\nconnect_timeout = \"3 parsecs\"\n").unwrap_err();
        assert_eq!(e.0[0].line, Some(3), "{e}");
    }

    #[test]
    fn semantic_checks() {
        let e = parse(
            r#"
[admin]
listen = "0.0.0.0:9901"

[[group]]
name = "g"
balance = "round_robin"
hash_key = "client_ip"
[[group.backend]]
addr = "127.0.0.1:1"
[[group.backend]]
addr = "127.0.0.1:1"

[[route]]
name = "a"
host = "Bad Host"
group = "g"
[[route]]
name = "a"
group = "g"
split = [{ group = "nope", weight = 0 }]
"#,
        )
        .unwrap_err();
        let s = e.to_string();
        for needle in [
            "admin.listen: a non-loopback",
            "group[0].hash_key",
            "group[0].backend[1].addr: duplicate",
            "route[0].host",
            "route[1].name: duplicate",
            "route[1].split: use either",
            "route[1].split[0].group: no group named `nope`",
        ] {
            assert!(s.contains(needle), "missing {needle} in\n{s}");
        }
    }

    const SHARED: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[group]]
name = "a"
[[group]]
name = "b"

[[route]]
name = "ra"
host = "a.example"
group = "a"
[[route]]
name = "rb"
host = "b.example"
group = "b"

[[service]]
name = "s"
"#;

    /// Items that are the same allocation as in the previous state are not checked alone again (an item
    /// smuggled into `previous` with a local error passes), cross-item checks still see them, and a changed
    /// item gets the errors a whole validation gives.
    #[test]
    fn update_validation_checks_only_changed_items_alone() {
        let v = parse(SHARED).unwrap();
        let prev = v.state.clone();
        let same = validate_update(prev.clone(), "m", Path::new("."), None, &prev).unwrap();
        assert!(same.state.same_as(&prev));
        assert!(same.state.groups.iter().zip(&prev.groups).all(|(a, b)| Arc::ptr_eq(a, b)), "nothing copied");

        // A known route with a bad path: skipped alone (it passed before), caught by a whole validation.
        let mut odd = prev.clone();
        let mut r = (*odd.routes[1]).clone();
        r.path = "no-slash".into();
        odd.routes[1] = Arc::new(r);
        assert!(validate_update(odd.clone(), "m", Path::new("."), None, &odd).is_ok());
        assert!(validate_state(odd.clone(), "m", Path::new("."), None).is_err());

        // Changed items: errors alone, references to a removed group and a clash with a known route.
        let mut next = prev.clone();
        let mut r = (*next.routes[1]).clone();
        r.host = Some("Bad Host".into());
        next.routes[1] = Arc::new(r);
        let mut clash = (*next.routes[0]).clone();
        clash.name = "rc".into();
        next.routes.push(Arc::new(clash));
        let mut g = (*next.groups[1]).clone();
        g.name = "c".into();
        g.request_timeout = std::time::Duration::ZERO;
        next.groups[1] = Arc::new(g);
        let incremental = validate_update(next.clone(), "m", Path::new("."), None, &prev).unwrap_err().to_string();
        let full = validate_state(next, "m", Path::new("."), None).unwrap_err().to_string();
        assert_eq!(incremental, full);
        for needle in [
            "group[1].request_timeout: must be greater than 0",
            "route[1].host: `Bad Host`",
            "route[1].group: no group named `b`",
            "route[2].path: same host, path and listeners as route `ra`",
        ] {
            assert!(incremental.contains(needle), "missing {needle} in\n{incremental}");
        }
    }
}
