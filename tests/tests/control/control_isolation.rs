//! One tenant never blocks the rest: through the Marathon double and a spawned daemon, an app claiming a host
//! of the config file (and one claiming a DNS name of it) is rejected alone — reported with its reason in
//! `/v1/state`, `padis status`, `padis_source_items_rejected` and one log line — while another app's scale-up is
//! applied within the usual latency, and the source is not shown healthy meanwhile.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::{free_port, http, padis_bin, Padis};

fn config(admin: SocketAddr, marathon: &str) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[log]
level = "info"
access_log = false

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[[group]]
name = "ops"
[[group.backend]]
addr = "127.0.0.1:1"

[[route]]
name = "ops"
host = "ops.test"
group = "ops"

[[service]]
name = "ledger"

[marathon]
urls = ["{marathon}"]
group = "external"
backoff_min = "50ms"
backoff_max = "500ms"
"#,
        web = free_port()
    )
}

fn backends_of(state: &serde_json::Value, group: &str) -> usize {
    state["snapshot"]["state"]["group"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == group))
        .and_then(|g| g["backend"].as_array())
        .map_or(0, Vec::len)
}

fn get_state(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/v1/state", None, &[]).expect("admin API answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

async fn wait_for(
    admin: SocketAddr,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let s = tokio::task::spawn_blocking(move || get_state(admin)).await.unwrap();
        if pred(&s) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}; state:\n{:#}", s["sources"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn metric(metrics: &str, prefix: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_claiming_a_config_host_is_rejected_alone() {
    let dir = tempfile::tempdir().unwrap();
    let m = MarathonDouble::start().await;
    m.add_app(AppSpec::new("/web", &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "web.test")]), 2);
    m.add_app(AppSpec::new("/evil", &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "ops.test")]), 1);
    m.add_app(AppSpec::new("/ledger", &[("PADIS_GROUP", "external")]), 1);

    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("padis.toml");
    std::fs::write(&path, config(admin, &m.url(0))).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();

    // Everything but the claims is applied: /web's route and group, /evil's group, /ledger's group.
    wait_for(admin, "first sync", Duration::from_secs(15), |s| backends_of(s, "marathon:/web:0") == 2).await;
    let s = get_state(admin);
    let st = &s["snapshot"]["state"];
    let routes: Vec<(&str, &str)> = st["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap_or(""), r["host"].as_str().unwrap_or("")))
        .collect();
    assert!(routes.contains(&("ops", "ops.test")), "{routes:?}");
    let ops = routes.iter().filter(|r| r.1 == "ops.test").count();
    assert_eq!(ops, 1, "only the config file serves ops.test: {routes:?}");
    assert!(routes.iter().any(|r| r.1 == "web.test"), "{routes:?}");
    let services: Vec<&str> = st["service"].as_array().unwrap().iter().filter_map(|x| x["name"].as_str()).collect();
    assert_eq!(services.iter().filter(|n| **n == "ledger").count(), 1, "{services:?}");

    // Reported: in /v1/state, with reasons, and the source is not healthy.
    let src = &s["sources"]["marathon"];
    assert_eq!(src["health"], "degraded", "{src:#}");
    let rejected = src["rejected"].as_array().unwrap();
    let reasons: Vec<(&str, &str, &str)> = rejected
        .iter()
        .map(|r| (r["kind"].as_str().unwrap(), r["origin"].as_str().unwrap_or(""), r["reason"].as_str().unwrap()))
        .collect();
    assert!(reasons.contains(&("route", "marathon:/evil", "host_owned_by_config")), "{src:#}");
    assert!(reasons.contains(&("service", "marathon:/ledger", "dns_name_owned_by_config")), "{src:#}");
    assert_eq!(rejected.len(), 2, "nothing else is rejected: {src:#}");
    let metrics = p.metrics();
    let gauge = |reason: &str| {
        metric(&metrics, &format!("padis_source_items_rejected{{reason=\"{reason}\",source=\"marathon\"}}"))
    };
    assert_eq!(gauge("host_owned_by_config"), Some(1.0), "{metrics}");
    assert_eq!(gauge("dns_name_owned_by_config"), Some(1.0), "{metrics}");

    // Another app's scale-up is applied within the usual latency, while the clash stays.
    let t = Instant::now();
    m.scale("/web", 5);
    let took =
        wait_for(admin, "scale-up applied", Duration::from_secs(5), |s| backends_of(s, "marathon:/web:0") == 5).await;
    assert!(t.elapsed() < Duration::from_secs(3), "scale-up took {took:?}");
    m.scale("/web", 6);
    m.scale("/evil", 2);
    wait_for(admin, "second scale-up", Duration::from_secs(5), |s| {
        backends_of(s, "marathon:/web:0") == 6 && backends_of(s, "marathon:/evil:0") == 2
    })
    .await;

    // `padis status` shows it.
    let out = Command::new(padis_bin()).args(["status", "--admin", &admin.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DEGRADED (2 rejected"), "{text}");
    assert!(text.contains("REJECTED SOURCE ITEMS") && text.contains("host_owned_by_config"), "{text}");

    // Logged once per rejected item, not once per sync.
    let log = p.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("source item rejected")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    let evil = |l: &&str| l.contains("marathon:/evil") && l.contains("host `ops.test` is served by the config file");
    assert!(lines.iter().any(evil), "{lines:?}");

    // The claim goes away: nothing rejected any more, the source is healthy, the gauges are 0.
    m.remove_app("/evil");
    m.remove_app("/ledger");
    wait_for(admin, "claims gone", Duration::from_secs(5), |s| s["sources"]["marathon"]["health"] == "ok").await;
    let metrics = p.metrics();
    let host = "padis_source_items_rejected{reason=\"host_owned_by_config\",source=\"marathon\"}";
    assert_eq!(metric(&metrics, host), Some(0.0), "{metrics}");
    assert!(p.log_text().contains("source item no longer rejected"));
}
