//! The BGP speaker against a scripted peer on 127.0.0.1: malformed OPENs get the right NOTIFICATION and the
//! speaker keeps going; our own hold timer fires when the peer goes silent.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use padis_bgp::wire::{self, read_message};
use padis_bgp::{Announcement, Announcer, SessionState};
use padis_model::bgp::BgpConfig;
use rustbgpd_wire::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;

const OUR_ASN: u32 = 4_200_000_001;
const PEER_ASN: u32 = 65020;
const LIMIT: Duration = Duration::from_secs(15);

fn bgp(port: u16, hold: u32) -> BgpConfig {
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.0.0.1\"\nhold_time = \"{hold}s\"\nconnect_retry = \"200ms\"\n\
         [[bgp.peer]]\naddress = \"127.0.0.1\"\nport = {port}\nasn = {PEER_ASN}\nmultihop = 2\n"
    );
    let v = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    v.state.bgp.expect("bgp section")
}

fn vip() -> BTreeSet<Announcement> {
    [Announcement { prefix: "198.51.100.9/32".parse().expect("prefix"), name: "web".into() }].into()
}

fn peer_open(hold: u16) -> Vec<u8> {
    wire::encode(&wire::open(PEER_ASN, hold, "10.0.0.2".parse().expect("id"), None)).expect("encode").to_vec()
}

/// Accepts the speaker's next connection and reads its OPEN.
async fn accept_open(l: &TcpListener) -> TcpStream {
    let (mut s, _) = timeout(LIMIT, l.accept()).await.expect("speaker connects").expect("accept");
    let m = timeout(LIMIT, read_message(&mut s)).await.expect("OPEN in time").expect("OPEN");
    let Message::Open(o) = m else { panic!("expected OPEN, got {m:?}") };
    assert_eq!(o.my_as, 23456, "AS_TRANS in the 2-octet field");
    assert_eq!(o.four_byte_as(), OUR_ASN);
    s
}

/// Sends `bytes` as our OPEN and returns the NOTIFICATION (code, subcode) the speaker answers with.
async fn notification_for(l: &TcpListener, bytes: &[u8]) -> (u8, u8) {
    let mut s = accept_open(l).await;
    s.write_all(bytes).await.expect("write");
    loop {
        match timeout(LIMIT, read_message(&mut s)).await.expect("answer in time") {
            Ok(Message::Notification(n)) => return (n.code.as_u8(), n.subcode),
            Ok(Message::Keepalive) => continue,
            other => panic!("expected NOTIFICATION, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_open_gets_notification_and_the_speaker_survives() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (_tx, rx) = watch::channel(vip());
    let h = Announcer::spawn(Some(bgp(port, 9)), None, rx, &prometheus::Registry::new()).expect("spawn");

    let mut v3 = peer_open(9);
    v3[19] = 3;
    assert_eq!(notification_for(&l, &v3).await, (2, 1), "unsupported version");
    let mut marker = peer_open(9);
    marker[3] = 0;
    assert_eq!(notification_for(&l, &marker).await, (1, 1), "connection not synchronized");
    assert_eq!(notification_for(&l, &peer_open(2)).await, (2, 6), "unacceptable hold time");
    let wrong_as = wire::encode(&wire::open(65099, 9, "10.0.0.2".parse().expect("id"), None)).expect("encode");
    assert_eq!(notification_for(&l, &wrong_as).await, (2, 2), "bad peer AS");
    let mut short = peer_open(9);
    short[16..18].copy_from_slice(&20u16.to_be_bytes());
    short.truncate(20);
    assert_eq!(notification_for(&l, &short).await.0, 2, "truncated OPEN");
    let keepalive_first = wire::encode(&Message::Keepalive).expect("ka");
    assert_eq!(notification_for(&l, &keepalive_first).await, (5, 1), "FSM error: KEEPALIVE in OpenSent");

    // Still alive: a correct peer gets a session and the route.
    let mut s = accept_open(&l).await;
    s.write_all(&peer_open(9)).await.expect("write");
    s.write_all(&wire::encode(&Message::Keepalive).expect("ka")).await.expect("write");
    let mut got_update = false;
    let t = Instant::now();
    while !got_update && t.elapsed() < LIMIT {
        match timeout(LIMIT, read_message(&mut s)).await.expect("message in time").expect("message") {
            Message::Update(u) => {
                got_update = true;
                // NLRI 198.51.100.9/32.
                assert_eq!(u.nlri, Bytes::from_static(&[32, 198, 51, 100, 9]));
            }
            Message::Keepalive => {}
            m => panic!("unexpected {m:?}"),
        }
    }
    assert!(got_update);
    assert_eq!(h.report().peers[0].state, SessionState::Established);
    assert!(h.report().peers[0].last_error.is_some(), "earlier failures are reported");
    h.stop().await;
}

#[tokio::test]
async fn our_hold_timer_expires_when_the_peer_goes_silent() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (_tx, rx) = watch::channel(vip());
    let h = Announcer::spawn(Some(bgp(port, 3)), None, rx, &prometheus::Registry::new()).expect("spawn");
    let mut s = accept_open(&l).await;
    s.write_all(&peer_open(3)).await.expect("write");
    s.write_all(&wire::encode(&Message::Keepalive).expect("ka")).await.expect("write");
    let start = Instant::now();
    let mut keepalives = 0;
    // We stay silent: the speaker keeps sending KEEPALIVEs every second, then gives up after 3 s.
    let (code, sub) = loop {
        match timeout(LIMIT, read_message(&mut s)).await.expect("message in time").expect("message") {
            Message::Notification(n) => break (n.code.as_u8(), n.subcode),
            Message::Keepalive => keepalives += 1,
            Message::Update(_) => {}
            m => panic!("unexpected {m:?}"),
        }
    };
    let after = start.elapsed();
    assert_eq!((code, sub), (4, 0), "Hold Timer Expired");
    assert!(after >= Duration::from_millis(2500) && after < Duration::from_secs(6), "after {after:?}");
    assert!(keepalives >= 2, "keepalives every hold/3: {keepalives}");
    let rep = h.report();
    assert_ne!(rep.peers[0].state, SessionState::Established);
    assert!(rep.peers[0].flaps >= 1);
    assert!(rep.peers[0].last_error.as_deref().unwrap_or("").contains("hold timer"), "{rep:?}");
    h.stop().await;
}

#[tokio::test]
async fn passive_peer_connects_to_us_and_strangers_are_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let text = format!(
        "[bgp]\nasn = {OUR_ASN}\nrouter_id = \"10.0.0.1\"\nlocal_address = \"127.0.0.1\"\nlisten_port = {port}\n\
         [[bgp.peer]]\naddress = \"127.0.0.1\"\nasn = {PEER_ASN}\npassive = true\n"
    );
    let cfg = padis_model::parse_config(&text, "test.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let (_tx, rx) = watch::channel(vip());
    let h = Announcer::spawn(cfg.state.bgp, None, rx, &prometheus::Registry::new()).expect("spawn");
    padis_tests::bgp::wait_for(LIMIT, "passive session waits", || async {
        (h.report().peers[0].state == SessionState::Active).then_some(())
    })
    .await;

    // A connection from an address that is not a configured peer is closed at once.
    let stranger = tokio::net::TcpSocket::new_v4().expect("socket");
    stranger.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
    let mut s = timeout(LIMIT, stranger.connect(format!("127.0.0.1:{port}").parse().expect("addr")))
        .await
        .expect("connect in time")
        .expect("connect");
    let closed = timeout(LIMIT, read_message(&mut s)).await.expect("closed in time");
    assert!(closed.is_err(), "stranger got {closed:?}");

    // The configured peer connects and gets a session and the route.
    let mut s =
        timeout(LIMIT, TcpStream::connect(format!("127.0.0.1:{port}"))).await.expect("in time").expect("connect");
    s.write_all(&peer_open(9)).await.expect("write");
    let m = timeout(LIMIT, read_message(&mut s)).await.expect("in time").expect("OPEN");
    assert!(matches!(m, Message::Open(_)), "{m:?}");
    s.write_all(&wire::encode(&Message::Keepalive).expect("ka")).await.expect("write");
    let update = loop {
        match timeout(LIMIT, read_message(&mut s)).await.expect("in time").expect("message") {
            Message::Update(u) => break u,
            Message::Keepalive => {}
            m => panic!("unexpected {m:?}"),
        }
    };
    assert_eq!(update.nlri, Bytes::from_static(&[32, 198, 51, 100, 9]));
    assert_eq!(h.report().peers[0].state, SessionState::Established);
    assert!(!has_gshut(&update.path_attributes));
    // Drain without stopping, and back: the route is re-announced with, then without, GRACEFUL_SHUTDOWN.
    h.set_draining(true);
    assert!(has_gshut(&next_update(&mut s).await.path_attributes));
    assert!(h.report().peers[0].draining);
    h.set_draining(false);
    assert!(!has_gshut(&next_update(&mut s).await.path_attributes));
    h.stop().await;
    // Stop withdraws the route and closes with Cease / Administrative Shutdown.
    let mut withdrawn = false;
    let (code, sub) = loop {
        match timeout(LIMIT, read_message(&mut s)).await.expect("in time").expect("message") {
            Message::Update(u) => withdrawn |= u.withdrawn_routes == Bytes::from_static(&[32, 198, 51, 100, 9]),
            Message::Notification(n) => break (n.code.as_u8(), n.subcode),
            Message::Keepalive => {}
            m => panic!("unexpected {m:?}"),
        }
    };
    assert!(withdrawn, "withdraw before the NOTIFICATION");
    assert_eq!((code, sub), (6, 2));
}

/// COMMUNITIES attribute (optional transitive, type 8, 4 bytes) holding 65535:0.
fn has_gshut(attrs: &[u8]) -> bool {
    attrs.windows(7).any(|w| w == [0xc0, 8, 4, 0xff, 0xff, 0, 0])
}

async fn next_update(s: &mut TcpStream) -> rustbgpd_wire::UpdateMessage {
    loop {
        match timeout(LIMIT, read_message(s)).await.expect("in time").expect("message") {
            Message::Update(u) => return u,
            Message::Keepalive => {}
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[tokio::test]
async fn hold_time_zero_means_no_keepalives_and_no_hold_timer() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (_tx, rx) = watch::channel(vip());
    let h = Announcer::spawn(Some(bgp(port, 3)), None, rx, &prometheus::Registry::new()).expect("spawn");
    let mut s = accept_open(&l).await;
    s.write_all(&peer_open(0)).await.expect("write");
    s.write_all(&wire::encode(&Message::Keepalive).expect("ka")).await.expect("write");
    // The KEEPALIVE that confirms the OPEN, then the route; after that silence, even past our 3 s hold time.
    let mut keepalives = 0;
    let mut updates = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        match timeout(Duration::from_millis(500), read_message(&mut s)).await {
            Err(_) => {}
            Ok(Ok(Message::Keepalive)) => keepalives += 1,
            Ok(Ok(Message::Update(_))) => updates += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((keepalives, updates), (1, 1));
    let rep = h.report();
    assert_eq!(rep.peers[0].state, SessionState::Established);
    assert_eq!(rep.peers[0].hold_time_secs, Some(0));
    h.stop().await;
}
