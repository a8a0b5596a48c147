//! Pure mapping: Marathon apps + labels -> backend groups, routes, DNS services and L4 VIPs.
//!
//! An app is served when its `GROUP` label names one of this node's groups. Everything an app produces is
//! checked before any of it is kept: an app with a bad label, or one that clashes with an app mapped before it
//! (same host + path, same VIP, same DNS name), goes to `problems` whole and the other apps still map.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;

use padis_model::l4::{Vip, VipBackend};
use padis_model::marathon::MarathonConfig;
use padis_model::{Backend, BackendGroup, Balance, HashKey, HealthCheck, Instance, Route, Service, ServicePort};

use crate::apps::{App, Apps, PortMeta, Task};
use crate::labels::{self, AppLabels, PortLabels};
use crate::{AppProblem, MarathonState};

/// What a task is to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Running and healthy: takes new requests.
    Serving,
    /// Being killed: in-flight requests finish, no new ones.
    Draining,
    /// Running but failing its health checks: published with `healthy = false` in DNS state only.
    Unhealthy,
    /// Anything else (staging, finished, …).
    None,
}

/// Whether the task passes the app's Marathon health checks (always, when the app has none).
pub fn healthy(app: &App, task: &Task) -> bool {
    app.health_checks.is_empty()
        || (!task.health_check_results.is_empty() && task.health_check_results.iter().all(|r| r.alive))
}

/// The task's role, from its state and health.
pub fn role(app: &App, task: &Task) -> Role {
    match task.state.as_str() {
        "TASK_RUNNING" if healthy(app, task) => Role::Serving,
        "TASK_RUNNING" => Role::Unhealthy,
        "TASK_KILLING" if task.health_check_results.iter().all(|r| r.alive) => Role::Draining,
        _ => Role::None,
    }
}

/// The task's address (container IP with IP-per-task networking, else the agent's address).
fn task_ip(app: &App, task: &Task) -> Option<IpAddr> {
    if app.ip_per_task() {
        task.ip_addresses.iter().find_map(|a| a.ip_address.parse().ok())
    } else {
        task.host.parse().ok().or(task.resolved_host)
    }
}

/// The task's port for port index `n`.
fn task_port(app: &App, meta: &[PortMeta], task: &Task, n: usize) -> Option<u16> {
    let p = if app.ip_per_task() {
        meta.get(n).and_then(|m| m.container_port).filter(|p| *p != 0).or_else(|| task.ports.get(n).copied())
    } else {
        task.ports.get(n).copied()
    }?;
    u16::try_from(p).ok().filter(|p| *p != 0)
}

static GROUP_TEMPLATE: LazyLock<BackendGroup> = LazyLock::new(|| {
    serde_json::from_value(serde_json::json!({ "name": "" })).expect("BackendGroup defaults deserialize")
});

/// Checks a host name or `*.suffix` the way the model's validation does.
fn host_ok(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok)
}

fn label_ok(l: &str) -> bool {
    !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// DNS name for an app id: `/prod/web` -> `web.prod`.
pub fn default_dns_name(app_id: &str) -> String {
    app_id.split('/').filter(|s| !s.is_empty()).rev().collect::<Vec<_>>().join(".").to_ascii_lowercase()
}

/// Everything one app contributes, built before it is accepted.
#[derive(Default)]
struct AppOutput {
    groups: Vec<BackendGroup>,
    routes: Vec<Route>,
    services: Vec<Service>,
    vips: Vec<Vip>,
}

/// Names and keys already taken by earlier apps.
#[derive(Default)]
struct Taken {
    routes: HashSet<(Option<String>, String)>,
    vips: HashSet<(IpAddr, u16, String)>,
    services: HashSet<String>,
}

/// Maps apps (the `/v2/apps?embed=apps.tasks` body) to the desired state Marathon contributes.
pub fn map_apps(apps: &Apps, cfg: &MarathonConfig) -> MarathonState {
    map_app_list(apps.apps.iter(), &apps.rejected, cfg)
}

/// [`map_apps`] over any list of apps (the source maps its cached apps plus draining tasks without copying).
pub(crate) fn map_app_list<'a>(
    apps: impl Iterator<Item = &'a App>,
    rejected: &[AppProblem],
    cfg: &MarathonConfig,
) -> MarathonState {
    let mut state = MarathonState { problems: rejected.to_vec(), ..MarathonState::default() };
    let mut taken = Taken::default();
    let mut order: Vec<&App> = apps.collect();
    // The app whose config is older keeps what it serves when a newer one clashes with it.
    let changed = |a: &App| a.version_info.as_ref().and_then(|v| v.last_config_change_at.clone()).unwrap_or_default();
    order.sort_by_cached_key(|a| (changed(a), a.id.clone()));
    for app in order {
        let (labels, errors) = labels::parse(&app.labels, &cfg.label_prefixes);
        let served = match &labels.group {
            Some(g) => cfg.serves_group(g),
            None => cfg.group.iter().any(|g| g == "*"),
        };
        if !served {
            continue;
        }
        if !errors.is_empty() {
            for e in errors {
                state.problems.push(AppProblem::new(&app.id, Some(e.label), e.message));
            }
            continue;
        }
        match map_app(app, &labels, cfg) {
            Ok(out) => match claim(&out, &mut taken) {
                Ok(()) => {
                    state.groups.extend(out.groups);
                    state.routes.extend(out.routes);
                    state.services.extend(out.services);
                    state.vips.extend(out.vips);
                }
                Err(p) => state.problems.push(AppProblem::new(&app.id, None, p)),
            },
            Err(problems) => state.problems.extend(problems),
        }
    }
    state
}

/// Checks the app's keys against earlier apps, and takes them.
fn claim(out: &AppOutput, taken: &mut Taken) -> Result<(), String> {
    let routes: Vec<_> =
        out.routes.iter().map(|r| (r.host.clone(), r.path.trim_end_matches('/').to_string())).collect();
    let vips: Vec<_> = out.vips.iter().map(|v| (v.addr, v.port, v.protocol.clone())).collect();
    let services: Vec<_> =
        out.services.iter().map(|s| format!("{}.{}", s.name, s.zone.as_deref().unwrap_or(""))).collect();
    if let Some((h, p)) = routes.iter().find(|k| taken.routes.contains(*k)) {
        return Err(format!("host `{}` path `{p}` is already served by another app", h.as_deref().unwrap_or("*")));
    }
    if let Some((a, p, proto)) = vips.iter().find(|k| taken.vips.contains(*k)) {
        return Err(format!("VIP {a}:{p}/{proto} is already used by another app"));
    }
    if let Some(s) = services.iter().find(|k| taken.services.contains(*k)) {
        return Err(format!("DNS name `{}` is already used by another app", s.trim_end_matches('.')));
    }
    taken.routes.extend(routes);
    taken.vips.extend(vips);
    taken.services.extend(services);
    Ok(())
}

fn problem(app: &App, label: &str, message: impl Into<String>) -> AppProblem {
    AppProblem::new(&app.id, Some(label.to_string()), message)
}

/// The label key as the app spells it (for problems), with the first configured prefix.
fn key(cfg: &MarathonConfig, n: usize, k: &str) -> String {
    format!("{}{n}_{k}", cfg.label_prefixes.first().map(String::as_str).unwrap_or("PADIS_"))
}

fn map_app(app: &App, labels: &AppLabels, cfg: &MarathonConfig) -> Result<AppOutput, Vec<AppProblem>> {
    let meta = app.port_meta();
    let mut problems = Vec::new();
    let mut out = AppOutput::default();
    let origin = format!("marathon:{}", app.id);
    for (&n, pl) in &labels.ports {
        if n >= meta.len() {
            problems.push(problem(app, &key(cfg, n, "*"), format!("port index {n}: the app declares {} port(s)", meta.len())));
            continue;
        }
        if let Err(p) = map_port(app, &meta, n, pl, cfg, &origin, &mut out) {
            problems.extend(p);
        }
    }
    match services(app, labels, &meta, cfg, &origin) {
        Ok(s) => out.services = s,
        Err(p) => problems.extend(p),
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn map_port(
    app: &App,
    meta: &[PortMeta],
    n: usize,
    pl: &PortLabels,
    cfg: &MarathonConfig,
    origin: &str,
    out: &mut AppOutput,
) -> Result<(), Vec<AppProblem>> {
    let mut problems = Vec::new();
    let mode = pl.mode.as_deref().map(str::to_ascii_lowercase);
    let http = match mode.as_deref() {
        None | Some("http") => pl.vhost.is_some() || pl.path.is_some(),
        Some("tcp") => false,
        Some(m) => {
            problems.push(problem(app, &key(cfg, n, "MODE"), format!("`{m}`: expected http or tcp")));
            false
        }
    };
    if http {
        let group_name = format!("{origin}:{n}");
        let mut group = GROUP_TEMPLATE.clone();
        group.name = group_name.clone();
        group.origin = Some(origin.to_string());
        match pl.balance.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("roundrobin") | Some("round_robin") | Some("static-rr") => {}
            Some("leastconn") | Some("least_request") | Some("least_conn") => group.balance = Balance::LeastRequest,
            Some("source") | Some("maglev") => {
                group.balance = Balance::Maglev;
                group.hash_key = Some(HashKey::ClientIp);
            }
            Some("sticky") => group.balance = Balance::Sticky,
            Some(b) => problems.push(problem(
                app,
                &key(cfg, n, "BALANCE"),
                format!("`{b}`: expected roundrobin, leastconn, source, maglev or sticky"),
            )),
        }
        match pl.sticky.as_deref().map(labels::boolean) {
            None | Some(Some(false)) => {}
            Some(Some(true)) => {
                group.balance = Balance::Sticky;
                group.hash_key = None;
            }
            Some(None) => problems.push(problem(app, &key(cfg, n, "STICKY"), "expected true or false")),
        }
        if let Some(p) = &pl.healthcheck_path {
            if p.starts_with('/') {
                match serde_json::from_value::<HealthCheck>(serde_json::json!({ "path": p })) {
                    Ok(h) => group.health = Some(h),
                    Err(e) => problems.push(problem(app, &key(cfg, n, "HEALTHCHECK_PATH"), e.to_string())),
                }
            } else {
                problems.push(problem(app, &key(cfg, n, "HEALTHCHECK_PATH"), "must start with `/`"));
            }
        }
        let redirect_https = match pl.redirect_https.as_deref().map(labels::boolean) {
            None => false,
            Some(Some(b)) => b,
            Some(None) => {
                problems.push(problem(app, &key(cfg, n, "REDIRECT_TO_HTTPS"), "expected true or false"));
                false
            }
        };
        let path = pl.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            problems.push(problem(app, &key(cfg, n, "PATH"), format!("`{path}`: must start with `/`")));
        }
        let hosts: Vec<Option<String>> = match &pl.vhost {
            Some(v) => v.split(',').map(|h| h.trim().to_ascii_lowercase()).filter(|h| !h.is_empty()).map(Some).collect(),
            None => vec![None],
        };
        if hosts.is_empty() {
            problems.push(problem(app, &key(cfg, n, "VHOST"), "no host name"));
        }
        let mut seen = HashSet::new();
        for (k, host) in hosts.into_iter().enumerate() {
            if let Some(h) = &host {
                if !host_ok(h) {
                    problems.push(problem(app, &key(cfg, n, "VHOST"), format!("`{h}`: not a host name or `*.suffix`")));
                    continue;
                }
            }
            if !seen.insert(host.clone()) {
                continue;
            }
            out.routes.push(Route {
                name: if k == 0 { group_name.clone() } else { format!("{group_name}:{k}") },
                listeners: Vec::new(),
                host,
                path: path.clone(),
                group: Some(group_name.clone()),
                split: Vec::new(),
                redirect_https,
                https_port: None,
                origin: Some(origin.to_string()),
            });
        }
        let mut addrs = HashSet::new();
        for task in &app.tasks {
            let draining = match role(app, task) {
                Role::Serving => false,
                Role::Draining => true,
                _ => continue,
            };
            let (Some(ip), Some(port)) = (task_ip(app, task), task_port(app, meta, task, n)) else { continue };
            let addr = SocketAddr::new(ip, port);
            if addrs.insert(addr) {
                group.backends.push(Backend { addr, weight: 1, draining });
            }
        }
        out.groups.push(group);
    }
    if let Some(v) = &pl.vip {
        match v.parse::<SocketAddr>() {
            Ok(vip) if vip.port() != 0 => {
                let protos: Vec<String> = meta[n]
                    .protocol
                    .split(',')
                    .map(|p| p.trim().to_ascii_lowercase())
                    .filter(|p| p == "tcp" || p == "udp")
                    .collect();
                let protos = if protos.is_empty() { vec!["tcp".to_string()] } else { protos };
                let mut backends = Vec::new();
                let mut ips = HashSet::new();
                for task in &app.tasks {
                    let weight = match role(app, task) {
                        Role::Serving => 1,
                        Role::Draining => 0,
                        _ => continue,
                    };
                    if let Some(ip) = task_ip(app, task) {
                        if ips.insert(ip) {
                            backends.push(VipBackend { addr: ip, weight });
                        }
                    }
                }
                let base = format!("marathon-{}-{n}", default_dns_name(&app.id).replace('.', "-"));
                for (i, protocol) in protos.iter().enumerate() {
                    out.vips.push(Vip {
                        name: if i == 0 { base.clone() } else { format!("{base}-{protocol}") },
                        addr: vip.ip(),
                        port: vip.port(),
                        protocol: protocol.clone(),
                        backends: backends.clone(),
                        origin: Some(origin.to_string()),
                    });
                }
            }
            _ => problems.push(problem(app, &key(cfg, n, "VIP"), format!("`{v}`: expected ip:port"))),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// DNS services of an app: one per distinct name (`PADIS_{n}_DNS` per port, `PADIS_DNS` for all ports, or the
/// app id when `dns_by_default`).
fn services(
    app: &App,
    labels: &AppLabels,
    meta: &[PortMeta],
    cfg: &MarathonConfig,
    origin: &str,
) -> Result<Vec<Service>, Vec<AppProblem>> {
    let mut names: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let all: Vec<usize> = (0..meta.len()).collect();
    let app_level = labels.dns.clone().or_else(|| cfg.dns_by_default.then(|| default_dns_name(&app.id)));
    if let Some(name) = app_level {
        let label = format!("{}DNS", cfg.label_prefixes.first().map(String::as_str).unwrap_or("PADIS_"));
        names.insert(name.to_ascii_lowercase(), (label, all));
    }
    for (&n, pl) in &labels.ports {
        if let Some(d) = &pl.dns {
            names.entry(d.to_ascii_lowercase()).or_insert_with(|| (key(cfg, n, "DNS"), Vec::new())).1.push(n);
        }
    }
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (name, (label, mut ports)) in names {
        let name = name.trim_end_matches('.').to_string();
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            problems.push(problem(app, &label, format!("`{name}`: not a DNS name")));
            continue;
        }
        ports.sort_unstable();
        ports.dedup();
        let service_ports: Vec<ServicePort> = ports
            .iter()
            .map(|&n| ServicePort {
                name: meta[n].name.as_deref().map(str::to_ascii_lowercase).filter(|s| label_ok(s)),
                protocol: if meta[n].protocol.trim().eq_ignore_ascii_case("udp") { "udp".into() } else { "tcp".into() },
            })
            .collect();
        let mut instances = Vec::new();
        for task in &app.tasks {
            let (healthy, draining) = match role(app, task) {
                Role::Serving => (true, false),
                Role::Draining => (true, true),
                Role::Unhealthy => (false, false),
                Role::None => continue,
            };
            let Some(addr) = task_ip(app, task) else { continue };
            let inst_ports: Option<Vec<u16>> = ports.iter().map(|&n| task_port(app, meta, task, n)).collect();
            let Some(inst_ports) = inst_ports else { continue };
            instances.push(Instance { id: task.id.clone(), addr, ports: inst_ports, weight: 1, healthy, draining });
        }
        out.push(Service {
            name,
            zone: cfg.zone.clone(),
            ports: service_ports,
            instances,
            origin: Some(origin.to_string()),
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}
