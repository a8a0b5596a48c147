//! Draining: a task that served and is now being killed (or vanished) stays a backend with `draining = true`
//! for `drain_time`, so in-flight requests and flows finish, then disappears.

use std::collections::HashMap;
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
    /// App definitions (without tasks) of apps that have draining tasks, for apps that vanished.
    defs: HashMap<String, App>,
}

impl Drainer {
    /// A drainer keeping killed tasks for `drain_time`.
    pub fn new(drain_time: Duration) -> Drainer {
        Drainer { drain_time, tracked: HashMap::new(), defs: HashMap::new() }
    }

    /// Returns `apps` with draining tasks put back (as `TASK_KILLING`) and expired or never-serving killing
    /// tasks removed.
    pub fn process(&mut self, apps: &Apps, now: Instant) -> Apps {
        let mut out = apps.clone();
        let mut present = std::collections::HashSet::new();
        for app in &mut out.apps {
            let tasks = std::mem::take(&mut app.tasks);
            let mut kept = Vec::with_capacity(tasks.len());
            for t in tasks {
                present.insert(t.id.clone());
                let keep = match role(app, &t) {
                    Role::Serving => {
                        self.tracked.insert(t.id.clone(), Tracked { app_id: app.id.clone(), task: t.clone(), since: None });
                        true
                    }
                    Role::Draining => match self.tracked.get_mut(&t.id) {
                        Some(tr) => {
                            let since = *tr.since.get_or_insert(now);
                            now.duration_since(since) < self.drain_time
                        }
                        None => false,
                    },
                    _ => {
                        self.tracked.remove(&t.id);
                        true
                    }
                };
                if keep {
                    kept.push(t);
                }
            }
            app.tasks = kept;
        }
        // Tasks that served and vanished: back in, draining, until their time is up.
        let drain_time = self.drain_time;
        self.tracked.retain(|id, tr| {
            if present.contains(id) {
                return tr.since.is_none_or(|s| now.duration_since(s) < drain_time);
            }
            let since = *tr.since.get_or_insert(now);
            now.duration_since(since) < drain_time
        });
        let mut missing: Vec<&Tracked> = self.tracked.iter().filter(|(id, _)| !present.contains(*id)).map(|(_, t)| t).collect();
        missing.sort_by(|a, b| a.task.id.cmp(&b.task.id));
        for tr in missing {
            let mut task = tr.task.clone();
            task.state = "TASK_KILLING".into();
            match out.app_mut(&tr.app_id) {
                Some(app) => app.tasks.push(task),
                None => {
                    if let Some(def) = self.defs.get(&tr.app_id) {
                        let mut app = def.clone();
                        app.tasks = vec![task];
                        out.apps.push(app);
                    }
                }
            }
        }
        // Keep definitions of apps with tracked tasks, for when the app itself is gone.
        let wanted: std::collections::HashSet<&str> = self.tracked.values().map(|t| t.app_id.as_str()).collect();
        self.defs.retain(|id, _| wanted.contains(id.as_str()));
        for app in &mut out.apps {
            if wanted.contains(app.id.as_str()) {
                let tasks = std::mem::take(&mut app.tasks);
                self.defs.insert(app.id.clone(), app.clone());
                app.tasks = tasks;
            }
        }
        out
    }

    /// When the next draining task expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.tracked.values().filter_map(|t| t.since).min().map(|s| s + self.drain_time)
    }
}
