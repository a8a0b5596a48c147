//! Padis Marathon source: follows Marathon (event stream + REST) and maps labelled apps to desired state.
//!
//! [`MarathonSource::spawn`] keeps a full copy of Marathon's apps (`GET /v2/apps?embed=apps.tasks` on start,
//! after each reconnect, periodically and shortly after events), applies task events from `GET /v2/events` at
//! once, drains killed tasks for `drain_time`, and publishes a [`MarathonState`] whenever it changes. The pure
//! [`map_apps`] turns apps and their `PADIS_*` / `HAPROXY_*` labels into backend groups, routes, DNS services and
//! L4 VIPs. While Marathon is unreachable, the last good state stays published; only its `status` changes.

pub mod apps;
mod backoff;
mod client;
mod drain;
mod error;
pub mod events;
pub mod labels;
mod map;
mod metrics;
mod source;
pub mod sse;

use std::sync::Arc;

use padis_model::l4::Vip;
use padis_model::{same_items, BackendGroup, Listener, Route, Service, SourceStatus};
use serde::Serialize;

pub use apps::{App, Apps, ParseCache, Task};
pub use error::MarathonError;
pub use labels::Unsupported;
pub use map::{default_dns_name, map_apps, role, Role};
pub use source::MarathonSource;

/// What Marathon contributes to the desired state; merged by control into the config file's state, then
/// validated with it (`padis_model::validate_update`) and published.
///
/// Items are shared: the items of an app that did not change are the same `Arc`s as in the previous state, so a
/// clone is cheap and later stages skip them by pointer.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MarathonState {
    /// One backend group per (app, port index) served over HTTP, named `marathon:/app:0`.
    pub groups: Vec<Arc<BackendGroup>>,
    /// Routes from `VHOST` / `PATH` labels; `origin = Some("marathon:/app")`.
    pub routes: Vec<Arc<Route>>,
    /// DNS services (A/AAAA + SRV by port name).
    pub services: Vec<Arc<Service>>,
    /// L4 VIPs from `VIP` labels.
    pub vips: Vec<Arc<Vip>>,
    /// Service-port listeners (`[marathon] service_ports`), named like the port's group (`marathon:/app:0`):
    /// HTTP ones serve the route naming them, TCP ones relay to the group.
    pub listeners: Vec<Listener>,
    /// Invalid apps, ports, routes or labels (skipped), and labels not honoured (see [`AppProblem::effect`]).
    pub problems: Vec<AppProblem>,
    /// Freshness: last good sync, last error.
    pub status: SourceStatus,
}

impl Default for MarathonState {
    fn default() -> Self {
        MarathonState {
            groups: Vec::new(),
            routes: Vec::new(),
            services: Vec::new(),
            vips: Vec::new(),
            listeners: Vec::new(),
            problems: Vec::new(),
            status: SourceStatus { name: "marathon".into(), ok: false, last_ok_unix_ms: None, last_error: None },
        }
    }
}

impl MarathonState {
    /// Whether the mapped content (everything but `status`) equals `other`'s.
    pub fn same_content(&self, other: &MarathonState) -> bool {
        same_items(&self.groups, &other.groups)
            && same_items(&self.routes, &other.routes)
            && same_items(&self.services, &other.services)
            && same_items(&self.vips, &other.vips)
            && self.listeners == other.listeners
            && self.problems == other.problems
    }

    /// Number of backends over all groups.
    pub fn backend_count(&self) -> usize {
        self.groups.iter().map(|g| g.backends.len()).sum()
    }
}

/// An app (or one of its labels) that could not be mapped as written: the app, one port or one route is not
/// served (`effect`), or a label is not honoured and the app is served without it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AppProblem {
    /// App id (or `apps[i]` when it has none).
    pub app: String,
    /// The label concerned, if one, as the app wrote it (`HAPROXY_0_VHOST`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What Padis does about it.
    pub effect: Effect,
    /// For a label Padis does not honour: its generic name (`HAPROXY_{n}_BACKEND_HEAD`, or `unknown`), as in the
    /// `padis_marathon_labels_unsupported` metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

/// What a problem does to the app.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// The whole app is not served.
    AppSkipped,
    /// One port of the app is not served; its other ports are.
    PortSkipped,
    /// One route of the app is not served (another app's route wins); the rest is.
    RouteSkipped,
    /// The label is not honoured; the app is served without it.
    LabelIgnored,
    /// The port's service-port listener is not opened (its port is taken, or it cannot be served as asked);
    /// the app's routes are served.
    ListenerSkipped,
    /// The port's L4 VIP is not published (its tasks cannot be reached through it); the rest is served.
    VipSkipped,
}

impl AppProblem {
    /// A problem that skips `app`.
    pub fn new(app: impl Into<String>, label: Option<String>, message: impl Into<String>) -> AppProblem {
        AppProblem { app: app.into(), label, message: message.into(), effect: Effect::AppSkipped, unsupported: None }
    }

    /// The same problem with another effect.
    pub fn with_effect(mut self, effect: Effect) -> AppProblem {
        self.effect = effect;
        self
    }
}

impl std::fmt::Display for AppProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.label {
            Some(l) => write!(f, "{}: {l}: {}", self.app, self.message),
            None => write!(f, "{}: {}", self.app, self.message),
        }
    }
}
