//! Serving: generated records from services and VIPs, static zone files, negative answers, EDNS/TC, shuffling,
//! serials following changes, IPv6 and TCP — checked with kdig against the running server.

mod common;

use std::time::Duration;

use common::{eventually, kdig, serial_gt, unix_now, Server};

const ZONE_FILE: &str = r#"$ORIGIN static.test.
$TTL 300
@       IN SOA ns1.static.test. admin.static.test. 7 3600 600 86400 30
@       IN NS  ns1.static.test.
ns1     IN A   192.0.2.53
www     IN CNAME web
web     IN CNAME app
app     IN A   192.0.2.80
ext     IN CNAME example.org.
*.wild  IN A   192.0.2.99
sub     IN NS  ns.sub.static.test.
ns.sub  IN A   192.0.2.54
txt     IN TXT "hello" "world"
mx      IN MX  10 app.static.test.
big     IN A   10.1.0.1
"#;

fn config(instances: &str) -> String {
    format!(
        r#"
[dns]
listen = ["127.0.0.1:0", "[::1]:0"]
reuseport = 2
state_dir = "@DIR@/state"

[[dns.zone]]
name = "svc.test"
generated = true
ttl = "5s"
negative_ttl = "7s"
ns = [{{ name = "ns1.svc.test", addrs = ["192.0.2.1"] }}]

[[dns.zone]]
name = "static.test"
file = "static.zone"

[[service]]
name = "web"
[[service.port]]
name = "http"
protocol = "tcp"
{instances}

[[service]]
name = "Bad_Name.grp"
[[service.instance]]
id = "b1"
addr = "2001:db8::1"

[[vip]]
name = "api"
addr = "192.0.2.10"
port = 443
"#
    )
}

fn inst(id: &str, ip: &str, port: u16, weight: u16, healthy: bool) -> String {
    format!(
        "[[service.instance]]\nid = \"{id}\"\naddr = \"{ip}\"\nports = [{port}]\nweight = {weight}\n\
         healthy = {healthy}\n"
    )
}

fn big_zone() -> String {
    let mut z = ZONE_FILE.to_string();
    for i in 2..=60 {
        z.push_str(&format!("big IN A 10.1.0.{i}\n"));
    }
    z
}

async fn start(dir: &std::path::Path) -> Server {
    std::fs::write(dir.join("static.zone"), big_zone()).unwrap();
    let insts = [
        inst("web.1", "10.0.0.1", 8080, 3, true),
        inst("web.2", "10.0.0.2", 8081, 1, true),
        inst("web.3", "10.0.0.3", 8082, 1, false),
    ]
    .concat();
    Server::start(dir, &config(&insts)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_records_follow_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = start(dir.path()).await;
    let a = s.addr();

    let d = kdig(a, &["web.svc.test", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.has_flag("aa"), "{}", d.raw);
    let mut ips = d.data("A");
    ips.sort();
    assert_eq!(ips, ["10.0.0.1", "10.0.0.2"], "unhealthy 10.0.0.3 must not be published\n{}", d.raw);
    assert!(d.answer[0].split_whitespace().nth(1) == Some("5"), "generated TTL 5 s\n{}", d.raw);

    let d = kdig(a, &["_http._tcp.web.svc.test", "SRV"]);
    let mut srv = d.data("SRV");
    srv.sort();
    assert_eq!(srv, ["0 1 8081 web-2.web.svc.test.", "0 3 8080 web-1.web.svc.test."], "{}", d.raw);
    assert!(
        d.additional.iter().any(|l| l.contains("web-1.web.svc.test.") && l.contains("10.0.0.1")),
        "SRV target glue\n{}",
        d.raw
    );

    let d = kdig(a, &["web-1.web.svc.test", "A"]);
    assert_eq!(d.data("A"), ["10.0.0.1"], "{}", d.raw);
    let d = kdig(a, &["api.svc.test", "A"]);
    assert_eq!(d.data("A"), ["192.0.2.10"], "VIP\n{}", d.raw);
    let d = kdig(a, &["bad-name.grp.svc.test", "AAAA"]);
    assert_eq!(d.data("AAAA"), ["2001:db8::1"], "RFC 1123 mapping of Bad_Name\n{}", d.raw);

    // Negative answers carry the SOA with the negative TTL.
    let d = kdig(a, &["nope.svc.test", "A"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    assert!(d.authority.iter().any(|l| l.contains("SOA") && l.split_whitespace().nth(1) == Some("7")), "{}", d.raw);
    let d = kdig(a, &["web.svc.test", "MX"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(d.answer.is_empty() && d.authority.iter().any(|l| l.contains("SOA")), "NODATA\n{}", d.raw);
    let d = kdig(a, &["_tcp.web.svc.test", "A"]);
    assert_eq!(d.status, "NOERROR", "empty non-terminal is NODATA\n{}", d.raw);

    // Apex NS with glue; SOA.
    let d = kdig(a, &["svc.test", "NS"]);
    assert_eq!(d.data("NS"), ["ns1.svc.test."], "{}", d.raw);
    assert!(d.additional.iter().any(|l| l.contains("192.0.2.1")), "{}", d.raw);

    // A change is visible to the next query, with a new serial; an identical snapshot keeps the serial.
    let serial = s.serial("svc.test");
    assert!(serial.abs_diff(unix_now()) < 600, "a new generated zone starts at the unix time, not {serial}");
    let insts = [
        inst("web.1", "10.0.0.1", 8080, 3, true),
        inst("web.3", "10.0.0.3", 8082, 1, true),
        inst("web.4", "10.0.0.4", 8083, 1, true),
    ]
    .concat();
    s.publish(&config(&insts));
    eventually("new records", Duration::from_secs(5), || {
        let mut ips = kdig(a, &["web.svc.test", "A"]).data("A");
        ips.sort();
        ips == ["10.0.0.1", "10.0.0.3", "10.0.0.4"]
    })
    .await;
    let s2 = s.serial("svc.test");
    assert!(serial_gt(s2, serial) && serial_gt(unix_now().wrapping_add(2), s2), "{serial} -> {s2}: unixtime policy");
    let d = kdig(a, &["svc.test", "SOA"]);
    assert!(d.data("SOA")[0].contains(&format!(" {s2} ")), "{}", d.raw);
    assert_eq!(kdig(a, &["web-2.web.svc.test", "A"]).status, "NXDOMAIN");
    s.publish(&config(&insts));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.serial("svc.test"), s2, "unchanged content keeps the serial");
    assert_eq!(s.serial("static.test"), 7, "file serial kept while the file does not change");

    // IPv6 listener and TCP.
    let d = kdig(s.addrs[1], &["+tcp", "web.svc.test", "A"]);
    assert_eq!(d.data("A").len(), 3, "{}", d.raw);

    // Two services mapping to one name: both published, the collision reported (not silently dropped).
    assert!(s.handle.as_ref().unwrap().report().collisions.is_empty());
    let clash =
        config(&insts) + "\n[[service]]\nname = \"WEB\"\n[[service.instance]]\nid = \"x\"\naddr = \"10.0.0.99\"\n";
    s.publish(&clash);
    eventually("collision published", Duration::from_secs(5), || kdig(a, &["web.svc.test", "A"]).data("A").len() == 4)
        .await;
    let report = s.handle.as_ref().unwrap().report();
    assert!(
        report.collisions.iter().any(|c| c.contains("web.svc.test.") && c.contains("WEB")),
        "{:?}",
        report.collisions
    );
    assert!(report.zones.iter().any(|z| z.name == "svc.test." && z.records > 0), "{report:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_zone_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = s.addr();

    // CNAME chain inside the zone.
    let d = kdig(a, &["www.static.test", "A"]);
    assert_eq!(d.data("CNAME"), ["web.static.test.", "app.static.test."], "{}", d.raw);
    assert_eq!(d.data("A"), ["192.0.2.80"], "{}", d.raw);
    // CNAME leaving the zone: the chain stops there.
    let d = kdig(a, &["ext.static.test", "A"]);
    assert_eq!(d.data("CNAME"), ["example.org."], "{}", d.raw);
    assert!(d.data("A").is_empty());
    // Wildcard.
    let d = kdig(a, &["foo.wild.static.test", "A"]);
    assert_eq!(d.data("A"), ["192.0.2.99"], "{}", d.raw);
    assert!(d.answer[0].starts_with("foo.wild.static.test."), "{}", d.raw);
    // Delegation: referral with glue, not authoritative.
    let d = kdig(a, &["host.sub.static.test", "A"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert!(!d.has_flag("aa"), "{}", d.raw);
    assert!(d.authority.iter().any(|l| l.contains("NS") && l.contains("ns.sub.static.test.")), "{}", d.raw);
    assert!(d.additional.iter().any(|l| l.contains("192.0.2.54")), "{}", d.raw);
    // MX with additional, TXT.
    let d = kdig(a, &["mx.static.test", "MX"]);
    assert!(d.additional.iter().any(|l| l.contains("192.0.2.80")), "{}", d.raw);
    let d = kdig(a, &["txt.static.test", "TXT"]);
    assert_eq!(d.data("TXT"), ["\"hello\" \"world\""], "{}", d.raw);
    // ANY per RFC 8482: one RRset over UDP, everything over TCP.
    let d = kdig(a, &["static.test", "ANY"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.answer.len(), 1, "{}", d.raw);
    let d = kdig(a, &["+tcp", "static.test", "ANY"]);
    assert!(d.answer.len() >= 2, "{}", d.raw);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_truncation_shuffle_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path()).await;
    let a = s.addr();

    // 60 A records (~1 KB): too big for 512 bytes without EDNS -> TC; fits with EDNS 1232; TCP has it all.
    let d = kdig(a, &["+noedns", "+notcp", "+ignore", "big.static.test", "A"]);
    assert!(d.has_flag("tc"), "{}", d.raw);
    assert!(d.answer.is_empty(), "{}", d.raw);
    let d = kdig(a, &["+bufsize=4096", "+notcp", "big.static.test", "A"]);
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.data("A").len(), 60, "{}", d.raw);
    assert!(d.raw.contains("UDP size: 1232"), "server payload advertised\n{}", d.raw);
    let d = kdig(a, &["+bufsize=600", "+notcp", "+ignore", "big.static.test", "A"]);
    assert!(d.has_flag("tc"), "client payload 600 honoured\n{}", d.raw);
    let d = kdig(a, &["+noedns", "big.static.test", "A"]); // kdig retries over TCP on TC
    assert_eq!(d.data("A").len(), 60, "{}", d.raw);

    // Shuffled answers: the first record varies.
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..12 {
        let d = kdig(a, &["+bufsize=4096", "big.static.test", "A"]);
        firsts.insert(d.data("A").first().cloned().unwrap_or_default());
    }
    assert!(firsts.len() > 1, "answers not shuffled: {firsts:?}");

    // Other zones, classes, opcodes and EDNS versions.
    assert_eq!(kdig(a, &["example.com", "A"]).status, "REFUSED");
    assert_eq!(kdig(a, &["-c", "CH", "version.bind", "TXT"]).status, "REFUSED");
    let d = kdig(a, &["+edns=1", "web.svc.test", "A"]);
    assert_eq!(d.status, "BADVERS", "{}", d.raw);
    // UDP AXFR is not a thing; the server keeps serving.
    assert_eq!(kdig(a, &["web.svc.test", "A"]).data("A").len(), 2);

    // Metrics count queries by zone/type/rcode and truncations.
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    assert!(text.contains("padis_dns_queries_total{qtype=\"A\",rcode=\"NOERROR\",zone=\"static.test.\"}"), "{text}");
    assert!(text.contains("rcode=\"REFUSED\""), "{text}");
    assert!(text.contains("padis_dns_truncated_total"), "{text}");
    assert!(text.contains("padis_dns_query_duration_seconds_bucket"), "{text}");
    s.stop().await;
}
