//! The simulated Marathon state: apps, tasks, health, and the events each change emits. Payloads are built from
//! the fixture files in `tests/fixtures/marathon`, shaped like Marathon 1.x's documented ones.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Fixture payloads.
pub(crate) mod fixtures {
    pub const APP: &str = include_str!("../../fixtures/marathon/app.json");
    pub const TASK: &str = include_str!("../../fixtures/marathon/task.json");
    pub const HEALTH_CHECK: &str = include_str!("../../fixtures/marathon/health_check.json");
    pub const HEALTH_RESULT: &str = include_str!("../../fixtures/marathon/health_check_result.json");
    pub const INFO: &str = include_str!("../../fixtures/marathon/info.json");

    /// The fixture of an event type.
    pub fn event(kind: &str) -> Option<&'static str> {
        Some(match kind {
            "event_stream_attached" => include_str!("../../fixtures/marathon/events/event_stream_attached.json"),
            "status_update_event" => include_str!("../../fixtures/marathon/events/status_update_event.json"),
            "health_status_changed_event" => {
                include_str!("../../fixtures/marathon/events/health_status_changed_event.json")
            }
            "instance_changed_event" => include_str!("../../fixtures/marathon/events/instance_changed_event.json"),
            "api_post_event" => include_str!("../../fixtures/marathon/events/api_post_event.json"),
            "deployment_success" => include_str!("../../fixtures/marathon/events/deployment_success.json"),
            "deployment_step_success" => include_str!("../../fixtures/marathon/events/deployment_step_success.json"),
            "app_terminated_event" => include_str!("../../fixtures/marathon/events/app_terminated_event.json"),
            "unhealthy_instance_kill_event" => {
                include_str!("../../fixtures/marathon/events/unhealthy_instance_kill_event.json")
            }
            "framework_message_event" => include_str!("../../fixtures/marathon/events/framework_message_event.json"),
            _ => return None,
        })
    }
}

fn template(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

static APP_T: LazyLock<Value> = LazyLock::new(|| template(fixtures::APP));
static TASK_T: LazyLock<Value> = LazyLock::new(|| template(fixtures::TASK));
static RESULT_T: LazyLock<Value> = LazyLock::new(|| template(fixtures::HEALTH_RESULT));
static CHECK_T: LazyLock<Value> = LazyLock::new(|| template(fixtures::HEALTH_CHECK));

/// Overlays `fields` on a parsed template.
fn overlay(t: &Value, fields: Value) -> Value {
    let mut v = t.clone();
    if let (Some(obj), Value::Object(f)) = (v.as_object_mut(), fields) {
        for (k, val) in f {
            obj.insert(k, val);
        }
    }
    v
}

/// ISO 8601 UTC with milliseconds, as Marathon writes timestamps.
pub fn iso_now() -> String {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A port of an app.
#[derive(Debug, Clone)]
pub struct PortSpec {
    /// Port name (DNS SRV).
    pub name: Option<String>,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// Where a new task of an app runs: `(host, host ports)` for the n-th task started.
pub type Placement = Arc<dyn Fn(u64) -> (String, Vec<u32>) + Send + Sync>;

/// An app to create.
#[derive(Clone)]
pub struct AppSpec {
    /// App id (`/prod/web`).
    pub id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// Whether the app has a Marathon HTTP health check (tasks then need a passing result to serve).
    pub health_check: bool,
    /// IP-per-container networking: tasks get their own address; ports are container ports.
    pub container_ports: Option<Vec<u32>>,
    /// Where tasks run (default: 127.0.x.y, ports from 31000 up).
    pub placement: Option<Placement>,
    /// Tasks are rendered as Marathon <= 1.3 did: no `state` field (running tasks have `startedAt`).
    pub no_task_state: bool,
    /// Health events carry only `instanceId`, as Marathon >= 1.4 names a task of the old id shape
    /// (`app.<uuid>` -> `app.marathon-<uuid>`).
    pub instance_id_events: bool,
    /// Service port of each port index (`portDefinitions[].port`, `servicePorts` of tasks); 0 (none) for the
    /// ports past the list.
    pub service_ports: Vec<u32>,
    /// `requirePorts`: tasks run on the `portDefinitions` ports.
    pub require_ports: bool,
}

impl AppSpec {
    /// An app with one `http` port and the given labels.
    pub fn new(id: &str, labels: &[(&str, &str)]) -> AppSpec {
        AppSpec {
            id: id.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ports: vec![PortSpec { name: Some("http".into()), protocol: "tcp".into() }],
            health_check: false,
            container_ports: None,
            placement: None,
            no_task_state: false,
            instance_id_events: false,
            service_ports: Vec::new(),
            require_ports: false,
        }
    }

    /// With these service ports (marathon-lb serves each on a listener of its own).
    pub fn with_service_ports(mut self, ports: &[u32]) -> AppSpec {
        self.service_ports = ports.to_vec();
        self
    }

    /// With these ports (name, protocol); the first is `http` by default.
    pub fn with_ports(mut self, ports: &[(&str, &str)]) -> AppSpec {
        self.ports =
            ports.iter().map(|(n, p)| PortSpec { name: Some(n.to_string()), protocol: p.to_string() }).collect();
        self
    }

    /// `requirePorts`: the tasks' host ports are the service ports.
    pub fn requiring_ports(mut self) -> AppSpec {
        self.require_ports = true;
        self
    }

    /// Tasks without a `state` field (Marathon <= 1.3).
    pub fn without_task_state(mut self) -> AppSpec {
        self.no_task_state = true;
        self
    }

    /// Health events with only `instanceId` (Marathon >= 1.4 for tasks of the old id shape).
    pub fn with_instance_id_events(mut self) -> AppSpec {
        self.instance_id_events = true;
        self
    }

    /// With a Marathon health check.
    pub fn with_health_check(mut self) -> AppSpec {
        self.health_check = true;
        self
    }

    /// With a placement function.
    pub fn placed(mut self, f: impl Fn(u64) -> (String, Vec<u32>) + Send + Sync + 'static) -> AppSpec {
        self.placement = Some(Arc::new(f));
        self
    }
}

/// A simulated task.
#[derive(Debug, Clone)]
pub struct TaskSim {
    /// Task id.
    pub id: String,
    /// Agent host.
    pub host: String,
    /// Host ports.
    pub ports: Vec<u32>,
    /// Container address (IP-per-container).
    pub ip: Option<String>,
    /// Mesos state.
    pub state: String,
    /// Health check result (`None`: not checked yet).
    pub alive: Option<bool>,
    /// Start time.
    pub started_at: String,
}

/// A simulated app.
pub struct AppSim {
    pub(crate) spec: AppSpec,
    pub(crate) instances: u32,
    pub(crate) tasks: Vec<TaskSim>,
    pub(crate) version: String,
    /// Rendered JSON (without and with tasks), invalidated on change.
    pub(crate) cache: Option<(String, String)>,
}

/// An event to broadcast: `(event type, payload)`.
pub type Emitted = (String, Value);

/// The whole simulated cluster state.
#[derive(Default)]
pub struct World {
    pub(crate) apps: BTreeMap<String, AppSim>,
    pub(crate) seq: u64,
}

fn default_placement(seq: u64, nports: usize) -> (String, Vec<u32>) {
    let host = format!("127.0.{}.{}", (seq / 250) % 250, seq % 250 + 1);
    let ports = (0..nports as u32).map(|i| 31000 + ((seq as u32 * 7 + i) % 30000)).collect();
    (host, ports)
}

impl World {
    /// Creates an app with `instances` running (and, with a health check, healthy) tasks.
    pub fn add_app(&mut self, spec: AppSpec, instances: u32) -> Vec<Emitted> {
        let id = spec.id.clone();
        let mut sim = AppSim { spec, instances, tasks: Vec::new(), version: iso_now(), cache: None };
        // Marathon's api_post_event carries the resulting app definition.
        let definition: Value = serde_json::from_str(&render_app(&sim).0).unwrap_or_else(|_| json!({ "id": id }));
        sim.instances = 0;
        let mut out = vec![(
            "api_post_event".to_string(),
            patch(
                fixtures::event("api_post_event"),
                json!({
                    "uri": format!("/v2/apps{id}"),
                    "appDefinition": definition,
                    "timestamp": iso_now(),
                }),
            ),
        )];
        self.apps.insert(id.clone(), sim);
        out.extend(self.scale(&id, instances));
        out
    }

    /// Scales an app: new tasks start running (healthy when checked); surplus tasks (youngest first) are killed
    /// at once (`TASK_KILLING` then `TASK_KILLED`).
    pub fn scale(&mut self, id: &str, instances: u32) -> Vec<Emitted> {
        let mut out = Vec::new();
        let Some(app) = self.apps.get(id) else { return out };
        let live = app.tasks.len() as u32;
        if instances > live {
            for _ in live..instances {
                out.extend(self.start_task(id));
            }
        } else {
            let victims: Vec<String> =
                app.tasks.iter().rev().take((live - instances) as usize).map(|t| t.id.clone()).collect();
            for t in victims {
                out.extend(self.kill_begin(id, &t));
                out.extend(self.kill_finish(id, &t));
            }
        }
        if let Some(app) = self.apps.get_mut(id) {
            app.instances = instances;
            app.cache = None;
        }
        out.push((
            "deployment_step_success".into(),
            patch(
                fixtures::event("deployment_step_success"),
                json!({
            "currentStep": { "actions": [{ "action": "ScaleApplication", "app": id }] }, "timestamp": iso_now() }),
            ),
        ));
        out.push((
            "deployment_success".into(),
            patch(fixtures::event("deployment_success"), json!({ "timestamp": iso_now() })),
        ));
        out
    }

    /// Starts one task of `id` (running; healthy if the app has a check).
    pub fn start_task(&mut self, id: &str) -> Vec<Emitted> {
        self.seq += 1;
        let seq = self.seq;
        let Some(app) = self.apps.get_mut(id) else { return Vec::new() };
        let (host, ports) = match &app.spec.placement {
            Some(f) => f(seq),
            None => default_placement(seq, app.spec.ports.len()),
        };
        let ip = app
            .spec
            .container_ports
            .as_ref()
            .map(|_| format!("10.{}.{}.{}", (seq >> 16) & 255, (seq >> 8) & 255, seq & 255));
        let task_id = format!(
            "{}.{:08x}-{:04x}-11e5-94e1-be5b2935a987",
            id.trim_start_matches('/').replace('/', "_"),
            seq,
            seq % 0xffff
        );
        let task = TaskSim {
            id: task_id.clone(),
            host,
            ports,
            ip,
            state: "TASK_RUNNING".into(),
            alive: app.spec.health_check.then_some(true),
            started_at: iso_now(),
        };
        let mut out = vec![status_event(id, &task, &app.version)];
        if app.spec.health_check {
            out.push(health_event(id, &task.id, true, &app.version, app.spec.instance_id_events));
        }
        app.tasks.push(task);
        app.cache = None;
        out
    }

    /// A task enters `TASK_KILLING`.
    pub fn kill_begin(&mut self, id: &str, task_id: &str) -> Vec<Emitted> {
        self.set_state(id, task_id, "TASK_KILLING")
    }

    /// A task is gone with `state` (`TASK_KILLED`, `TASK_FAILED`, `TASK_LOST`…).
    pub fn task_gone(&mut self, id: &str, task_id: &str, state: &str) -> Vec<Emitted> {
        let Some(app) = self.apps.get_mut(id) else { return Vec::new() };
        let Some(pos) = app.tasks.iter().position(|t| t.id == task_id) else { return Vec::new() };
        let mut task = app.tasks.remove(pos);
        task.state = state.into();
        app.cache = None;
        vec![status_event(id, &task, &app.version)]
    }

    /// A killed task is gone.
    pub fn kill_finish(&mut self, id: &str, task_id: &str) -> Vec<Emitted> {
        self.task_gone(id, task_id, "TASK_KILLED")
    }

    fn set_state(&mut self, id: &str, task_id: &str, state: &str) -> Vec<Emitted> {
        let Some(app) = self.apps.get_mut(id) else { return Vec::new() };
        let Some(task) = app.tasks.iter_mut().find(|t| t.id == task_id) else { return Vec::new() };
        task.state = state.into();
        let ev = status_event(id, task, &app.version);
        app.cache = None;
        vec![ev]
    }

    /// A task's health check result changes.
    pub fn set_health(&mut self, id: &str, task_id: &str, alive: bool) -> Vec<Emitted> {
        let Some(app) = self.apps.get_mut(id) else { return Vec::new() };
        let Some(task) = app.tasks.iter_mut().find(|t| t.id == task_id) else { return Vec::new() };
        task.alive = Some(alive);
        app.cache = None;
        vec![health_event(id, task_id, alive, &app.version, app.spec.instance_id_events)]
    }

    /// Deletes an app (its tasks are killed).
    pub fn remove_app(&mut self, id: &str) -> Vec<Emitted> {
        let Some(app) = self.apps.remove(id) else { return Vec::new() };
        let mut out: Vec<Emitted> = app
            .tasks
            .iter()
            .map(|t| status_event(id, &TaskSim { state: "TASK_KILLED".into(), ..t.clone() }, &app.version))
            .collect();
        out.push((
            "app_terminated_event".into(),
            patch(fixtures::event("app_terminated_event"), json!({ "appId": id, "timestamp": iso_now() })),
        ));
        out
    }

    /// Replaces an app's labels (a config change: new version).
    pub fn set_labels(&mut self, id: &str, labels: &[(&str, &str)]) -> Vec<Emitted> {
        let Some(app) = self.apps.get_mut(id) else { return Vec::new() };
        app.spec.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        app.version = iso_now();
        app.cache = None;
        vec![(
            "api_post_event".into(),
            patch(
                fixtures::event("api_post_event"),
                json!({
            "uri": format!("/v2/apps{id}"), "appDefinition": { "id": id }, "timestamp": iso_now() }),
            ),
        )]
    }

    /// Task ids of an app.
    pub fn task_ids(&self, id: &str) -> Vec<String> {
        self.apps.get(id).map(|a| a.tasks.iter().map(|t| t.id.clone()).collect()).unwrap_or_default()
    }

    /// The `/v2/apps` body.
    pub fn render(&mut self, with_tasks: bool) -> String {
        let mut body = String::from("{\"apps\":[");
        for (i, app) in self.apps.values_mut().enumerate() {
            if i > 0 {
                body.push(',');
            }
            if app.cache.is_none() {
                app.cache = Some(render_app(app));
            }
            if let Some((without, with)) = &app.cache {
                body.push_str(if with_tasks { with } else { without });
            }
        }
        body.push_str("]}");
        body
    }
}

/// Overlays `fields` on a fixture payload.
pub fn patch(fixture: Option<&str>, fields: Value) -> Value {
    let mut v = fixture.map(template).unwrap_or_else(|| json!({}));
    if let (Some(obj), Value::Object(f)) = (v.as_object_mut(), fields) {
        for (k, val) in f {
            obj.insert(k, val);
        }
    }
    v
}

fn status_event(app_id: &str, t: &TaskSim, version: &str) -> Emitted {
    let ips = match &t.ip {
        Some(ip) => json!([{ "ipAddress": ip, "protocol": "IPv4" }]),
        None => json!([{ "ipAddress": t.host, "protocol": "IPv4" }]),
    };
    (
        "status_update_event".into(),
        patch(
            fixtures::event("status_update_event"),
            json!({
                "taskId": t.id, "taskStatus": t.state, "appId": app_id, "host": t.host, "ports": t.ports,
                "ipAddresses": ips, "version": version, "timestamp": iso_now(),
            }),
        ),
    )
}

fn health_event(app_id: &str, task_id: &str, alive: bool, version: &str, instance_only: bool) -> Emitted {
    let mut payload = patch(
        fixtures::event("health_status_changed_event"),
        json!({
            "appId": app_id, "taskId": task_id, "instanceId": task_id, "alive": alive, "version": version,
            "timestamp": iso_now(),
        }),
    );
    if instance_only {
        // Marathon >= 1.4: the instance of a task `app.<uuid>` is `app.marathon-<uuid>`, and no taskId is sent.
        if let (Some(o), Some((run_spec, uuid))) = (payload.as_object_mut(), task_id.rsplit_once('.')) {
            o.remove("taskId");
            o.insert("instanceId".into(), json!(format!("{run_spec}.marathon-{uuid}")));
        }
    }
    ("health_status_changed_event".into(), payload)
}

fn render_app(app: &AppSim) -> (String, String) {
    let s = &app.spec;
    let mut fields = json!({
        "id": s.id,
        "instances": app.instances,
        "labels": s.labels,
        "version": app.version,
        "versionInfo": { "lastScalingAt": app.version, "lastConfigChangeAt": app.version },
        "tasksRunning": app.tasks.iter().filter(|t| t.state == "TASK_RUNNING").count(),
        "tasksHealthy": app.tasks.iter().filter(|t| t.alive == Some(true)).count(),
        "tasksUnhealthy": app.tasks.iter().filter(|t| t.alive == Some(false)).count(),
        "portDefinitions": s.ports.iter().enumerate().map(|(i, p)| json!({
            "port": s.service_ports.get(i).copied().unwrap_or(0), "protocol": p.protocol, "name": p.name,
            "labels": {} })).collect::<Vec<_>>(),
        "requirePorts": s.require_ports,
        "healthChecks": if s.health_check { vec![CHECK_T.clone()] } else { Vec::new() },
    });
    if let Some(cp) = &s.container_ports {
        fields["portDefinitions"] = json!([]);
        fields["ipAddress"] = json!({
            "groups": [], "labels": {}, "networkName": "dcos",
            "discovery": { "ports": s.ports.iter().zip(cp).map(|(p, n)| json!({
                "number": n, "name": p.name, "protocol": p.protocol })).collect::<Vec<_>>() },
        });
    }
    let mut app_json = overlay(&APP_T, fields);
    let without = {
        let mut a = app_json.clone();
        if let Some(o) = a.as_object_mut() {
            o.remove("tasks");
        }
        a.to_string()
    };
    let tasks: Vec<Value> = app
        .tasks
        .iter()
        .map(|t| {
            let mut v = render_task(&s.id, t, &app.version, &s.service_ports);
            if let (true, Some(o)) = (s.no_task_state, v.as_object_mut()) {
                o.remove("state");
            }
            v
        })
        .collect();
    app_json["tasks"] = Value::Array(tasks);
    (without, app_json.to_string())
}

fn render_task(app_id: &str, t: &TaskSim, version: &str, service_ports: &[u32]) -> Value {
    let results = match t.alive {
        Some(alive) => vec![overlay(
            &RESULT_T,
            json!({
                "alive": alive, "consecutiveFailures": if alive { 0 } else { 3 }, "taskId": t.id,
                "lastFailure": if alive { Value::Null } else { json!(iso_now()) },
            }),
        )],
        None => Vec::new(),
    };
    let ips = match &t.ip {
        Some(ip) => json!([{ "ipAddress": ip, "protocol": "IPv4" }]),
        None => json!([{ "ipAddress": t.host, "protocol": "IPv4" }]),
    };
    overlay(
        &TASK_T,
        json!({
            "id": t.id, "appId": app_id, "host": t.host, "ports": t.ports, "ipAddresses": ips, "state": t.state,
            "startedAt": t.started_at, "stagedAt": t.started_at, "version": version, "healthCheckResults": results,
            "servicePorts": (0..t.ports.len()).map(|i| service_ports.get(i).copied().unwrap_or(0)).collect::<Vec<_>>(),
        }),
    )
}
