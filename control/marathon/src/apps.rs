//! Marathon's REST shapes: the `GET /v2/apps?embed=apps.tasks` body, read leniently (unknown fields ignored,
//! `null` taken as absent) and app by app, so one malformed app is reported without hiding the others.
//!
//! Apps are shared (`Arc<App>`): an app whose JSON text is the same as in the previous body is not parsed again
//! ([`ParseCache`]), and an app that did not change keeps its allocation, so later stages recognise it by pointer.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::AppProblem;

/// The apps Marathon knows, with their tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Apps {
    /// Apps that parsed, in Marathon's order.
    pub apps: Vec<Arc<App>>,
    /// Apps whose JSON did not have Marathon's shape (skipped).
    pub rejected: Vec<AppProblem>,
}

/// A Marathon app definition (the fields Padis uses).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct App {
    /// App id, e.g. `/prod/web`.
    pub id: String,
    /// Wanted instances.
    #[serde(default, deserialize_with = "nullable")]
    pub instances: u32,
    /// Labels.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Host ports (host networking).
    #[serde(default, deserialize_with = "nullable")]
    pub port_definitions: Vec<PortDefinition>,
    /// Host networking: tasks get the `portDefinitions` ports as host ports (not random ones).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "std::ops::Not::not")]
    pub require_ports: bool,
    /// Container settings.
    #[serde(default, deserialize_with = "nullable")]
    pub container: Option<Container>,
    /// IP-per-task settings (Marathon < 1.5).
    #[serde(default, deserialize_with = "nullable")]
    pub ip_address: Option<IpAddressSpec>,
    /// Networks (Marathon >= 1.5): mode `host`, `container/bridge` or `container`.
    #[serde(default, deserialize_with = "nullable")]
    pub networks: Vec<Network>,
    /// Marathon health checks.
    #[serde(default, deserialize_with = "nullable")]
    pub health_checks: Vec<MarathonHealthCheck>,
    /// Tasks (with `embed=apps.tasks`).
    #[serde(default, deserialize_with = "nullable")]
    pub tasks: Vec<Task>,
    /// Version history (when the config last changed: the older app wins a clash).
    #[serde(default, deserialize_with = "nullable")]
    pub version_info: Option<VersionInfo>,
}

/// `versionInfo`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// ISO 8601 time of the last config change (not scaling).
    #[serde(default, deserialize_with = "nullable")]
    pub last_config_change_at: Option<String>,
    /// ISO 8601 time of the last scaling (blue/green: which colour scaled last).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub last_scaling_at: Option<String>,
}

/// `portDefinitions[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct PortDefinition {
    /// Service port.
    #[serde(default)]
    pub port: u32,
    /// `tcp`, `udp` or `tcp,udp`.
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    /// Port name (DNS SRV).
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<String>,
}

/// `container`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Docker settings (Marathon < 1.5 keeps the port mappings here).
    #[serde(default, deserialize_with = "nullable")]
    pub docker: Option<Docker>,
    /// Port mappings (Marathon >= 1.5).
    #[serde(default, deserialize_with = "nullable")]
    pub port_mappings: Vec<PortMapping>,
}

/// `container.docker`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Docker {
    /// `HOST`, `BRIDGE` or `USER`.
    #[serde(default, deserialize_with = "nullable")]
    pub network: Option<String>,
    /// Port mappings.
    #[serde(default, deserialize_with = "nullable")]
    pub port_mappings: Vec<PortMapping>,
}

/// A container port mapping.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// Port inside the container.
    #[serde(default, deserialize_with = "nullable")]
    pub container_port: u32,
    /// Host port (0 = chosen by Mesos).
    #[serde(default, deserialize_with = "nullable")]
    pub host_port: Option<u32>,
    /// Service port.
    #[serde(default, deserialize_with = "nullable")]
    pub service_port: u32,
    /// `tcp`, `udp` or `tcp,udp`.
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    /// Port name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<String>,
}

/// `ipAddress` (IP-per-task networking, Marathon < 1.5).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IpAddressSpec {
    /// Discovery info.
    #[serde(default, deserialize_with = "nullable")]
    pub discovery: Option<Discovery>,
    /// Network name.
    #[serde(default, deserialize_with = "nullable")]
    pub network_name: Option<String>,
}

/// `ipAddress.discovery`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Discovery {
    /// Ports.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<DiscoveryPort>,
}

/// `ipAddress.discovery.ports[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct DiscoveryPort {
    /// Port number in the container.
    #[serde(default)]
    pub number: u32,
    /// Name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<String>,
    /// Protocol.
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
}

/// `networks[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Network {
    /// `host`, `container/bridge` or `container`.
    #[serde(default, deserialize_with = "nullable")]
    pub mode: String,
    /// Network name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: Option<String>,
}

/// `healthChecks[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MarathonHealthCheck {
    /// `HTTP`, `HTTPS`, `TCP`, `COMMAND`, `MESOS_HTTP`, …
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
    /// HTTP path.
    #[serde(default, deserialize_with = "nullable")]
    pub path: Option<String>,
    /// Port index checked.
    #[serde(default, deserialize_with = "nullable")]
    pub port_index: Option<u32>,
    /// Seconds between checks.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Seconds a check may take.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Failures in a row after which Marathon kills the task.
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub max_consecutive_failures: Option<u32>,
}

/// A task (`tasks[]`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// Task id.
    pub id: String,
    /// Agent host name or address.
    #[serde(default, deserialize_with = "nullable")]
    pub host: String,
    /// Host ports, by port index.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<u32>,
    /// Container addresses (IP-per-task).
    #[serde(default, deserialize_with = "nullable")]
    pub ip_addresses: Vec<TaskIp>,
    /// Mesos state (`TASK_RUNNING`, `TASK_KILLING`, …).
    #[serde(default, deserialize_with = "nullable")]
    pub state: String,
    /// Health check results (one per app health check once checked).
    #[serde(default, deserialize_with = "nullable")]
    pub health_check_results: Vec<HealthCheckResult>,
    /// When the task started running (Marathon <= 1.3 sends no `state`: a start time then means running).
    #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Address of `host` when it is a name, filled by the source's resolver (not part of Marathon's JSON).
    #[serde(skip)]
    pub resolved_host: Option<IpAddr>,
    /// Set by the blue/green merge: a task of the old colour whose traffic moved to the new colour (draining).
    #[serde(skip)]
    pub deployment_draining: bool,
}

/// `tasks[].ipAddresses[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskIp {
    /// Address.
    #[serde(default, deserialize_with = "nullable")]
    pub ip_address: String,
    /// `IPv4` or `IPv6`.
    #[serde(default, deserialize_with = "nullable")]
    pub protocol: String,
}

/// `tasks[].healthCheckResults[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckResult {
    /// Whether the last check passed.
    #[serde(default, deserialize_with = "nullable")]
    pub alive: bool,
    /// Failures in a row.
    #[serde(default, deserialize_with = "nullable")]
    pub consecutive_failures: u32,
}

/// Takes JSON `null` as the type's default.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct RawApps<'a> {
    #[serde(borrow)]
    apps: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<serde_json::Value>,
}

/// The apps of the previous `/v2/apps` body by a keyed hash of their JSON text, so that an app whose text did
/// not change is not parsed again (and keeps its allocation).
#[derive(Default)]
pub struct ParseCache {
    hasher: foldhash::quality::RandomState,
    by_text: HashMap<(u64, usize), Arc<App>>,
}

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

impl ParseCache {
    /// Number of apps remembered.
    pub fn len(&self) -> usize {
        self.by_text.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_text.is_empty()
    }

    /// Remembers, for each app equal to the one parsed from its text, the allocation in `apps` instead, so
    /// that one copy is alive (apps changed by events since were copied; once equal again they are shared).
    pub fn share_with(&mut self, apps: &[Arc<App>]) {
        let by_id: HashMap<&str, &Arc<App>> = apps.iter().map(|a| (a.id.as_str(), a)).collect();
        for parsed in self.by_text.values_mut() {
            if let Some(a) = by_id.get(parsed.id.as_str()) {
                if !Arc::ptr_eq(parsed, a) && **parsed == ***a {
                    *parsed = Arc::clone(a);
                }
            }
        }
    }
}

impl Apps {
    /// Parses a `/v2/apps` body. The envelope must be `{"apps": [...]}`; an app that does not parse goes to
    /// `rejected` and the others are kept.
    pub fn from_json(body: &[u8]) -> Result<Apps, serde_json::Error> {
        Apps::from_json_reusing(body, &mut ParseCache::default())
    }

    /// [`Apps::from_json`], taking apps whose JSON text is unchanged since the previous body from `cache`
    /// (a 64-bit keyed hash plus the length); `cache` then holds this body's apps.
    pub fn from_json_reusing(body: &[u8], cache: &mut ParseCache) -> Result<Apps, serde_json::Error> {
        let raw: RawApps = serde_json::from_slice(body)?;
        let mut out = Apps { apps: Vec::with_capacity(raw.apps.len()), rejected: Vec::new() };
        let mut seen = HashMap::with_capacity_and_hasher(raw.apps.len(), Default::default());
        for (i, r) in raw.apps.into_iter().enumerate() {
            let text = r.get();
            let key = (cache.hasher.hash_one(text.as_bytes()), text.len());
            if let Some(app) = cache.by_text.get(&key) {
                out.apps.push(app.clone());
                seen.insert(key, app.clone());
                continue;
            }
            match serde_json::from_str::<App>(text) {
                Ok(app) if !app.id.is_empty() => {
                    let app = Arc::new(app);
                    seen.insert(key, app.clone());
                    out.apps.push(app);
                }
                Ok(_) => out.rejected.push(AppProblem::new(format!("apps[{i}]"), None, "app without an id")),
                Err(e) => {
                    let id = serde_json::from_str::<IdOnly>(r.get())
                        .ok()
                        .and_then(|x| x.id)
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| format!("apps[{i}]"));
                    out.rejected.push(AppProblem::new(id, None, format!("not a Marathon app: {e}")));
                }
            }
        }
        cache.by_text = seen;
        Ok(out)
    }

    /// The app with this id, to change (copied first if it is shared).
    pub fn app_mut(&mut self, id: &str) -> Option<&mut App> {
        self.apps.iter_mut().find(|a| a.id == id).map(Arc::make_mut)
    }

    /// Number of tasks over all apps.
    pub fn task_count(&self) -> usize {
        self.apps.iter().map(|a| a.tasks.len()).sum()
    }
}

impl App {
    /// Whether tasks get their own IP address (IP-per-container networking): ports are then container ports.
    pub fn ip_per_task(&self) -> bool {
        self.ip_address.is_some() || self.networks.iter().any(|n| n.mode == "container")
    }

    /// Number of ports the app declares.
    pub fn port_count(&self) -> usize {
        self.port_meta().len()
    }

    /// Name, protocol, container port, service port and fixed host port of each port index, from whichever
    /// definition the app uses (marathon-lb's order: port mappings of container networking, else
    /// `portDefinitions`).
    pub fn port_meta(&self) -> Vec<PortMeta> {
        let mappings = self
            .container
            .as_ref()
            .map(|c| {
                if c.port_mappings.is_empty() {
                    c.docker.as_ref().map(|d| &d.port_mappings[..]).unwrap_or(&[])
                } else {
                    &c.port_mappings[..]
                }
            })
            .unwrap_or(&[]);
        let discovery =
            self.ip_address.as_ref().and_then(|i| i.discovery.as_ref()).map(|d| &d.ports[..]).unwrap_or(&[]);
        if self.ip_per_task() && !discovery.is_empty() {
            discovery
                .iter()
                .map(|p| PortMeta {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    container_port: Some(p.number),
                    service_port: None,
                    host_port: None,
                })
                .collect()
        } else if !mappings.is_empty() {
            mappings
                .iter()
                .map(|p| PortMeta {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    container_port: Some(p.container_port),
                    service_port: port16(p.service_port),
                    host_port: p.host_port.and_then(port16),
                })
                .collect()
        } else {
            self.port_definitions
                .iter()
                .map(|p| PortMeta {
                    name: p.name.clone(),
                    protocol: p.protocol.clone(),
                    container_port: None,
                    service_port: port16(p.port),
                    host_port: if self.require_ports { port16(p.port) } else { None },
                })
                .collect()
        }
    }
}

/// What is known of one port index of an app.
#[derive(Debug, Clone, PartialEq)]
pub struct PortMeta {
    /// Name (for DNS SRV).
    pub name: Option<String>,
    /// Protocol as Marathon spells it (`tcp`, `udp`, `tcp,udp`).
    pub protocol: String,
    /// Container port (port mappings, discovery ports).
    pub container_port: Option<u32>,
    /// Service port (`servicePort` of a port mapping, `port` of a port definition; none when 0).
    pub service_port: Option<u16>,
    /// Host port every task of the app gets for this port (a port mapping's non-zero `hostPort`, or a port
    /// definition's `port` with `requirePorts`); none when Mesos picks one per task.
    pub host_port: Option<u16>,
}

/// A port number of Marathon's JSON as a port (none for 0 or out of range).
fn port16(p: u32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_unknown_fields_and_a_bad_app() {
        let body = br#"{"apps":[
            {"id":"/a","instances":1,"labels":null,"ipAddress":null,"container":null,"extra":{"x":1},
             "tasks":[{"id":"a.1","host":"10.0.0.1","ports":[31000],"state":"TASK_RUNNING","healthCheckResults":null}]},
            {"id":"/b","instances":"many"},
            {"instances":1}
        ]}"#;
        let apps = Apps::from_json(body).unwrap();
        assert_eq!(apps.apps.len(), 1);
        assert_eq!(apps.apps[0].tasks[0].ports, vec![31000]);
        assert_eq!(apps.rejected.len(), 2);
        assert_eq!(apps.rejected[0].app, "/b");
        assert!(Apps::from_json(b"{\"apps\": 3}").is_err());
        assert!(Apps::from_json(b"[]").is_err());
    }
}
