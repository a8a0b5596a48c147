//! Draining: a task that served and is now being killed (or vanished) stays a backend with `draining = true`
//! for `drain_time`, so in-flight requests and flows finish, then disappears.
//!
//! Runs on every publication, so it avoids copying: apps it does not change are borrowed, and the copies it keeps
//! (served tasks, app definitions) are only refreshed when they differ.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::apps::{App, Apps, Task};
use crate::map::{role, Role};

struct Tracked {
    app_id: String,
    task: Task,
    /// Draining since (None while serving).
    since: Option<Instant>,
}

/// Remembers which tasks served, to drain them when they go.
pub struct Drainer {
    drain_time: Duration,
    tracked: HashMap<String, Tracked>,
    /// App definitions (without tasks) of apps with tracked tasks, for when the app itself vanishes.
    defs: HashMap<String, App>,
}

/// Whether two apps have the same definition (everything but tasks).
fn same_def(a: &App, b: &App) -> bool {
    a.id == b.id
        && a.instances == b.instances
        && a.labels == b.labels
        && a.port_definitions == b.port_definitions
        && a.container == b.container
        && a.ip_address == b.ip_address
        && a.networks == b.networks
        && a.health_checks == b.health_checks
        && a.version_info == b.version_info
}

fn def_of(app: &App) -> App {
    App {
        id: app.id.clone(),
        instances: app.instances,
        labels: app.labels.clone(),
        port_definitions: app.port_definitions.clone(),
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
        Drainer { drain_time, tracked: HashMap::new(), defs: HashMap::new() }
    }

    /// The apps to map: `apps` with draining tasks put back (as `TASK_KILLING`) and expired or never-serving
    /// killing tasks removed. Unchanged apps are borrowed.
    pub fn process<'a>(&mut self, apps: &'a Apps, now: Instant) -> Vec<Cow<'a, App>> {
        let drain_time = self.drain_time;
        let mut present: HashSet<&str> = HashSet::with_capacity(self.tracked.len());
        let mut drop_tasks: HashSet<&str> = HashSet::new();
        for app in &apps.apps {
            for t in &app.tasks {
                present.insert(t.id.as_str());
                match role(app, t) {
                    Role::Serving => match self.tracked.get_mut(&t.id) {
                        Some(tr) => {
                            tr.since = None;
                            if tr.task != *t {
                                tr.task = t.clone();
                            }
                        }
                        None => {
                            self.tracked.insert(t.id.clone(), Tracked { app_id: app.id.clone(), task: t.clone(), since: None });
                        }
                    },
                    Role::Draining => {
                        let keep = match self.tracked.get_mut(&t.id) {
                            Some(tr) => now.duration_since(*tr.since.get_or_insert(now)) < drain_time,
                            None => false,
                        };
                        if !keep {
                            drop_tasks.insert(t.id.as_str());
                        }
                    }
                    _ => {
                        self.tracked.remove(&t.id);
                    }
                }
            }
        }
        // Forget expired drains; start the clock for tasks that vanished.
        self.tracked.retain(|id, tr| {
            if present.contains(id.as_str()) {
                return tr.since.is_none_or(|s| now.duration_since(s) < drain_time);
            }
            now.duration_since(*tr.since.get_or_insert(now)) < drain_time
        });
        let mut missing: HashMap<&str, Vec<Task>> = HashMap::new();
        for (id, tr) in &self.tracked {
            if !present.contains(id.as_str()) {
                let mut task = tr.task.clone();
                task.state = "TASK_KILLING".into();
                missing.entry(tr.app_id.as_str()).or_default().push(task);
            }
        }
        let mut out = Vec::with_capacity(apps.apps.len() + missing.len());
        for app in &apps.apps {
            let extra = missing.remove(app.id.as_str());
            let drops = app.tasks.iter().any(|t| drop_tasks.contains(t.id.as_str()));
            if extra.is_none() && !drops {
                out.push(Cow::Borrowed(app));
                continue;
            }
            let mut a = app.clone();
            a.tasks.retain(|t| !drop_tasks.contains(t.id.as_str()));
            if let Some(mut extra) = extra {
                extra.sort_by(|x, y| x.id.cmp(&y.id));
                a.tasks.extend(extra);
            }
            out.push(Cow::Owned(a));
        }
        // Apps that vanished with tasks still draining.
        let mut gone: Vec<(&str, Vec<Task>)> = missing.into_iter().collect();
        gone.sort_by(|a, b| a.0.cmp(b.0));
        for (app_id, mut tasks) in gone {
            if let Some(def) = self.defs.get(app_id) {
                tasks.sort_by(|x, y| x.id.cmp(&y.id));
                let mut a = def.clone();
                a.tasks = tasks;
                out.push(Cow::Owned(a));
            }
        }
        // Keep definitions of apps with tracked tasks (refreshed only when they change).
        let wanted: HashSet<&str> = self.tracked.values().map(|t| t.app_id.as_str()).collect();
        self.defs.retain(|id, _| wanted.contains(id.as_str()));
        for app in &apps.apps {
            if wanted.contains(app.id.as_str()) && !self.defs.get(&app.id).is_some_and(|d| same_def(d, app)) {
                self.defs.insert(app.id.clone(), def_of(app));
            }
        }
        out
    }

    /// When the next draining task expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.tracked.values().filter_map(|t| t.since).min().map(|s| s + self.drain_time)
    }
}
