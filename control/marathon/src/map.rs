//! Pure mapping: Marathon apps + labels -> backend groups, routes, DNS services and L4 VIPs.
//!
//! An app port is served when its `GROUP` label (the port's own, else the app's) names one of this node's
//! groups and it is not `ENABLED=false`. Everything an app produces is checked before any of it is kept: an app
//! with a bad label, or one that clashes with an app mapped before it (same host + path at the same
//! `BACKEND_WEIGHT`, same VIP, same DNS name), goes to `problems` whole and the other apps still map. A route
//! whose host + path another app claims with a higher `BACKEND_WEIGHT` is left out alone (marathon-lb orders its
//! ACLs by that weight: the lower one is never reached). Labels Padis does not honour are reported per app
//! ([`crate::Effect::LabelIgnored`]), or keep their port unserved when ignoring them could widen access.
//!
//! Apps of one `DEPLOYMENT_GROUP` (marathon-lb's blue/green "zdd") are first merged into one app named after the
//! group, as marathon-lb does: the old colour's labels and ports, the tasks of both colours, and as many old
//! tasks draining as the new colour has healthy instances beyond `DEPLOYMENT_TARGET_INSTANCES`.
//!
//! [`Mapper`] keeps each app's result between publications: an app that did not change (same allocation, or
//! equal) is not mapped again and contributes the same `Arc`s, and a changed app reuses the allocations of its
//! items that stayed equal. Only the clash check runs over all apps, on borrowed keys.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use padis_model::l4::{Vip, VipBackend};
use padis_model::marathon::MarathonConfig;
use std::time::Duration;

use padis_model::{
    binds_overlap, crypt_kind, AcceptProxy, Backend, BackendGroup, Balance, BasicAuth, BasicAuthUser, HashKey,
    HealthCheck, Instance, Listener, ListenerTls, Route, Service, ServicePort,
};

use crate::apps::{App, Apps, MarathonHealthCheck, PortMeta, Task};
use crate::labels::{self, AppLabels, Label, PortLabels};
use crate::{AppProblem, Effect, MarathonState};

/// What a task is to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Running and healthy: takes new requests.
    Serving,
    /// Being killed, or of the old colour of a blue/green deployment: in-flight requests finish, no new ones.
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

/// The task's Mesos state; a task of Marathon <= 1.3 has no `state` and is running once it has a start time.
fn state(task: &Task) -> &str {
    if task.state.is_empty() && task.started_at.as_deref().is_some_and(|s| !s.is_empty()) {
        "TASK_RUNNING"
    } else {
        &task.state
    }
}

/// The task's role, from its state and health.
pub fn role(app: &App, task: &Task) -> Role {
    let role = match state(task) {
        "TASK_RUNNING" if healthy(app, task) => Role::Serving,
        "TASK_RUNNING" => Role::Unhealthy,
        "TASK_KILLING" if task.health_check_results.iter().all(|r| r.alive) => Role::Draining,
        _ => Role::None,
    };
    if role == Role::Serving && task.deployment_draining {
        Role::Draining
    } else {
        role
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
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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
    /// `BACKEND_WEIGHT` of each route (same order).
    weights: Vec<i64>,
    services: Vec<Service>,
    vips: Vec<Vip>,
    /// Service-port listeners, each with its route (HTTP) or none (TCP: relayed to the port's group).
    listeners: Vec<(Listener, Option<Route>)>,
    /// Labels not honoured, ports not served: reported, the rest of the app served.
    warnings: Vec<AppProblem>,
}

/// A route's claim: host, path (without trailing `/`), `BACKEND_WEIGHT`.
type RouteKey = (Option<String>, String, i64);

/// An accepted app's items, shared, with the keys it claims against other apps.
struct Shared {
    groups: Vec<Arc<BackendGroup>>,
    routes: Vec<Arc<Route>>,
    services: Vec<Arc<Service>>,
    vips: Vec<Arc<Vip>>,
    listeners: Vec<(Listener, Option<Arc<Route>>)>,
    route_keys: Vec<RouteKey>,
    vip_keys: Vec<(IpAddr, u16, String)>,
    service_keys: Vec<String>,
    warnings: Vec<AppProblem>,
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
        let route_keys = out
            .routes
            .iter()
            .zip(&out.weights)
            .map(|(r, w)| (r.host.clone(), r.path.trim_end_matches('/').to_string(), *w))
            .collect();
        let vip_keys = out.vips.iter().map(|v| (v.addr, v.port, v.protocol.clone())).collect();
        let service_keys =
            out.services.iter().map(|s| format!("{}.{}", s.name, s.zone.as_deref().unwrap_or(""))).collect();
        let old_listeners = previous.map_or(&[][..], |p| &p.listeners[..]);
        let listeners = out
            .listeners
            .into_iter()
            .enumerate()
            .map(|(i, (l, r))| {
                let r = r.map(|r| match old_listeners.get(i).and_then(|(_, o)| o.as_ref()) {
                    Some(o) if **o == r => o.clone(),
                    _ => Arc::new(r),
                });
                (l, r)
            })
            .collect();
        Shared {
            listeners,
            groups: reuse(out.groups, previous.map_or(&[], |p| &p.groups)),
            routes: reuse(out.routes, previous.map_or(&[], |p| &p.routes)),
            services: reuse(out.services, previous.map_or(&[], |p| &p.services)),
            vips: reuse(out.vips, previous.map_or(&[], |p| &p.vips)),
            route_keys,
            vip_keys,
            service_keys,
            warnings: out.warnings,
        }
    }
}

/// What one app maps to on its own.
enum Outcome {
    /// Its group labels name no group of this node.
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
    /// Service-port listeners' addresses, with their app.
    binds: Vec<(SocketAddr, &'a str)>,
}

/// Maps apps (the `/v2/apps?embed=apps.tasks` body) to the desired state Marathon contributes.
pub fn map_apps(apps: &Apps, cfg: &MarathonConfig) -> MarathonState {
    Mapper::default().map(&apps.apps, &apps.rejected, cfg)
}

impl Mapper {
    /// Maps `apps` (the source's cached apps plus draining tasks); apps unchanged since the last call are not
    /// mapped again.
    pub(crate) fn map(&mut self, apps: &[Arc<App>], rejected: &[AppProblem], cfg: &MarathonConfig) -> MarathonState {
        let (apps, merge_problems) = merge_deployments(apps, cfg);
        let mut entries: Vec<(String, Entry)> = Vec::with_capacity(apps.len());
        for app in &apps {
            let entry = match self.by_id.remove_entry(app.id.as_str()) {
                Some((id, e)) if Arc::ptr_eq(&e.app, app) => (id, e),
                Some((id, e)) if *e.app == **app => (id, Entry { app: app.clone(), outcome: e.outcome }),
                Some((id, e)) => (id, Entry { app: app.clone(), outcome: map_one(app, cfg, Some(&e.outcome)) }),
                None => (app.id.clone(), Entry { app: app.clone(), outcome: map_one(app, cfg, None) }),
            };
            entries.push(entry);
        }
        let mut state = accept(&entries, rejected);
        state.problems.extend(merge_problems);
        self.by_id.clear();
        self.by_id.extend(entries);
        state
    }
}

/// The value of an app-level label under the first prefix that has it.
fn app_label<'a>(app: &'a App, cfg: &MarathonConfig, name: &str) -> Option<(String, &'a str)> {
    cfg.label_prefixes.iter().find_map(|p| {
        let key = format!("{p}{name}");
        app.labels.get(&key).map(|v| (key, v.trim()))
    })
}

/// marathon-lb's blue/green merge (see the module docs). Apps without a `DEPLOYMENT_GROUP` pass unchanged.
fn merge_deployments(apps: &[Arc<App>], cfg: &MarathonConfig) -> (Vec<Arc<App>>, Vec<AppProblem>) {
    let mut problems = Vec::new();
    let mut groups: BTreeMap<String, Vec<&Arc<App>>> = BTreeMap::new();
    let mut out = Vec::with_capacity(apps.len());
    for app in apps {
        match app_label(app, cfg, "DEPLOYMENT_GROUP").filter(|(_, g)| !g.trim_matches('/').is_empty()) {
            Some((_, g)) => {
                let id = if g.starts_with('/') { g.to_string() } else { format!("/{g}") };
                groups.entry(id).or_default().push(app);
            }
            None => out.push(app.clone()),
        }
    }
    for (id, mut members) in groups {
        // The colour whose deployment started later is the new one (an unset start time counts as oldest).
        let started =
            |a: &App| app_label(a, cfg, "DEPLOYMENT_STARTED_AT").map(|(_, v)| v.to_string()).unwrap_or_default();
        members.sort_by(|a, b| (started(a), &a.id).cmp(&(started(b), &b.id)));
        let mut merged: App = (**members[0]).clone();
        for next in &members[1..] {
            merge_colours(&mut merged, next, cfg, &mut problems);
        }
        merged.id = id;
        out.push(Arc::new(merged));
    }
    (out, problems)
}

/// Merges the newer colour `new` into `old` (in place): old tasks are marked draining as the new colour's healthy
/// instances take over, up to what `DEPLOYMENT_TARGET_INSTANCES` leaves.
fn merge_colours(old: &mut App, new: &App, cfg: &MarathonConfig, problems: &mut Vec<AppProblem>) {
    let mut new_is_new = true;
    if app_label(new, cfg, "DEPLOYMENT_NEW_INSTANCES").is_some() {
        // A colour scaled after the other is the one being deployed (marathon-lb: `lastScalingAt`).
        let scaled = |a: &App| a.version_info.as_ref().and_then(|v| v.last_scaling_at.clone()).unwrap_or_default();
        if scaled(old) > scaled(new) {
            new_is_new = false;
        }
    }
    let (old_app, new_app): (App, &App) = if new_is_new { (old.clone(), new) } else { (new.clone(), &*old) };
    let target = match app_label(new_app, cfg, "DEPLOYMENT_TARGET_INSTANCES") {
        None => 1,
        Some((key, v)) => v.parse::<u32>().unwrap_or_else(|_| {
            problems.push(
                AppProblem::new(&new_app.id, Some(key), format!("`{v}`: expected a number of instances; taken as 1"))
                    .with_effect(Effect::LabelIgnored),
            );
            1
        }),
    };
    if let Some((key, v)) = app_label(new_app, cfg, "DEPLOYMENT_ALT_PORT") {
        if v.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            problems.push(
                AppProblem::new(&new_app.id, Some(key), format!("`{v}`: expected a port number"))
                    .with_effect(Effect::LabelIgnored),
            );
        }
    }
    let healthy_new = new_app.tasks.iter().filter(|t| role(new_app, t) == Role::Serving).count();
    let drainable = (healthy_new + old_app.instances as usize).saturating_sub(target as usize);
    let mut old_tasks = old_app.tasks.clone();
    old_tasks.sort_by(|a, b| a.id.cmp(&b.id));
    let n = old_tasks.len().min(healthy_new).min(drainable);
    for t in &mut old_tasks[..n] {
        t.deployment_draining = true;
    }
    let mut merged = old_app;
    merged.tasks = old_tasks;
    merged.tasks.extend(new_app.tasks.iter().cloned());
    *old = merged;
}

/// Whether this node serves apps labelled with `group` (no label: only a node serving `*`).
fn serves(cfg: &MarathonConfig, group: Option<&Label>) -> bool {
    match group {
        Some(g) => cfg.serves_group(&g.value),
        None => cfg.group.iter().any(|g| g == "*"),
    }
}

/// Maps one app alone (labels, tasks); `previous` is its last outcome, whose equal items are reused.
fn map_one(app: &App, cfg: &MarathonConfig, previous: Option<&Outcome>) -> Outcome {
    let (labels, errors) = labels::parse(&app.labels, &cfg.label_prefixes);
    let app_served = serves(cfg, labels.group.as_ref());
    let port_served = labels.ports.values().any(|p| p.group.as_ref().is_some_and(|g| cfg.serves_group(&g.value)));
    if !app_served && !port_served {
        return Outcome::NotServed;
    }
    if !errors.is_empty() {
        return Outcome::Problems(
            errors.into_iter().map(|e| AppProblem::new(&app.id, Some(e.label), e.message)).collect(),
        );
    }
    let previous = match previous {
        Some(Outcome::Mapped(s)) => Some(s),
        _ => None,
    };
    match map_app(app, &labels, cfg, app_served) {
        Ok(out) => Outcome::Mapped(Shared::new(out, previous)),
        Err(problems) => Outcome::Problems(problems),
    }
}

/// Puts the apps' outcomes together: the app whose config is older keeps what it serves when a newer one
/// clashes with it (same host + path at the same weight, VIP or DNS name); a route of lower `BACKEND_WEIGHT`
/// than another app's on the same host + path is left out alone.
fn accept(entries: &[(String, Entry)], rejected: &[AppProblem]) -> MarathonState {
    let mut state = MarathonState { problems: rejected.to_vec(), ..MarathonState::default() };
    let mut order: Vec<&Entry> = entries.iter().map(|(_, e)| e).collect();
    fn changed(a: &App) -> &str {
        a.version_info.as_ref().and_then(|v| v.last_config_change_at.as_deref()).unwrap_or_default()
    }
    order.sort_by(|a, b| (changed(&a.app), a.app.id.as_str()).cmp(&(changed(&b.app), b.app.id.as_str())));
    // The highest weight claiming each host + path.
    let mut best: HashMap<(Option<&str>, &str), (i64, &str), foldhash::fast::RandomState> = HashMap::default();
    for e in &order {
        if let Outcome::Mapped(out) = &e.outcome {
            for (h, p, w) in &out.route_keys {
                let b = best.entry((h.as_deref(), p.as_str())).or_insert((*w, e.app.id.as_str()));
                if *w > b.0 {
                    *b = (*w, e.app.id.as_str());
                }
            }
        }
    }
    let mut taken = Taken::default();
    for e in order {
        match &e.outcome {
            Outcome::NotServed => {}
            Outcome::Problems(p) => state.problems.extend(p.iter().cloned()),
            Outcome::Mapped(out) => {
                state.problems.extend(out.warnings.iter().cloned());
                let shadowed: Vec<bool> = out
                    .route_keys
                    .iter()
                    .map(|(h, p, w)| best.get(&(h.as_deref(), p.as_str())).is_some_and(|b| b.0 > *w))
                    .collect();
                match claim(out, &shadowed, &mut taken) {
                    Ok(()) => {
                        state.groups.extend(out.groups.iter().cloned());
                        for ((r, (h, p, w)), s) in out.routes.iter().zip(&out.route_keys).zip(&shadowed) {
                            if !*s {
                                state.routes.push(r.clone());
                                continue;
                            }
                            let (bw, by) = best[&(h.as_deref(), p.as_str())];
                            state.problems.push(
                                AppProblem::new(
                                    &e.app.id,
                                    None,
                                    format!(
                                        "route `{}`: host `{}` path `{p}` goes to {by} (BACKEND_WEIGHT {bw} > {w})",
                                        r.name,
                                        h.as_deref().unwrap_or("*")
                                    ),
                                )
                                .with_effect(Effect::RouteSkipped),
                            );
                        }
                        state.services.extend(out.services.iter().cloned());
                        state.vips.extend(out.vips.iter().cloned());
                        for (l, r) in &out.listeners {
                            if let Some((_, by)) = taken.binds.iter().find(|(b, _)| binds_overlap(*b, l.bind)) {
                                let port = l.bind.port();
                                let message = format!("service port {port}: {} is already used by {by}", l.bind);
                                let p = AppProblem::new(&e.app.id, None, message);
                                state.problems.push(p.with_effect(Effect::ListenerSkipped));
                                continue;
                            }
                            taken.binds.push((l.bind, e.app.id.as_str()));
                            state.listeners.push(l.clone());
                            state.routes.extend(r.iter().cloned());
                        }
                    }
                    Err(p) => state.problems.push(AppProblem::new(&e.app.id, None, p)),
                }
            }
        }
    }
    state
}

/// Checks the app's keys against earlier apps, and takes them (shadowed routes claim nothing).
fn claim<'a>(out: &'a Shared, shadowed: &[bool], taken: &mut Taken<'a>) -> Result<(), String> {
    let live = || out.route_keys.iter().zip(shadowed).filter(|(_, s)| !**s).map(|(k, _)| k);
    if let Some((h, p, _)) = live().find(|(h, p, _)| taken.routes.contains(&(h.as_deref(), p.as_str()))) {
        return Err(format!("host `{}` path `{p}` is already served by another app", h.as_deref().unwrap_or("*")));
    }
    if let Some((a, p, proto)) =
        out.vip_keys.iter().find(|(a, p, proto)| taken.vips.contains(&(*a, *p, proto.as_str())))
    {
        return Err(format!("VIP {a}:{p}/{proto} is already used by another app"));
    }
    if let Some(s) = out.service_keys.iter().find(|k| taken.services.contains(k.as_str())) {
        return Err(format!("DNS name `{}` is already used by another app", s.trim_end_matches('.')));
    }
    taken.routes.extend(live().map(|(h, p, _)| (h.as_deref(), p.as_str())));
    taken.vips.extend(out.vip_keys.iter().map(|(a, p, proto)| (*a, *p, proto.as_str())));
    taken.services.extend(out.service_keys.iter().map(String::as_str));
    Ok(())
}

fn problem(app: &App, label: &Label, message: impl Into<String>) -> AppProblem {
    AppProblem::new(&app.id, Some(label.key.clone()), message)
}

/// The key of a per-port label the app did not write (for problems), with the first configured prefix.
fn key(cfg: &MarathonConfig, n: usize, k: &str) -> String {
    format!("{}{n}_{k}", cfg.label_prefixes.first().map(String::as_str).unwrap_or("PADIS_"))
}

fn map_app(
    app: &App,
    labels: &AppLabels,
    cfg: &MarathonConfig,
    app_served: bool,
) -> Result<AppOutput, Vec<AppProblem>> {
    let meta = app.port_meta();
    let mut problems = Vec::new();
    let mut out = AppOutput::default();
    let origin = format!("marathon:{}", app.id);
    // Unsupported labels: reported; a port whose label could widen access if ignored is not served.
    let mut closed: HashSet<usize> = HashSet::new();
    for u in &labels.unsupported {
        let n = port_of(&u.key, &cfg.label_prefixes);
        let effect = match n {
            Some(n) if u.fail_closed => {
                closed.insert(n);
                Effect::PortSkipped
            }
            _ => Effect::LabelIgnored,
        };
        let mut p = AppProblem::new(&app.id, Some(u.key.clone()), u.reason).with_effect(effect);
        p.unsupported = Some(u.name.clone());
        out.warnings.push(p);
    }
    let mut served = vec![false; meta.len()];
    for (&n, pl) in labels.ports.range(meta.len()..) {
        let k = [&pl.vhost, &pl.path, &pl.vip, &pl.dns, &pl.mode]
            .into_iter()
            .flatten()
            .next()
            .map(|l| l.key.clone())
            .unwrap_or_else(|| key(cfg, n, "*"));
        let message = format!("port index {n}: the app declares {} port(s)", meta.len());
        problems.push(AppProblem::new(&app.id, Some(k), message));
    }
    let unlabelled = PortLabels::default();
    for (n, served) in served.iter_mut().enumerate() {
        let pl = labels.ports.get(&n).unwrap_or(&unlabelled);
        let group_ok = match &pl.group {
            Some(g) => cfg.serves_group(&g.value),
            None => app_served,
        };
        let enabled = match &pl.enabled {
            None => true,
            Some(l) => match labels::boolean(&l.value) {
                Some(b) => b,
                None => {
                    problems.push(problem(app, l, "expected true or false"));
                    continue;
                }
            },
        };
        if !group_ok || !enabled || closed.contains(&n) {
            continue;
        }
        *served = true;
        let key_of = |k: &str| key(cfg, n, k);
        if let Err(p) = map_port(app, &meta, n, pl, &origin, cfg, &key_of, &mut out) {
            problems.extend(p);
        }
    }
    if let Some(l) = &labels.deployment_alt_port {
        if l.value.parse::<u16>().ok().filter(|p| *p != 0).is_none() {
            problems.push(problem(app, l, format!("`{}`: expected a port number", l.value)));
        }
    }
    match services(app, labels, &meta, &served, cfg, &origin) {
        Ok(s) => out.services = s,
        Err(p) => problems.extend(p),
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// The port index of a per-port label key (`HAPROXY_3_BACKEND_HEAD` -> 3).
fn port_of(key: &str, prefixes: &[String]) -> Option<usize> {
    let rest = prefixes.iter().find_map(|p| key.strip_prefix(p.as_str()))?;
    rest.split_once('_')?.0.parse().ok()
}

/// Path prefixes of a `PATH` label: marathon-lb's `path_beg` syntax, `[-i] /a [/b ...]`. Returns the paths and
/// whether they match without regard to case.
fn parse_paths(l: &Label) -> Result<(Vec<String>, bool), String> {
    let mut ignore_case = false;
    let mut paths = Vec::new();
    for t in l.value.split_whitespace() {
        match t {
            "-i" => ignore_case = true,
            f if f.starts_with('-') => return Err(format!("`{f}`: only the `-i` flag is supported")),
            p if p.starts_with('/') => {
                if !paths.iter().any(|x| x == p) {
                    paths.push(p.to_string());
                }
            }
            p => return Err(format!("`{p}`: a path must start with `/`")),
        }
    }
    if paths.is_empty() {
        return Err("no path".into());
    }
    Ok((paths, ignore_case))
}

/// `AUTH`: `realm:user:hash` (marathon-lb splits on `:`, so neither realm nor user contains one).
fn parse_auth(l: &Label) -> Result<BasicAuth, String> {
    let mut it = l.value.splitn(3, ':');
    let (Some(realm), Some(user), Some(hash)) = (it.next(), it.next(), it.next()) else {
        return Err("expected realm:user:password-hash".into());
    };
    if user.is_empty() || hash.is_empty() {
        return Err("expected realm:user:password-hash".into());
    }
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        return Err("the realm must not contain `\"`, `\\` or control characters".into());
    }
    Ok(BasicAuth {
        realm: realm.to_string(),
        users: vec![BasicAuthUser { user: user.to_string(), hash: hash.to_string() }],
    })
}

/// `BACKEND_NETWORK_ALLOWED_ACL`: space-separated addresses or networks.
fn parse_cidrs(l: &Label) -> Result<Vec<ipnet::IpNet>, String> {
    let mut out = Vec::new();
    for t in l.value.split_whitespace() {
        let net = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("`{t}`: not an address or network"))?;
        out.push(net.trunc());
    }
    if out.is_empty() {
        return Err("no address or network".into());
    }
    Ok(out)
}

/// A boolean label, or a problem.
fn flag(app: &App, l: &Option<Label>, problems: &mut Vec<AppProblem>) -> bool {
    match l.as_ref().map(|l| (l, labels::boolean(&l.value))) {
        None => false,
        Some((_, Some(b))) => b,
        Some((l, None)) => {
            problems.push(problem(app, l, "expected true or false"));
            false
        }
    }
}

/// A path-prefix label (`/x`, no space), or a problem.
fn prefix(app: &App, l: &Option<Label>, problems: &mut Vec<AppProblem>) -> Option<String> {
    let l = l.as_ref()?;
    if l.value.starts_with('/') && !l.value.contains(char::is_whitespace) {
        Some(l.value.clone())
    } else {
        problems.push(problem(app, l, format!("`{}`: must be a path starting with `/`", l.value)));
        None
    }
}

/// The Marathon health check of port index `n` (`portIndex`, 0 when not given, as Marathon defaults it).
fn marathon_check(app: &App, n: usize) -> Option<&MarathonHealthCheck> {
    app.health_checks.iter().find(|c| c.port_index.unwrap_or(0) as usize == n)
}

/// The active check of a port whose backends are probed on port index `k` (`BACKEND_HEALTHCHECK_PORT_INDEX`),
/// as marathon-lb turns the Marathon health check of that port into HAProxy's `check port`: its HTTP path
/// (HTTP, MESOS_HTTP), or a TCP connect (TCP, MESOS_TCP, HTTPS, COMMAND, or no Marathon check), with its interval,
/// timeout and failures; `path` (`HEALTHCHECK_PATH`) makes it an HTTP check of that path.
fn check_on_port(app: &App, k: usize, path: Option<&str>) -> HealthCheck {
    let mc = marathon_check(app, k);
    let http_path = path.map(str::to_string).or_else(|| {
        mc.filter(|c| matches!(c.protocol.to_ascii_uppercase().as_str(), "HTTP" | "MESOS_HTTP"))
            .map(|c| c.path.clone().unwrap_or_else(|| "/".into()))
    });
    let mut check = match &http_path {
        Some(p) => serde_json::from_value::<HealthCheck>(serde_json::json!({ "kind": "http", "path": p })),
        None => serde_json::from_value::<HealthCheck>(serde_json::json!({ "kind": "tcp" })),
    }
    .expect("HealthCheck defaults deserialize");
    if let Some(c) = mc {
        if let Some(i) = c.interval_seconds.filter(|i| *i > 0) {
            check.interval = Duration::from_secs(u64::from(i));
        }
        if let Some(t) = c.timeout_seconds.filter(|t| *t > 0) {
            check.timeout = Duration::from_secs(u64::from(t));
        }
        check.timeout = check.timeout.min(check.interval);
        if let Some(f) = c.max_consecutive_failures.filter(|f| *f > 0) {
            // HAProxy `fall` as marathon-lb sets it.
            check.fall = f.saturating_add(1);
        }
    }
    check
}

/// `BIND_OPTIONS`: HAProxy `bind` options. `alpn <protocols>` is honoured on TLS listeners; options that only
/// restrict old TLS versions are what Padis does anyway (it offers TLS 1.2 and 1.3 only). Returns the ALPN list
/// and the options not honoured.
fn parse_bind_options(value: &str) -> (Option<Vec<String>>, bool, Vec<String>) {
    let mut alpn = None;
    let mut accept_proxy = false;
    let mut other = Vec::new();
    let mut it = value.split_whitespace();
    while let Some(t) = it.next() {
        match t {
            "alpn" => match it.next() {
                Some(list) => {
                    let protos: Vec<String> = list.split(',').map(str::to_string).collect();
                    if protos.iter().all(|p| p == "h2" || p == "http/1.1") {
                        alpn = Some(protos);
                    } else {
                        other.push(format!("alpn {list}"));
                    }
                }
                None => other.push("alpn".into()),
            },
            "no-sslv3" | "no-tlsv10" | "no-tlsv11" | "force-tlsv12" => {}
            "accept-proxy" => accept_proxy = true,
            "ssl-min-ver" => match it.next() {
                Some(v @ ("SSLv3" | "TLSv1.0" | "TLSv1.1" | "TLSv1.2")) => {
                    let _ = v;
                }
                Some(v) => other.push(format!("ssl-min-ver {v}")),
                None => other.push("ssl-min-ver".into()),
            },
            t => other.push(t.to_string()),
        }
    }
    (alpn, accept_proxy, other)
}

/// Whether the port's tasks are reached on the VIP's port: an L4 VIP forwards packets unchanged (direct server
/// return keeps the destination port), so the tasks must listen on it. With IP-per-task networking that is the
/// container port; otherwise the host port, which must then be the same for every task (a fixed `hostPort`, or
/// `requirePorts`): Mesos' random host ports would make several tasks of one agent one backend.
fn vip_port_problem(app: &App, meta: &PortMeta, vip_port: u16) -> Option<String> {
    if app.ip_per_task() {
        let cp = meta.container_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
        return match cp {
            Some(p) if p == vip_port => None,
            Some(p) => Some(format!("the tasks listen on container port {p}, not on the VIP's port {vip_port}")),
            None => None,
        };
    }
    match meta.host_port {
        Some(p) if p == vip_port => None,
        Some(p) => Some(format!("the tasks listen on host port {p}, not on the VIP's port {vip_port}")),
        None => Some(format!(
            "the tasks listen on host ports Mesos picks per task, not on the VIP's port {vip_port} (tasks of one \
             agent would be one backend)"
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn map_port(
    app: &App,
    meta: &[PortMeta],
    n: usize,
    pl: &PortLabels,
    origin: &str,
    cfg: &MarathonConfig,
    key_of: &dyn Fn(&str) -> String,
    out: &mut AppOutput,
) -> Result<(), Vec<AppProblem>> {
    let mut problems = Vec::new();
    let routed = pl.vhost.is_some() || pl.path.is_some();
    // marathon-lb's mode: the MODE label, else http with a VHOST (Padis: or a PATH) or a Marathon HTTP health
    // check on the port, else tcp.
    let tcp = match pl.mode.as_ref().map(|l| (l, l.value.to_ascii_lowercase())) {
        None => !routed && !marathon_check(app, n).is_some_and(|c| c.protocol.eq_ignore_ascii_case("HTTP")),
        Some((_, m)) if m == "http" => false,
        Some((_, m)) if m == "tcp" => true,
        Some((l, m)) => {
            problems.push(problem(app, l, format!("`{m}`: expected http or tcp")));
            false
        }
    };
    let routes = !tcp && routed;
    // The health check port (`check port`): index `k`'s port of each task.
    let check_index = match &pl.healthcheck_port_index {
        None => None,
        Some(l) => match l.value.parse::<usize>() {
            Ok(k) if k < meta.len() => Some(k),
            _ => {
                problems.push(problem(app, l, format!("`{}`: expected a port index below {}", l.value, meta.len())));
                None
            }
        },
    };
    // The service-port listener.
    let listener_labels = [&pl.port, &pl.bind_addr, &pl.bind_options, &pl.ssl_cert];
    let service_port = match &pl.port {
        None => meta[n].service_port,
        Some(l) => match l.value.parse::<u16>() {
            Ok(p) if p != 0 => Some(p),
            _ => {
                problems.push(problem(app, l, format!("`{}`: expected a port number (1-65535)", l.value)));
                None
            }
        },
    };
    let mut listener: Option<Listener> = None;
    let (mut refused, mut http_listener, mut tcp_listener) = (false, false, false);
    let udp_only = !meta[n].protocol.is_empty() && !meta[n].protocol.to_ascii_lowercase().contains("tcp");
    if !cfg.service_ports || service_port.is_none() || udp_only {
        let why = if !cfg.service_ports {
            "service-port listeners are off on this node ([marathon] service_ports = false)"
        } else if udp_only {
            "a UDP port: service-port listeners are TCP"
        } else {
            "the port has no service port (servicePort / PORT): no listener to configure"
        };
        for l in listener_labels.into_iter().flatten() {
            out.warnings.push(problem(app, l, why).with_effect(Effect::LabelIgnored));
        }
    } else if let Some(sp) = service_port {
        let ip = match &pl.bind_addr {
            None => Some(cfg.service_port_bind),
            Some(l) if l.value == "*" || l.value.is_empty() => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            Some(l) => match l.value.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    problems.push(problem(app, l, format!("`{}`: expected an IP address or `*`", l.value)));
                    None
                }
            },
        };
        let (alpn, accept_proxy, unhonoured) =
            pl.bind_options.as_ref().map(|l| parse_bind_options(&l.value)).unwrap_or_default();
        if let (Some(l), false) = (&pl.bind_options, unhonoured.is_empty()) {
            let mut p =
                problem(app, l, format!("not honoured: {}", unhonoured.join(", "))).with_effect(Effect::LabelIgnored);
            p.unsupported = Some("BIND_OPTIONS".into());
            out.warnings.push(p);
        }
        // What the TCP mode cannot do is not done in the open: the listener stays closed.
        let refuse = if tcp { pl.auth.as_ref().map(|l| (l, "not enforceable by the TCP mode")) } else { None };
        // The ACL of a TCP port is its listener's (connections from other sources are reset at accept); one that
        // cannot be read keeps the port closed rather than open to all.
        let (tcp_acl, acl_problem) = match (&pl.network_allowed, tcp) {
            (Some(l), true) => match parse_cidrs(l) {
                Ok(nets) => (nets, None),
                Err(e) => (Vec::new(), Some((l, e))),
            },
            _ => (Vec::new(), None),
        };
        // `accept-proxy`: PROXY headers are taken from the sources this node trusts for it, never from anyone.
        let proxy_untrusted = pl.bind_options.as_ref().filter(|_| accept_proxy && cfg.accept_proxy_from.is_empty());
        if let Some(l) = proxy_untrusted {
            refused = true;
            let p = problem(
                app,
                l,
                format!(
                    "accept-proxy needs the sources trusted to send PROXY headers ([marathon] accept_proxy_from): \
                     the service port {sp} is not opened"
                ),
            );
            out.warnings.push(p.with_effect(Effect::ListenerSkipped));
        } else if let Some((l, why)) = acl_problem {
            refused = true;
            let p = problem(app, l, format!("{why}: the service port {sp} is not opened"));
            out.warnings.push(p.with_effect(Effect::ListenerSkipped));
        } else if let Some((l, why)) = refuse {
            refused = true;
            let p = problem(app, l, format!("{why}: the service port {sp} is not opened"));
            out.warnings.push(p.with_effect(Effect::ListenerSkipped));
        } else if let Some(ip) = ip {
            let mut l: Listener = serde_json::from_value(serde_json::json!({
                "name": format!("{origin}:{n}"),
                "bind": SocketAddr::new(ip, sp),
                "mode": if tcp { "tcp" } else { "http" },
            }))
            .expect("Listener defaults deserialize");
            l.origin = Some(origin.to_string());
            if accept_proxy {
                l.proxy_protocol = Some(AcceptProxy { trusted: cfg.accept_proxy_from.clone() });
            }
            if let Some(c) = pl.ssl_cert.as_ref().filter(|c| !c.value.is_empty()) {
                let mut t: ListenerTls = serde_json::from_value(serde_json::json!({})).expect("defaults");
                t.certificates = vec![c.value.clone()];
                t.default_certificate = Some(c.value.clone());
                match alpn {
                    Some(a) => t.alpn = a,
                    // A TCP port's bytes are the app's protocol: no ALPN unless BIND_OPTIONS names some.
                    None if tcp => t.alpn.clear(),
                    None => {}
                }
                l.tls = Some(t);
            }
            if tcp {
                l.group = Some(format!("{origin}:{n}"));
                l.allow_cidrs = tcp_acl;
            } else {
                l.named_routes_only = true;
            }
            listener = Some(l);
        }
    }
    if routes || listener.is_some() {
        let group_name = format!("{origin}:{n}");
        let mut group = GROUP_TEMPLATE.clone();
        group.name = group_name.clone();
        group.origin = Some(origin.to_string());
        match pl.balance.as_ref().map(|l| (l, l.value.to_ascii_lowercase())) {
            None => {}
            Some((_, b)) if matches!(b.as_str(), "roundrobin" | "round_robin" | "static-rr") => {}
            Some((_, b)) if matches!(b.as_str(), "leastconn" | "least_request" | "least_conn") => {
                group.balance = Balance::LeastRequest
            }
            Some((_, b)) if matches!(b.as_str(), "source" | "maglev") => {
                group.balance = Balance::Maglev;
                group.hash_key = Some(HashKey::ClientIp);
            }
            Some((_, b)) if b == "sticky" => group.balance = Balance::Sticky,
            Some((l, b)) => problems.push(problem(
                app,
                l,
                format!("`{b}`: expected roundrobin, leastconn, source, maglev or sticky"),
            )),
        }
        if flag(app, &pl.sticky, &mut problems) {
            group.balance = Balance::Sticky;
            group.hash_key = None;
        }
        if let Some(l) = &pl.healthcheck_path {
            if l.value.starts_with('/') {
                match serde_json::from_value::<HealthCheck>(serde_json::json!({ "path": l.value })) {
                    Ok(h) => group.health = Some(h),
                    Err(e) => problems.push(problem(app, l, e.to_string())),
                }
            } else {
                problems.push(problem(app, l, "must start with `/`"));
            }
        }
        if let Some(k) = check_index {
            let path = pl.healthcheck_path.as_ref().map(|l| l.value.as_str()).filter(|p| p.starts_with('/'));
            group.health = Some(check_on_port(app, k, path));
        }
        if !tcp {
            let redirect_https = flag(app, &pl.redirect_https, &mut problems);
            let hsts = flag(app, &pl.use_hsts, &mut problems);
            let (paths, path_ignore_case) = match &pl.path {
                None => (vec!["/".to_string()], false),
                Some(l) => match parse_paths(l) {
                    Ok(p) => p,
                    Err(e) => {
                        problems.push(problem(app, l, e));
                        (Vec::new(), false)
                    }
                },
            };
            let basic_auth = match &pl.auth {
                None => None,
                Some(l) => match parse_auth(l) {
                    Ok(a) if a.users.iter().all(|u| crypt_kind(&u.hash).is_some()) => Some(a),
                    Ok(_) => {
                        // Serving without the authentication the app asked for is not an option: the port is left
                        // out.
                        let mut p = problem(
                            app,
                            l,
                            "unsupported password hash (supported: bcrypt $2a$/$2b$/$2y$, SHA-512 $6$, SHA-256 $5$, \
                             MD5 $1$, DES); the port is not served",
                        )
                        .with_effect(Effect::PortSkipped);
                        p.unsupported = Some("AUTH hash kind".into());
                        out.warnings.push(p);
                        return if problems.is_empty() { Ok(()) } else { Err(problems) };
                    }
                    Err(e) => {
                        problems.push(problem(app, l, e));
                        None
                    }
                },
            };
            let allow_cidrs = match &pl.network_allowed {
                None => Vec::new(),
                Some(l) => parse_cidrs(l).unwrap_or_else(|e| {
                    problems.push(problem(app, l, e));
                    Vec::new()
                }),
            };
            let proxypass_path = prefix(app, &pl.proxypass_path, &mut problems);
            let revproxy_path = prefix(app, &pl.revproxy_path, &mut problems);
            // Every route of the port carries the same access rules (the service port's too: MLB's service-port
            // frontend asks no password, Padis does).
            let template = Route {
                group: Some(group_name.clone()),
                redirect_https,
                origin: Some(origin.to_string()),
                hsts: hsts.then(padis_model::Hsts::default),
                basic_auth,
                allow_cidrs,
                proxypass_path,
                revproxy_path,
                ..Route::default()
            };
            if routes {
                // marathon-lb: routes with a PATH weigh 1 unless a weight is given.
                let weight = match &pl.backend_weight {
                    None => i64::from(pl.path.is_some()),
                    Some(l) => l.value.parse::<i64>().unwrap_or_else(|_| {
                        problems.push(problem(app, l, format!("`{}`: expected an integer", l.value)));
                        0
                    }),
                };
                let hosts: Vec<Option<String>> = match &pl.vhost {
                    Some(v) => v
                        .value
                        .split(',')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .filter(|h| !h.is_empty())
                        .map(Some)
                        .collect(),
                    None => vec![None],
                };
                if hosts.is_empty() {
                    if let Some(l) = &pl.vhost {
                        problems.push(problem(app, l, "no host name"));
                    }
                }
                let mut seen = HashSet::new();
                let mut k = 0;
                for host in hosts {
                    if let (Some(h), Some(l)) = (&host, &pl.vhost) {
                        if !host_ok(h) {
                            problems.push(problem(app, l, format!("`{h}`: not a host name or `*.suffix`")));
                            continue;
                        }
                    }
                    for path in &paths {
                        if !seen.insert((host.clone(), path.trim_end_matches('/').to_string())) {
                            continue;
                        }
                        out.routes.push(Route {
                            name: if k == 0 { group_name.clone() } else { format!("{group_name}:{k}") },
                            host: host.clone(),
                            path: path.clone(),
                            path_ignore_case,
                            ..template.clone()
                        });
                        out.weights.push(weight);
                        k += 1;
                    }
                }
            }
            if let Some(l) = listener.take() {
                // marathon-lb's service-port frontend: every request goes to the app, whatever its Host and path.
                let route =
                    Route { name: format!("{group_name}:service-port"), listeners: vec![l.name.clone()], ..template };
                out.listeners.push((l, Some(route)));
                http_listener = true;
            }
        } else if let Some(l) = listener.take() {
            tcp_listener = true;
            out.listeners.push((l, None));
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
                let check_port = check_index.and_then(|k| task_port(app, meta, task, k));
                group.backends.push(Backend { addr, weight: 1, draining, check_port });
            }
        }
        out.groups.push(group);
    }
    if !routes {
        // Labels that only mean something on an HTTP port: honoured on an HTTP service-port listener; a TCP one
        // honours the ACL (its listener's) and was refused above for the other security labels.
        for l in
            [&pl.auth, &pl.network_allowed, &pl.use_hsts, &pl.proxypass_path, &pl.revproxy_path].into_iter().flatten()
        {
            let security = l.key.ends_with("_AUTH") || l.key.ends_with("_NETWORK_ALLOWED_ACL");
            if security && pl.vip.is_some() {
                // An L4 VIP cannot authenticate or filter: refuse it rather than serve it open.
                problems.push(problem(app, l, "not enforceable on an L4 VIP (no HTTP route on this port)"));
            } else if tcp_listener && l.key.ends_with("_NETWORK_ALLOWED_ACL") {
                // Honoured by the TCP listener.
            } else if !(http_listener || (security && refused)) {
                out.warnings.push(
                    problem(app, l, "ignored: the port has no HTTP route (no VHOST / PATH)")
                        .with_effect(Effect::LabelIgnored),
                );
            }
        }
    }
    if let Some(l) = &pl.vip {
        match l.value.parse::<SocketAddr>() {
            Ok(vip) if vip.port() != 0 => {
                if let Some(why) = vip_port_problem(app, &meta[n], vip.port()) {
                    let mut p = problem(
                        app,
                        l,
                        format!(
                            "{why}: an L4 VIP forwards packets with their port unchanged; the VIP is not published \
                             (serve the port through its service port in TCP mode, {} = tcp)",
                            key_of("MODE")
                        ),
                    )
                    .with_effect(Effect::VipSkipped);
                    p.unsupported = Some("VIP on host ports".into());
                    out.warnings.push(p);
                } else {
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
                        // A task not (yet) on the VIP's port is not reached through it.
                        if task_port(app, meta, task, n) != Some(vip.port()) {
                            continue;
                        }
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
            }
            _ => problems.push(problem(app, l, format!("`{}`: expected ip:port", l.value))),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// DNS services of an app: one per distinct name (`PADIS_{n}_DNS` per port, `PADIS_DNS` for all served ports,
/// or the app id when `dns_by_default`).
fn services(
    app: &App,
    labels: &AppLabels,
    meta: &[PortMeta],
    served: &[bool],
    cfg: &MarathonConfig,
    origin: &str,
) -> Result<Vec<Service>, Vec<AppProblem>> {
    let mut names: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let all: Vec<usize> = (0..meta.len()).filter(|n| served[*n]).collect();
    let app_level = labels
        .dns
        .as_ref()
        .map(|l| (l.value.clone(), l.key.clone()))
        .or_else(|| cfg.dns_by_default.then(|| (default_dns_name(&app.id), String::new())));
    if let Some((name, label)) = app_level {
        if !all.is_empty() {
            names.insert(name.to_ascii_lowercase(), (label, all));
        }
    }
    for (&n, pl) in &labels.ports {
        if let Some(d) = pl.dns.as_ref().filter(|_| served.get(n).copied().unwrap_or(false)) {
            names.entry(d.value.to_ascii_lowercase()).or_insert_with(|| (d.key.clone(), Vec::new())).1.push(n);
        }
    }
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (name, (label, mut ports)) in names {
        let name = name.trim_end_matches('.').to_string();
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            let label = (!label.is_empty()).then_some(label);
            problems.push(AppProblem::new(&app.id, label, format!("`{name}`: not a DNS name")));
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
    use padis_model::{HealthKind, ListenerMode};

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

    /// Without service-port listeners (the tests of routes, groups and labels).
    fn cfg() -> MarathonConfig {
        MarathonConfig {
            urls: vec!["http://127.0.0.1:1".into()],
            zone: Some("test".into()),
            service_ports: false,
            ..Default::default()
        }
    }

    /// With service-port listeners, marathon-lb's default.
    fn cfg_sp() -> MarathonConfig {
        MarathonConfig { service_ports: true, ..cfg() }
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

    fn one(labels: &str, ports: usize, tasks: &str) -> Apps {
        let defs: Vec<String> = (0..ports).map(|i| format!(r#"{{"port":{},"protocol":"tcp"}}"#, 10000 + i)).collect();
        let body = format!(
            r#"{{"apps":[{{"id":"/mlb/app","instances":2,"labels":{labels},"portDefinitions":[{}],"tasks":[{tasks}]}}]}}"#,
            defs.join(",")
        );
        Apps::from_json(body.as_bytes()).unwrap()
    }

    const TASKS2: &str = r#"{"id":"mlb_app.1","host":"10.0.0.1","ports":[31000,31001],"state":"TASK_RUNNING"},
        {"id":"mlb_app.2","host":"10.0.0.2","ports":[31000,31001],"state":"TASK_RUNNING"}"#;

    fn problems(s: &MarathonState) -> Vec<(String, Effect, Option<String>)> {
        s.problems.iter().map(|p| (p.to_string(), p.effect, p.unsupported.clone())).collect()
    }

    /// ENABLED=false and a per-port GROUP of another node leave that port unserved; the app's other port is
    /// served. marathon-lb's `-i` and several paths, AUTH, the network ACL, HSTS and the path rewrites land on
    /// every route of the port.
    #[test]
    fn security_and_routing_labels_map_to_routes() {
        let hash = "$2y$05$bvIG6Nmid91Mu9RcmmWZfO5HJIMCT8riNW0hEp8f6/FuA2/mHZFpe";
        let labels = format!(
            r#"{{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test,b.test","HAPROXY_0_PATH":"-i /Api /docs",
               "HAPROXY_0_AUTH":"Staff only:alice:{hash}","HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL":"10.1.40.0/24 10.1.55.43",
               "HAPROXY_0_USE_HSTS":"true","HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH":"/api",
               "HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH":"/ext","HAPROXY_1_VHOST":"c.test","HAPROXY_1_ENABLED":"false"}}"#
        );
        let s = map_apps(&one(&labels, 2, TASKS2), &cfg());
        assert!(s.problems.is_empty(), "{:?}", problems(&s));
        let routes: Vec<(&str, &str)> =
            s.routes.iter().map(|r| (r.host.as_deref().unwrap(), r.path.as_str())).collect();
        assert_eq!(routes, vec![("a.test", "/Api"), ("a.test", "/docs"), ("b.test", "/Api"), ("b.test", "/docs")]);
        for r in &s.routes {
            assert!(r.path_ignore_case && r.hsts.is_some(), "{r:?}");
            let auth = r.basic_auth.as_ref().expect("auth");
            assert_eq!(
                (auth.realm.as_str(), auth.users[0].user.as_str(), auth.users[0].hash.as_str()),
                ("Staff only", "alice", hash)
            );
            let nets: Vec<String> = r.allow_cidrs.iter().map(ToString::to_string).collect();
            assert_eq!(nets, vec!["10.1.40.0/24", "10.1.55.43/32"]);
            assert_eq!((r.proxypass_path.as_deref(), r.revproxy_path.as_deref()), (Some("/api"), Some("/ext")));
        }
        assert_eq!(s.groups.len(), 1, "port 1 is disabled");
        // The same port given to another node's group instead.
        let labels = labels.replace(r#""HAPROXY_1_ENABLED":"false""#, r#""HAPROXY_1_GROUP":"internal""#);
        let s = map_apps(&one(&labels, 2, TASKS2), &cfg());
        assert_eq!(s.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), vec!["marathon:/mlb/app:0"]);
        // And served by an `internal` node alone (the app-wide group is not its own).
        let internal = MarathonConfig { group: vec!["internal".into()], ..cfg() };
        let s = map_apps(&one(&labels, 2, TASKS2), &internal);
        assert_eq!(s.groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), vec!["marathon:/mlb/app:1"]);
        assert_eq!(s.services[0].ports.len(), 1, "DNS follows the served ports");
    }

    /// Unsupported labels are reported with the key the app wrote; an auth or ACL template Padis cannot apply,
    /// or a password hash it cannot verify, keeps the port unserved instead of serving it open.
    #[test]
    fn unsupported_labels_are_reported_and_fail_closed_where_access_widens() {
        let labels = r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test","HAPROXY_0_BACKEND_HEAD":"backend x",
            "HAPROXY_0_BIND_ADDR":"10.0.0.42","HAPROXY_1_VHOST":"b.test","HAPROXY_1_USERLIST_HEAD":"userlist u",
            "HAPROXY_0_VHSOT":"typo"}"#;
        let s = map_apps(&one(labels, 2, TASKS2), &cfg());
        let mut p = problems(&s);
        p.sort_by(|a, b| a.0.cmp(&b.0));
        let ignored = Effect::LabelIgnored;
        assert_eq!(
            p,
            vec![
                (
                    "/mlb/app: HAPROXY_0_BACKEND_HEAD: an HAProxy config template: Padis generates no HAProxy config"
                        .into(),
                    ignored,
                    Some("HAPROXY_{n}_BACKEND_HEAD".into())
                ),
                (
                    "/mlb/app: HAPROXY_0_BIND_ADDR: service-port listeners are off on this node ([marathon] \
                     service_ports = false)"
                        .into(),
                    ignored,
                    None
                ),
                (
                    "/mlb/app: HAPROXY_0_VHSOT: not a marathon-lb label (a typo?)".into(),
                    ignored,
                    Some("unknown".into())
                ),
                (
                    "/mlb/app: HAPROXY_1_USERLIST_HEAD: an HAProxy config template: Padis generates no HAProxy config"
                        .into(),
                    Effect::PortSkipped,
                    Some("HAPROXY_{n}_USERLIST_HEAD".into())
                ),
            ]
        );
        assert_eq!(s.routes.iter().map(|r| r.host.as_deref().unwrap()).collect::<Vec<_>>(), vec!["a.test"]);
        // yescrypt (Debian's default `mkpasswd`) cannot be verified: the port is not served.
        let labels =
            r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test","HAPROXY_0_AUTH":"r:bob:$y$j9T$abc$def"}"#;
        let s = map_apps(&one(labels, 1, TASKS2), &cfg());
        assert!(s.routes.is_empty() && s.groups.is_empty());
        assert_eq!(s.problems[0].effect, Effect::PortSkipped);
        assert_eq!(s.problems[0].label.as_deref(), Some("HAPROXY_0_AUTH"));
        assert!(!s.problems[0].message.contains("def"), "the hash is not echoed");
        // Bad values of honoured labels skip the app, named as written.
        for (label, value) in [
            ("HAPROXY_0_PATH", "-m /x"),
            ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/33"),
            ("HAPROXY_0_AUTH", "no-colons"),
            ("HAPROXY_0_ENABLED", "maybe"),
            ("HAPROXY_0_BACKEND_WEIGHT", "heavy"),
            ("HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX", "5"),
        ] {
            let labels = format!(r#"{{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test","{label}":"{value}"}}"#);
            let s = map_apps(&one(&labels, 1, TASKS2), &cfg());
            assert!(s.routes.is_empty(), "{label}");
            assert_eq!(s.problems[0].label.as_deref(), Some(label), "{:?}", s.problems);
            assert_eq!(s.problems[0].effect, Effect::AppSkipped);
        }
    }

    /// Two apps on one host + path: the higher BACKEND_WEIGHT wins it whatever the app's age, the other app keeps
    /// its other routes; at equal weights the older app keeps it and the newer one is skipped (a real clash).
    #[test]
    fn backend_weight_decides_a_shared_host_and_path() {
        let app = |id: &str, changed: &str, labels: &str| {
            format!(
                r#"{{"id":"{id}","labels":{labels},"portDefinitions":[{{"port":0}}],"versionInfo":{{"lastConfigChangeAt":"{changed}"}},
                   "tasks":[{{"id":"t{changed}","host":"10.0.0.1","ports":[31000],"state":"TASK_RUNNING"}}]}}"#
            )
        };
        let body = format!(
            r#"{{"apps":[{},{}]}}"#,
            app("/old", "2020", r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test,o.test"}"#),
            app(
                "/new",
                "2021",
                r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test","HAPROXY_0_BACKEND_WEIGHT":"5"}"#
            )
        );
        let s = map_apps(&Apps::from_json(body.as_bytes()).unwrap(), &cfg());
        let routes: Vec<(&str, &str)> =
            s.routes.iter().map(|r| (r.name.as_str(), r.host.as_deref().unwrap())).collect();
        assert_eq!(routes, vec![("marathon:/old:0:1", "o.test"), ("marathon:/new:0", "a.test")]);
        assert_eq!(s.problems.len(), 1);
        assert_eq!(s.problems[0].effect, Effect::RouteSkipped);
        assert!(s.problems[0].message.contains("goes to /new (BACKEND_WEIGHT 5 > 0)"), "{}", s.problems[0]);
        let body = body.replace(r#","HAPROXY_0_BACKEND_WEIGHT":"5""#, "");
        let s = map_apps(&Apps::from_json(body.as_bytes()).unwrap(), &cfg());
        assert_eq!(s.routes.len(), 2);
        assert_eq!(s.problems[0].to_string(), "/new: host `a.test` path `` is already served by another app");
    }

    /// A task of Marathon <= 1.3 has no `state`: with a start time (and passing checks) it is a backend; without
    /// one (still staging) it is not.
    #[test]
    fn tasks_without_state_serve_once_started() {
        let tasks = r#"{"id":"mlb_app.1","host":"10.0.0.1","ports":[31000],"startedAt":"2016-02-01T22:14:03.432Z"},
            {"id":"mlb_app.2","host":"10.0.0.2","ports":[31000],"startedAt":null,"stagedAt":"2016-02-01T22:14:00.653Z"}"#;
        let s = map_apps(&one(r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"a.test"}"#, 1, tasks), &cfg());
        let b: Vec<String> = s.groups[0].backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(b, vec!["10.0.0.1:31000"]);
    }

    /// marathon-lb's zdd shape (its `tests/zdd_apps.json`, with a VHOST): green (old, 3 instances) and blue (new)
    /// of deployment group `nginx` are one app `/nginx` with one route; as blue's healthy instances grow towards
    /// DEPLOYMENT_TARGET_INSTANCES, as many green tasks (lowest ids first) drain. Never a host clash.
    #[test]
    fn blue_green_colours_are_served_as_one_app() {
        let colour = |id: &str, colour: &str, started: &str, instances: usize, alive: usize| {
            let tasks: Vec<String> = (0..instances)
                .map(|i| {
                    format!(
                        r#"{{"id":"{id}.{i}","host":"10.0.{}.{i}","ports":[3100{i}],"startedAt":"2016-02-01T22:14:03.432Z",
                           "healthCheckResults":[{{"alive":{}}}]}}"#,
                        if colour == "green" { 6 } else { 1 },
                        i < alive
                    )
                })
                .collect();
            format!(
                r#"{{"id":"/{id}","instances":{instances},"labels":{{"HAPROXY_DEPLOYMENT_GROUP":"nginx","HAPROXY_GROUP":"external",
                    "HAPROXY_DEPLOYMENT_COLOUR":"{colour}","HAPROXY_DEPLOYMENT_TARGET_INSTANCES":"3",
                    "HAPROXY_DEPLOYMENT_STARTED_AT":"{started}","HAPROXY_DEPLOYMENT_ALT_PORT":"10001",
                    "HAPROXY_0_VHOST":"nginx.test","HAPROXY_APP_ID":"nginx"}},
                    "portDefinitions":[{{"port":10000}}],"healthChecks":[{{"protocol":"HTTP","path":"/","portIndex":0}}],
                    "tasks":[{}]}}"#,
                tasks.join(",")
            )
        };
        let green = colour("nginx-green", "green", "2016-02-01T14:13:42.499089", 3, 3);
        let state = |blue_alive: usize| {
            let body = format!(
                r#"{{"apps":[{green},{}]}}"#,
                colour("nginx-blue", "blue", "2016-02-01T14:57:54.371005", 3, blue_alive)
            );
            map_apps(&Apps::from_json(body.as_bytes()).unwrap(), &cfg())
        };
        for (blue_alive, draining) in [(0, 0), (1, 1), (2, 2), (3, 3)] {
            let s = state(blue_alive);
            assert!(s.problems.is_empty(), "{:?}", s.problems);
            assert_eq!(s.routes.len(), 1);
            assert_eq!(
                (s.routes[0].name.as_str(), s.routes[0].host.as_deref()),
                ("marathon:/nginx:0", Some("nginx.test"))
            );
            let g = &s.groups[0];
            let drained: Vec<String> = g.backends.iter().filter(|b| b.draining).map(|b| b.addr.to_string()).collect();
            let expect: Vec<String> = (0..draining).map(|i| format!("10.0.6.{i}:3100{i}")).collect();
            assert_eq!(drained, expect, "blue alive {blue_alive}");
            assert_eq!(g.backends.iter().filter(|b| !b.draining).count(), 3 - draining + blue_alive);
            assert_eq!(s.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["nginx"]);
        }
        // One colour alone is served under the group's name too (the route and group keep their names).
        let body = format!(r#"{{"apps":[{green}]}}"#);
        let s = map_apps(&Apps::from_json(body.as_bytes()).unwrap(), &cfg());
        assert_eq!(s.groups[0].name, "marathon:/nginx:0");
        assert!(s.groups[0].backends.iter().all(|b| !b.draining));
        // A bad ALT_PORT is reported.
        let bad = green.replace(r#""HAPROXY_DEPLOYMENT_ALT_PORT":"10001""#, r#""HAPROXY_DEPLOYMENT_ALT_PORT":"x""#);
        let s = map_apps(&Apps::from_json(format!(r#"{{"apps":[{bad}]}}"#).as_bytes()).unwrap(), &cfg());
        assert_eq!(s.problems[0].to_string(), "/nginx: HAPROXY_DEPLOYMENT_ALT_PORT: `x`: expected a port number");
    }

    /// BACKEND_HEALTHCHECK_PORT_INDEX (marathon-lb's `check port`): port 0's backends are checked on each task's
    /// port 1, as the Marathon health check of port 1 says (HTTP path, interval, failures), or by a TCP connect when
    /// port 1 has none; an index past the app's ports skips the app.
    #[test]
    fn healthcheck_port_index_checks_the_other_port() {
        let app = |checks: &str, index: &str| {
            let body = format!(
                r#"{{"apps":[{{"id":"/hc","labels":{{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"hc.test",
                    "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX":"{index}"}},"portDefinitions":[{{"port":0}},{{"port":0}}],
                    "healthChecks":[{checks}],"tasks":[{{"id":"hc.1","host":"10.0.0.1","ports":[31000,31001],
                    "state":"TASK_RUNNING","healthCheckResults":[{{"alive":true}}]}},{{"id":"hc.2","host":"10.0.0.1",
                    "ports":[31002,31003],"state":"TASK_RUNNING","healthCheckResults":[{{"alive":true}}]}}]}}]}}"#
            );
            map_apps(&Apps::from_json(body.as_bytes()).unwrap(), &cfg())
        };
        let s = app(
            r#"{"protocol":"HTTP","path":"/health","portIndex":1,"intervalSeconds":3,"timeoutSeconds":2,
                "maxConsecutiveFailures":2}"#,
            "1",
        );
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        let g = &s.groups[0];
        let h = g.health.as_ref().expect("an active check");
        let got = (h.kind, h.path.as_str(), h.interval.as_secs(), h.timeout.as_secs(), h.fall);
        assert_eq!(got, (HealthKind::Http, "/health", 3, 2, 3));
        let b: Vec<(String, Option<u16>)> = g.backends.iter().map(|b| (b.addr.to_string(), b.check_port)).collect();
        assert_eq!(b, vec![("10.0.0.1:31000".into(), Some(31001)), ("10.0.0.1:31002".into(), Some(31003))]);
        // No Marathon check on port 1: a TCP connect to it.
        let s = app(r#"{"protocol":"HTTP","path":"/health","portIndex":0}"#, "1");
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.groups[0].health.as_ref().map(|h| h.kind), Some(HealthKind::Tcp));
        assert_eq!(s.groups[0].backends[0].check_port, Some(31001));
        let s = app(r#"{"protocol":"HTTP","path":"/health","portIndex":1}"#, "2");
        assert_eq!(s.problems[0].effect, Effect::AppSkipped);
        assert!(s.routes.is_empty());
    }

    fn listeners(s: &MarathonState) -> Vec<(String, String, ListenerMode)> {
        s.listeners.iter().map(|l| (l.name.clone(), l.bind.to_string(), l.mode)).collect()
    }

    /// Service ports: a port without VHOST is served in TCP mode on its service port (marathon-lb's default), a
    /// VHOST port gets an HTTP listener serving only its own catch-all route; BIND_ADDR, PORT, SSL_CERT and
    /// BIND_OPTIONS shape the listener; a port another app took first is reported for the newer app only; what the
    /// TCP mode cannot enforce keeps the listener closed; a node without service ports reports the labels.
    #[test]
    fn service_ports_become_listeners() {
        let app = |id: &str, changed: &str, port: u32, labels: &str| {
            format!(
                r#"{{"id":"{id}","labels":{labels},"portDefinitions":[{{"port":{port},"protocol":"tcp"}}],
                   "versionInfo":{{"lastConfigChangeAt":"{changed}"}},
                   "tasks":[{{"id":"t{changed}","host":"10.0.0.1","ports":[31000],"state":"TASK_RUNNING"}}]}}"#
            )
        };
        let hash = "$2y$05$bvIG6Nmid91Mu9RcmmWZfO5HJIMCT8riNW0hEp8f6/FuA2/mHZFpe";
        let authed = format!(
            r#"{{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"auth.test","HAPROXY_0_AUTH":"r:alice:{hash}",
                "HAPROXY_0_BIND_ADDR":"127.0.0.6"}}"#
        );
        let body = format!(
            r#"{{"apps":[{},{},{},{},{},{},{}]}}"#,
            app("/tcp", "2020", 10000, r#"{"HAPROXY_GROUP":"external"}"#),
            app("/authed", "2025", 10005, &authed),
            app(
                "/web",
                "2021",
                10001,
                r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"web.test",
                "HAPROXY_0_BIND_ADDR":"127.0.0.5","HAPROXY_0_SSL_CERT":"web-cert",
                "HAPROXY_0_BIND_OPTIONS":"alpn http/1.1 no-sslv3 accept-proxy"}"#
            ),
            app(
                "/late",
                "2022",
                10002,
                r#"{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"late.test",
                "HAPROXY_0_PORT":"10000"}"#
            ),
            app("/tls-tcp", "2023", 10003, r#"{"HAPROXY_GROUP":"external","HAPROXY_0_SSL_CERT":"x"}"#),
            app(
                "/acl-tcp",
                "2024",
                10004,
                r#"{"HAPROXY_GROUP":"external","HAPROXY_0_MODE":"tcp",
                "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL":"10.0.0.0/8 192.168.1.7"}"#
            ),
            app(
                "/bad-acl-tcp",
                "2026",
                10006,
                r#"{"HAPROXY_GROUP":"external","HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL":"10.0.0.0/8 everyone"}"#
            )
        );
        let apps = Apps::from_json(body.as_bytes()).unwrap();
        let proxy_tier: ipnet::IpNet = "10.9.0.0/16".parse().unwrap();
        let s = map_apps(&apps, &MarathonConfig { accept_proxy_from: vec![proxy_tier], ..cfg_sp() });
        assert_eq!(
            listeners(&s),
            vec![
                ("marathon:/tcp:0".into(), "0.0.0.0:10000".into(), ListenerMode::Tcp),
                ("marathon:/web:0".into(), "127.0.0.5:10001".into(), ListenerMode::Http),
                ("marathon:/tls-tcp:0".into(), "0.0.0.0:10003".into(), ListenerMode::Tcp),
                ("marathon:/acl-tcp:0".into(), "0.0.0.0:10004".into(), ListenerMode::Tcp),
                ("marathon:/authed:0".into(), "127.0.0.6:10005".into(), ListenerMode::Http),
            ]
        );
        // SSL_CERT on a TCP port: TLS terminated by its listener, no ALPN offered.
        let tls_tcp = s.listeners.iter().find(|l| l.name == "marathon:/tls-tcp:0").unwrap().tls.as_ref().unwrap();
        assert_eq!((tls_tcp.certificates.clone(), tls_tcp.alpn.is_empty()), (vec!["x".to_string()], true));
        // The ACL of a TCP port is its listener's.
        let acl = &s.listeners.iter().find(|l| l.name == "marathon:/acl-tcp:0").unwrap().allow_cidrs;
        assert_eq!(acl, &["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap(), "192.168.1.7/32".parse().unwrap()]);
        assert!(s.listeners[0].allow_cidrs.is_empty());
        // AUTH holds on the service port too (marathon-lb's service-port frontend asks no password).
        let route = s.routes.iter().find(|r| r.name == "marathon:/authed:0:service-port").expect("service route");
        assert_eq!(route.basic_auth.as_ref().map(|a| a.users[0].user.as_str()), Some("alice"));
        assert_eq!(s.listeners[0].group.as_deref(), Some("marathon:/tcp:0"));
        assert_eq!(s.groups.iter().find(|g| g.name == "marathon:/tcp:0").map(|g| g.backends.len()), Some(1));
        let web = &s.listeners[1];
        assert!(web.named_routes_only);
        let tls = web.tls.as_ref().expect("SSL_CERT makes it TLS");
        assert_eq!(tls.certificates, vec!["web-cert".to_string()]);
        assert_eq!(tls.alpn, vec!["http/1.1".to_string()]);
        // accept-proxy: PROXY headers from the node's trusted sources only.
        assert_eq!(web.proxy_protocol.as_ref().map(|p| &p.trusted[..]), Some(&[proxy_tier][..]));
        assert!(s.listeners[0].proxy_protocol.is_none());
        let service: Vec<(&str, Option<&str>, &[String])> = s
            .routes
            .iter()
            .filter(|r| !r.listeners.is_empty())
            .map(|r| (r.name.as_str(), r.host.as_deref(), &r.listeners[..]))
            .collect();
        assert_eq!(
            service,
            vec![
                ("marathon:/web:0:service-port", None, &["marathon:/web:0".to_string()][..]),
                ("marathon:/authed:0:service-port", None, &["marathon:/authed:0".to_string()][..]),
            ]
        );
        assert!(s.routes.iter().any(|r| r.host.as_deref() == Some("late.test")), "/late keeps its VHOST route");
        let mut p = problems(&s);
        p.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            p,
            vec![
                (
                    "/bad-acl-tcp: HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL: `everyone`: not an address or network: the \
                     service port 10006 is not opened"
                        .into(),
                    Effect::ListenerSkipped,
                    None
                ),
                (
                    "/late: service port 10000: 0.0.0.0:10000 is already used by /tcp".into(),
                    Effect::ListenerSkipped,
                    None
                ),
            ]
        );
        // Without trusted sources, a port asking for accept-proxy stays closed (marathon-lb would take the header
        // from anyone: any client could claim any address).
        let s = map_apps(&apps, &cfg_sp());
        assert!(!s.listeners.iter().any(|l| l.name == "marathon:/web:0"));
        let p = problems(&s);
        assert!(
            p.iter().any(|(m, e, _)| m
                == "/web: HAPROXY_0_BIND_OPTIONS: accept-proxy needs the sources trusted to send PROXY headers \
                    ([marathon] accept_proxy_from): the service port 10001 is not opened"
                && *e == Effect::ListenerSkipped),
            "{p:?}"
        );
        // The state passes the model's validation once the certificate exists (checked by the reconciler).
        // A node without service ports opens none and says so for the labels that configure them.
        let s = map_apps(&apps, &cfg());
        assert!(s.listeners.is_empty() && s.routes.iter().all(|r| r.listeners.is_empty()));
        let off = "/late: HAPROXY_0_PORT: service-port listeners are off";
        assert!(problems(&s).iter().any(|(m, e, _)| m.starts_with(off) && *e == Effect::LabelIgnored));
    }

    /// An L4 VIP keeps the packet's port (DSR): on random host ports it is refused for the app (tasks of one
    /// agent would collapse into one backend), pointing at the TCP mode; with the host port pinned to the VIP's
    /// port (`requirePorts`) it is published.
    #[test]
    fn vips_on_host_ports_are_refused_unless_pinned() {
        let app = |require: bool, port: u32, task_ports: [u32; 2]| {
            let body = format!(
                r#"{{"apps":[{{"id":"/db","requirePorts":{require},"labels":{{"HAPROXY_GROUP":"external",
                    "PADIS_0_VIP":"10.9.0.1:5432"}},"portDefinitions":[{{"port":{port},"protocol":"tcp"}}],
                    "tasks":[{{"id":"db.1","host":"10.0.0.1","ports":[{}],"state":"TASK_RUNNING"}},
                             {{"id":"db.2","host":"10.0.0.1","ports":[{}],"state":"TASK_RUNNING"}}]}}]}}"#,
                task_ports[0], task_ports[1]
            );
            map_apps(&Apps::from_json(body.as_bytes()).unwrap(), &cfg())
        };
        let s = app(false, 10000, [31000, 31001]);
        assert!(s.vips.is_empty());
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert_eq!(s.problems[0].effect, Effect::VipSkipped);
        assert_eq!(s.problems[0].unsupported.as_deref(), Some("VIP on host ports"));
        assert!(s.problems[0].message.contains("tasks of one agent would be one backend"), "{}", s.problems[0]);
        assert!(s.problems[0].message.contains("PADIS_0_MODE = tcp"), "{}", s.problems[0]);
        let s = app(true, 5432, [5432, 5432]);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.vips[0].backends.len(), 1, "one agent, one backend: the same address and port");
        let s = app(true, 5433, [5433, 5433]);
        assert_eq!(s.problems[0].effect, Effect::VipSkipped);
        assert!(s.problems[0].message.contains("host port 5433, not on the VIP's port 5432"), "{}", s.problems[0]);
    }
}
