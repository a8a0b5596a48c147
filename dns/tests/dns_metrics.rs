//! Query metrics are batched per worker (counted in plain per-thread slots, published once per received batch):
//! bursts of queries that arrive together, from two clients over two workers, across a zone change, must still
//! be counted one by one by zone, type and rcode, and each must be one latency observation and one datagram of the
//! receive-batch histogram.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{eventually, Server};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

const ZONE_FILE: &str = "$ORIGIN static.test.\n$TTL 300\n@ IN SOA ns1 admin 7 3600 600 86400 30\n@ IN NS ns1\n\
ns1 IN A 192.0.2.53\napp IN A 192.0.2.80\ntxt IN TXT \"hello\"\n";

fn config(web_ip: &str) -> String {
    format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]
reuseport = 2
state_dir = "@DIR@/state"

[[dns.zone]]
name = "svc.test"
generated = true

[[dns.zone]]
name = "static.test"
file = "static.zone"

[[service]]
name = "web"
[[service.port]]
name = "http"
protocol = "tcp"
[[service.instance]]
id = "web.1"
addr = "{web_ip}"
ports = [8080]
"#
    )
}

fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

/// One burst: every query of the mix `n` times; adds the expected counts by (zone, qtype, rcode) labels to
/// `expect` and waits (bounded) for all answers.
fn burst(sock: &UdpSocket, server: SocketAddr, n: usize, expect: &mut BTreeMap<(String, String, String), u64>) {
    let mix: [(&str, RecordType, &str, &str, &str); 6] = [
        ("web.svc.test.", RecordType::A, "svc.test.", "A", "NOERROR"),
        ("nx.svc.test.", RecordType::A, "svc.test.", "A", "NXDOMAIN"),
        ("_http._tcp.web.svc.test.", RecordType::SRV, "svc.test.", "SRV", "NOERROR"),
        ("app.static.test.", RecordType::AAAA, "static.test.", "AAAA", "NOERROR"),
        ("txt.static.test.", RecordType::TXT, "static.test.", "TXT", "NOERROR"),
        ("example.com.", RecordType::A, "", "A", "REFUSED"),
    ];
    let mut buf = [0u8; 4096];
    // Chunks of 8 rounds of the mix (56 datagrams) sent back to back, then their answers read: the server takes
    // each chunk in a few batches, and no socket buffer overflows.
    for chunk in 0..n.div_ceil(8) {
        let mut sent = 0usize;
        for i in chunk * 8..n.min(chunk * 8 + 8) {
            for (j, (name, rtype, zone, qtype, rcode)) in mix.iter().enumerate() {
                sock.send_to(&query((i * 8 + j) as u16, name, *rtype), server).unwrap();
                *expect.entry((zone.to_string(), qtype.to_string(), rcode.to_string())).or_default() += 1;
                sent += 1;
            }
            // A malformed datagram (question count 1, no question): FORMERR, outside any zone, type "other".
            sock.send_to(&[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], server).unwrap();
            *expect.entry((String::new(), "other".into(), "FORMERR".into())).or_default() += 1;
            sent += 1;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = 0;
        while got < sent && Instant::now() < deadline {
            if sock.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        assert_eq!(got, sent, "answers received");
    }
}

/// Queries counted by labels, latency observations, and datagrams counted by the UDP receive-batch histogram.
fn counts(server: &Server) -> (BTreeMap<(String, String, String), u64>, u64, u64) {
    let text = prometheus::TextEncoder::new().encode_to_string(&server.registry.gather()).unwrap();
    let mut out = BTreeMap::new();
    let mut observed = 0;
    let mut received = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("padis_dns_queries_total{") {
            let (labels, value) = rest.split_once("} ").unwrap();
            let get = |k: &str| {
                let start = labels.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                labels[start..].split('"').next().unwrap().to_string()
            };
            out.insert((get("zone"), get("qtype"), get("rcode")), value.trim().parse().unwrap());
        } else if let Some(v) = line.strip_prefix("padis_dns_query_duration_seconds_count ") {
            observed = v.trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("padis_dns_udp_batch_size_sum ") {
            received = v.trim().parse::<f64>().unwrap() as u64;
        }
    }
    (out, observed, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_counts_match_every_query() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("static.zone"), ZONE_FILE).unwrap();
    let mut s = Server::start(dir.path(), &config("10.0.0.1")).await;
    let a = s.addr();
    let clients: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    for c in &clients {
        c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    }
    let mut expect = BTreeMap::new();
    for c in &clients {
        burst(c, a, 40, &mut expect);
    }
    // A new zone set (new generation) while counts may still be pending in the workers.
    s.publish(&config("10.0.0.2"));
    eventually("the change is served", Duration::from_secs(20), || {
        common::kdig(a, &["web.svc.test", "A"]).data("A") == ["10.0.0.2"]
    })
    .await;
    for c in &clients {
        burst(c, a, 40, &mut expect);
    }
    // The kdig probes above were counted too (a NOERROR A in svc.test. each, the last one after the change):
    // compare everything else exactly, and that key as at least the bursts' count.
    let total: u64 = expect.values().sum();
    let key = ("svc.test.".to_string(), "A".to_string(), "NOERROR".to_string());
    eventually("every query counted", Duration::from_secs(20), || {
        let (got, observed, received) = counts(&s);
        let probes = got.get(&key).copied().unwrap_or(0).saturating_sub(expect[&key]);
        let others_match = expect.iter().filter(|(k, _)| **k != key).all(|(k, v)| got.get(k) == Some(v));
        let no_extra = got.keys().all(|k| expect.contains_key(k));
        // Every datagram went through a receive batch (the UDP queries are all the queries here).
        others_match
            && no_extra
            && got.get(&key).is_some_and(|v| *v >= expect[&key])
            && observed == total + probes
            && received == total + probes
    })
    .await;
    let (got, _, _) = counts(&s);
    for (k, v) in &expect {
        assert!(got.get(k).is_some_and(|g| g >= v), "{k:?}: expected {v}, got {:?}", got.get(k));
    }
    s.stop().await;
}
