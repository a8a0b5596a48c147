//! Entry functions of the Padis fuzz targets: one per parser of untrusted bytes, each feeding its input through
//! the same code the daemon runs on bytes from the network or from an operator, and checking what must hold for
//! any input (beyond not panicking). `tests/fuzz/fuzz_targets/<name>.rs` calls `padis_fuzz_entry::<name>`; the
//! stable test `tests/tests/control/fuzz_corpus.rs` runs every kept corpus file (`tests/fuzz/corpus/<name>/`) through the
//! same function.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use futures_util::FutureExt;
use padis_bgp::bfd::packet::ControlPacket;
use padis_bgp::wire;
use padis_marathon::sse::SseParser;
use padis_marathon::{events, map_apps, Apps};
use padis_model::marathon::MarathonConfig;
use padis_model::{parse_config, validate_state, DesiredState, Snapshot};
use padis_tests::differential::{heads_of, Lane};
use rustbgpd_wire::Message as BgpMessage;

/// A target's entry function.
pub type Entry = fn(&[u8]);

/// Every target, by name (the names of `fuzz_targets/*.rs` and `corpus/*`), with its entry function.
pub const TARGETS: &[(&str, Entry)] = &[
    ("dns_message", dns_message),
    ("bgp_message", bgp_message),
    ("bfd_packet", bfd_packet),
    ("marathon_sse", marathon_sse),
    ("marathon_apps", marathon_apps),
    ("config", config),
    ("http_request_head", http_request_head),
    ("http_chunked", http_chunked),
    ("http_response", http_response),
    ("proxy_header", proxy_header),
    ("l7_differential", l7_differential),
];

// ---------------------------------------------------------------------------------------------------------------
// DNS

/// The zone served to `dns_message` (file zone with the usual record kinds, a delegation, a wildcard, CNAME
/// chains, a name whose answer needs truncation over UDP).
const ZONE: &str = "$ORIGIN example.test.
$TTL 300
@ IN SOA ns1.example.test. hostmaster.example.test. 2024010101 3600 600 86400 60
@ IN NS ns1.example.test.
@ IN MX 10 mail.example.test.
@ IN TXT \"v=spf1 -all\"
ns1 IN A 192.0.2.53
ns1 IN AAAA 2001:db8::53
www IN A 192.0.2.10
www IN A 192.0.2.11
www IN AAAA 2001:db8::10
mail IN A 192.0.2.25
alias IN CNAME www.example.test.
chain IN CNAME alias.example.test.
out IN CNAME www.elsewhere.test.
_http._tcp IN SRV 10 5 80 www.example.test.
*.wild IN A 192.0.2.99
sub IN NS ns.sub.example.test.
ns.sub IN A 192.0.2.54
";

/// TSIG key of the zone (updates, transfers); requests are signed with it when the flags ask for it.
const DNS_KEY: &str = "ZnV6ei1mdXp6LWZ1enotZnV6ei1mdXp6LWZ1enotMTI=";

fn dns_config(dir: &Path) -> String {
    format!(
        r#"
[dns]
state_dir = "{dir}/state"
edns_payload = 1232

[[dns.tsig_key]]
name = "fuzz-key"
secret = "{DNS_KEY}"

[[dns.zone]]
name = "example.test"
file = "example.test.zone"
update_key = "fuzz-key"
transfer_key = "fuzz-key"
allow_transfer = ["127.0.0.0/8", "::1/128"]
allow_update = ["127.0.0.0/8", "::1/128"]

[[dns.zone]]
name = "svc.test"
generated = true
ns = [{{ name = "ns1.svc.test", addrs = ["192.0.2.1"] }}]
"#,
        dir = dir.display()
    )
}

struct DnsState {
    dir: PathBuf,
    server: Option<padis_dns::fuzzing::Server>,
}

static DNS: Mutex<Option<DnsState>> = Mutex::new(None);

fn dns_server(state: &mut DnsState) -> &mut padis_dns::fuzzing::Server {
    state.server.get_or_insert_with(|| {
        // A fresh state directory: no journal of earlier inputs' updates.
        let _ = std::fs::remove_dir_all(state.dir.join("state"));
        std::fs::create_dir_all(&state.dir).expect("fuzz state directory");
        std::fs::write(state.dir.join("example.test.zone"), ZONE).expect("zone file");
        // Zone files resolve next to the config file (the snapshot's origin).
        let origin = state.dir.join("fuzz.toml").display().to_string();
        let valid = parse_config(&dns_config(&state.dir), &origin, &state.dir).expect("dns fuzz config");
        let server = padis_dns::fuzzing::Server::new(Snapshot::new(valid, 1, Vec::new())).expect("dns fuzz server");
        // Every zone must be served: a harness answering REFUSED to everything would fuzz nothing.
        let report = server.report();
        let served: Vec<_> = report.zones.iter().filter(|z| z.error.is_none()).map(|z| z.name.as_str()).collect();
        assert!(served.len() == 2 && report.errors.is_empty(), "zones not loaded: {report:?}");
        server
    })
}

/// One DNS request through the real handler (fast path, general path, TSIG, updates through the zone manager,
/// transfers). Input: a flags byte, then the message. Flags: bit 0 TCP (else UDP), bit 1 sign the message with
/// the zone's TSIG key first, bit 2 from `::1` (else 127.0.0.1), bit 3 from 192.0.2.77 (outside every ACL).
///
/// Checks: every reply is a DNS message (hickory parses it) with the request's ID and QR set; a UDP reply fits
/// 512 bytes when the request has no additional record (no EDNS), else the server's EDNS payload size.
pub fn dns_message(data: &[u8]) {
    dns_exchange(data);
}

/// [`dns_message`], returning the replies.
fn dns_exchange(data: &[u8]) -> Vec<Vec<u8>> {
    let Some((&flags, req)) = data.split_first() else { return Vec::new() };
    let tcp = flags & 1 != 0;
    let sign = flags & 2 != 0;
    let src: SocketAddr = if flags & 8 != 0 {
        "192.0.2.77:5300".parse().unwrap_or_else(|_| unreachable!())
    } else if flags & 4 != 0 {
        "[::1]:5300".parse().unwrap_or_else(|_| unreachable!())
    } else {
        "127.0.0.1:5300".parse().unwrap_or_else(|_| unreachable!())
    };
    let mut guard = DNS.lock().unwrap_or_else(|e| e.into_inner());
    let state = guard.get_or_insert_with(|| DnsState {
        dir: std::env::temp_dir().join(format!("padis-fuzz-dns-{}", std::process::id())),
        server: None,
    });
    let server = dns_server(state);
    let replies = server.exchange(req, src, tcp, sign);
    let updated = server.updates() > 0;
    let signed = sign && req.len() >= 12;
    for r in &replies {
        assert!(r.len() >= 12, "reply shorter than a header: {r:?}");
        assert_eq!(r[..2], req[..2], "reply ID differs from the request's");
        assert!(r[2] & 0x80 != 0, "reply without QR");
        if let Err(e) = hickory_proto::op::Message::from_vec(r) {
            panic!("reply is not a DNS message ({e}): {r:?}");
        }
        if !tcp {
            let arcount = u16::from_be_bytes([req[10], req[11]]);
            let limit = if arcount == 0 && !signed { 512 } else { 1232 + 100 };
            assert!(r.len() <= limit, "UDP reply of {} bytes over {limit}", r.len());
        }
    }
    if updated {
        // The zones changed: the next input starts from the zone file again.
        state.server = None;
    }
    replies
}

/// Stops the DNS server of [`dns_message`] and removes its files.
pub fn dns_cleanup() {
    let mut guard = DNS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(state) = guard.take() {
        drop(state.server);
        let _ = std::fs::remove_dir_all(&state.dir);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// BGP and BFD

/// A BGP byte stream from a peer, read message by message as a session does (`wire::read_message`): an OPEN is
/// checked against the session's expectations (`wire::check_open`, eBGP or iBGP by the OPEN's position), a
/// refusal or a decode error becomes the NOTIFICATION the session would send, which must encode.
pub fn bgp_message(data: &[u8]) {
    bgp_read(data);
}

/// [`bgp_message`], returning the messages read and the OPENs accepted.
fn bgp_read(data: &[u8]) -> (usize, usize) {
    let mut rd = data;
    let (mut read, mut accepted) = (0, 0);
    let our_id = Ipv4Addr::new(192, 0, 2, 1);
    let mut opens = 0u32;
    loop {
        // Reading from memory never waits.
        let Some(res) = wire::read_message(&mut rd).now_or_never() else { unreachable!("a slice read pended") };
        read += usize::from(res.is_ok());
        match res {
            Ok(BgpMessage::Open(o)) => {
                opens += 1;
                match wire::check_open(&o, 65002, our_id, 90, opens.is_multiple_of(2)) {
                    Ok(p) => {
                        assert!(p.hold_secs <= 90 && p.hold_secs != 1 && p.hold_secs != 2);
                        accepted += 1;
                    }
                    Err(r) => {
                        wire::encode(&r.notification()).expect("OPEN refusal NOTIFICATION encodes");
                    }
                }
            }
            Ok(BgpMessage::Notification(n)) => {
                let _ = rustbgpd_wire::notification::description(n.code, n.subcode);
            }
            Ok(m) => {
                let _ = wire::encode(&m);
            }
            Err(padis_bgp::SessionError::Decode(e)) => {
                let (code, sub, data) = e.to_notification();
                wire::encode(&wire::notification(code.as_u8(), sub, data)).expect("decode-error NOTIFICATION encodes");
                return (read, accepted);
            }
            Err(_) => return (read, accepted), // end of the stream
        }
    }
}

/// BFD datagrams (each: a length byte, then that many bytes) through `ControlPacket::decode`; a packet that
/// decodes encodes back to the same packet.
pub fn bfd_packet(data: &[u8]) {
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (dgram, next) = tail.split_at(n);
        rest = next;
        if let Ok(p) = ControlPacket::decode(dgram) {
            assert_eq!(ControlPacket::decode(&p.encode()), Ok(p), "decode(encode(p)) != p");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Marathon

/// The `[marathon]` section and the rest of the config the Marathon fuzz targets map and validate against.
const MARATHON_CONFIG: &str = r#"
[[listener]]
name = "web"
bind = "127.0.0.1:8080"

[[group]]
name = "static"
[[group.backend]]
addr = "127.0.0.1:9000"

[[route]]
name = "static"
host = "static.example.test"
group = "static"

[marathon]
urls = ["http://127.0.0.1:8080"]
group = ["*"]
zone = "marathon.test"
"#;

/// Apps the event stream of [`marathon_sse`] applies to (a labelled app with tasks).
const MARATHON_APPS: &str = include_str!("../../fuzz/corpus/marathon_apps/labelled.json");

struct MarathonBase {
    cfg: MarathonConfig,
    state: DesiredState,
    base: PathBuf,
    apps: Apps,
}

fn marathon_base() -> &'static MarathonBase {
    static BASE: OnceLock<MarathonBase> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = PathBuf::from("/nonexistent-padis-fuzz");
        let valid = parse_config(MARATHON_CONFIG, "fuzz.toml", &base).expect("marathon fuzz config");
        let cfg = valid.state.marathon.clone().expect("[marathon] section");
        let apps = Apps::from_json(MARATHON_APPS.as_bytes()).expect("marathon sample apps");
        MarathonBase { cfg, state: valid.state, base, apps }
    })
}

/// Maps apps to Marathon's contribution and validates it merged into the config's state, as control does.
fn map_and_validate(apps: &Apps) -> padis_marathon::MarathonState {
    let b = marathon_base();
    let m = map_apps(apps, &b.cfg);
    let mut state = b.state.clone();
    state.groups.extend(m.groups.iter().cloned());
    state.routes.extend(m.routes.iter().cloned());
    state.services.extend(m.services.iter().cloned());
    state.vips.extend(m.vips.iter().cloned());
    state.listeners.extend(m.listeners.iter().cloned());
    if let Err(e) = validate_state(state, "fuzz.toml", &b.base, None) {
        let _ = e.to_string();
    }
    m
}

/// A `/v2/apps?embed=apps.tasks` body: parsed (fresh and through a parse cache, which must agree), mapped to
/// groups, routes, services and VIPs, and validated merged into the config's state.
pub fn marathon_apps(data: &[u8]) {
    marathon_apps_mapped(data);
}

/// [`marathon_apps`], returning the mapped state.
fn marathon_apps_mapped(data: &[u8]) -> Option<padis_marathon::MarathonState> {
    let Ok(apps) = Apps::from_json(data) else { return None };
    let mut cache = padis_marathon::ParseCache::default();
    let first = Apps::from_json_reusing(data, &mut cache).expect("parsed once, parses again");
    let again = Apps::from_json_reusing(data, &mut cache).expect("parsed once, parses again");
    assert_eq!(apps, first, "a parse through an empty cache differs from a fresh parse");
    assert_eq!(apps, again, "a parse through the cache differs from a fresh parse");
    Some(map_and_validate(&apps))
}

/// The `/v2/events` stream: the first two bytes choose how the rest is cut into reads. The SSE parser must give
/// the same events for any cut (compared with one read of all the bytes); each event is decoded, applied to the
/// sample apps, and the result mapped and validated, as the source does.
pub fn marathon_sse(data: &[u8]) {
    marathon_events(data);
}

/// [`marathon_sse`], returning the events and the mapped state when they changed the apps.
fn marathon_events(data: &[u8]) -> (Vec<padis_marathon::sse::SseEvent>, Option<padis_marathon::MarathonState>) {
    const MAX: usize = 512;
    let (seed, stream) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return (Vec::new(), None),
    };
    let mut whole = SseParser::new(MAX);
    let all = whole.feed(stream);
    let mut split = SseParser::new(MAX);
    let mut cut = Vec::new();
    let mut rest = stream;
    let mut s = u32::from(seed) | 1;
    while !rest.is_empty() {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let n = (s as usize % 8 + 1).min(rest.len());
        cut.extend(split.feed(&rest[..n]));
        rest = &rest[n..];
    }
    assert_eq!(all, cut, "events depend on how the stream was cut into reads");
    assert_eq!((whole.oversized, whole.invalid), (split.oversized, split.invalid));
    let mut apps = marathon_base().apps.clone();
    let mut changed = false;
    for ev in &all {
        if let Ok(e) = events::decode(&ev.event, &ev.data) {
            changed |= events::apply(&mut apps, &e);
        }
    }
    (all, changed.then(|| map_and_validate(&apps)))
}

// ---------------------------------------------------------------------------------------------------------------
// Config

/// A config file through `parse_config` (TOML, every section's validation); errors must render with their
/// position. Paths in the config resolve under a directory that does not exist.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_config(text, "fuzz.toml", Path::new("/nonexistent-padis-fuzz")) {
        Ok(v) => drop(Snapshot::new(v, 1, Vec::new())),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// L7 fast path

/// A request head through the fast path's parser, the request policy's admission and the backend head it
/// writes; see `padis_lb::fuzzing::request_head` for the checks (the backend frames the body as the fast path
/// does: no framing header dropped as hop-by-hop).
pub fn http_request_head(data: &[u8]) {
    padis_lb::fuzzing::request_head(data);
}

/// A chunked body through the fast path's decoder, whole and in pieces (first byte: the cuts).
pub fn http_chunked(data: &[u8]) {
    padis_lb::fuzzing::chunked_body(data);
}

/// A backend response through the fast path's response framing (first byte: HEAD request, sticky cookie,
/// closing client), then its body.
pub fn http_response(data: &[u8]) {
    padis_lb::fuzzing::response_head(data);
}

// ---------------------------------------------------------------------------------------------------------------
// L7: the two paths against each other

/// The longest stream `l7_differential` sends (longer inputs are cut: the proxy's limits are not the subject).
const DIFF_MAX: usize = 4096;

/// One lane of the differential check (an in-process proxy with a listener on each path and a recording
/// backend), with the runtime it runs on: started once per process.
fn diff_lane() -> &'static (tokio::runtime::Runtime, Lane) {
    static LANE: OnceLock<(tokio::runtime::Runtime, Lane)> = OnceLock::new();
    LANE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let lane = rt.block_on(Lane::start());
        (rt, lane)
    })
}

/// The chunks an `l7_differential` input is sent in: the first byte's low two bits say how many cuts follow
/// (one byte each: the cut at `byte * len / 256` of the stream), the rest is the byte stream a client sends.
/// `None` when the input is too short to hold them.
pub fn diff_chunks(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (&first, rest) = data.split_first()?;
    let n = usize::from(first & 3);
    if rest.len() <= n {
        return None;
    }
    let (cuts, stream) = rest.split_at(n);
    let stream = &stream[..stream.len().min(DIFF_MAX)];
    let mut at: Vec<usize> = cuts.iter().map(|&c| usize::from(c) * stream.len() / 256).filter(|&c| c > 0).collect();
    at.sort_unstable();
    at.dedup();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for c in at {
        chunks.push(stream[from..c].to_vec());
        from = c;
    }
    chunks.push(stream[from..].to_vec());
    Some(chunks)
}

/// Any byte stream from a client, cut as the input says ([`diff_chunks`]), to the fast path and to the hyper
/// path of one proxy at once: both must send the backend the same requests and the client the same answers
/// (`padis_tests::differential`, whose module doc lists the documented differences), and no byte may reach the
/// backend that is not a request the proxy wrote. The open-ended form of `tests/tests/l7/l7_differential.rs`.
pub fn l7_differential(data: &[u8]) {
    let Some(chunks) = diff_chunks(data) else { return };
    let heads = heads_of(&chunks.concat());
    let (rt, lane) = diff_lane();
    if let Some(diff) = rt.block_on(lane.run(&chunks, &heads)) {
        panic!("the two L7 paths differ on {:?}:\n{diff}", String::from_utf8_lossy(&chunks.concat()));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// L7: the PROXY protocol a listener accepts

/// A connection's first bytes on a `proxy_protocol` listener through the header parser; see
/// `padis_lb::fuzzing::proxy_header` for the checks (the outcome does not depend on how the bytes arrived, the
/// announced addresses read back the same when written again).
pub fn proxy_header(data: &[u8]) {
    padis_lb::fuzzing::proxy_header(data);
}

#[cfg(test)]
mod tests {
    //! The harnesses reach what they are meant to: the seeds get real answers, not only early rejections.

    use super::*;

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target).join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn rcode_and_answers(reply: &[u8]) -> (u8, u16) {
        (reply[3] & 0x0f, u16::from_be_bytes([reply[6], reply[7]]))
    }

    #[test]
    fn differential_inputs_are_cut_where_they_say() {
        assert_eq!(diff_chunks(b""), None);
        assert_eq!(diff_chunks(&[2, 9]), None, "two cuts announced, none given");
        assert_eq!(diff_chunks(b"\x00GET"), Some(vec![b"GET".to_vec()]));
        // Cuts at 64/256 and 128/256 of an 8-byte stream, given out of order; a cut at 0 is no cut.
        let c = diff_chunks(&[0x13, 128, 64, 0, b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h']).unwrap();
        assert_eq!(c, vec![b"ab".to_vec(), b"cd".to_vec(), b"efgh".to_vec()]);
        let seed = seed("l7_differential", "chunked_trailers_cut");
        let c = diff_chunks(&seed).unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(c.concat(), seed[4..].to_vec());
    }

    #[test]
    fn dns_seeds_are_answered_from_the_zone() {
        let one = |name: &str| {
            let r = dns_exchange(&seed("dns_message", name));
            assert_eq!(r.len(), 1, "{name}: {r:?}");
            rcode_and_answers(&r[0])
        };
        assert_eq!(one("a_www"), (0, 2));
        assert_eq!(one("aaaa_cname_chain_edns"), (0, 3));
        assert_eq!(one("nxdomain").0, 3);
        assert_eq!(one("refused_other_zone_cookie").0, 5);
        // Signed by the harness: the update passes TSIG and is applied by the zone manager.
        assert_eq!(one("update_add_signed"), (0, 0));
        // Unsigned: refused before the manager.
        assert_eq!(one("update_unsigned").0, 5);
        let axfr = dns_exchange(&seed("dns_message", "axfr_tcp_signed"));
        let records: u16 = axfr.iter().map(|m| rcode_and_answers(m).1).sum();
        assert!(records >= 18, "AXFR of the whole zone: {records} records in {} messages", axfr.len());
        dns_cleanup();
    }

    #[test]
    fn http_seeds_reach_the_backend_head_and_the_body_framing() {
        let out = padis_lb::fuzzing::request_head(&seed("http_request_head", "curl_post_form_xff")).expect("fast path");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /api/v1/items HTTP/1.1\r\n") && text.contains("10.0.0.1, 192.0.2.7"), "{text}");
        // The smuggling case: the body is framed by its Content-Length, which reaches the backend.
        let out = padis_lb::fuzzing::request_head(&seed("http_request_head", "smuggle_connection_names_length"));
        assert!(String::from_utf8(out.expect("fast path")).unwrap().contains("Content-Length: 37\r\n"));
        assert_eq!(padis_lb::fuzzing::chunked_body(&seed("http_chunked", "curl_body")), Some((71, true)));
        assert_eq!(padis_lb::fuzzing::chunked_body(&seed("http_chunked", "size_overflow")), None);
        let out = padis_lb::fuzzing::response_head(&seed("http_response", "nginx_chunked_keepalive")).expect("a head");
        assert!(String::from_utf8(out).unwrap().contains("set-cookie: padis=b1"));
    }

    #[test]
    fn proxy_header_seeds_are_read_to_the_end_of_their_header() {
        let len = |name: &str| padis_lb::fuzzing::proxy_header(&seed("proxy_header", name));
        assert_eq!(len("v1_tcp4_then_http"), Some(45));
        assert_eq!(len("v2_tcp4_tlv_then_tls"), Some(35));
        assert_eq!(len("v2_local"), Some(16));
        assert_eq!(len("no_header_http"), None);
    }

    #[test]
    fn bgp_session_seed_is_read_whole() {
        assert_eq!(bgp_read(&seed("bgp_message", "bird_session")), (6, 1));
    }

    #[test]
    fn marathon_seeds_map_to_routes_and_change_the_apps() {
        let m = marathon_apps_mapped(&seed("marathon_apps", "labelled.json")).expect("parses");
        assert!(!m.groups.is_empty() && !m.routes.is_empty() && !m.listeners.is_empty(), "{m:?}");
        // The seed's VIP is on tasks with random host ports: refused for that app, said so (DSR keeps the port).
        assert!(m.vips.is_empty(), "{:?}", m.vips);
        assert!(m.problems.iter().any(|p| p.effect == padis_marathon::Effect::VipSkipped), "{:?}", m.problems);
        let (events, mapped) = marathon_events(&seed("marathon_sse", "task_changes.txt"));
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(mapped.is_some(), "the task events change the sample apps");
    }
}
