//! A reload applies everything it reports, through a spawned daemon, the Marathon double and the admin API's
//! Unix socket: a `[marathon]` `group` change restarts the source with it (no process restart); a URL that does
//! not answer keeps the last good state served (the source shown failing) until a working one has synced; a
//! change of a setting read only at start is reported by the reload result, `/v1/state` and the log.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::{free_port, http, Padis};

fn config(admin: SocketAddr, sock: &Path, web: u16, marathon: &str, group: &str, extra: &str) -> String {
    format!(
        r#"[admin]
listen = "{admin}"
socket = "{sock}"

[log]
level = "info"
access_log = false
{extra}
[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[marathon]
urls = ["{marathon}"]
group = "{group}"
backoff_min = "50ms"
backoff_max = "300ms"
request_timeout = "1s"
"#,
        sock = sock.display()
    )
}

fn unix_post(sock: &Path, target: &str) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(sock).expect("the admin socket accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {target} HTTP/1.1\r\nHost: padis\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

fn groups(state: &serde_json::Value) -> Vec<String> {
    state["snapshot"]["state"]["group"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str().map(String::from))
        .collect()
}

fn get_state(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/v1/state", None, &[]).expect("admin API answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("json")
}

async fn wait_for(p: &Padis, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let admin = p.admin;
    let start = Instant::now();
    loop {
        let s = tokio::task::spawn_blocking(move || get_state(admin)).await.unwrap();
        if pred(&s) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: never; groups {:?}, sources {:#}\nlog:\n{}",
            groups(&s),
            s["sources"],
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_changes_apply_without_restart_and_start_only_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = MarathonDouble::start().await;
    m.add_app(AppSpec::new("/ext", &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "ext.test")]), 2);
    m.add_app(AppSpec::new("/int", &[("PADIS_GROUP", "internal"), ("PADIS_0_VHOST", "int.test")]), 3);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sock = dir.path().join("admin.sock");
    let web = free_port();
    let path = dir.path().join("padis.toml");
    let write = |url: &str, group: &str, extra: &str| {
        // Written under another name and renamed: the file watcher sees one complete change.
        let tmp = dir.path().join("padis.toml.new");
        std::fs::write(&tmp, config(admin, &sock, web, url, group, extra)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(&m.url(0), "external", "");
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    let pid = p.child.id();
    wait_for(&p, "external apps served", |s| groups(s) == ["marathon:/ext:0"]).await;

    // `group` changes: applied by the reload, the source restarted with it.
    write(&m.url(0), "internal", "");
    let (code, r) = unix_post(&sock, "/v1/reload");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["restart_required"], serde_json::json!([]), "{r}");
    wait_for(&p, "internal apps served instead", |s| groups(s) == ["marathon:/int:0"]).await;
    assert!(p.log_text().contains("restarting the Marathon source"), "{}", p.log_text());
    let metrics = p.metrics();
    assert!(metrics.contains("padis_marathon_"), "the restarted source's metrics are served:\n{metrics}");

    // A URL that does not answer: the last good state stays served, the source is shown failing.
    let dead = format!("http://127.0.0.1:{}", free_port());
    write(&dead, "internal", "");
    assert_eq!(unix_post(&sock, "/v1/reload").0, 200);
    wait_for(&p, "source failing", |s| s["sources"]["marathon"]["status"]["ok"] == false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(groups(&get_state(admin)), ["marathon:/int:0"], "the last good state stays");

    // Another Marathon with other apps: served once it has synced.
    let m2 = MarathonDouble::start().await;
    m2.add_app(AppSpec::new("/int2", &[("PADIS_GROUP", "internal"), ("PADIS_0_VHOST", "int2.test")]), 1);
    write(&m2.url(0), "internal", "");
    assert_eq!(unix_post(&sock, "/v1/reload").0, 200);
    wait_for(&p, "the new Marathon's state", |s| {
        groups(s) == ["marathon:/int2:0"] && s["sources"]["marathon"]["status"]["ok"] == true
    })
    .await;

    // A setting read only at start: reported by the reload, in /v1/state and the log; the rest still applies.
    write(&m2.url(0), "internal", "[runtime]\nworker_threads = 3\n");
    let (code, r) = unix_post(&sock, "/v1/reload");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["restart_required"], serde_json::json!(["runtime.worker_threads"]), "{r}");
    let s = get_state(admin);
    assert_eq!(s["restart_required"], serde_json::json!(["restart required: runtime.worker_threads"]));
    assert!(p.log_text().contains("restart required: runtime.worker_threads"), "{}", p.log_text());

    // Still the same process throughout.
    assert_eq!(p.child.id(), pid);
    assert!(p.child.try_wait().unwrap().is_none());
}

/// A Marathon that never answers from the start: the source is shown failing (not absent, not healthy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_never_syncs_is_shown_failing() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("padis.toml");
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(&path, config(admin, &dir.path().join("admin.sock"), free_port(), &dead, "external", "")).unwrap();
    let mut p = Padis::start(&path, admin);
    p.wait_ready();
    wait_for(&p, "source shown failing", |s| {
        let m = &s["sources"]["marathon"];
        m["health"] == "failing" && m["status"]["last_error"].as_str().is_some_and(|e| e.contains("no good sync"))
    })
    .await;
}
