//! Pure mapping: Marathon apps + labels -> backend groups, routes, DNS services and L4 VIPs.
//!
//! An app is served when its `GROUP` label names one of this node's groups. Everything an app produces is
//! checked before any of it is kept: an app with a bad label, or one that clashes with an app mapped before it
//! (same host + path, same VIP, same DNS name), goes to `problems` whole and the other apps still map.
//!
//! [`Mapper`] keeps each app's result between publications: an app that did not change (same allocation, or
//! equal) is not mapped again and contributes the same `Arc`s, and a changed app reuses the allocations of its
//! items that stayed equal. Only the clash check runs over all apps, on borrowed keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

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

/// An accepted app's items, shared, with the keys it claims against other apps.
struct Shared {
    groups: Vec<Arc<BackendGroup>>,
    routes: Vec<Arc<Route>>,
    services: Vec<Arc<Service>>,
    vips: Vec<Arc<Vip>>,
    route_keys: Vec<(Option<String>, String)>,
    vip_keys: Vec<(IpAddr, u16, String)>,
    service_keys: Vec<String>,
}

/// Each new item that equals the previous one at its position keeps the previous allocation.
fn reuse<T: PartialEq>(new: Vec<T>, old: &[Arc<T>]) -> Vec<Arc<T>> {
    new.into_iter()
        .enumerate()
        .map(|(i, x)| match old.get(i) {
            Some(o) if **o == x => o.clone(),
            _ => Arc::new(x),
        })
        .collect()
}

impl Shared {
    fn new(out: AppOutput, previous: Option<&Shared>) -> Shared {
        let route_keys = out.routes.iter().map(|r| (r.host.clone(), r.path.trim_end_matches('/').to_string())).collect();
        let vip_keys = out.vips.iter().map(|v| (v.addr, v.port, v.protocol.clone())).collect();
        let service_keys =
            out.services.iter().map(|s| format!("{}.{}", s.name, s.zone.as_deref().unwrap_or(""))).collect();
        Shared {
            groups: reuse(out.groups, previous.map_or(&[], |p| &p.groups)),
            routes: reuse(out.routes, previous.map_or(&[], |p| &p.routes)),
            services: reuse(out.services, previous.map_or(&[], |p| &p.services)),
            vips: reuse(out.vips, previous.map_or(&[], |p| &p.vips)),
            route_keys,
            vip_keys,
            service_keys,
        }
    }
}

/// What one app maps to on its own.
enum Outcome {
    /// Its group label names no group of this node.
    NotServed,
    /// Bad labels or values: reported, the app skipped.
    Problems(Vec<AppProblem>),
    /// Its items, still to be checked against other apps.
    Mapped(Shared),
}

/// An app and what it mapped to.
struct Entry {
    app: Arc<App>,
    outcome: Outcome,
}

/// Maps apps to the desired state Marathon contributes, remembering each app's outcome (see the module docs).
#[derive(Default)]
pub(crate) struct Mapper {
    by_id: HashMap<String, Entry, foldhash::fast::RandomState>,
}

/// Names and keys already taken by earlier apps.
#[derive(Default)]
struct Taken<'a> {
    routes: HashSet<(Option<&'a str>, &'a str), foldhash::fast::RandomState>,
    vips: HashSet<(IpAddr, u16, &'a str), foldhash::fast::RandomState>,
    services: HashSet<&'a str, foldhash::fast::RandomState>,
}

/// Maps apps (the `/v2/apps?embed=apps.tasks` body) to the desired state Marathon contributes.
pub fn map_apps(apps: &Apps, cfg: &MarathonConfig) -> MarathonState {
    Mapper::default().map(&apps.apps, &apps.rejected, cfg)
}

impl Mapper {
    /// Maps `apps` (the source's cached apps plus draining tasks); apps unchanged since the last call are not
    /// mapped again.
    pub(crate) fn map(&mut self, apps: &[Arc<App>], rejected: &[AppProblem], cfg: &MarathonConfig) -> MarathonState {
        let mut entries: Vec<(String, Entry)> = Vec::with_capacity(apps.len());
        for app in apps {
            let entry = match self.by_id.remove_entry(app.id.as_str()) {
                Some((id, e)) if Arc::ptr_eq(&e.app, app) => (id, e),
                Some((id, e)) if *e.app == **app => (id, Entry { app: app.clone(), outcome: e.outcome }),
                Some((id, e)) => (id, Entry { app: app.clone(), outcome: map_one(app, cfg, Some(&e.outcome)) }),
                None => (app.id.clone(), Entry { app: app.clone(), outcome: map_one(app, cfg, None) }),
            };
            entries.push(entry);
        }
        let state = accept(&entries, rejected);
        self.by_id.clear();
        self.by_id.extend(entries);
        state
    }
}

/// Maps one app alone (labels, tasks); `previous` is its last outcome, whose equal items are reused.
fn map_one(app: &App, cfg: &MarathonConfig, previous: Option<&Outcome>) -> Outcome {
    let (labels, errors) = labels::parse(&app.labels, &cfg.label_prefixes);
    let served = match &labels.group {
        Some(g) => cfg.serves_group(g),
        None => cfg.group.iter().any(|g| g == "*"),
    };
    if !served {
        return Outcome::NotServed;
    }
    if !errors.is_empty() {
        return Outcome::Problems(errors.into_iter().map(|e| AppProblem::new(&app.id, Some(e.label), e.message)).collect());
    }
    let previous = match previous {
        Some(Outcome::Mapped(s)) => Some(s),
        _ => None,
    };
    match map_app(app, &labels, cfg) {
        Ok(out) => Outcome::Mapped(Shared::new(out, previous)),
        Err(problems) => Outcome::Problems(problems),
    }
}

/// Puts the apps' outcomes together: the app whose config is older keeps what it serves when a newer one
/// clashes with it (same host + path, VIP or DNS name).
fn accept(entries: &[(String, Entry)], rejected: &[AppProblem]) -> MarathonState {
    let mut state = MarathonState { problems: rejected.to_vec(), ..MarathonState::default() };
    let mut order: Vec<&Entry> = entries.iter().map(|(_, e)| e).collect();
    fn changed(a: &App) -> &str {
        a.version_info.as_ref().and_then(|v| v.last_config_change_at.as_deref()).unwrap_or_default()
    }
    order.sort_by(|a, b| (changed(&a.app), a.app.id.as_str()).cmp(&(changed(&b.app), b.app.id.as_str())));
    let mut taken = Taken::default();
    for e in order {
        match &e.outcome {
            Outcome::NotServed => {}
            Outcome::Problems(p) => state.problems.extend(p.iter().cloned()),
            Outcome::Mapped(out) => match claim(out, &mut taken) {
                Ok(()) => {
                    state.groups.extend(out.groups.iter().cloned());
                    state.routes.extend(out.routes.iter().cloned());
                    state.services.extend(out.services.iter().cloned());
                    state.vips.extend(out.vips.iter().cloned());
                }
                Err(p) => state.problems.push(AppProblem::new(&e.app.id, None, p)),
            },
        }
    }
    state
}

/// Checks the app's keys against earlier apps, and takes them.
fn claim<'a>(out: &'a Shared, taken: &mut Taken<'a>) -> Result<(), String> {
    if let Some((h, p)) = out.route_keys.iter().find(|(h, p)| taken.routes.contains(&(h.as_deref(), p.as_str()))) {
        return Err(format!("host `{}` path `{p}` is already served by another app", h.as_deref().unwrap_or("*")));
    }
    if let Some((a, p, proto)) = out.vip_keys.iter().find(|(a, p, proto)| taken.vips.contains(&(*a, *p, proto.as_str()))) {
        return Err(format!("VIP {a}:{p}/{proto} is already used by another app"));
    }
    if let Some(s) = out.service_keys.iter().find(|k| taken.services.contains(k.as_str())) {
        return Err(format!("DNS name `{}` is already used by another app", s.trim_end_matches('.')));
    }
    taken.routes.extend(out.route_keys.iter().map(|(h, p)| (h.as_deref(), p.as_str())));
    taken.vips.extend(out.vip_keys.iter().map(|(a, p, proto)| (*a, *p, proto.as_str())));
    taken.services.extend(out.service_keys.iter().map(String::as_str));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(apps: usize, tasks_of_first: usize) -> String {
        let list: Vec<String> = (0..apps)
            .map(|i| {
                let n = if i == 0 { tasks_of_first } else { 2 };
                let tasks: Vec<String> = (0..n)
                    .map(|t| {
                        format!(
                            r#"{{"id":"a{i}.{t}","host":"10.0.{i}.{}","ports":[31000],"state":"TASK_RUNNING"}}"#,
                            t + 1
                        )
                    })
                    .collect();
                format!(
                    r#"{{"id":"/a{i}","labels":{{"PADIS_GROUP":"external","PADIS_0_VHOST":"a{i}.test"}},
                        "portDefinitions":[{{"port":0,"protocol":"tcp","name":"http"}}],"tasks":[{}]}}"#,
                    tasks.join(",")
                )
            })
            .collect();
        format!(r#"{{"apps":[{}]}}"#, list.join(","))
    }

    fn cfg() -> MarathonConfig {
        MarathonConfig { urls: vec!["http://127.0.0.1:1".into()], zone: Some("test".into()), ..Default::default() }
    }

    /// A change to one app leaves every other app's items the same allocations; the changed app keeps the
    /// allocations of its items that stayed equal (its route), and only its group and service are new.
    #[test]
    fn one_changed_app_leaves_the_others_shared() {
        let mut cache = crate::apps::ParseCache::default();
        let apps = Apps::from_json_reusing(body(20, 2).as_bytes(), &mut cache).unwrap();
        let mut mapper = Mapper::default();
        let s1 = mapper.map(&apps.apps, &apps.rejected, &cfg());
        assert_eq!((s1.groups.len(), s1.routes.len(), s1.services.len()), (20, 20, 20), "{:?}", s1.problems);

        // The next full sync: app 0 gained a task; the other apps' JSON is unchanged and is not parsed again.
        let apps2 = Apps::from_json_reusing(body(20, 3).as_bytes(), &mut cache).unwrap();
        assert!(!Arc::ptr_eq(&apps.apps[0], &apps2.apps[0]));
        assert!(apps.apps[1..].iter().zip(&apps2.apps[1..]).all(|(a, b)| Arc::ptr_eq(a, b)), "unchanged apps reused");
        let s2 = mapper.map(&apps2.apps, &apps2.rejected, &cfg());
        assert_eq!(s2.groups[0].backends.len(), 3);
        assert!(!Arc::ptr_eq(&s1.groups[0], &s2.groups[0]));
        assert!(!Arc::ptr_eq(&s1.services[0], &s2.services[0]));
        assert!(Arc::ptr_eq(&s1.routes[0], &s2.routes[0]), "an equal item keeps its allocation");
        for i in 1..20 {
            assert!(Arc::ptr_eq(&s1.groups[i], &s2.groups[i]), "group {i}");
            assert!(Arc::ptr_eq(&s1.routes[i], &s2.routes[i]), "route {i}");
            assert!(Arc::ptr_eq(&s1.services[i], &s2.services[i]), "service {i}");
        }
        // The same result as mapping from scratch.
        assert_eq!(s2, map_apps(&Apps::from_json(body(20, 3).as_bytes()).unwrap(), &cfg()));
    }

    /// An app that changes into a bad one, or into a clash with an older app, is reported with the messages a
    /// mapping from scratch gives, and the other apps stay shared.
    #[test]
    fn a_changed_app_with_problems_is_reported_as_from_scratch() {
        let apps = Apps::from_json(body(5, 2).as_bytes()).unwrap();
        let mut mapper = Mapper::default();
        let s1 = mapper.map(&apps.apps, &apps.rejected, &cfg());
        let mut changed = apps.clone();
        Arc::make_mut(&mut changed.apps[3]).labels.insert("PADIS_0_VHOST".into(), "Bad Host!".into());
        Arc::make_mut(&mut changed.apps[4]).labels.insert("PADIS_0_VHOST".into(), "a1.test".into());
        let s2 = mapper.map(&changed.apps, &changed.rejected, &cfg());
        let scratch = map_apps(&changed, &cfg());
        assert_eq!(s2, scratch);
        let problems: Vec<String> = s2.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            vec![
                "/a3: PADIS_0_VHOST: `bad host!`: not a host name or `*.suffix`".to_string(),
                "/a4: host `a1.test` path `` is already served by another app".to_string(),
            ]
        );
        assert_eq!(s2.groups.len(), 3);
        for i in 0..3 {
            assert!(Arc::ptr_eq(&s1.groups[i], &s2.groups[i]));
        }
    }
}
