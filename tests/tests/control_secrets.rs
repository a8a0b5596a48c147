//! Secrets are never output: an admin token, Marathon basic-auth credentials and a TSIG key (inline or from an
//! owner-only file) appear in no admin answer (`/v1/state`, `/metrics`, `/v1/config/validate`, `padis status`
//! and `padis status --json`), in no log line of a daemon running at debug level, and in no `padis check`
//! output; secret files readable by group or others are refused with file:line.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use padis_tests::marathon::{AppSpec, MarathonDouble};
use padis_tests::process::{free_port, http, padis_bin, Padis};

const ADMIN_TOKEN: &str = "adm1n-T0KEN-7c41e9";
const MARATHON_PASSWORD: &str = "mar4thon-PW-55d2af";
/// base64 of 32 bytes ("tsig-key-bytes-0123456789abcdef!").
const TSIG_SECRET: &str = "dHNpZy1rZXktYnl0ZXMtMDEyMzQ1Njc4OWFiY2RlZiE=";

fn private_file(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn config(admin: SocketAddr, dir: &Path, marathon: &str, dns: u16) -> String {
    format!(
        r#"[admin]
listen = "{admin}"
token_file = "admin.token"

[log]
level = "debug"

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[dns]
listen = ["127.0.0.1:{dns}"]
state_dir = "{state}"

[[dns.tsig_key]]
name = "xfr-key"
secret = "{TSIG_SECRET}"

[[dns.zone]]
name = "apps.test"
generated = true
transfer_key = "xfr-key"
ns = [{{ name = "ns1.apps.test", addrs = ["127.0.0.1"] }}]

[marathon]
urls = ["{marathon}"]
group = "external"
zone = "apps.test"
backoff_min = "50ms"
backoff_max = "500ms"

[marathon.auth]
user = "padis"
password_file = "marathon.password"
"#,
        web = free_port(),
        state = dir.join("dns-state").display(),
    )
}

/// The forms a secret could leak in: as is, and the Basic credentials built from the Marathon password.
fn leaks(text: &str) -> Vec<&'static str> {
    let basic = basic_value();
    let mut found = Vec::new();
    for s in [ADMIN_TOKEN, MARATHON_PASSWORD, TSIG_SECRET] {
        if text.contains(s) {
            found.push(s);
        }
    }
    if text.contains(basic.trim_start_matches("Basic ")) {
        found.push("the Marathon Basic credentials");
    }
    found
}

fn basic_value() -> String {
    // base64("padis:mar4thon-PW-55d2af"), computed by coreutils to keep the test independent of our code.
    let out = Command::new("sh")
        .args(["-c", &format!("printf '%s' 'padis:{MARATHON_PASSWORD}' | base64 -w0")])
        .output()
        .unwrap();
    format!("Basic {}", String::from_utf8(out.stdout).unwrap())
}

fn assert_clean(what: &str, text: &str) {
    let found = leaks(text);
    assert!(found.is_empty(), "{what} shows {found:?}:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_answer_log_or_check_output() {
    let dir = tempfile::tempdir().unwrap();
    let m = MarathonDouble::start().await;
    m.require_auth(Some(&basic_value()));
    m.add_app(AppSpec::new("/web", &[("PADIS_GROUP", "external"), ("PADIS_0_VHOST", "web.test")]), 2);

    private_file(&dir.path().join("admin.token"), &format!("{ADMIN_TOKEN}\n"), 0o600);
    private_file(&dir.path().join("marathon.password"), MARATHON_PASSWORD, 0o400);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("padis.toml");
    let text = config(admin, dir.path(), &m.url(0), free_port());
    std::fs::write(&path, &text).unwrap();

    // `padis check`: valid, and nothing secret in its output.
    let out = Command::new(padis_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_clean("padis check", &output);

    // Started by hand (not `Padis::start`, which sets PADIS_LOG=info): every debug line is written too.
    let log = dir.path().join("padis.log");
    let child = Command::new(padis_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("PADIS_LOG", "debug")
        .stdout(std::fs::File::create(dir.path().join("padis.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut p = Padis { child, admin, log };
    p.wait_ready();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let get = |target: &str| {
        let (code, body) = http(admin, "GET", target, None, &[("Authorization", &auth)]).unwrap();
        assert_eq!(code, 200, "{target}: {body}");
        body
    };
    // The Marathon source authenticated with the password from the file and synced.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let state = loop {
        let s: serde_json::Value = serde_json::from_str(&get("/v1/state")).unwrap();
        let groups = s["snapshot"]["state"]["group"].as_array().cloned().unwrap_or_default();
        if groups.iter().any(|g| g["name"] == "marathon:/web:0") {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "Marathon never synced:\n{s:#}\n{}", p.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(m.auth_seen().iter().any(|a| a.as_deref() == Some(basic_value().as_str())));

    // The secrets are there, redacted.
    let st = &state["snapshot"]["state"];
    assert_eq!(st["admin"]["token"], "<redacted>", "{:#}", st["admin"]);
    assert_eq!(st["marathon"]["auth"]["password"], "<redacted>", "{:#}", st["marathon"]);
    assert_eq!(st["dns"]["tsig_key"][0]["secret"], "<redacted>", "{:#}", st["dns"]);

    // Every admin answer, and the CLI's.
    assert_clean("/v1/state", &get("/v1/state"));
    assert_clean("/metrics", &get("/metrics"));
    let (code, body) = http(admin, "POST", "/v1/config/validate", Some(&text), &[("Authorization", &auth)]).unwrap();
    assert_clean("/v1/config/validate", &body);
    assert_eq!(code, 200, "relative secret files resolve against the daemon's config directory: {body}");
    let body = std::fs::read_to_string(&path).unwrap().replace("\"admin.token\"", "\"/nonexistent/admin.token\"");
    let (_, body) = http(admin, "POST", "/v1/config/validate", Some(&body), &[("Authorization", &auth)]).unwrap();
    assert_clean("/v1/config/validate (error)", &body);
    let token_file = dir.path().join("admin.token");
    for json in [true, false] {
        let mut cmd = Command::new(padis_bin());
        cmd.args(["status", "--admin", &admin.to_string(), "--token-file", token_file.to_str().unwrap()]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_clean(if json { "status --json" } else { "status" }, &String::from_utf8_lossy(&out.stdout));
    }
    let (code, body) = http(admin, "POST", "/v1/reload", None, &[("Authorization", &auth)]).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_clean("/v1/reload", &body);

    // The whole log, up to the stop.
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(15)).is_some(), "{}", p.log_text());
    let log = p.log_text() + &std::fs::read_to_string(dir.path().join("padis.out")).unwrap();
    assert!(log.contains(" DEBUG "), "the daemon logged at debug level:\n{log}");
    assert_clean("the daemon's log", &log);
}

#[test]
fn secret_files_open_to_group_or_others_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("padis.toml");
    let text = config(admin, dir.path(), "http://127.0.0.1:1", free_port());
    std::fs::write(&path, &text).unwrap();
    private_file(&dir.path().join("admin.token"), ADMIN_TOKEN, 0o640);
    private_file(&dir.path().join("marathon.password"), MARATHON_PASSWORD, 0o604);
    let out = Command::new(padis_bin()).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    for (field, needle, mode) in
        [("admin.token_file", "token_file", "0640"), ("marathon.auth.password_file", "password_file", "0604")]
    {
        let want = format!("{}:{}:1: {field}: ", path.display(), line_of(needle));
        assert!(stderr.contains(&want), "wanted {want}\n{stderr}");
        assert!(stderr.contains(&format!("mode {mode} lets group or others access this secret")), "{stderr}");
    }
    assert_clean("padis check (refused)", &stderr);
    // The daemon refuses to start on it as well.
    let out = Command::new(padis_bin()).args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_clean("padis run (refused)", &String::from_utf8_lossy(&out.stderr));
}
