//! Following snapshots while serving: queries racing zone updates (one service flipping between two sets of
//! addresses, new serials published as fast as the manager builds them) see one version or the next, never a
//! mix of both, and serials never go back — checked with real datagrams against the running server.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, serial_gt, Server};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// The flipping service `flip` with its three instances in `net` (10.<net>.0.1-3), among 30 steady services.
fn config(net: u8) -> String {
    let mut c = String::from(
        r#"
[dns]
listen = ["127.0.0.1:0"]
reuseport = 2
state_dir = "@DIR@/state"

[[dns.zone]]
name = "svc.test"
generated = true
ns = [{ name = "ns1.svc.test", addrs = ["192.0.2.1"] }]
"#,
    );
    let service = |c: &mut String, name: &str, net: u8| {
        c.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\n[[service.port]]\nname = \"http\"\nprotocol = \"tcp\"\n"
        ));
        for i in 1..=3 {
            c.push_str(&format!(
                "[[service.instance]]\nid = \"i{i}\"\naddr = \"10.{net}.0.{i}\"\nports = [{}]\n",
                8000 + i
            ));
        }
    };
    service(&mut c, "flip", net);
    for k in 0..30 {
        service(&mut c, &format!("steady{k}"), 100 + k);
    }
    c
}

/// Which version an address belongs to (10.1.x or 10.2.x), or `None` for anything else.
fn version(rdata: &RData) -> Option<u8> {
    match rdata {
        RData::A(a) if matches!(a.0.octets()[1], 1 | 2) && a.0.octets()[2] == 0 => Some(a.0.octets()[1]),
        _ => None,
    }
}

/// What one answer showed.
#[derive(Debug, Default)]
struct Seen {
    versions: [usize; 3],
    serials: Vec<u32>,
    answers: usize,
}

fn ask(sock: &UdpSocket, id: u16, name: &str, rtype: RecordType) -> Option<Message> {
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(Name::from_ascii(name).ok()?, rtype));
    sock.send(&q.to_vec().ok()?).ok()?;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let n = sock.recv(&mut buf).ok()?;
        let m = Message::from_vec(&buf[..n]).ok()?;
        if m.metadata.id == id {
            return Some(m);
        }
    }
    None
}

/// Queries `flip` (A and SRV) and a missing name until `stop`, checking every answer is one whole version.
fn client(addr: SocketAddr, stop: Arc<AtomicBool>) -> Seen {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut id = 0u16;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && seen.answers < 200_000 {
        id = id.wrapping_add(1);
        let (name, rtype) = match id % 3 {
            0 => ("flip.svc.test.", RecordType::A),
            1 => ("_http._tcp.flip.svc.test.", RecordType::SRV),
            _ => ("missing.svc.test.", RecordType::A),
        };
        let Some(m) = ask(&sock, id, name, rtype) else { continue }; // a lost datagram: ask again
        seen.answers += 1;
        if rtype == RecordType::A && name.starts_with("missing") {
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m:?}");
            let serial = m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(s.serial),
                _ => None,
            });
            let serial = serial.unwrap_or_else(|| panic!("negative answer without SOA: {m:?}"));
            if let Some(&last) = seen.serials.last() {
                assert!(serial == last || serial_gt(serial, last), "serial went back from {last} to {serial}");
                if serial != last {
                    seen.serials.push(serial);
                }
            } else {
                seen.serials.push(serial);
            }
            continue;
        }
        // A: the three addresses of one version. SRV: three targets and, in the additional section, the
        // addresses of those targets, all of one version.
        let addrs: Vec<&RData> = match rtype {
            RecordType::A => m.answers.iter().map(|r| &r.data).collect(),
            _ => {
                assert_eq!(m.answers.len(), 3, "{m:?}");
                m.additionals.iter().filter(|r| r.record_type() == RecordType::A).map(|r| &r.data).collect()
            }
        };
        let versions: Vec<Option<u8>> = addrs.iter().map(|d| version(d)).collect();
        assert_eq!(versions.len(), 3, "{name} {rtype}: {m:?}");
        let v = versions[0].unwrap_or_else(|| panic!("{name} {rtype}: unexpected address in {m:?}"));
        assert!(versions.iter().all(|x| *x == Some(v)), "{name} {rtype}: a mix of two versions: {m:?}");
        seen.versions[v as usize] += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_racing_updates_see_whole_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &config(1)).await;
    let addr = s.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let c = {
        let stop = stop.clone();
        std::thread::spawn(move || client(addr, stop))
    };
    // Flip the service back and forth, each version published as soon as the last one is served (bounded in
    // count and time).
    let started = s.serial("svc.test");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut flips = 0;
    while flips < 60 && Instant::now() < deadline {
        let before = s.serial("svc.test");
        s.publish(&config(if flips % 2 == 0 { 2 } else { 1 }));
        eventually("the new version built", Duration::from_secs(10), || s.serial("svc.test") != before).await;
        flips += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen =
        tokio::task::spawn_blocking(move || c.join()).await.unwrap().unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(serial_gt(s.serial("svc.test"), started), "serials moved on");
    assert!(seen.versions[1] > 0 && seen.versions[2] > 0, "both versions served: {seen:?}");
    assert!(seen.serials.len() >= 3, "answers followed several serials: {seen:?}");
    s.stop().await;
}
