//! Secrets are never output: an admin token, Marathon basic-auth credentials, a TSIG key (inline or from an
//! owner-only file), the L4 sync key, a backend client certificate's private key and the TLS session ticket keys
//! (learnt here by listening as a sync peer and decrypting what the daemon sends) appear in no admin answer
//! (`/v1/state`, `/metrics`, `/v1/config/validate`, `padis status` and `padis status --json`), in no log line
//! of a daemon running at debug level, and in no `padis check` output; secret files readable by group or others
//! are refused with file:line.

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
const SYNC_KEY: &str = "sync-K3Y-shared-by-nodes-9f2e";

/// Secrets known only once the daemon runs (ticket keys) or files are made (a private key), in the forms they
/// could leak in.
static DYNAMIC: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn add_secret(s: String) {
    DYNAMIC.lock().unwrap().push(s);
}

/// `bytes` as hex (both cases) and base64 (coreutils, independent of our code).
fn add_secret_bytes(bytes: &[u8]) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    add_secret(hex.to_uppercase());
    add_secret(hex);
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    // Without the padding, which depends on where the value would start.
    add_secret(String::from_utf8(out.stdout).unwrap().trim_end_matches('=').to_string());
}

fn private_file(path: &Path, content: &str, mode: u32) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn config(admin: SocketAddr, dir: &Path, marathon: &str, dns: u16) -> String {
    config_with_sync(admin, dir, marathon, dns, (free_port(), free_port()))
}

/// The config; `sync`: this node's sync port and its peer's (where the test listens).
fn config_with_sync(admin: SocketAddr, dir: &Path, marathon: &str, dns: u16, sync: (u16, u16)) -> String {
    format!(
        r#"[admin]
listen = "{admin}"
token_file = "admin.token"

[log]
level = "debug"

[tls]
share_ticket_keys = true

[l4.sync]
listen = "127.0.0.1:{me}"
peers = ["127.0.0.1:{me}", "127.0.0.1:{peer}"]
key_file = "sync.key"

[[listener]]
name = "web"
bind = "127.0.0.1:{web}"

[[listener]]
name = "tls"
bind = "127.0.0.1:{tls}"
[listener.tls]

[[certificate]]
name = "site"
cert = "site.pem"
key = "site.key"

[[group]]
name = "mtls-backend"
[group.tls]
ca = "site.pem"
cert = "client.pem"
key = "client.key"
[[group.backend]]
addr = "127.0.0.1:9"

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
        tls = free_port(),
        me = sync.0,
        peer = sync.1,
        state = dir.join("dns-state").display(),
    )
}

/// The forms a secret could leak in: as is, and the Basic credentials built from the Marathon password.
fn leaks(text: &str) -> Vec<&'static str> {
    let basic = basic_value();
    let mut found = Vec::new();
    for s in [ADMIN_TOKEN, MARATHON_PASSWORD, TSIG_SECRET, SYNC_KEY] {
        if text.contains(s) {
            found.push(s);
        }
    }
    if DYNAMIC.lock().unwrap().iter().any(|s| text.contains(s.as_str())) {
        found.push("a private key or a TLS session ticket key");
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
    private_file(&dir.path().join("sync.key"), SYNC_KEY, 0o600);
    tls_files(dir.path());
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("padis.toml");
    // The test is the daemon's sync peer: it receives the ticket keys the daemon shares.
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sync = (free_port(), peer.local_addr().unwrap().port());
    let text = config_with_sync(admin, dir.path(), &m.url(0), free_port(), sync);
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
    let keys = ticket_keys_from(&peer);
    assert!(keys >= 2, "the current and next epochs' keys were shared");
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

/// A server certificate and a backend client certificate (whose private key is a secret).
fn tls_files(dir: &Path) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["api.example.com".to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("site.pem"), cert.pem()).unwrap();
    private_file(&dir.join("site.key"), &key.serialize_pem(), 0o600);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("client.pem"), cert.pem()).unwrap();
    let pem = key.serialize_pem();
    private_file(&dir.join("client.key"), &pem, 0o600);
    // Each base64 line of the key.
    for line in pem.lines().filter(|l| !l.starts_with("-----") && l.len() > 16) {
        add_secret(line.to_string());
    }
    add_secret_bytes(&key.serialize_der());
}

/// Receives the daemon's sync datagrams as its peer until its ticket keys came (decrypted with the shared key);
/// records them as secrets and returns how many there are. The datagrams themselves never hold them in clear.
fn ticket_keys_from(peer: &std::net::UdpSocket) -> usize {
    let key = padis_l4::sync::SyncKey::new(SYNC_KEY.as_bytes());
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        let Ok(n) = peer.recv(&mut buf) else { continue };
        let Ok(msg) = padis_l4::sync::decode(&buf[..n], &key) else { continue };
        if let padis_l4::sync::Body::TicketKeys(keys) = msg.body {
            for k in &keys {
                assert!(!buf[..n].windows(16).any(|w| k.secret.windows(16).any(|s| s == w)), "a key in clear");
                add_secret_bytes(&k.secret[..]);
            }
            return keys.len();
        }
    }
    panic!("no ticket keys received from the daemon");
}

#[test]
fn secret_files_open_to_group_or_others_are_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("padis.toml");
    let text = config(admin, dir.path(), "http://127.0.0.1:1", free_port());
    std::fs::write(&path, &text).unwrap();
    private_file(&dir.path().join("sync.key"), SYNC_KEY, 0o600);
    tls_files(dir.path());
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
