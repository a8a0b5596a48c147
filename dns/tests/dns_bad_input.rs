//! Bad input: truncated, oversized, malformed-compression and random datagrams, unknown opcodes and classes,
//! responses sent as queries, stalled TCP clients — each answered correctly or dropped while the server keeps
//! serving others. Also response rate limiting.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{kdig, Server};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use rand::Rng;

const CONFIG: &str = r#"
[dns]
listen = ["127.0.0.1:0"]
state_dir = "@DIR@/state"
tcp_idle_timeout = "1s"

[[dns.zone]]
name = "svc.test"
generated = true

[[service]]
name = "web"
[[service.instance]]
id = "a"
addr = "10.0.0.1"
"#;

fn client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    s
}

fn exchange(s: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    s.send_to(bytes, to).unwrap();
    let mut buf = [0u8; 4096];
    s.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

fn rcode(resp: &[u8]) -> u8 {
    resp[3] & 0x0F
}

fn assert_serving(to: SocketAddr) {
    let s = client();
    let r = exchange(&s, to, &query("web.svc.test.", RecordType::A)).expect("server still answers");
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.answers.len(), 1, "{m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_are_answered_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG).await;
    let a = s.addr();
    let c = client();

    // Too short for a header: dropped.
    assert!(exchange(&c, a, &[1, 2, 3, 4, 5]).is_none());
    // Header claims a question that is not there: FORMERR with the same ID.
    let r = exchange(&c, a, &[0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]).expect("FORMERR");
    assert_eq!((r[0], r[1], rcode(&r)), (0xab, 0xcd, 1));
    assert!(r[2] & 0x80 != 0, "QR set");
    // Compression pointer loop in the question name.
    let r = exchange(&c, a, &[0, 7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 12, 0, 1, 0, 1]).expect("FORMERR");
    assert_eq!(rcode(&r), 1);
    // Truncated question (name cut in the middle).
    let q = query("web.svc.test.", RecordType::A);
    let r = exchange(&c, a, &q[..18]).expect("FORMERR");
    assert_eq!(rcode(&r), 1);
    // Oversized garbage.
    let mut big = q.clone();
    big.resize(4000, 0x41);
    if let Some(r) = exchange(&c, a, &big) {
        assert_eq!(rcode(&r), 1, "trailing garbage is a format error");
    }
    // A response sent to us is never answered (no reflection loops).
    let mut resp = q.clone();
    resp[2] |= 0x80;
    assert!(exchange(&c, a, &resp).is_none());
    // Unknown opcode: NOTIMP. Unknown class: REFUSED. Other zone: REFUSED.
    let mut op = q.clone();
    op[2] = (op[2] & 0x87) | (3 << 3);
    assert_eq!(rcode(&exchange(&c, a, &op).expect("NOTIMP")), 4);
    let mut cls = q.clone();
    let n = cls.len();
    cls[n - 2..].copy_from_slice(&1234u16.to_be_bytes());
    assert_eq!(rcode(&exchange(&c, a, &cls).expect("REFUSED")), 5);
    assert_eq!(rcode(&exchange(&c, a, &query("example.com.", RecordType::A)).expect("REFUSED")), 5);
    // Two questions: FORMERR.
    let mut m = Message::new(9, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii("web.svc.test.").unwrap(), RecordType::A));
    m.add_query(Query::query(Name::from_ascii("web.svc.test.").unwrap(), RecordType::AAAA));
    assert_eq!(rcode(&exchange(&c, a, &m.to_vec().unwrap()).expect("FORMERR")), 1);
    // Mixed case is echoed exactly (0x20 randomisation works).
    let r = exchange(&c, a, &query("WeB.sVc.TeSt.", RecordType::A)).expect("answer");
    assert_eq!(&r[12..26], &query("WeB.sVc.TeSt.", RecordType::A)[12..26]);
    assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 1);

    // Bounded fuzz: random datagrams and mutated queries; the server must keep answering.
    let mut rng = rand::rng();
    let started = Instant::now();
    let fuzz = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..3000 {
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
        let pkt: Vec<u8> = if i % 2 == 0 {
            let len = rng.random_range(0..600);
            (0..len).map(|_| rng.random()).collect()
        } else {
            let mut p = q.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..p.len());
                p[at] = rng.random();
            }
            p
        };
        let _ = fuzz.send_to(&pkt, a);
    }
    assert_serving(a);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tcp_clients_do_not_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), CONFIG).await;
    let a = s.addr();
    // One client sends half a length prefix, another half a message, a third nothing.
    let mut half_len = TcpStream::connect(a).unwrap();
    half_len.write_all(&[0]).unwrap();
    let mut half_msg = TcpStream::connect(a).unwrap();
    half_msg.write_all(&[0, 40, 1, 2, 3]).unwrap();
    let mut silent = TcpStream::connect(a).unwrap();
    // Others are served meanwhile, over TCP and UDP.
    let d = kdig(a, &["+tcp", "web.svc.test", "A"]);
    assert_eq!(d.data("A"), ["10.0.0.1"], "{}", d.raw);
    assert_serving(a);
    // The idle timeout (1 s) closes the stalled ones.
    for c in [&mut half_len, &mut half_msg, &mut silent] {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let started = Instant::now();
        let n = c.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(started.elapsed() < Duration::from_secs(4));
    }
    // Several pipelined queries on one connection are all answered in order.
    let mut t = TcpStream::connect(a).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let q = query("web.svc.test.", RecordType::A);
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.extend_from_slice(&(q.len() as u16).to_be_bytes());
        batch.extend_from_slice(&q);
    }
    t.write_all(&batch).unwrap();
    for _ in 0..3 {
        let mut len = [0u8; 2];
        t.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        t.read_exact(&mut body).unwrap();
        assert_eq!(Message::from_vec(&body).unwrap().answers.len(), 1);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_drops_and_slips() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CONFIG.replace("tcp_idle_timeout = \"1s\"", "[dns.rrl]\nresponses_per_second = 5\nwindow = 1\nslip = 2");
    let s = Server::start(dir.path(), &cfg).await;
    let a = s.addr();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let q = query("web.svc.test.", RecordType::A);
    for _ in 0..60 {
        c.send_to(&q, a).unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1024];
    while let Ok((n, _)) = c.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.truncation {
            truncated += 1;
        } else {
            full += 1;
        }
    }
    assert!((5..=7).contains(&full), "full answers: {full}");
    assert!((20..=35).contains(&truncated), "slipped (TC) answers: {truncated}");
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    assert!(text.contains("padis_dns_rrl_total{action=\"drop\"}"), "{text}");
    s.stop().await;
}
