//! Draining: a task that served and is now being killed (or vanished) stays a backend with `draining = true`
//! for `drain_time`, so in-flight requests and flows finish, then disappears.
//!
//! Runs on every publication, so it avoids copying and hashing: apps it does not change are shared (the same
//! `Arc`), served tasks are marked with a pass number instead of being collected, and app definitions are only
//! kept for apps that vanished (handed over by the follower when it drops them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apps::{App, Apps, Task};
use crate::map::{role, Role};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Tracked {
    app_id: String,
    task: Task,
    /// Draining since (None while serving).
    since: Option<Instant>,
    /// Last pass that saw the task in Marathon's state.
    seen: u64,
    /// Killing task past its drain time, to leave out.
    expired: bool,
}

/// Remembers which tasks served, to drain them when they go.
pub struct Drainer {
    drain_time: Duration,
    tracked: FastMap<String, Tracked>,
    /// Definitions (without tasks) of vanished apps that still have draining tasks.
    defs: FastMap<String, App>,
    pass: u64,
    next_expiry: Option<Instant>,
}

/// An app's definition without its tasks.
pub fn def_of(app: &App) -> App {
    App {
        id: app.id.clone(),
        instances: app.instances,
        labels: app.labels.clone(),
        port_definitions: app.port_definitions.clone(),
        require_ports: app.require_ports,
        container: app.container.clone(),
        ip_address: app.ip_address.clone(),
        networks: app.networks.clone(),
        health_checks: app.health_checks.clone(),
        tasks: Vec::new(),
        version_info: app.version_info.clone(),
    }
}

impl Drainer {
    /// A drainer keeping killed tasks for `drain_time`.
    pub fn new(drain_time: Duration) -> Drainer {
        Drainer { drain_time, tracked: FastMap::default(), defs: FastMap::default(), pass: 0, next_expiry: None }
    }

    /// Records the definition of an app that is leaving the state, so its served tasks can drain.
    pub fn app_gone(&mut self, app: &App) {
        if app.tasks.iter().any(|t| self.tracked.contains_key(&t.id)) {
            self.defs.insert(app.id.clone(), def_of(app));
        }
    }

    /// The apps to map: `apps` with draining tasks put back (as `TASK_KILLING`) and expired or never-serving
    /// killing tasks removed. Unchanged apps are shared.
    pub fn process(&mut self, apps: &Apps, now: Instant) -> Vec<Arc<App>> {
        let drain_time = self.drain_time;
        self.pass += 1;
        let pass = self.pass;
        let mut dropping = false;
        for app in &apps.apps {
            for t in &app.tasks {
                match role(app, t) {
                    Role::Serving => match self.tracked.get_mut(&t.id) {
                        Some(tr) => {
                            tr.since = None;
                            tr.seen = pass;
                            tr.expired = false;
                            if tr.task != *t {
                                tr.task = t.clone();
                            }
                        }
                        None => {
                            let tr = Tracked {
                                app_id: app.id.clone(),
                                task: t.clone(),
                                since: None,
                                seen: pass,
                                expired: false,
                            };
                            self.tracked.insert(t.id.clone(), tr);
                        }
                    },
                    Role::Draining => match self.tracked.get_mut(&t.id) {
                        Some(tr) => {
                            tr.seen = pass;
                            tr.expired = now.duration_since(*tr.since.get_or_insert(now)) >= drain_time;
                            dropping |= tr.expired;
                        }
                        // Never served (or not since we started): not a backend.
                        None => dropping = true,
                    },
                    _ => {
                        self.tracked.remove(&t.id);
                    }
                }
            }
        }
        // Start the clock for tasks that vanished; forget expired drains (present ones are left out below).
        let mut missing: FastMap<String, Vec<Task>> = FastMap::default();
        let mut next: Option<Instant> = None;
        self.tracked.retain(|_, tr| {
            if tr.seen == pass {
                if let Some(s) = tr.since {
                    next = Some(next.map_or(s, |n: Instant| n.min(s)));
                }
                return true;
            }
            let since = *tr.since.get_or_insert(now);
            if now.duration_since(since) >= drain_time {
                return false;
            }
            next = Some(next.map_or(since, |n: Instant| n.min(since)));
            let mut task = tr.task.clone();
            task.state = "TASK_KILLING".into();
            missing.entry(tr.app_id.clone()).or_default().push(task);
            true
        });
        self.next_expiry = next.map(|s| s + drain_time);
        let mut out = Vec::with_capacity(apps.apps.len() + missing.len());
        for app in &apps.apps {
            let extra = if missing.is_empty() { None } else { missing.remove(app.id.as_str()) };
            let drops = dropping
                && app
                    .tasks
                    .iter()
                    .any(|t| t.state == "TASK_KILLING" && self.tracked.get(&t.id).is_none_or(|tr| tr.expired));
            if extra.is_none() && !drops {
                out.push(app.clone());
                continue;
            }
            let mut a = (**app).clone();
            if drops {
                a.tasks.retain(|t| {
                    role(app, t) != Role::Draining || self.tracked.get(&t.id).is_some_and(|tr| !tr.expired)
                });
            }
            if let Some(mut extra) = extra {
                extra.sort_by(|x, y| x.id.cmp(&y.id));
                a.tasks.extend(extra);
            }
            out.push(Arc::new(a));
        }
        // Apps that vanished with tasks still draining.
        let mut gone: Vec<(String, Vec<Task>)> = missing.into_iter().collect();
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        for (app_id, mut tasks) in gone {
            if let Some(def) = self.defs.get(&app_id) {
                tasks.sort_by(|x, y| x.id.cmp(&y.id));
                let mut a = def.clone();
                a.tasks = tasks;
                out.push(Arc::new(a));
            }
        }
        if !self.defs.is_empty() {
            let tracked = &self.tracked;
            self.defs.retain(|id, _| tracked.values().any(|t| &t.app_id == id));
        }
        out
    }

    /// When the next draining task expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.next_expiry
    }
}
