//! The daemon's DNS plane and its zone files: an edited zone file is served after SIGHUP, `POST /v1/reload` or
//! by itself when the file changes, and reaches a BIND 9 secondary by IXFR; a higher file serial is taken, a
//! lower one gives the served serial + 1 and a note in `/v1/state`; a zone file that does not load is reported
//! (`/v1/state`, metrics) and `padis check` rejects it with file:line; TSIG secrets never show.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use padis_tests::dns::{kdig, Bind};
use padis_tests::process::{free_port, http, padis_bin, Padis};

const SECRET: &str = "cmVsb2FkLXRlc3Qtc2VjcmV0LXNoYTI1Ni0xMjM0NTY3OA==";
const TOKEN: &str = "dns-reload-admin-token";

fn zone(serial: u32, www: &str) -> String {
    format!(
        "$ORIGIN rel.test.\n$TTL 60\n@ IN SOA ns.rel.test. admin.rel.test. {serial} 60 10 600 5\n@ IN NS ns.rel.test.\n\
         ns IN A 192.0.2.1\nwww IN A {www}\nstay IN TXT \"unchanged\"\n"
    )
}

/// Line 5 does not parse.
const BROKEN: &str = "$ORIGIN broken.test.\n$TTL 60\n@ IN SOA ns.broken.test. a.broken.test. 1 60 10 600 5\n\
                      @ IN NS ns.broken.test.\nns IN A 192.0.2.300\n";

fn config(dir: &Path, admin: u16, dns: u16, bind: u16) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:{admin}"
token = "{TOKEN}"

[dns]
listen = ["127.0.0.1:{dns}"]
state_dir = "{state}"

[[dns.tsig_key]]
name = "xfr"
secret_file = "xfr.b64"

[[dns.zone]]
name = "rel.test"
file = "rel.zone"
allow_transfer = ["127.0.0.0/8"]
transfer_key = "xfr"
notify = ["127.0.0.1:{bind}"]

[[dns.zone]]
name = "broken.test"
file = "broken.zone"
"#,
        state = dir.join("state").display()
    )
}

fn serial(addr: std::net::SocketAddr) -> Option<u32> {
    kdig(addr, &["rel.test", "SOA"]).data("SOA").first().and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An admin API GET with the token (`/v1/state` as JSON, `/metrics` as text).
fn get(p: &Padis, path: &str) -> String {
    let auth = format!("Bearer {TOKEN}");
    let (code, body) = http(p.admin, "GET", path, None, &[("Authorization", &auth)]).expect("admin API answers");
    assert_eq!(code, 200, "{path}: {body}");
    body
}

fn state(p: &Padis) -> serde_json::Value {
    serde_json::from_str(&get(p, "/v1/state")).expect("json")
}

fn zone_state<'a>(state: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    state["planes"]["dns"]["zones"]
        .as_array()
        .and_then(|z| z.iter().find(|z| z["name"] == name))
        .unwrap_or_else(|| panic!("zone {name} not in the DNS report: {state:#}"))
}

/// Writes `text` to `path` a second after its last change (so that the change is seen even by mtime).
fn edit(path: &Path, text: &str) {
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::write(path, text).unwrap();
}

#[test]
fn zone_edits_reach_a_bind_secondary_by_ixfr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin_port, dns_port, bind_port) = (free_port(), free_port(), free_port());
    let cfg = d.join("padis.toml");
    std::fs::write(&cfg, config(d, admin_port, dns_port, bind_port)).unwrap();
    let secret_file = d.join("xfr.b64");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let zf = d.join("rel.zone");
    std::fs::write(&zf, zone(100, "192.0.2.10")).unwrap();
    std::fs::write(d.join("broken.zone"), BROKEN).unwrap();

    // padis check: a secret file others may read is refused; a zone file that does not load fails the check
    // with file:line; the secret is never printed.
    let check = |cfg: &Path| Command::new(padis_bin()).args(["check", "--config"]).arg(cfg).output().unwrap();
    let out = check(&cfg);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && text.contains("dns.tsig_key[0].secret_file") && text.contains("0644"), "{text}");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = check(&cfg);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a broken zone file fails the check: {text}");
    assert!(text.contains("broken.zone:5"), "file:line of the bad record: {text}");
    assert!(!text.contains(SECRET) && !text.contains(&SECRET[..20]), "secret printed by check: {text}");
    let good = d.join("good.toml");
    std::fs::write(
        &good,
        config(d, admin_port, dns_port, bind_port)
            .replace("broken.zone", "rel.zone")
            .replace("broken.test", "other.test"),
    )
    .unwrap();
    let out = check(&good);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // other.test served from rel.zone: its records are outside the zone.
    assert!(!out.status.success() && text.contains("outside the zone"), "{text}");
    std::fs::write(
        &good,
        config(d, admin_port, dns_port, bind_port)
            .replace("\n[[dns.zone]]\nname = \"broken.test\"\nfile = \"broken.zone\"\n", ""),
    )
    .unwrap();
    let out = check(&good);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains(SECRET), "{text}");

    let mut p = Padis::start(&cfg, format!("127.0.0.1:{admin_port}").parse().unwrap());
    p.wait_ready();
    let dns: std::net::SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
    wait("rel.test served", Duration::from_secs(10), || serial(dns) == Some(100));

    // The zone that does not load: visible with its error, counted, REFUSED (not served).
    let st = state(&p);
    let text = st.to_string();
    assert!(!text.contains(SECRET) && !text.contains(&SECRET[..20]), "secret in /v1/state");
    let b = zone_state(&st, "broken.test.");
    assert_eq!(b["state"], "failed", "{b:#}");
    assert!(b["error"].as_str().unwrap_or("").contains("broken.zone:5"), "{b:#}");
    assert!(!st["planes"]["dns"]["errors"].as_array().unwrap().is_empty(), "{st:#}");
    let m = get(&p, "/metrics");
    assert!(m.contains("padis_dns_zones{state=\"failed\"} 1") && m.contains("padis_dns_zones{state=\"ok\"} 1"), "{m}");
    assert!(m.contains("padis_dns_zone_load_errors_total{zone=\"broken.test\"}"), "{m}");
    assert_eq!(kdig(dns, &["ns.broken.test", "A"]).status, "REFUSED");

    // A BIND 9 secondary takes the zone (AXFR first).
    let key = format!("hmac-sha256:xfr:{SECRET}");
    let bind = Bind::secondary(d, "rel.test", dns, ("xfr", "hmac-sha256", SECRET), bind_port);
    bind.wait_serial("rel.test", 100, Duration::from_secs(20));

    // Edit + SIGHUP: new content, the file's higher serial, NOTIFY, and BIND follows by IXFR.
    edit(&zf, &zone(101, "192.0.2.11"));
    p.signal(libc::SIGHUP);
    wait("the edit served", Duration::from_secs(10), || kdig(dns, &["www.rel.test", "A"]).data("A") == ["192.0.2.11"]);
    assert_eq!(serial(dns), Some(101), "the file's higher serial is taken");
    let ixfr = kdig(dns, &["-y", &key, "rel.test", "IXFR=100"]);
    assert!(ixfr.raw.contains("192.0.2.10") && ixfr.raw.contains("192.0.2.11"), "incremental: {}", ixfr.raw);
    assert!(!ixfr.raw.contains("unchanged"), "an IXFR carries only the change: {}", ixfr.raw);
    bind.wait_serial("rel.test", 101, Duration::from_secs(20));
    assert_eq!(kdig(bind.addr, &["www.rel.test", "A"]).data("A"), ["192.0.2.11"]);
    // Two incremental transfers answered: kdig's above and BIND's (an AXFR fallback counts as `ixfr-axfr`).
    let m = get(&p, "/metrics");
    let ixfrs = m
        .lines()
        .find(|l| l.starts_with("padis_dns_transfers_total{") && l.contains("kind=\"ixfr\"") && l.contains("rel.test."))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(ixfrs, Some(2), "BIND followed by IXFR:\n{m}\n{}", bind.log_text());

    // POST /v1/reload with a lower serial in the file: served serial + 1, and a note says so.
    edit(&zf, &zone(50, "192.0.2.12"));
    let auth = format!("Bearer {TOKEN}");
    let (code, body) = http(p.admin, "POST", "/v1/reload", None, &[("Authorization", &auth)]).unwrap();
    assert_eq!(code, 200, "{body}");
    wait("the reload served", Duration::from_secs(10), || {
        kdig(dns, &["www.rel.test", "A"]).data("A") == ["192.0.2.12"]
    });
    assert_eq!(serial(dns), Some(102));
    let st = state(&p);
    let note = zone_state(&st, "rel.test.")["serial_note"].as_str().unwrap_or("").to_string();
    assert!(note.contains("50") && note.contains("102"), "{st:#}");
    bind.wait_serial("rel.test", 102, Duration::from_secs(20));

    // No signal at all: the file changes on disk and is served.
    edit(&zf, &zone(200, "192.0.2.13"));
    wait("the file change served", Duration::from_secs(10), || serial(dns) == Some(200));
    assert_eq!(kdig(dns, &["www.rel.test", "A"]).data("A"), ["192.0.2.13"]);

    // A broken edit: the previous version stays served, the zone is reported stale with file:line.
    edit(&zf, &format!("{}bad IN A not-an-address\n", zone(201, "192.0.2.14")));
    p.signal(libc::SIGHUP);
    wait("the zone reported stale", Duration::from_secs(10), || {
        zone_state(&state(&p), "rel.test.")["state"] == "stale"
    });
    let st = state(&p);
    assert!(zone_state(&st, "rel.test.")["error"].as_str().unwrap_or("").contains("rel.zone:8"), "{st:#}");
    assert_eq!(serial(dns), Some(200));
    assert_eq!(kdig(dns, &["www.rel.test", "A"]).data("A"), ["192.0.2.13"]);
    assert!(!p.log_text().contains(SECRET), "secret in the log");
}

/// A DNSSEC-signed zone file (signed here by BIND's dnssec-signzone) passes `padis check` (pre-signed zones are
/// served as they are); a DNSSEC record that does not parse fails it with file:line.
#[test]
fn signed_zone_passes_check_and_bad_dnssec_record_fails_with_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("sec.zone"),
        "$ORIGIN sec.test.\n$TTL 60\n@ IN SOA ns.sec.test. a.sec.test. 1 60 10 600 5\n@ IN NS ns\nns IN A 192.0.2.1\n",
    )
    .unwrap();
    let run = |cmd: &mut Command| {
        let out =
            cmd.current_dir(d).output().expect("bind9-utils (dnssec-keygen, dnssec-signzone); tests/setup installs it");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let key = run(Command::new("dnssec-keygen").args(["-a", "ECDSAP256SHA256", "-n", "ZONE", "sec.test"]));
    std::fs::write(
        d.join("sec.zone"),
        format!("{}$INCLUDE {key}.key\n", std::fs::read_to_string(d.join("sec.zone")).unwrap()),
    )
    .unwrap();
    run(Command::new("dnssec-signzone").args(["-P", "-o", "sec.test", "-f", "sec.signed", "sec.zone"]));
    let signed = std::fs::read_to_string(d.join("sec.signed")).unwrap();
    assert!(signed.contains("RRSIG") && signed.contains("DNSKEY"), "{signed}");
    std::fs::write(
        d.join("padis.toml"),
        format!("[admin]\nlisten = \"127.0.0.1:{}\"\n[dns]\nlisten = [\"127.0.0.1:0\"]\n[[dns.zone]]\nname = \"sec.test\"\nfile = \"sec.signed\"\n", free_port()),
    )
    .unwrap();
    let check = || {
        let out = Command::new(padis_bin()).args(["check", "--config"]).arg(d.join("padis.toml")).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, text) = check();
    assert!(ok, "{text}");
    let line = signed.lines().count() + 1;
    std::fs::write(
        d.join("sec.signed"),
        format!("{signed}bad 60 IN RRSIG A 13 3 60 20270101000000 20261201000000 1 sec.test. !!\n"),
    )
    .unwrap();
    let (ok, text) = check();
    assert!(!ok && text.contains(&format!("sec.signed:{line}")) && text.contains("RRSIG"), "{text}");
}
