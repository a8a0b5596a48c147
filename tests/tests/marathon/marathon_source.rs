//! `MarathonSource` against the Marathon test double: real HTTP, real SSE, scripted cluster changes.

use std::time::{Duration, Instant};

use padis_marathon::{MarathonSource, MarathonState};
use padis_model::marathon::{MarathonAuth, MarathonConfig};
use padis_tests::l7::Pki;
use padis_tests::marathon::{AppSpec, AppsOverride, MarathonDouble, NonLeader};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

struct Running {
    rx: watch::Receiver<Option<MarathonState>>,
    registry: prometheus::Registry,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn config(urls: Vec<String>) -> MarathonConfig {
    MarathonConfig {
        urls,
        coalesce: Duration::from_millis(10),
        // Long: changes must come from events unless a test says otherwise.
        resync_delay: Duration::from_secs(30),
        resync_interval: Duration::from_secs(300),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        request_timeout: Duration::from_secs(2),
        drain_time: Duration::from_millis(1500),
        zone: Some("apps.test".into()),
        ..MarathonConfig::default()
    }
}

fn run(cfg: MarathonConfig) -> Running {
    let (tx, rx) = watch::channel(None);
    let registry = prometheus::Registry::new();
    let stop = CancellationToken::new();
    let task = MarathonSource::spawn(cfg, tx, &registry, stop.clone()).expect("spawn");
    Running { rx, registry, stop, task: Some(task) }
}

impl Running {
    /// Waits until a published state satisfies `pred`; panics with the last state otherwise.
    async fn until(&mut self, what: &str, pred: impl Fn(&MarathonState) -> bool) -> MarathonState {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.rx.borrow_and_update().as_ref() {
                if pred(s) {
                    return s.clone();
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, self.rx.changed()).await.is_err() {
                panic!("timed out waiting for {what}; last state: {:#?}", self.rx.borrow().as_ref().map(summary));
            }
        }
    }

    /// Waits until the event stream is attached and the full sync its attachment triggers has finished; returns
    /// the double's count of `/v2/apps` requests then.
    async fn settled_syncs(&self, m: &MarathonDouble) -> u64 {
        let deadline = Instant::now() + WAIT;
        while self.metric("padis_marathon_stream_up") < 1.0 {
            assert!(Instant::now() < deadline, "event stream never attached");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The attach schedules a sync at once; give it time to start, then wait for it to end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while self.metric("padis_marathon_syncs_total") < m.apps_requests() as f64 {
            assert!(Instant::now() < deadline, "full sync never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m.apps_requests()
    }

    fn metric(&self, name: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| {
                f.get_metric().iter().map(|m| m.get_counter().value() + m.get_gauge().value()).collect::<Vec<_>>()
            })
            .sum()
    }
}

fn summary(s: &MarathonState) -> String {
    let groups: Vec<String> = s
        .groups
        .iter()
        .map(|g| {
            format!("{}={:?}", g.name, g.backends.iter().map(|b| (b.addr.to_string(), b.draining)).collect::<Vec<_>>())
        })
        .collect();
    format!("groups {groups:?} problems {:?} status {:?}", s.problems, s.status)
}

/// Serving (non-draining) backends of an app's first port.
fn serving(s: &MarathonState, app: &str) -> usize {
    s.groups
        .iter()
        .find(|g| g.name == format!("marathon:{app}:0"))
        .map(|g| g.backends.iter().filter(|b| !b.draining).count())
        .unwrap_or(0)
}

fn web(id: &str, host: &str) -> AppSpec {
    AppSpec::new(id, &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", host)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_deploy_scale_health_and_drains_killed_tasks() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/shop", "shop.test").with_health_check(), 3);
    let mut r = run(config(m.urls()));
    let s = r.until("3 backends", |s| serving(s, "/shop") == 3).await;
    assert!(s.status.ok && s.status.last_ok_unix_ms.is_some());
    assert_eq!(s.routes[0].host.as_deref(), Some("shop.test"));
    let svc = s.services.iter().find(|x| x.name == "shop").expect("DNS service");
    assert_eq!(svc.instances.len(), 3);
    let syncs = r.settled_syncs(&m).await;

    // Events alone (no full sync: resync_delay is 30 s) carry scale-up, health and kills.
    m.scale("/shop", 5);
    r.until("5 backends", |s| serving(s, "/shop") == 5).await;
    let tasks = m.task_ids("/shop");
    m.set_health("/shop", &tasks[0], false);
    r.until("unhealthy task out", |s| serving(s, "/shop") == 4).await;

    // A killed task drains (still a backend, draining) for drain_time, then goes.
    m.kill_begin("/shop", &tasks[1]);
    let s = r.until("killing task draining", |s| s.groups[0].backends.iter().filter(|b| b.draining).count() == 1).await;
    assert_eq!(serving(&s, "/shop"), 3);
    m.kill_finish("/shop", &tasks[1]);
    let t0 = Instant::now();
    // A failed task vanishing outright drains too.
    m.fail_task("/shop", &tasks[2]);
    r.until("failed task draining", |s| s.groups[0].backends.iter().filter(|b| b.draining).count() == 2).await;
    r.until("drained tasks gone", |s| s.groups[0].backends.len() == 2 && serving(s, "/shop") == 2).await;
    assert!(t0.elapsed() >= Duration::from_millis(1000), "drained too early: {:?}", t0.elapsed());
    assert_eq!(m.apps_requests(), syncs, "events alone must drive these changes");

    // The DNS view follows: instance health and draining are carried.
    let s = r.until("dns follows", |s| s.services[0].instances.len() == 3).await;
    assert_eq!(s.services[0].instances.iter().filter(|i| i.healthy).count(), 2);

    // Deleting the app drains its last tasks, then removes it.
    m.remove_app("/shop");
    r.until("app gone", |s| s.groups.is_empty() && s.services.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_changes_are_found_by_event_triggered_and_periodic_syncs() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/a", "a.test"), 1);
    let mut cfg = config(m.urls());
    cfg.resync_interval = Duration::from_millis(500);
    let mut r = run(cfg);
    r.until("a", |s| serving(s, "/a") == 1).await;
    // No event at all: only the periodic sync can see it.
    m.quietly(|w| {
        w.add_app(web("/b", "b.test"), 2);
    });
    r.until("b by periodic sync", |s| serving(s, "/b") == 2).await;

    // Labels change (only a full sync carries labels): an event schedules one within resync_delay.
    let mut cfg = config(m.urls());
    cfg.resync_delay = Duration::from_millis(100);
    let mut r2 = run(cfg);
    r2.until("b", |s| serving(s, "/b") == 2).await;
    m.set_labels("/b", &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "new-b.test")]);
    r2.until("new vhost", |s| s.routes.iter().any(|x| x.host.as_deref() == Some("new-b.test"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_cuts_and_silent_streams_reconnect_and_resync() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/a", "a.test"), 2);
    let mut cfg = config(m.urls());
    cfg.stream_idle_timeout = Duration::from_millis(400);
    let mut r = run(cfg);
    r.until("a", |s| serving(s, "/a") == 2).await;
    let conns = m.stream_connections();

    // Cut, and change state while nobody listens: the resync after reconnecting finds it.
    m.cut_streams();
    m.quietly(|w| {
        w.scale("/a", 4);
    });
    r.until("resync after cut", |s| serving(s, "/a") == 4).await;
    let deadline = Instant::now() + WAIT;
    while m.stream_connections() <= conns {
        assert!(Instant::now() < deadline, "the event stream was not reopened after the cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The double sends no heartbeat: a silent stream is reopened every idle timeout (plus back-off), again and
    // again. Awaited with a deadline: on a loaded machine the reconnections can take longer than 1.5 s.
    let before = m.stream_connections();
    let deadline = Instant::now() + WAIT;
    while m.stream_connections() < before + 2 {
        assert!(Instant::now() < deadline, "silent stream not reopened: {} -> {}", before, m.stream_connections());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(r.metric("padis_marathon_stream_failures_total") >= 2.0);
    // And events still flow on the fresh stream.
    m.scale("/a", 1);
    r.until("scale down via events", |s| serving(s, "/a") == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_leader_through_503_and_redirects() {
    let m = MarathonDouble::cluster(3).await;
    m.add_app(web("/a", "a.test"), 1);
    m.set_non_leader(NonLeader::Unavailable);
    let mut r = run(config(m.urls()));
    r.until("a", |s| serving(s, "/a") == 1).await;

    // Leader moves to instance 2: instance 0 answers 503, the source moves on.
    m.set_leader(2);
    m.scale("/a", 3);
    r.until("after leader change", |s| serving(s, "/a") == 3).await;
    m.scale("/a", 2);
    r.until("events from the new leader", |s| serving(s, "/a") == 2).await;

    // Only instance 0 configured, and it redirects to the leader.
    m.set_non_leader(NonLeader::Redirect);
    let mut r2 = run(config(vec![m.url(0)]));
    r2.until("via redirect", |s| serving(s, "/a") == 2).await;
    m.scale("/a", 4);
    r2.until("events via redirect", |s| serving(s, "/a") == 4).await;

    // The leader dies: instance 1 takes over (instance 2 refuses connections).
    m.down(2);
    m.set_leader(1);
    m.scale("/a", 1);
    r.until("after leader death", |s| serving(s, "/a") == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_down_keeps_the_last_good_state_and_recovers() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/a", "a.test"), 3);
    let mut cfg = config(m.urls());
    cfg.resync_interval = Duration::from_millis(300);
    let mut r = run(cfg);
    let good = r.until("a", |s| serving(s, "/a") == 3).await;

    m.down_all();
    let s = r.until("error status", |s| !s.status.ok).await;
    assert!(s.same_content(&good), "state changed while Marathon was down");
    assert!(s.status.last_error.as_deref().is_some_and(|e| !e.is_empty()));
    assert!(s.status.last_ok_unix_ms >= good.status.last_ok_unix_ms && s.status.last_ok_unix_ms.is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = r.rx.borrow().clone().expect("state");
    assert!(s.same_content(&good) && !s.status.ok);
    assert!(r.metric("padis_marathon_stale_seconds") >= 1.0);

    m.quietly(|w| {
        w.scale("/a", 5);
    });
    m.up_all().await;
    let s = r.until("recovered", |s| s.status.ok && serving(s, "/a") == 5).await;
    assert!(s.status.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_malformed_and_huge_inputs_change_nothing() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/a", "a.test"), 2);
    let mut cfg = config(m.urls());
    cfg.max_event_bytes = 64 * 1024;
    cfg.max_body_bytes = 1024 * 1024;
    let mut r = run(cfg);
    let good = r.until("a", |s| serving(s, "/a") == 2).await;
    let conns = m.stream_connections();

    // Garbage on the stream: binary, invalid UTF-8, malformed JSON, unknown types, a 1 MB event, split frames.
    m.emit_raw(&b"\x00\xff\xfe garbage without structure\n\n"[..]);
    m.emit_raw(&b"data: \xc3\x28\n\n"[..]);
    m.emit_event("status_update_event", "{\"taskId\": 12, \"appId\":");
    m.emit_event("status_update_event", "[]");
    m.emit_event("health_status_changed_event", "null");
    m.emit_event("brand_new_event_type", "{\"x\":1}");
    m.emit_raw(&b"event: brand_new_event_type\ndata: {\"eventType\":\"brand_new_event_type\"}\n\n"[..]);
    m.emit_fixture("framework_message_event", serde_json::json!({}));
    m.emit_event("status_update_event", &format!("{{\"pad\":\"{}\"}}", "x".repeat(1 << 20)));
    m.emit_raw(&b"event: status_update_event\r\ndata: {\"taskId\":\"nope\",\"taskStatus\":\"TASK_RUNNING\",\"appId\":\"/zzz\"}\r"[..]);
    m.emit_raw(&b"\n\r\n"[..]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(r.rx.borrow().as_ref().is_some_and(|s| s.same_content(&good)));
    assert!(r.metric("padis_marathon_bad_events_total") >= 5.0, "bad events not counted");
    // The stream survived all of it: a real event still applies without reconnecting.
    m.scale("/a", 3);
    r.until("event after garbage", |s| serving(s, "/a") == 3).await;
    assert_eq!(m.stream_connections(), conns);
    let good = r.rx.borrow().clone().expect("state");

    // Malformed JSON, a non-apps body and a huge body from /v2/apps: error status, last good state kept.
    for (body, needle) in [
        (b"{\"apps\": [{\"id\": \"/a\", \"tasks\": [".to_vec(), "malformed JSON"),
        (b"<html>502 Bad Gateway</html>".to_vec(), "malformed JSON"),
        (vec![b' '; 2 * 1024 * 1024], "larger than"),
    ] {
        m.set_apps_override(Some(AppsOverride::Body(body.into())));
        m.cut_streams(); // reconnect => full sync
        let s = r.until(needle, |s| s.status.last_error.as_deref().is_some_and(|e| e.contains(needle))).await;
        assert!(s.same_content(&good), "{needle}: state replaced");
        m.set_apps_override(None);
        r.until("recovered", |s| s.status.ok).await;
    }
    m.set_apps_override(Some(AppsOverride::Status(500)));
    m.cut_streams();
    let s = r.until("HTTP 500", |s| !s.status.ok).await;
    assert!(s.same_content(&good));
    m.set_apps_override(None);
    r.until("recovered after 500", |s| s.status.ok && serving(s, "/a") == 3).await;

    // One malformed app among good ones is reported; the others still map.
    m.set_apps_override(Some(AppsOverride::Body(
        serde_json::json!({"apps": [
            {"id": "/bad", "instances": "x"},
            {"id": "/ok", "labels": {"PADIS_GROUP": "external", "PADIS_0_VHOST": "ok.test"},
             "portDefinitions": [{"port": 0, "protocol": "tcp"}],
             "tasks": [{"id": "ok.1", "host": "127.0.0.9", "ports": [8080], "state": "TASK_RUNNING"}]}
        ]})
        .to_string()
        .into(),
    )));
    m.cut_streams();
    let s = r.until("partial apps", |s| serving(s, "/ok") == 1).await;
    assert!(s.status.ok);
    assert_eq!(s.problems.len(), 1);
    assert_eq!(s.problems[0].app, "/bad");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_bearer_auth() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/a", "a.test"), 1);
    // "padis:s3cret" in base64.
    m.require_auth(Some("Basic cGFkaXM6czNjcmV0"));
    let mut cfg = config(m.urls());
    cfg.auth = Some(MarathonAuth { user: Some("padis".into()), password: Some("s3cret".into()), ..Default::default() });
    let mut r = run(cfg);
    r.until("basic auth", |s| serving(s, "/a") == 1).await;

    m.require_auth(Some("Bearer tok-123"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, "tok-123\n").expect("write token");
    let mut cfg = config(m.urls());
    cfg.auth = Some(MarathonAuth { token_file: Some(file), ..Default::default() });
    let mut r2 = run(cfg);
    r2.until("bearer auth", |s| serving(s, "/a") == 1).await;

    // Wrong credentials: nothing is published, and no empty state either.
    let mut cfg = config(m.urls());
    cfg.auth = Some(MarathonAuth { token: Some("wrong".into()), ..Default::default() });
    let r3 = run(cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(r3.rx.borrow().is_none());
    assert!(r3.metric("padis_marathon_syncs_total") >= 1.0);
    assert!(m.auth_seen().iter().any(|a| a.as_deref() == Some("Bearer wrong")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_during_a_slow_sync_are_not_lost() {
    let m = MarathonDouble::start().await;
    m.add_app(web("/a", "a.test"), 2);
    let mut cfg = config(m.urls());
    cfg.resync_delay = Duration::from_millis(20);
    let mut r = run(cfg);
    r.until("a", |s| serving(s, "/a") == 2).await;
    let n0 = r.metric("padis_marathon_syncs_total");
    // Every sync now answers 700 ms late with the state as of its request.
    m.set_apps_override(Some(AppsOverride::Delay(Duration::from_millis(700))));
    m.scale("/a", 3); // applied at once, and schedules a (slow) sync that will carry 3 tasks
    r.until("3", |s| serving(s, "/a") == 3).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    m.scale("/a", 4); // arrives while that sync runs
    r.until("4", |s| serving(s, "/a") == 4).await;
    // The stale sync result (3 tasks) must not take the 4th task away: events seen meanwhile are replayed on it.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1600);
    let mut min = 4;
    loop {
        min = min.min(r.rx.borrow_and_update().as_ref().map(|s| serving(s, "/a")).unwrap_or(0));
        if tokio::time::timeout_at(deadline, r.rx.changed()).await.is_err() {
            break;
        }
    }
    assert!(r.metric("padis_marathon_syncs_total") > n0, "no sync completed meanwhile");
    assert_eq!(min, 4, "a stale full sync took a task away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    pki.leaf("marathon", &["127.0.0.1"]);
    let m = MarathonDouble::start_tls(pki.server_config("marathon")).await;
    m.add_app(web("/a", "a.test"), 2);
    let mut cfg = config(m.urls());
    assert!(cfg.urls[0].starts_with("https://"));
    cfg.ca = Some(pki.ca_pem.clone());
    let mut r = run(cfg);
    r.until("over TLS", |s| serving(s, "/a") == 2).await;
    m.scale("/a", 3);
    r.until("events over TLS", |s| serving(s, "/a") == 3).await;

    // A CA that did not sign Marathon's certificate: refused, nothing published.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Pki::new(other_dir.path());
    let mut cfg = config(m.urls());
    cfg.ca = Some(other.ca_pem.clone());
    let r2 = run(cfg);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(r2.rx.borrow().is_none());
    assert!(r2.metric("padis_marathon_syncs_total") >= 1.0);
    // A missing CA file is a config error at spawn.
    let mut cfg = config(m.urls());
    cfg.ca = Some(dir.path().join("missing.pem"));
    let (tx, _rx) = watch::channel(None);
    assert!(MarathonSource::spawn(cfg, tx, &prometheus::Registry::new(), CancellationToken::new()).is_err());
}
