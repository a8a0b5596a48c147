//! The daemon through its real interfaces: the `padis` binary, its config file, signals and the admin API.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use padis_tests::process::{free_port, http, padis_bin, Padis};

fn config(admin: SocketAddr, web_port: u16, extra: &str) -> String {
    format!(
        r#"[admin]
listen = "{admin}"
[log]
level = "info"

[[listener]]
name = "web"
bind = "127.0.0.1:{web_port}"

[[group]]
name = "app"
[[group.backend]]
addr = "127.0.0.1:1"

[[route]]
name = "all"
group = "app"
{extra}
"#
    )
}

#[test]
fn check_prints_summary_or_file_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config("127.0.0.1:9".parse().unwrap(), 8080, "")).unwrap();
    let out = Command::new(padis_bin()).args(["check", "--config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("listener    web") && stdout.contains("route       all"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    let text =
        config("127.0.0.1:9".parse().unwrap(), 8080, "[[route]]\nname = \"two\"\npath = \"x\"\ngroup = \"ghost\"\n");
    std::fs::write(&bad, &text).unwrap();
    let out = Command::new(padis_bin()).args(["check", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let path_line = format!("{}:{}:1: route[1].path: must start with `/`", bad.display(), line_of("path = \"x\""));
    let group_line =
        format!("{}:{}:1: route[1].group: no group named `ghost`", bad.display(), line_of("group = \"ghost\""));
    assert!(stderr.contains(&path_line), "{stderr}\nwanted {path_line}");
    assert!(stderr.contains(&group_line), "{stderr}\nwanted {group_line}");
}

#[test]
fn run_refuses_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[listener]]\nname = \"web\"\nbind = \"not an address\"\n").unwrap();
    let out = Command::new(padis_bin()).args(["run", "--config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:3:", bad.display())), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}

#[test]
fn reloads_on_file_change_and_sighup_and_keeps_running_config_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let web = free_port();
    std::fs::write(&path, config(admin, web, "")).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    assert_eq!(p.state()["generation"], 1);

    // A valid change of the file is picked up by the watcher.
    let two = "[[route]]\nname = \"two\"\npath = \"/two\"\ngroup = \"app\"\n";
    std::fs::write(&path, config(admin, web, two)).unwrap();
    let s = p.wait_state(Duration::from_secs(10), |s| s["generation"] == 2);
    assert_eq!(s["snapshot"]["state"]["route"].as_array().unwrap().len(), 2);

    // An invalid file is rejected with file:line, counted, and the running config stays.
    let broken = config(admin, web, "[[route]]\nname = \"three\"\ngroup = \"nope\"\n");
    std::fs::write(&path, &broken).unwrap();
    let s = p.wait_state(Duration::from_secs(10), |s| s["last_reload"]["ok"] == false);
    assert_eq!(s["generation"], 2, "invalid config must not be published");
    let err = s["last_reload"]["errors"][0].as_str().unwrap().to_string();
    let line = broken.lines().position(|l| l.contains("\"nope\"")).unwrap() + 1;
    assert!(err.contains(&format!("padis.toml:{line}:1: route[1].group: no group named `nope`")), "{err}");
    assert!(p.metrics().contains("padis_config_reloads_total{result=\"failure\"} 1"), "{}", p.metrics());
    assert!(p.metrics().contains("padis_config_generation 2"));

    // A truncated (empty) file is never taken as "serve nothing".
    std::fs::write(&path, "").unwrap();
    p.signal(libc::SIGHUP);
    let s = p.wait_state(Duration::from_secs(10), |s| {
        s["last_reload"]["errors"][0].as_str().is_some_and(|e| e.contains("empty"))
    });
    assert_eq!(s["generation"], 2);

    // SIGHUP reloads too (the watcher would also see this write; either way generation 3 follows).
    std::fs::write(&path, config(admin, web, "")).unwrap();
    p.signal(libc::SIGHUP);
    let s = p.wait_state(Duration::from_secs(10), |s| s["generation"] == 3);
    assert_eq!(s["last_reload"]["ok"], true);
    assert_eq!(s["snapshot"]["state"]["route"].as_array().unwrap().len(), 1);

    // SIGHUP with an unchanged file is a successful load that publishes nothing new.
    std::thread::sleep(Duration::from_millis(500));
    let before = successes(&p.metrics());
    p.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while successes(&p.metrics()) == before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(successes(&p.metrics()), before + 1);
    assert_eq!(p.state()["generation"], 3);

    // Graceful stop.
    p.signal(libc::SIGTERM);
    let st = p.wait_exit(Duration::from_secs(10)).expect("exits after SIGTERM");
    assert!(st.success(), "{st}\n{}", p.log_text());
}

fn successes(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("padis_config_reloads_total{result=\"success\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("reload counter present")
}

#[test]
fn admin_api_token_validate_endpoint_and_status_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = config(admin, free_port(), "").replace("[log]", "[log]\naccess_log = false").replacen(
        &format!("listen = \"{admin}\""),
        &format!("listen = \"{admin}\"\ntoken = \"s3cret\""),
        1,
    );
    std::fs::write(&path, text).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();

    assert_eq!(http(admin, "GET", "/v1/state", None, &[]).unwrap().0, 401);
    assert_eq!(http(admin, "GET", "/metrics", None, &[("Authorization", "Bearer wrong")]).unwrap().0, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let (code, body) = http(admin, "GET", "/metrics", None, &auth).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("padis_config_generation 1"), "{body}");
    assert_eq!(http(admin, "GET", "/nope", None, &auth).unwrap().0, 404);

    // Validation of a candidate config, without touching the running one.
    let (code, body) =
        http(admin, "POST", "/v1/config/validate", Some("[[route]]\nname = \"r\"\ngroup = \"g\"\n"), &auth).unwrap();
    assert_eq!(code, 422, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["line"], 3);
    assert_eq!(v["errors"][0]["field"], "route[0].group");
    let (code, body) = http(admin, "POST", "/v1/config/validate", Some(&config(admin, 1, "")), &auth).unwrap();
    assert_eq!(code, 200, "{body}");

    // The status command renders the state as tables.
    let out = Command::new(padis_bin())
        .args(["status", "--admin", &admin.to_string(), "--token", "s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    for needle in ["generation 1", "LISTENERS", "ROUTES", "BACKENDS", "127.0.0.1:1"] {
        assert!(s.contains(needle), "missing {needle} in\n{s}");
    }
    let out = Command::new(padis_bin()).args(["status", "--admin", &admin.to_string()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn non_loopback_admin_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padis.toml");
    std::fs::write(&path, "[admin]\nlisten = \"0.0.0.0:9901\"\n").unwrap();
    let out = Command::new(padis_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(":2:1: admin.listen: a non-loopback admin address needs a bearer `token`"));
}

#[test]
fn shipped_example_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["examples/padis.toml", "examples/default.toml"] {
        let out = Command::new(padis_bin()).args(["check", "--config"]).arg(root.join(f)).output().unwrap();
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The README's first command runs `padis demo`: the embedded config with demo backends serves HTTP and DNS.
#[test]
fn demo_serves_http_and_dns_on_the_embedded_config() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let child = Command::new(padis_bin())
        .arg("demo")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Padis { child, admin: "127.0.0.1:9901".parse().unwrap(), log };
    p.wait_ready();
    let web: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let (code, body) = http(web, "GET", "/", None, &[]).unwrap();
        assert_eq!(code, 200, "{body}");
        seen.insert(body.split(':').next().unwrap().to_string());
    }
    assert!(
        seen.contains("hello from demo backend 1 (v1)") && seen.contains("hello from demo backend 2 (v1)"),
        "{seen:?}"
    );
    let (code, body) = http(web, "GET", "/", None, &[("Host", "v2.localhost")]).unwrap();
    assert_eq!(code, 200);
    assert!(body.starts_with("hello from demo backend 3 (v2)"), "{body}");
    let out = Command::new("kdig")
        .args(["@127.0.0.1", "-p", "5353", "+short", "_http._tcp.demo.padis.test", "SRV"])
        .output()
        .unwrap();
    let srv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(srv.lines().count(), 3, "{srv}");
    assert!(srv.contains("9101 demo-1.demo.padis.test."), "{srv}");
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(15)).expect("exits").success());
}
