//! marathon-lb labels through the daemon, with apps shaped like marathon-lb's own test apps in the Marathon test
//! double: the security labels enforced by the L7 listener (`AUTH` 401/200 with the realm, the network ACL 403 from
//! a denied source address, `USE_HSTS`, `ENABLED=false` and another node's `HAPROXY_{n}_GROUP` 404), `PATH` with
//! `-i` and several paths, the proxy-pass path rewrite, unsupported labels reported (`/v1/state`, metric) while
//! the app is served; a blue/green (zdd) deployment shifting traffic under load with no failed request; and
//! Marathon 1.3 task shapes with instanceId-only health events applied at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use padis_tests::l7::{curl, Backend, Load};
use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::{free_port, Padis};

/// `s3cret`, as `openssl passwd -6 -salt padissalt s3cret` writes it (an HAProxy userlist `password`).
const HASH: &str =
    "$6$padissalt$94FHgKs1h6IHsjxK0JcIa8G2o.XPxuZHgseXF.orWnhISP2q7VjwTNuwVY5FStqhwtWxY1mpuCL13z6U3AduW0";

fn config(admin: SocketAddr, web: u16, marathon: &str, resync_delay: &str) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[log]
level = "info"
access_log = false

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[marathon]
urls = ["{marathon}"]
group = "external"
drain_time = "1s"
resync_delay = "{resync_delay}"
backoff_min = "50ms"
backoff_max = "500ms"
dns_by_default = false
"#
    )
}

async fn start_padis(m: &MarathonDouble, dir: &std::path::Path, resync_delay: &str) -> (Padis, u16) {
    let path = dir.join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let web = free_port();
    std::fs::write(&path, config(admin, web, &m.url(0), resync_delay)).expect("config");
    let padis = tokio::task::spawn_blocking(move || {
        let mut p = Padis::start(&path, admin);
        p.wait_ready();
        p
    })
    .await
    .expect("padis starts");
    (padis, web)
}

/// `/v1/state` (off the runtime thread).
async fn state(padis: &Padis) -> serde_json::Value {
    let admin = padis.admin;
    tokio::task::spawn_blocking(move || padis_tests::process::http(admin, "GET", "/v1/state", None, &[]))
        .await
        .expect("join")
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or_default()
}

/// Waits until `/v1/state` satisfies `pred`.
async fn wait_state(padis: &Padis, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = state(padis).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: never\nstate: {:#}\nlog:\n{}", s["sources"], padis.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backends of group `name`: (address, draining).
fn group_backends(s: &serde_json::Value, name: &str) -> Vec<(String, bool)> {
    let st = &s["snapshot"]["state"];
    let groups = st["group"].as_array().or_else(|| st["groups"].as_array()).cloned().unwrap_or_default();
    let Some(g) = groups.iter().find(|g| g["name"] == name) else { return Vec::new() };
    let all = g["backend"].as_array().or_else(|| g["backends"].as_array()).cloned().unwrap_or_default();
    all.iter().map(|b| (b["addr"].as_str().unwrap_or("").to_string(), b["draining"] == true)).collect()
}

/// One request by curl: (status, response head + body). `extra` adds curl options.
async fn request(web: u16, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{web}{path}");
    let host = format!("Host: {host}");
    let mut args = vec!["-i", "-H", host.as_str()];
    args.extend_from_slice(extra);
    args.push(url.as_str());
    let (ok, out, err) = curl(&args).await;
    assert!(ok, "curl {args:?}: {err}");
    let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out)
}

fn header<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    out.lines().take_while(|l| !l.trim().is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_and_routing_labels_are_enforced_and_unsupported_ones_reported() {
    let backend = Backend::start("task").await;
    let port = u32::from(backend.addr.port());
    let m = MarathonDouble::start().await;
    let app = |id: &str, labels: &[(&str, &str)]| {
        let mut all = vec![("HAPROXY_GROUP", "external")];
        all.extend_from_slice(labels);
        AppSpec::new(id, &all).placed(move |_| ("127.0.0.1".to_string(), vec![port]))
    };
    let auth = format!("Staff only:alice:{HASH}");
    m.add_app(
        app(
            "/secure",
            &[
                ("HAPROXY_0_VHOST", "secure.test"),
                ("HAPROXY_0_PATH", "-i /API /docs"),
                ("HAPROXY_0_AUTH", &auth),
                ("HAPROXY_0_USE_HSTS", "true"),
                ("HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH", "/api"),
            ],
        ),
        1,
    );
    m.add_app(
        app(
            "/acl",
            &[("HAPROXY_0_VHOST", "acl.test"), ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "127.0.0.2 10.1.40.0/24")],
        ),
        1,
    );
    m.add_app(app("/off", &[("HAPROXY_0_VHOST", "off.test"), ("HAPROXY_0_ENABLED", "false")]), 1);
    m.add_app(app("/inner", &[("HAPROXY_0_VHOST", "inner.test"), ("HAPROXY_0_GROUP", "internal")]), 1);
    m.add_app(
        app(
            "/tmpl",
            &[
                ("HAPROXY_0_VHOST", "tmpl.test"),
                ("HAPROXY_0_BACKEND_HEAD", "backend {backend}"),
                ("HAPROXY_0_HTTP_BACKEND_REDIR", "/home"),
            ],
        ),
        1,
    );
    m.add_app(
        app(
            "/userlist",
            &[
                ("HAPROXY_0_VHOST", "userlist.test"),
                ("HAPROXY_0_USERLIST_HEAD", "userlist u\n  user a insecure-password b"),
            ],
        ),
        1,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web) = start_padis(&m, dir.path(), "1s").await;
    let s = wait_state(&padis, "three apps served", |s| {
        ["marathon:/secure:0", "marathon:/acl:0", "marathon:/tmpl:0"].iter().all(|g| group_backends(s, g).len() == 1)
    })
    .await;

    // AUTH: 401 with the realm without or with wrong credentials, 200 with them; HSTS on the answer; `-i` and
    // both paths; the proxy-pass prefix is gone at the backend.
    let (status, out) = request(web, "secure.test", "/api/x", &[]).await;
    assert_eq!(status, 401, "{out}");
    assert_eq!(header(&out, "www-authenticate"), Some("Basic realm=\"Staff only\""), "{out}");
    let (status, _) = request(web, "secure.test", "/api/x", &["-u", "alice:wrong"]).await;
    assert_eq!(status, 401);
    let (status, _) = request(web, "secure.test", "/api/x", &["-u", "bob:s3cret"]).await;
    assert_eq!(status, 401);
    let (status, out) = request(web, "secure.test", "/Api/x?q=1", &["-u", "alice:s3cret"]).await;
    assert_eq!(status, 200, "`-i /API` matches /Api: {out}");
    assert!(
        out.contains("path=/Api/x?q=1"),
        "the proxy-pass prefix itself is case-sensitive (as HAProxy's reqirep): {out}"
    );
    let (status, out) = request(web, "secure.test", "/api/x?q=1", &["-u", "alice:s3cret"]).await;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("path=/x?q=1"), "the backend sees the path without /api: {out}");
    assert_eq!(header(&out, "strict-transport-security"), Some("max-age=15768000"), "{out}");
    let (status, out) = request(web, "secure.test", "/DOCS/index", &["-u", "alice:s3cret"]).await;
    assert_eq!(status, 200, "{out}");
    assert!(out.contains("path=/DOCS/index"), "{out}");
    let (status, _) = request(web, "secure.test", "/other", &["-u", "alice:s3cret"]).await;
    assert_eq!(status, 404, "only the labelled paths are routed");

    // The network ACL: 403 from 127.0.0.1, 200 from 127.0.0.2.
    let (status, out) = request(web, "acl.test", "/", &[]).await;
    assert_eq!(status, 403, "{out}");
    let (status, out) = request(web, "acl.test", "/", &["--interface", "127.0.0.2"]).await;
    assert_eq!(status, 200, "{out}");

    // ENABLED=false and another node's port group: not served.
    assert_eq!(request(web, "off.test", "/", &[]).await.0, 404);
    assert_eq!(request(web, "inner.test", "/", &[]).await.0, 404);

    // Unsupported labels: reported with the key the app wrote, the app served; an ignored userlist template keeps
    // its port closed.
    assert_eq!(request(web, "tmpl.test", "/", &[]).await.0, 200);
    assert_eq!(request(web, "userlist.test", "/", &[]).await.0, 404);
    let problems = s["sources"]["marathon"]["problems"].as_array().cloned().unwrap_or_default();
    let find = |label: &str| problems.iter().find(|p| p["label"] == label).cloned().unwrap_or_default();
    let p = find("HAPROXY_0_BACKEND_HEAD");
    assert_eq!((p["app"].as_str(), p["effect"].as_str()), (Some("/tmpl"), Some("label_ignored")), "{problems:#?}");
    assert_eq!(find("HAPROXY_0_HTTP_BACKEND_REDIR")["effect"], "label_ignored", "{problems:#?}");
    assert_eq!(find("HAPROXY_0_USERLIST_HEAD")["effect"], "port_skipped", "{problems:#?}");
    assert!(!problems.iter().any(|p| p["label"].as_str().is_some_and(|l| l.starts_with("PADIS_"))), "{problems:#?}");
    assert!(!s.to_string().contains(HASH), "the password hash is not shown");
    let metrics = padis.metrics();
    for (label, n) in
        [("HAPROXY_{n}_BACKEND_HEAD", 1), ("HAPROXY_{n}_HTTP_BACKEND_REDIR", 1), ("HAPROXY_{n}_USERLIST_HEAD", 1)]
    {
        let line = format!("padis_marathon_labels_unsupported{{label=\"{label}\"}} {n}");
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
    assert!(padis.log_text().contains("HAPROXY_0_BACKEND_HEAD"), "logged");
}

/// An app of deployment group `web` (marathon-lb's zdd labels), its tasks on `pool` in turn.
fn colour(id: &str, colour: &str, started: &str, pool: &[Backend]) -> AppSpec {
    let ports: Vec<u32> = pool.iter().map(|b| u32::from(b.addr.port())).collect();
    let next = AtomicU64::new(0);
    AppSpec::new(
        id,
        &[
            ("HAPROXY_GROUP", "external"),
            ("HAPROXY_DEPLOYMENT_GROUP", "web"),
            ("HAPROXY_DEPLOYMENT_COLOUR", colour),
            ("HAPROXY_DEPLOYMENT_STARTED_AT", started),
            ("HAPROXY_DEPLOYMENT_TARGET_INSTANCES", "3"),
            ("HAPROXY_DEPLOYMENT_ALT_PORT", "10001"),
            ("HAPROXY_0_VHOST", "web.test"),
            ("HAPROXY_APP_ID", "web"),
        ],
    )
    .with_health_check()
    .placed(move |_| {
        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
        ("127.0.0.1".to_string(), vec![ports[i % ports.len()]])
    })
}

/// marathon-lb's zdd: green serves, blue is deployed beside it one healthy instance at a time; both are one
/// route `web.test` (never a host clash), each healthy blue instance drains one green one, green is deleted at
/// the end. Under load, no request fails, and drained green tasks get no new requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_shift_under_load_has_no_failed_request() {
    let mut greens = Vec::new();
    let mut blues = Vec::new();
    for i in 0..3 {
        greens.push(Backend::start(&format!("green{i}")).await);
        blues.push(Backend::start(&format!("blue{i}")).await);
    }
    let m = MarathonDouble::start().await;
    m.add_app(colour("/web-green", "green", "2016-02-01T14:13:42.499089", &greens), 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web) = start_padis(&m, dir.path(), "1s").await;
    const GROUP: &str = "marathon:/web:0";
    let count = |s: &serde_json::Value| {
        let b = group_backends(s, GROUP);
        (b.iter().filter(|(_, d)| !d).count(), b.iter().filter(|(_, d)| *d).count())
    };
    wait_state(&padis, "green serves", |s| count(s) == (3, 0)).await;
    let load = Load::start(format!("127.0.0.1:{web}").parse().expect("addr"), "web.test", 3, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Blue arrives with no instance, then scales up: each healthy blue instance drains one green task.
    m.add_app(colour("/web-blue", "blue", "2016-02-01T14:57:54.371005", &blues), 0);
    for k in 1..=3 {
        m.scale("/web-blue", k);
        let s = wait_state(&padis, &format!("blue {k}"), |s| count(s) == (3, k as usize)).await;
        let routes = s["snapshot"]["state"]["route"].as_array().cloned().unwrap_or_default();
        assert_eq!(routes.iter().filter(|r| r["host"] == "web.test").count(), 1, "one route for both colours");
        assert!(s["sources"]["marathon"]["problems"].as_array().is_none_or(|p| p.is_empty()), "{:#}", s["sources"]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every green task drains now: no new request reaches green.
    let before: Vec<usize> = greens.iter().map(Backend::hits).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(greens.iter().map(Backend::hits).collect::<Vec<_>>(), before, "drained green tasks got requests");
    assert!(blues.iter().all(|b| b.hits() > 0), "every blue task serves");

    // Green is deleted: blue alone serves under the same group.
    m.remove_app("/web-green");
    wait_state(&padis, "blue alone", |s| count(s) == (3, 0)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "{} failed requests: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert!(ok > 300, "too little load: {ok}");
}

/// Marathon 1.3 task shapes: no `state`, running once started; and health events that name the task only by
/// the instance id Marathon 1.4 derives from an old-shaped task id. With full syncs pushed 30 s out, only the
/// events can take a task out within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_task_shapes_serve_and_instance_id_health_events_apply_at_once() {
    let pool = [Backend::start("t0").await, Backend::start("t1").await];
    let ports: Vec<u32> = pool.iter().map(|b| u32::from(b.addr.port())).collect();
    let m = MarathonDouble::start().await;
    let spec = AppSpec::new("/old", &[("HAPROXY_GROUP", "external"), ("HAPROXY_0_VHOST", "old.test")])
        .with_health_check()
        .without_task_state()
        .with_instance_id_events()
        .placed(move |seq| ("127.0.0.1".to_string(), vec![ports[((seq - 1) % 2) as usize]]));
    m.add_app(spec, 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let (padis, web) = start_padis(&m, dir.path(), "30s").await;
    wait_state(&padis, "stateless tasks serve", |s| group_backends(s, "marathon:/old:0").len() == 2).await;
    assert_eq!(request(web, "old.test", "/", &[]).await.0, 200);

    let task = m.task_ids("/old")[0].clone();
    let t0 = Instant::now();
    m.set_health("/old", &task, false);
    wait_state(&padis, "the unhealthy task leaves", |s| group_backends(s, "marathon:/old:0").len() == 1).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "applied from the event, not a full sync: {:?}", t0.elapsed());
    m.set_health("/old", &task, true);
    wait_state(&padis, "the task comes back", |s| group_backends(s, "marathon:/old:0").len() == 2).await;
    assert!(t0.elapsed() < Duration::from_secs(10));
}
