//! Marathon event bus payloads and their immediate effect on the cached apps.
//!
//! Task-level events (status updates, health changes, kills) are applied to the cached copy at once, so the
//! data planes follow within the coalescing delay; every event also schedules a full sync, which stays the
//! authority (events carry no labels and may be missed).

use serde::Deserialize;

use crate::apps::{App, Apps, HealthCheckResult, Task, TaskIp};

/// The event types subscribed to (`GET /v2/events?event_type=…`).
pub const SUBSCRIBED: &[&str] = &[
    "event_stream_attached",
    "status_update_event",
    "instance_changed_event",
    "health_status_changed_event",
    "instance_health_changed_event",
    "api_post_event",
    "deployment_success",
    "deployment_step_success",
    "app_terminated_event",
    "unhealthy_instance_kill_event",
];

/// A decoded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `event_stream_attached`: the subscription is live.
    Attached,
    /// `status_update_event`: a task changed state.
    StatusUpdate(StatusUpdate),
    /// `health_status_changed_event` / `instance_health_changed_event`.
    Health {
        /// App id.
        app_id: String,
        /// Task or instance id.
        id: String,
        /// Passing (`None`: unknown yet).
        alive: Option<bool>,
    },
    /// `unhealthy_instance_kill_event`: the task is being killed.
    Killing {
        /// App id.
        app_id: String,
        /// Task or instance id.
        id: String,
    },
    /// `api_post_event`: an app was created or changed through the API; Marathon sends the resulting definition.
    /// A new app is added at once (its tasks follow as status updates); changes to known apps wait for the full
    /// sync the event schedules.
    AppPosted(Box<App>),
    /// `app_terminated_event`: the app is gone.
    AppTerminated {
        /// App id.
        app_id: String,
    },
    /// Any other subscribed event: only a full sync tells what changed.
    Other(String),
}

/// `status_update_event` payload.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusUpdate {
    /// Task id.
    pub task_id: String,
    /// New Mesos state.
    pub task_status: String,
    /// App id.
    pub app_id: String,
    /// Agent host.
    #[serde(default)]
    pub host: Option<String>,
    /// Host ports.
    #[serde(default)]
    pub ports: Option<Vec<u32>>,
    /// Container addresses.
    #[serde(default)]
    pub ip_addresses: Option<Vec<TaskIp>>,
}

/// `health_status_changed_event` (Marathon 1.x: appId, taskId and/or instanceId, alive) and
/// `instance_health_changed_event` (runSpecId, instanceId, healthy).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthPayload {
    #[serde(default)]
    app_id: Option<String>,
    #[serde(default)]
    run_spec_id: Option<String>,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    alive: Option<bool>,
    #[serde(default)]
    healthy: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KillPayload {
    app_id: String,
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    instance_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppPayload {
    app_id: String,
}

/// `api_post_event` payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiPostPayload {
    app_definition: App,
}

/// Why an event could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{event}: {source}")]
pub struct EventError {
    /// Event type.
    pub event: String,
    /// JSON error.
    pub source: serde_json::Error,
}

/// Decodes one SSE event (type from `event:`, payload from `data:`).
pub fn decode(event: &str, data: &str) -> Result<Event, EventError> {
    let err = |source| EventError { event: event.to_string(), source };
    Ok(match event {
        "event_stream_attached" => Event::Attached,
        "status_update_event" => Event::StatusUpdate(serde_json::from_str(data).map_err(err)?),
        "health_status_changed_event" | "instance_health_changed_event" => {
            let h: HealthPayload = serde_json::from_str(data).map_err(err)?;
            let app_id = h.app_id.or(h.run_spec_id).ok_or_else(|| err(serde::de::Error::missing_field("appId")))?;
            let id = h.task_id.or(h.instance_id).ok_or_else(|| err(serde::de::Error::missing_field("taskId")))?;
            Event::Health { app_id, id, alive: h.alive.or(h.healthy) }
        }
        "unhealthy_instance_kill_event" => {
            let k: KillPayload = serde_json::from_str(data).map_err(err)?;
            let id = k.task_id.or(k.instance_id).unwrap_or_default();
            Event::Killing { app_id: k.app_id, id }
        }
        "api_post_event" => {
            let p: ApiPostPayload = serde_json::from_str(data).map_err(err)?;
            Event::AppPosted(Box::new(p.app_definition))
        }
        "app_terminated_event" => {
            let a: AppPayload = serde_json::from_str(data).map_err(err)?;
            Event::AppTerminated { app_id: a.app_id }
        }
        other => {
            // Still check it is JSON: garbage is reported, not acted on.
            serde_json::from_str::<serde::de::IgnoredAny>(data).map_err(err)?;
            Event::Other(other.to_string())
        }
    })
}

/// Whether a Mesos state is terminal (the task is gone).
pub fn terminal(state: &str) -> bool {
    matches!(
        state,
        "TASK_FINISHED"
            | "TASK_FAILED"
            | "TASK_KILLED"
            | "TASK_LOST"
            | "TASK_ERROR"
            | "TASK_DROPPED"
            | "TASK_GONE"
            | "TASK_GONE_BY_OPERATOR"
            | "TASK_UNKNOWN"
    )
}

/// Whether `task_id` is the task `id` names: a task id, or the id of the instance the task belongs to in
/// Marathon >= 1.4 — `app.instance-<uuid>` for tasks `app.instance-<uuid>._app.1`, and `app.marathon-<uuid>` for
/// a task of the older shape `app.<uuid>` (Marathon keeps that task id and derives the instance id from it).
fn matches(task_id: &str, id: &str) -> bool {
    if task_id == id || (task_id.starts_with(id) && task_id.as_bytes().get(id.len()) == Some(&b'.')) {
        return true;
    }
    for sep in [".marathon-", "_marathon-"] {
        if let Some((run_spec, uuid)) = id.rsplit_once(sep) {
            let legacy = task_id.strip_prefix(run_spec).and_then(|r| r.strip_suffix(uuid));
            if matches!(legacy, Some("." | "_")) {
                return true;
            }
        }
    }
    false
}

/// Applies an event to the cached apps; returns whether anything changed.
pub fn apply(apps: &mut Apps, event: &Event) -> bool {
    match event {
        Event::StatusUpdate(s) => {
            let Some(app) = apps.app_mut(&s.app_id) else { return false };
            let pos = app.tasks.iter().position(|t| t.id == s.task_id);
            if terminal(&s.task_status) {
                return match pos {
                    Some(i) => {
                        app.tasks.remove(i);
                        true
                    }
                    None => false,
                };
            }
            let task = match pos {
                Some(i) => &mut app.tasks[i],
                None => {
                    app.tasks.push(Task { id: s.task_id.clone(), ..Task::default() });
                    let last = app.tasks.len() - 1;
                    &mut app.tasks[last]
                }
            };
            let before = task.clone();
            task.state = s.task_status.clone();
            if let Some(h) = &s.host {
                task.host = h.clone();
                task.resolved_host = None;
            }
            if let Some(p) = &s.ports {
                task.ports = p.clone();
            }
            if let Some(ips) = &s.ip_addresses {
                task.ip_addresses = ips.clone();
            }
            *task != before
        }
        Event::Health { app_id, id, alive } => {
            let Some(app) = apps.app_mut(app_id) else { return false };
            let checks = app.health_checks.len().max(1);
            let mut changed = false;
            for t in app.tasks.iter_mut().filter(|t| matches(&t.id, id)) {
                let before = t.health_check_results.clone();
                match alive {
                    Some(false) => {
                        if t.health_check_results.is_empty() {
                            t.health_check_results.push(HealthCheckResult::default());
                        }
                        t.health_check_results.iter_mut().for_each(|r| r.alive = false);
                    }
                    // With several checks, one passing says nothing of the others: the full sync decides.
                    Some(true) if checks == 1 => {
                        t.health_check_results = vec![HealthCheckResult { alive: true, consecutive_failures: 0 }]
                    }
                    _ => {}
                }
                changed |= t.health_check_results != before;
            }
            changed
        }
        Event::Killing { app_id, id } => {
            let Some(app) = apps.app_mut(app_id) else { return false };
            let mut changed = false;
            for t in app.tasks.iter_mut().filter(|t| matches(&t.id, id) && t.state == "TASK_RUNNING") {
                t.state = "TASK_KILLING".into();
                changed = true;
            }
            changed
        }
        Event::AppPosted(def) => {
            if def.id.is_empty() || apps.app_mut(&def.id).is_some() {
                return false;
            }
            let mut app = (**def).clone();
            app.tasks.clear();
            apps.apps.push(std::sync::Arc::new(app));
            true
        }
        Event::AppTerminated { app_id } => {
            let before = apps.apps.len();
            apps.apps.retain(|a| &a.id != app_id);
            apps.apps.len() != before
        }
        Event::Attached | Event::Other(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_updates_add_kill_and_remove_tasks() {
        let mut apps = Apps::from_json(br#"{"apps":[{"id":"/a","tasks":[]}]}"#).unwrap();
        let up = |id: &str, st: &str| {
            decode(
                "status_update_event",
                &format!(r#"{{"taskId":"{id}","taskStatus":"{st}","appId":"/a","host":"10.0.0.1","ports":[31000],"eventType":"status_update_event"}}"#),
            )
            .unwrap()
        };
        assert!(apply(&mut apps, &up("a.1", "TASK_RUNNING")));
        assert!(!apply(&mut apps, &up("a.1", "TASK_RUNNING")));
        assert_eq!(apps.apps[0].tasks[0].ports, vec![31000]);
        assert!(apply(&mut apps, &up("a.1", "TASK_KILLING")));
        assert_eq!(apps.apps[0].tasks[0].state, "TASK_KILLING");
        assert!(apply(&mut apps, &up("a.1", "TASK_KILLED")));
        assert!(apps.apps[0].tasks.is_empty());
        assert!(decode("status_update_event", "{not json").is_err());
        // Marathon 1.4+ sends both taskId and instanceId.
        let h = decode(
            "health_status_changed_event",
            r#"{"appId":"/a","taskId":"a.1","instanceId":"a.marathon-1","alive":false,"eventType":"health_status_changed_event"}"#,
        )
        .unwrap();
        assert_eq!(h, Event::Health { app_id: "/a".into(), id: "a.1".into(), alive: Some(false) });
        let h =
            decode("instance_health_changed_event", r#"{"runSpecId":"/a","instanceId":"a.marathon-1","healthy":true}"#)
                .unwrap();
        assert_eq!(h, Event::Health { app_id: "/a".into(), id: "a.marathon-1".into(), alive: Some(true) });
        assert!(matches!(decode("some_new_event", "{}").unwrap(), Event::Other(_)));
    }

    /// Marathon >= 1.4 names a task of the old id shape (`app.<uuid>`) by its instance id `app.marathon-<uuid>`
    /// in health events that carry only `instanceId`: the event applies to that task at once.
    #[test]
    fn an_instance_id_only_health_event_reaches_an_old_shaped_task() {
        let mut apps = Apps::from_json(
            br#"{"apps":[{"id":"/prod/web","healthChecks":[{"protocol":"HTTP","path":"/"}],"tasks":[
                {"id":"prod_web.5dd78972-6771-11e5-94e1-be5b2935a987","host":"10.0.0.1","ports":[31000],
                 "startedAt":"2015-09-30T12:47:11.286Z","healthCheckResults":[{"alive":true}]},
                {"id":"prod_web.instance-0a1b2c3d-6771-11e5-94e1-be5b2935a987._app.1","host":"10.0.0.2",
                 "ports":[31001],"state":"TASK_RUNNING","healthCheckResults":[{"alive":true}]}]}]}"#,
        )
        .unwrap();
        let ev = |id: &str, alive: bool| {
            decode(
                "health_status_changed_event",
                &format!(r#"{{"appId":"/prod/web","instanceId":"{id}","alive":{alive},"eventType":"health_status_changed_event"}}"#),
            )
            .unwrap()
        };
        assert!(apply(&mut apps, &ev("prod_web.marathon-5dd78972-6771-11e5-94e1-be5b2935a987", false)));
        assert!(!apps.apps[0].tasks[0].health_check_results[0].alive);
        assert!(apps.apps[0].tasks[1].health_check_results[0].alive, "the other task is untouched");
        assert!(apply(&mut apps, &ev("prod_web.instance-0a1b2c3d-6771-11e5-94e1-be5b2935a987", false)));
        assert!(!apps.apps[0].tasks[1].health_check_results[0].alive);
        // A different uuid matches nothing.
        assert!(!apply(&mut apps, &ev("prod_web.marathon-ffffffff-6771-11e5-94e1-be5b2935a987", true)));
        assert!(!matches("prod_web.5dd78972", "prod.marathon-5dd78972"));
    }

    #[test]
    fn a_posted_new_app_is_added_with_its_labels_and_then_gets_tasks() {
        let mut apps = Apps::from_json(br#"{"apps":[{"id":"/a","labels":{"PADIS_GROUP":"x"},"tasks":[]}]}"#).unwrap();
        let post = |def: &str| {
            decode(
                "api_post_event",
                &format!(
                    r#"{{"clientIp":"10.0.0.9","uri":"/v2/apps","appDefinition":{def},"eventType":"api_post_event"}}"#
                ),
            )
            .unwrap()
        };
        assert!(apply(
            &mut apps,
            &post(
                r#"{"id":"/b","instances":2,"labels":{"PADIS_GROUP":"external"},"tasks":[{"id":"b.0","appId":"/b"}]}"#
            )
        ));
        assert_eq!(apps.apps[1].labels["PADIS_GROUP"], "external");
        assert!(apps.apps[1].tasks.is_empty(), "tasks come from status updates, not the definition");
        // A known app is left to the full sync (a partial definition must not wipe its labels).
        assert!(!apply(&mut apps, &post(r#"{"id":"/a","instances":3}"#)));
        assert_eq!(apps.apps[0].labels["PADIS_GROUP"], "x");
        let up = decode(
            "status_update_event",
            r#"{"taskId":"b.1","taskStatus":"TASK_RUNNING","appId":"/b","host":"10.0.0.2","ports":[31001]}"#,
        )
        .unwrap();
        assert!(apply(&mut apps, &up));
        assert_eq!(apps.apps[1].tasks.len(), 1);
        assert!(decode("api_post_event", r#"{"appDefinition":7}"#).is_err());
    }
}
