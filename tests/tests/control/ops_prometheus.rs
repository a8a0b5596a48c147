//! The alerting rules and the Grafana dashboard of dist/: `promtool check rules` and `promtool test rules` on the
//! shipped files, every dashboard query parsed by promtool and every metric they name defined by Padis, and a
//! real Prometheus (Debian's) scraping a real daemon every second: a backend group whose backends stop makes
//! `PadisBackendGroupDown` fire, and nothing else fires meanwhile.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use padis_tests::l7::Backend;
use padis_tests::process::{free_port, http, Padis};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (tests/setup installs prometheus)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// `padis_*` metric names in `text`, without the histogram series suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("padis_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let preceded = start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if !preceded {
            let name = &text[start..end];
            let base = ["_bucket", "_count", "_sum"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            names.insert(base.to_string());
        }
        i = end;
    }
    names
}

/// The Rust sources of the crates that register metrics.
fn metric_sources() -> String {
    let mut all = String::new();
    let mut stack: Vec<PathBuf> = ["control", "lb", "dns"].iter().map(|d| repo().join(d)).collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                all.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    all
}

#[test]
fn rules_pass_promtool_and_name_real_metrics() {
    let dir = repo().join("dist/prometheus");
    let out = promtool(&["check", "rules", "padis-alerts.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "padis-alerts.test.yml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");

    let rules = std::fs::read_to_string(dir.join("padis-alerts.yml")).unwrap();
    for alert in [
        "PadisBackendGroupDown",
        "PadisHighErrorRatio",
        "PadisL4NewFlowsNotRemembered",
        "PadisBgpSessionDown",
        "PadisSourceStale",
        "PadisReloadFailed",
        "PadisCertificateExpiring",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "no alert {alert}");
    }
    let sources = metric_sources();
    for name in metric_names(&rules) {
        assert!(sources.contains(&format!("\"{name}\"")), "the rules name {name}, which Padis does not define");
    }
}

#[test]
fn dashboard_queries_parse_and_name_real_metrics() {
    let text = std::fs::read_to_string(repo().join("dist/grafana/padis.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dash["uid"], "padis-overview");
    let mut exprs = Vec::new();
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id {}", p["id"]);
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    // Every query as a recording rule, with Grafana's variables replaced: promtool parses them all.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e.replace("$__rate_interval", "1m").replace("$instance", ".*");
        rules.push_str(&format!("      - record: dashboard:query_{i}\n        expr: {}\n", serde_json::json!(e)));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let out = promtool(&["check", "rules", "dashboard.yml"], dir.path());
    assert!(out.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{out}");
    let sources = metric_sources();
    for name in metric_names(&exprs.join("\n")) {
        assert!(sources.contains(&format!("\"{name}\"")), "the dashboard names {name}, which Padis does not define");
    }
}

/// Prometheus's alerts (name, group label, state).
fn alerts(prom: SocketAddr) -> Vec<(String, String, String)> {
    let Ok((200, body)) = http(prom, "GET", "/api/v1/alerts", None, &[]) else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
            (s(&a["labels"]["alertname"]), s(&a["labels"]["group"]), s(&a["state"]))
        })
        .collect()
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_group_fires_its_alert_in_a_real_prometheus() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let other = Backend::start("other").await;
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("padis.toml");
    let health = "[group.health]\npath = \"/\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 1\n";
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:{}\"\n\n\
             [[group]]\nname = \"shop\"\n{health}[[group.backend]]\naddr = \"{}\"\n[[group.backend]]\naddr = \"{}\"\n\n\
             [[group]]\nname = \"other\"\n{health}[[group.backend]]\naddr = \"{}\"\n\n\
             [[route]]\nname = \"shop\"\nhost = \"shop.example\"\ngroup = \"shop\"\n\n\
             [[route]]\nname = \"other\"\ngroup = \"other\"\n",
            free_port(),
            b1.addr,
            b2.addr,
            other.addr
        ),
    )
    .unwrap();
    let mut padis = Padis::start(&config, admin);
    padis.wait_ready();

    // Prometheus scraping the daemon every second, the shipped rules evaluated every second.
    std::fs::copy(repo().join("dist/prometheus/padis-alerts.yml"), dir.path().join("padis-alerts.yml")).unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - padis-alerts.yml\n\
             scrape_configs:\n  - job_name: padis\n    static_configs:\n      - targets: [\"{admin}\"]\n"
        ),
    )
    .unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus runs (tests/setup installs it)"),
    );
    let prom_log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // The target is scraped and the group is up: no alert.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = "/api/v1/query?query=sum%20by%20(group)%20(padis_backend_up)";
        if let Ok((200, body)) = http(prom, "GET", q, None, &[]) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let up = v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["metric"]["group"] == "shop" && r["value"][1] == "2");
            if up {
                break;
            }
        }
        assert!(Instant::now() < deadline, "Prometheus never saw group shop up:\n{}", prom_log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(alerts(prom).is_empty(), "alerts on a healthy daemon: {:?}", alerts(prom));

    // Both backends of shop stop: the alert goes pending, then fires after its `for` (15 s), for shop alone.
    b1.kill();
    b2.kill();
    let stopped = Instant::now();
    let mut pending_seen = false;
    loop {
        let a = alerts(prom);
        pending_seen |= a.iter().any(|(n, g, s)| n == "PadisBackendGroupDown" && g == "shop" && s == "pending");
        if a.iter().any(|(n, g, s)| n == "PadisBackendGroupDown" && g == "shop" && s == "firing") {
            // Nothing else: the other group is up, the config loaded, the target answers.
            let others: Vec<_> = a.iter().filter(|(n, g, _)| !(n == "PadisBackendGroupDown" && g == "shop")).collect();
            assert!(others.is_empty(), "unexpected alerts: {others:?}");
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(45),
            "PadisBackendGroupDown did not fire within 45 s: {a:?}\nstate: {:#}\n{}",
            padis.state()["planes"]["health"],
            prom_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(pending_seen, "the alert fired without being pending first (its `for` is 15 s)");
    assert!(stopped.elapsed() >= Duration::from_secs(15), "fired after {:?}, before its `for`", stopped.elapsed());
}
