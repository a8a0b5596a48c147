//! TSIG per RFC 8945 through real sockets: every HMAC algorithm (kdig, nsupdate), replayed updates refused,
//! BADTIME answers signed with the key, the signer's fudge capped, BADKEY naming the request's algorithm, and
//! unsigned transfers of a zone that needs a key REFUSED.

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{kdig, Server};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TSIG;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hmac::{Hmac, Mac};

const S256: &str = "dXBkYXRlLXVwZGF0ZS11cGRhdGUtdXBkYXRlLTEyMzQ=";
const S1: &str = "c2hhMS1rZXktc2VjcmV0LTEyMzQ1Ng==";
const S512: &str = "c2hhNTEyLWtleS1zZWNyZXQtc2hhNTEyLWtleS1zZWNyZXQtMTIzNDU2Nzg5MA==";

const ZONE: &str = "$ORIGIN sig.test.\n$TTL 60\n@ IN SOA ns.sig.test. admin.sig.test. 100 60 10 600 5\n\
                    @ IN NS ns.sig.test.\nns IN A 192.0.2.1\n";

fn config() -> String {
    format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]
state_dir = "@DIR@/state"

[[dns.tsig_key]]
name = "k256"
secret = "{S256}"

[[dns.tsig_key]]
name = "k1"
algorithm = "hmac-sha1"
secret = "{S1}"

[[dns.tsig_key]]
name = "k512"
algorithm = "hmac-sha512"
secret_file = "k512.secret"

[[dns.zone]]
name = "sig.test"
file = "sig.zone"
update_key = "k256"
allow_update = ["127.0.0.0/8"]
transfer_key = "k512"
allow_transfer = ["127.0.0.0/8"]

[[dns.zone]]
name = "sha1.test"
generated = true
update_key = "k1"
"#
    )
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn hmac(alg: &str, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap();
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    match alg {
        "hmac-sha1" => run::<Hmac<sha1::Sha1>>(key, data),
        "hmac-sha256" => run::<Hmac<sha2::Sha256>>(key, data),
        "hmac-sha512" => run::<Hmac<sha2::Sha512>>(key, data),
        _ => panic!("{alg}"),
    }
}

fn wire_name(n: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in n.trim_end_matches('.').split('.') {
        out.push(l.len() as u8);
        out.extend(l.to_ascii_lowercase().bytes());
    }
    out.push(0);
    out
}

/// The TSIG variables (RFC 8945 4.3.3) after the key name: class, TTL, algorithm, time, fudge, error, other.
fn variables(key: &str, alg: &str, time: u64, fudge: u16, error: u16, other: &[u8]) -> Vec<u8> {
    let mut v = wire_name(key);
    v.extend([0, 255, 0, 0, 0, 0]);
    v.extend(wire_name(alg));
    v.extend(&time.to_be_bytes()[2..]);
    v.extend(fudge.to_be_bytes());
    v.extend(error.to_be_bytes());
    v.extend((other.len() as u16).to_be_bytes());
    v.extend(other);
    v
}

/// Signs `msg` as a client would, at `time` with `fudge`; returns the signed bytes and the MAC.
fn sign(msg: &[u8], key: &str, alg: &str, secret: &[u8], time: u64, fudge: u16) -> (Vec<u8>, Vec<u8>) {
    let mut data = msg.to_vec();
    data.extend(variables(key, alg, time, fudge, 0, &[]));
    let mac = hmac(alg, secret, &data);
    let mut rdata = wire_name(alg);
    rdata.extend(&time.to_be_bytes()[2..]);
    rdata.extend(fudge.to_be_bytes());
    rdata.extend((mac.len() as u16).to_be_bytes());
    rdata.extend(&mac);
    rdata.extend(&msg[0..2]);
    rdata.extend([0, 0, 0, 0]);
    let mut out = msg.to_vec();
    out.extend(wire_name(key));
    out.extend([0, 250, 0, 255, 0, 0, 0, 0]);
    out.extend((rdata.len() as u16).to_be_bytes());
    out.extend(rdata);
    let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
    out[10..12].copy_from_slice(&ar.to_be_bytes());
    (out, mac)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// An UPDATE of `zone` adding (or deleting, `add = false`) `name` A `addr`.
fn update(id: u16, zone: &str, name: &str, addr: &str, add: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Update);
    let mut q = Query::query(Name::from_ascii(zone).unwrap(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    let mut r =
        Record::from_rdata(Name::from_ascii(name).unwrap(), if add { 30 } else { 0 }, RData::A(addr.parse().unwrap()));
    r.dns_class = if add { DNSClass::IN } else { DNSClass::NONE };
    m.authorities.push(r);
    m.to_vec().unwrap()
}

fn query(id: u16, name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

/// Sends `req` over UDP and returns the answer bytes.
fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.send_to(req, addr).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).expect("an answer");
    buf.truncate(n);
    buf
}

/// Runs nsupdate with `commands`; returns (success, stdout+stderr).
fn nsupdate(addr: SocketAddr, key: &str, commands: &str) -> (bool, String) {
    let mut child = Command::new("nsupdate")
        .args(["-t", "3", "-y", key])
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

async fn start() -> (tempfile::TempDir, Server) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sig.zone"), ZONE).unwrap();
    let f = dir.path().join("k512.secret");
    std::fs::write(&f, format!("{S512}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = Server::start(dir.path(), &config()).await;
    (dir, s)
}

/// hmac-sha1 and hmac-sha512 (its secret read from a private file) sign queries, transfers and updates: kdig and
/// nsupdate verify our signed answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_signs_and_verifies() {
    let (_dir, s) = start().await;
    let a = s.addr();
    for (key, zone) in [(format!("hmac-sha1:k1:{S1}"), "sha1.test"), (format!("hmac-sha512:k512:{S512}"), "sig.test")] {
        let d = kdig(a, &["-y", &key, zone, "SOA"]);
        assert_eq!(d.status, "NOERROR", "{key}: {}", d.raw);
        assert!(d.raw.contains("TSIG PSEUDOSECTION") && !d.raw.to_lowercase().contains("warning"), "{}", d.raw);
    }
    let d = kdig(a, &["+tcp", "-y", &format!("hmac-sha512:k512:{S512}"), "sig.test", "AXFR"]);
    assert!(d.raw.contains("ns.sig.test.") && !d.raw.to_lowercase().contains("warning"), "{}", d.raw);
    assert!(!d.raw.contains("REFUSED") && !d.raw.contains("NOTAUTH"), "{}", d.raw);
    let (ok, out) =
        nsupdate(a, &format!("hmac-sha1:k1:{S1}"), "zone sha1.test\nupdate add x.sha1.test. 30 A 192.0.2.11");
    assert!(ok, "sha1 update: {out}");
    assert_eq!(kdig(a, &["x.sha1.test", "A"]).data("A"), ["192.0.2.11"]);
    let (ok, out) =
        nsupdate(a, &format!("hmac-sha256:k256:{S256}"), "zone sig.test\nupdate add y.sig.test. 30 A 192.0.2.12");
    assert!(ok, "sha256 update: {out}");
    assert_eq!(kdig(a, &["y.sig.test", "A"]).data("A"), ["192.0.2.12"]);
    s.stop().await;
}

/// A captured signed UPDATE sent again is refused, and what it did is not done again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_update_is_refused() {
    let (_dir, s) = start().await;
    let a = s.addr();
    let key = b64(S256);
    let t = now();
    let (add, _) =
        sign(&update(1, "sig.test.", "r.sig.test.", "192.0.2.50", true), "k256", "hmac-sha256", &key, t, 300);
    let resp = Message::from_vec(&exchange(a, &add)).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(kdig(a, &["r.sig.test", "A"]).data("A"), ["192.0.2.50"]);
    let (del, _) =
        sign(&update(2, "sig.test.", "r.sig.test.", "192.0.2.50", false), "k256", "hmac-sha256", &key, t, 300);
    assert_eq!(Message::from_vec(&exchange(a, &del)).unwrap().metadata.response_code, ResponseCode::NoError);
    assert_eq!(kdig(a, &["r.sig.test", "A"]).status, "NXDOMAIN");
    // The attacker replays the captured add.
    let resp = Message::from_vec(&exchange(a, &add)).unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused, "{resp:?}");
    assert_eq!(kdig(a, &["r.sig.test", "A"]).status, "NXDOMAIN", "the replay changed nothing");
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    assert!(text.contains("padis_dns_tsig_total{result=\"replayed\"} 1"), "{text}");
    s.stop().await;
}

/// A request signed outside the window gets BADTIME, signed with the key over the request MAC (RFC 8945 5.2.3):
/// the request's time echoed, our clock in Other Data. A fudge of 65535 s does not widen the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badtime_is_signed_and_fudge_capped() {
    let (_dir, s) = start().await;
    let a = s.addr();
    let key = b64(S256);
    for (skew, fudge) in [(1000u64, 300u16), (3600, 65535)] {
        let t = now() - skew;
        let (req, req_mac) =
            sign(&update(7, "sig.test.", "late.sig.test.", "192.0.2.60", true), "k256", "hmac-sha256", &key, t, fudge);
        let bytes = exchange(a, &req);
        let resp = Message::from_vec(&bytes).unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NotAuth, "skew {skew} fudge {fudge}");
        let (_, tsig) = tsig_of(&resp);
        let tsig = &tsig;
        assert_eq!(tsig.error.map(u16::from), Some(18), "BADTIME");
        assert_eq!(tsig.time, t, "Time Signed echoes the request's");
        assert_eq!(tsig.other.len(), 6);
        let ours = u64::from_be_bytes([
            0,
            0,
            tsig.other[0],
            tsig.other[1],
            tsig.other[2],
            tsig.other[3],
            tsig.other[4],
            tsig.other[5],
        ]);
        assert!(ours.abs_diff(now()) <= 2, "our clock in Other Data");
        assert_eq!(tsig.mac.len(), 32, "signed, not an empty MAC");
        // Verify: request MAC, the answer without its TSIG (ARCOUNT - 1), the variables.
        let tsig_start = bytes.len() - tsig_len(&bytes);
        let mut unsigned = bytes[..tsig_start].to_vec();
        let ar = u16::from_be_bytes([unsigned[10], unsigned[11]]) - 1;
        unsigned[10..12].copy_from_slice(&ar.to_be_bytes());
        let mut data = (req_mac.len() as u16).to_be_bytes().to_vec();
        data.extend(&req_mac);
        data.extend(&unsigned);
        data.extend(variables("k256", "hmac-sha256", tsig.time, tsig.fudge, 18, &tsig.other));
        assert_eq!(hmac("hmac-sha256", &key, &data), tsig.mac, "BADTIME answer signed with the key");
    }
    assert_eq!(kdig(a, &["late.sig.test", "A"]).status, "NXDOMAIN");
    // Inside the capped window: accepted.
    let (req, _) = sign(
        &update(8, "sig.test.", "ok.sig.test.", "192.0.2.61", true),
        "k256",
        "hmac-sha256",
        &key,
        now() - 200,
        65535,
    );
    assert_eq!(Message::from_vec(&exchange(a, &req)).unwrap().metadata.response_code, ResponseCode::NoError);
    s.stop().await;
}

/// The TSIG record of a message (hickory keeps it apart, or, for some opcodes, as the last additional record).
fn tsig_of(m: &Message) -> (Name, TSIG) {
    if let Some(s) = m.signature() {
        return (s.name.clone(), s.data.clone());
    }
    match m.additionals.last() {
        Some(Record { name, data: RData::TSIG(t), .. }) => (name.clone(), t.clone()),
        _ => panic!("no TSIG record in {m:?}"),
    }
}

/// Length of the last record (the TSIG) of a message, as encoded uncompressed.
fn tsig_len(bytes: &[u8]) -> usize {
    let m = Message::from_vec(bytes).unwrap();
    let (name, tsig) = tsig_of(&m);
    let mut sig = Record::from_rdata(name, 0, RData::TSIG(tsig));
    sig.dns_class = DNSClass::ANY;
    let mut buf = Vec::new();
    {
        let mut enc = hickory_proto::serialize::binary::BinEncoder::new(&mut buf);
        let mut enc = enc.with_name_encoding(hickory_proto::serialize::binary::NameEncoding::Uncompressed);
        hickory_proto::serialize::binary::BinEncodable::emit(&sig, &mut enc).unwrap();
    }
    buf.len()
}

/// A key signing with another algorithm than its own gets BADKEY naming the request's algorithm, unsigned; an
/// unknown key too. A transfer without the zone's key is REFUSED, as BIND does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badkey_echoes_algorithm_and_unsigned_transfer_refused() {
    let (_dir, s) = start().await;
    let a = s.addr();
    for (key, alg) in [("k256", "hmac-sha1"), ("k256", "hmac-sha512"), ("nokey", "hmac-sha256")] {
        let (req, _) = sign(&query(9, "sig.test.", RecordType::SOA), key, alg, &b64(S256), now(), 300);
        let resp = Message::from_vec(&exchange(a, &req)).unwrap();
        assert_eq!(resp.metadata.response_code, ResponseCode::NotAuth, "{key} {alg}");
        let (name, tsig) = tsig_of(&resp);
        assert_eq!(tsig.error.map(u16::from), Some(17), "BADKEY");
        assert_eq!(tsig.algorithm.to_string().trim_end_matches('.'), alg, "the request's algorithm");
        assert_eq!(name.to_ascii().trim_end_matches('.'), key);
        assert!(tsig.mac.is_empty());
    }
    // Wrong secret: BADSIG.
    let (req, _) = sign(&query(10, "sig.test.", RecordType::SOA), "k256", "hmac-sha256", b"wrong", now(), 300);
    let resp = Message::from_vec(&exchange(a, &req)).unwrap();
    assert_eq!(tsig_of(&resp).1.error.map(u16::from), Some(16), "BADSIG");

    let d = kdig(a, &["+tcp", "sig.test", "AXFR"]);
    assert!(d.raw.contains("REFUSED"), "unsigned AXFR: {}", d.raw);
    let d = kdig(a, &["+tcp", "-y", &format!("hmac-sha256:k256:{S256}"), "sig.test", "AXFR"]);
    assert!(d.raw.contains("REFUSED"), "AXFR signed with another key: {}", d.raw);
    s.stop().await;
}
