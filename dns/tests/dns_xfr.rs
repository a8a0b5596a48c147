//! Zone transfers: AXFR/IXFR with TSIG and ACLs checked with kdig, and a real Knot secondary that transfers the
//! zone, receives NOTIFY, follows an IXFR after a service change and then serves the new records.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{eventually, free_port, kdig, serial_gt, spawn, Server};

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ=";

fn config(knot_port: u16, instances: &[(&str, &str)]) -> String {
    config_with_secret(knot_port, instances, SECRET)
}

fn config_with_secret(knot_port: u16, instances: &[(&str, &str)], secret: &str) -> String {
    let mut c = format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]
state_dir = "@DIR@/state"

[[dns.tsig_key]]
name = "xfr"
secret = "{secret}"

[[dns.zone]]
name = "svc.test"
generated = true
allow_transfer = ["127.0.0.1/32"]
transfer_key = "xfr"
notify = ["127.0.0.1:{knot_port}"]
ns = [{{ name = "ns1.svc.test", addrs = ["192.0.2.1"] }}]

[[service]]
name = "web"
"#
    );
    for (id, ip) in instances {
        c.push_str(&format!("[[service.instance]]\nid = \"{id}\"\naddr = \"{ip}\"\n"));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axfr_ixfr_tsig_and_acl() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &config(9, &[("a", "10.0.0.1"), ("b", "10.0.0.2")])).await;
    let a = s.addr();
    let key = format!("hmac-sha256:xfr:{SECRET}");

    let d = kdig(a, &["-y", &key, "svc.test", "AXFR"]);
    assert!(d.raw.contains("web.svc.test.") && d.raw.contains("10.0.0.2"), "{}", d.raw);
    assert_eq!(d.raw.matches("\tSOA\t").count(), 2, "AXFR starts and ends with the SOA\n{}", d.raw);
    assert!(!d.raw.contains("BADSIG") && !d.raw.contains("failed"), "{}", d.raw);

    // No key, wrong key, wrong source.
    let d = kdig(a, &["svc.test", "AXFR"]);
    assert!(d.raw.contains("REFUSED"), "unsigned transfer refused\n{}", d.raw);
    let d = kdig(a, &["-y", "hmac-sha256:xfr:d3Jvbmd3cm9uZ3dyb25nd3Jvbmd3cm9uZw==", "svc.test", "AXFR"]);
    assert!(d.raw.contains("NOTAUTH") || d.raw.contains("BADSIG"), "bad signature refused\n{}", d.raw);
    let d = kdig(a, &["-b", "127.0.0.2", "-y", &key, "svc.test", "AXFR"]);
    assert!(d.raw.contains("REFUSED"), "source outside allow_transfer\n{}", d.raw);

    // IXFR: one change -> incremental answer with the removed and added records.
    let old = s.serial("svc.test");
    s.publish(&config(9, &[("a", "10.0.0.1"), ("c", "10.0.0.3")]));
    eventually("serial bump", Duration::from_secs(5), || serial_gt(s.serial("svc.test"), old)).await;
    let d = kdig(a, &["-y", &key, &format!("IXFR={old}"), "svc.test"]);
    assert!(d.raw.contains("10.0.0.3") && d.raw.contains("10.0.0.2"), "{}", d.raw);
    assert!(!d.raw.contains("10.0.0.1"), "unchanged records are not in an IXFR\n{}", d.raw);
    // Unknown old serial: AXFR fallback (everything).
    let d = kdig(a, &["-y", &key, "IXFR=4000000000", "svc.test"]);
    assert!(d.raw.contains("10.0.0.1") && d.raw.contains("10.0.0.3"), "{}", d.raw);
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    for kind in ["axfr", "ixfr", "ixfr-axfr", "refused"] {
        assert!(text.contains(&format!("kind=\"{kind}\"")), "{kind} missing\n{text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knot_secondary_follows_notify_and_ixfr() {
    let dir = tempfile::tempdir().unwrap();
    let knot_port = free_port();
    let mut s = Server::start(dir.path(), &config(knot_port, &[("a", "10.0.0.1")])).await;
    let padis = s.addr();
    let kdir = dir.path().join("knot");
    std::fs::create_dir_all(&kdir).unwrap();
    let kconf = format!(
        r#"server:
    rundir: "{k}"
    listen: 127.0.0.1@{knot_port}
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1
database:
    storage: "{k}"
control:
    listen: "{k}/knot.sock"
log:
  - target: stderr
    any: error
key:
  - id: xfr
    algorithm: hmac-sha256
    secret: {SECRET}
remote:
  - id: padis
    address: {padis_ip}@{padis_port}
    key: xfr
acl:
  - id: from_padis
    address: 127.0.0.1
    key: xfr
    action: notify
template:
  - id: default
    storage: "{k}"
    zonefile-sync: -1
    zonefile-load: none
    journal-content: none
zone:
  - domain: svc.test
    master: padis
    acl: from_padis
"#,
        k = kdir.display(),
        padis_ip = padis.ip(),
        padis_port = padis.port(),
    );
    let conf_path = kdir.join("knot.conf");
    std::fs::write(&conf_path, kconf).unwrap();
    let _knot = spawn(Command::new("knotd").arg("-c").arg(&conf_path));
    let knot: std::net::SocketAddr = format!("127.0.0.1:{knot_port}").parse().unwrap();

    let serial = s.serial("svc.test");
    eventually("knot transfers the zone", Duration::from_secs(15), || {
        let d = kdig(knot, &["web.svc.test", "A"]);
        d.data("A") == ["10.0.0.1"]
    })
    .await;

    // A service change: new serial, NOTIFY to knot, knot pulls an IXFR, and answers with the new records.
    s.publish(&config(knot_port, &[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
    eventually("serial bump", Duration::from_secs(5), || serial_gt(s.serial("svc.test"), serial)).await;
    let new_serial = s.serial("svc.test");
    eventually("knot follows", Duration::from_secs(15), || {
        let mut ips = kdig(knot, &["web.svc.test", "A"]).data("A");
        ips.sort();
        ips == ["10.0.0.1", "10.0.0.2"]
    })
    .await;
    let d = kdig(knot, &["svc.test", "SOA"]);
    assert!(d.data("SOA")[0].contains(&format!(" {new_serial} ")), "{}", d.raw);
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    assert!(text.contains("padis_dns_transfers_total{kind=\"ixfr\",zone=\"svc.test.\"} 1"), "knot used IXFR\n{text}");
    assert!(text.contains("padis_dns_notify_total{result=\"ok\",zone=\"svc.test.\"}"), "{text}");
    assert!(!text.contains("result=\"refused\""), "{text}");

    // Knot requires the key on NOTIFY: a primary signing with another secret is refused (and not retried),
    // and Knot keeps the zone it has.
    let dir2 = tempfile::tempdir().unwrap();
    let other = "b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMTI=";
    let s2 = Server::start(dir2.path(), &config_with_secret(knot_port, &[("z", "10.9.9.9")], other)).await;
    eventually("NOTIFY with a wrong key refused", Duration::from_secs(15), || {
        let text = prometheus::TextEncoder::new().encode_to_string(&s2.registry.gather()).unwrap();
        text.contains("padis_dns_notify_total{result=\"refused\",zone=\"svc.test.\"} 1")
    })
    .await;
    let mut ips = kdig(knot, &["web.svc.test", "A"]).data("A");
    ips.sort();
    assert_eq!(ips, ["10.0.0.1", "10.0.0.2"], "knot ignored the refused NOTIFY");
    s2.stop().await;
    s.stop().await;
}
