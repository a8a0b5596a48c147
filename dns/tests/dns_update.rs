//! Dynamic updates (RFC 2136) with TSIG, driven by nsupdate: adds and deletes are served at once, refused updates
//! get the right RCODE, and accepted updates survive a restart.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{kdig, Server};

const SECRET: &str = "dXBkYXRlLXVwZGF0ZS11cGRhdGUtdXBkYXRlLTEyMzQ=";

const ZONE: &str = "$ORIGIN dyn.test.\n$TTL 60\n@ IN SOA ns.dyn.test. admin.dyn.test. 100 60 10 600 5\n\
                    @ IN NS ns.dyn.test.\nns IN A 192.0.2.1\napp IN A 192.0.2.80\n";

fn config() -> String {
    format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]
state_dir = "@DIR@/state"
ixfr_journal = 2

[[dns.tsig_key]]
name = "upd"
secret = "{SECRET}"

[[dns.zone]]
name = "dyn.test"
file = "dyn.zone"
update_key = "upd"
allow_update = ["127.0.0.0/8"]

[[dns.zone]]
name = "locked.test"
generated = true
"#
    )
}

/// Runs nsupdate with `commands`; returns (success, stdout+stderr).
fn nsupdate(addr: std::net::SocketAddr, key: Option<&str>, commands: &str) -> (bool, String) {
    let mut cmd = Command::new("nsupdate");
    cmd.arg("-t").arg("3");
    if let Some(k) = key {
        cmd.arg("-y").arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsupdate (bind9-dnsutils)");
    let script = format!("server {} {}\n{commands}\nsend\nquit\n", addr.ip(), addr.port());
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nsupdate_with_tsig_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dyn.zone"), ZONE).unwrap();
    let s = Server::start(dir.path(), &config()).await;
    let a = s.addr();
    let key = format!("hmac-sha256:upd:{SECRET}");
    assert_eq!(s.serial("dyn.test"), 100);

    let (ok, out) = nsupdate(
        a,
        Some(&key),
        "zone dyn.test\nupdate add new.dyn.test. 30 A 192.0.2.200\nupdate add new.dyn.test. 30 TXT \"x\"",
    );
    assert!(ok, "{out}");
    assert_eq!(kdig(a, &["new.dyn.test", "A"]).data("A"), ["192.0.2.200"]);
    assert_eq!(s.serial("dyn.test"), 101);
    let (ok, out) = nsupdate(a, Some(&key), "zone dyn.test\nupdate delete app.dyn.test. A");
    assert!(ok, "{out}");
    assert_eq!(kdig(a, &["app.dyn.test", "A"]).status, "NXDOMAIN");

    // Refusals.
    let (ok, out) = nsupdate(a, None, "zone dyn.test\nupdate add x.dyn.test. 30 A 192.0.2.9");
    assert!(!ok && out.contains("REFUSED"), "unsigned: {out}");
    let (ok, out) = nsupdate(
        a,
        Some("hmac-sha256:upd:d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZw=="),
        "zone dyn.test\nupdate add x.dyn.test. 30 A 192.0.2.9",
    );
    assert!(!ok && (out.contains("NOTAUTH") || out.to_lowercase().contains("tsig")), "bad key: {out}");
    let (ok, out) = nsupdate(a, Some(&key), "zone locked.test\nupdate add x.locked.test. 30 A 192.0.2.9");
    assert!(!ok && out.contains("REFUSED"), "zone without update key: {out}");
    let (ok, out) = nsupdate(a, Some(&key), "zone other.test\nupdate add x.other.test. 30 A 192.0.2.9");
    assert!(!ok && out.contains("NOTAUTH"), "not our zone: {out}");
    let (ok, out) =
        nsupdate(a, Some(&key), "zone dyn.test\nprereq nxdomain new.dyn.test.\nupdate add y.dyn.test. 30 A 192.0.2.9");
    assert!(!ok && out.contains("YXDOMAIN"), "prerequisite: {out}");
    let (ok, out) = nsupdate(
        a,
        Some(&key),
        "zone dyn.test\nprereq yxrrset nothere.dyn.test. A\nupdate add y.dyn.test. 30 A 192.0.2.9",
    );
    assert!(!ok && out.contains("NXRRSET"), "prerequisite: {out}");
    assert_eq!(kdig(a, &["x.dyn.test", "A"]).status, "NXDOMAIN");
    assert_eq!(kdig(a, &["y.dyn.test", "A"]).status, "NXDOMAIN");
    assert_eq!(s.serial("dyn.test"), 102, "refused updates change nothing");
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    assert!(text.contains("padis_dns_updates_total{result=\"NOERROR\",zone=\"dyn.test.\"} 2"), "{text}");
    assert!(text.contains("result=\"REFUSED\""), "{text}");

    // Enough updates for the journal (2 changes kept) to be compacted: none is lost.
    for i in 1..=7 {
        let (ok, out) = nsupdate(a, Some(&key), &format!("zone dyn.test\nupdate add n{i}.dyn.test. 30 A 192.0.2.{i}"));
        assert!(ok, "{out}");
    }
    let entries = |bytes: &[u8]| {
        let (mut pos, mut n) = (0usize, 0);
        while pos + 4 <= bytes.len() {
            pos += 4 + u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
            n += 1;
        }
        n
    };
    let journal = std::fs::read(dir.path().join("state/dyn.test.journal")).unwrap();
    assert!(entries(&journal) < 18, "9 updates and their 9 changes compacted: {} entries", entries(&journal));
    let serial = s.serial("dyn.test");
    assert_eq!(serial, 109);
    s.stop().await;

    // Restart on the same state directory: accepted updates are still there, the serial does not go back.
    let s = Server::start(dir.path(), &config()).await;
    let a = s.addr();
    assert_eq!(kdig(a, &["new.dyn.test", "A"]).data("A"), ["192.0.2.200"]);
    assert_eq!(kdig(a, &["new.dyn.test", "TXT"]).data("TXT"), ["\"x\""]);
    assert_eq!(kdig(a, &["app.dyn.test", "A"]).status, "NXDOMAIN");
    for i in 1..=7 {
        assert_eq!(kdig(a, &[&format!("n{i}.dyn.test"), "A"]).data("A"), [format!("192.0.2.{i}")]);
    }
    assert_eq!(s.serial("dyn.test"), serial, "same content, same serial after restart");
    s.stop().await;
}
