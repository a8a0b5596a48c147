//! The zone journal: the IXFR history survives a restart, stays within `ixfr_journal` changes (older serials get
//! AXFR) and the file on disk is compacted; serials of generated zones start from the unix time and never go back.

mod common;

use std::time::Duration;

use common::{kdig, serial_gt, unix_now, Server};

const SECRET: &str = "am91cm5hbC1qb3VybmFsLWpvdXJuYWwtam91cm5hbC0x";

fn config(instances: &[String]) -> String {
    let mut c = format!(
        r#"
[dns]
listen = ["127.0.0.1:0"]
state_dir = "@DIR@/state"
ixfr_journal = 3

[[dns.tsig_key]]
name = "xfr"
secret = "{SECRET}"

[[dns.zone]]
name = "svc.test"
generated = true
allow_transfer = ["127.0.0.1/32"]
transfer_key = "xfr"
ns = [{{ name = "ns1.svc.test", addrs = ["192.0.2.1"] }}]

[[service]]
name = "web"
"#
    );
    for (i, ip) in instances.iter().enumerate() {
        c.push_str(&format!("[[service.instance]]\nid = \"i{i}\"\naddr = \"{ip}\"\n"));
    }
    c
}

/// `n` instances; instance 0 moves with `step`.
fn instances(step: u32) -> Vec<String> {
    vec![format!("10.1.{}.{}", step / 200, step % 200 + 1), "10.0.0.2".into(), "10.0.0.3".into()]
}

/// Publishes `step` and waits for the serial to move past `prev`; returns the new serial.
async fn change(s: &mut Server, step: u32, prev: u32) -> u32 {
    s.publish(&config(&instances(step)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = s.serial("svc.test");
        if serial_gt(now, prev) {
            return now;
        }
        let d = kdig(s.addr(), &["web.svc.test", "A"]);
        assert!(std::time::Instant::now() < deadline, "step {step}: serial still {now} (was {prev})\n{}", d.raw);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ixfr(s: &Server, from: u32) -> String {
    kdig(s.addr(), &["-y", &format!("hmac-sha256:xfr:{SECRET}"), &format!("IXFR={from}"), "svc.test"]).raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ixfr_history_survives_restart_and_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &config(&instances(0))).await;
    let first = s.serial("svc.test");
    assert!(first.abs_diff(unix_now()) < 600, "fresh state: serial from the unix time, got {first}");
    let mut serials = vec![first];
    for step in 1..=2 {
        let prev = *serials.last().unwrap();
        serials.push(change(&mut s, step, prev).await);
    }
    s.stop().await;

    // Restart with the same content: same serial, and the history still answers IXFR incrementally.
    let mut s = Server::start(dir.path(), &config(&instances(2))).await;
    assert_eq!(s.serial("svc.test"), serials[2], "same content keeps its serial across a restart");
    let d = ixfr(&s, serials[0]);
    assert!(d.contains("10.1.0.1") && d.contains("10.1.0.3"), "removed and added records\n{d}");
    assert!(!d.contains("10.0.0.2"), "an incremental answer, not the whole zone\n{d}");

    // More changes than `ixfr_journal = 3`: the oldest serials fall back to AXFR, recent ones stay incremental.
    for step in 3..=40 {
        let prev = *serials.last().unwrap();
        serials.push(change(&mut s, step, prev).await);
    }
    let d = ixfr(&s, serials[0]);
    assert!(d.contains("10.0.0.2") && d.contains("10.1.0.41"), "AXFR fallback for a forgotten serial\n{d}");
    let recent = serials[serials.len() - 3];
    let d = ixfr(&s, recent);
    assert!(d.contains("10.1.0.39") && !d.contains("10.0.0.2"), "IXFR from a kept serial\n{d}");
    let text = prometheus::TextEncoder::new().encode_to_string(&s.registry.gather()).unwrap();
    assert!(text.contains("kind=\"ixfr-axfr\"") && text.contains("kind=\"ixfr\""), "{text}");

    // The file was compacted: 38 changes went in, a bounded number of (length-prefixed) entries stay.
    let bytes = std::fs::read(dir.path().join("state/svc.test.journal")).unwrap();
    let (mut pos, mut entries) = (0usize, 0);
    while pos + 4 <= bytes.len() {
        pos += 4 + u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]) as usize;
        entries += 1;
    }
    assert!((3..=2 * 3 + 8).contains(&entries), "journal compacted to a bounded size: {entries} entries");
    s.stop().await;

    // Restart on changed content: the serial moves on (never back), the history before it is gone.
    let s = Server::start(dir.path(), &config(&instances(41))).await;
    let now = s.serial("svc.test");
    assert!(serial_gt(now, *serials.last().unwrap()), "{now} after {serials:?}");
    let d = ixfr(&s, recent);
    assert!(d.contains("10.0.0.2"), "no change describes the restart: AXFR\n{d}");
    s.stop().await;

    // A wiped state directory starts from the clock again.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    let s = Server::start(dir.path(), &config(&instances(41))).await;
    assert!(s.serial("svc.test").abs_diff(unix_now()) < 600);
    s.stop().await;
}
