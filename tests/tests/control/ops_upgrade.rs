//! Upgrade without loss, through the real binary: `padis upgrade` (and SIGUSR2) start the new process, which
//! takes over every listening socket (HTTP, TLS, TCP mode, DNS UDP and TCP, the admin API's TCP and Unix
//! sockets); the old one finishes its in-flight work and exits. Under load (HTTP/1.1 keep-alive, h2 over TLS,
//! long WebSockets and TCP flows, new connections, DNS over UDP and TCP) nothing fails, breaks or goes
//! unanswered, across two upgrades in a row. A new process that cannot start (an invalid config, a binary that
//! exits) leaves the old one serving, and `padis upgrade` says why.

use std::path::{Path, PathBuf};
use std::time::Duration;

use padis_tests::process::{http, padis_bin};
use padis_tests::upgrade::{dns_udp_query, is_zombie, Load, Reaper, Stack};

/// The pid `padis upgrade` names as the new process.
fn new_pid(out: &str) -> u32 {
    out.split("upgraded: process ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {out:?}"))
}

/// Waits until `pid` has ended (a zombie counts: its parent may be gone), up to `limit`.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if is_zombie(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_under_load_lose_nothing() {
    let mut stack = Stack::start(&padis_bin(), "").await;
    let mut reaper = Reaper::default();
    let first = stack.first.child.id();
    assert_eq!(stack.serving_pid(), first);
    let load = Load::start(&stack.targets());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (ok, out) = stack.upgrade().await;
    assert!(ok, "padis upgrade failed: {out}\nlog:\n{}", stack.log_text());
    let second = new_pid(&out);
    reaper.0.push(second);
    // Every socket was handed over and taken: 3 listeners, 2 DNS UDP + 1 DNS TCP, the admin TCP and Unix ones.
    assert!(out.contains("(8 sockets handed over, 8 taken at its start)"), "{out}");
    assert_ne!(second, first);
    assert_eq!(stack.serving_pid(), second, "the admin API is the new process's");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The new process upgrades in turn (its sockets are the same ones).
    let (ok, out) = stack.upgrade().await;
    assert!(ok, "second padis upgrade failed: {out}\nlog:\n{}", stack.log_text());
    let third = new_pid(&out);
    reaper.0.push(third);
    assert!(out.contains("(8 sockets handed over, 8 taken at its start)"), "{out}");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mid = load.report();
    let report = load.finish().await;
    eprintln!("{report}");
    assert_eq!((report.failed, report.broken, report.unanswered), (0, 0, 0), "{report}\nlog:\n{}", stack.log_text());
    // The clients did their work all along, across both upgrades.
    assert!(mid.requests > 300 && mid.ws_messages > 100 && mid.tcp_exchanges > 100 && mid.queries > 300, "{mid}");
    assert!(report.new_connections > 300, "{report}");

    // The old processes exit once their WebSockets and flows are closed (well within the grace period), with
    // status 0; the Unix socket stays, served by the newest process.
    let status = stack.first.wait_exit(Duration::from_secs(10)).expect("the first process exits after draining");
    assert!(status.success(), "{status}");
    assert!(wait_gone(second, Duration::from_secs(10)), "the second process did not exit");
    assert!(stack.admin_sock.exists(), "an old process removed the admin socket it had handed over");
    let status =
        std::process::Command::new(padis_bin()).arg("status").arg("--socket").arg(&stack.admin_sock).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(
        http(stack.http, "GET", "/", None, &[("Host", "app.test")]).expect("served").0,
        200,
        "the newest process serves"
    );
    dns_udp_query(stack.dns, 7).await.expect("DNS from the newest process");
    let log = stack.log_text();
    assert!(log.contains("listening socket taken over from the previous process"), "{log}");
    assert!(log.contains("DNS sockets taken over from the previous process"), "{log}");
}

/// A hard link to the padis binary in a directory of its own (same file system as the build): the daemon started
/// from it upgrades from that path, which the test can then replace.
fn linked_binary(dir: &Path) -> PathBuf {
    let exe = dir.join("padis");
    std::fs::hard_link(padis_bin(), &exe).expect("hard link to the padis binary");
    exe
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let bin_dir = tempfile::Builder::new().prefix("upgrade-bin-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let exe = linked_binary(bin_dir.path());
    let mut stack = Stack::start(&exe, "").await;
    let mut reaper = Reaper::default();
    let first = stack.first.child.id();
    let serves = |stack: &Stack| http(stack.http, "GET", "/", None, &[("Host", "app.test")]).map(|r| r.0).ok();

    // An invalid config: the new process refuses it, says where, and the old one serves on.
    let good = std::fs::read_to_string(&stack.config).unwrap();
    std::fs::write(&stack.config, good.replace("[[route]]\nname = \"app\"", "[[route]]\nname = \"app\"\npath = \"x\""))
        .unwrap();
    let (ok, out) = stack.upgrade().await;
    assert!(!ok, "{out}");
    assert!(out.contains("the new process refused to start") && out.contains("path: must start with `/`"), "{out}");
    assert!(out.contains(&format!("{}:", stack.config.display())), "the error names file:line: {out}");
    assert!(out.contains("exit status 2"), "{out}");
    assert_eq!(serves(&stack), Some(200));
    assert_eq!(stack.serving_pid(), first);
    assert!(stack.first.child.try_wait().unwrap().is_none(), "the old process must go on");
    std::fs::write(&stack.config, &good).unwrap();

    // A binary that exits at once (as a broken package would): said, and the old one serves on.
    std::fs::remove_file(&exe).unwrap();
    std::fs::write(&exe, "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out) = stack.upgrade().await;
    assert!(!ok, "{out}");
    assert!(out.contains("the new process ended before it was ready (exit status 3)"), "{out}");
    assert_eq!(serves(&stack), Some(200));
    assert_eq!(stack.serving_pid(), first);
    let log = stack.log_text();
    assert!(log.contains("upgrade failed: this process serves on"), "{log}");

    // The right binary back, and SIGUSR2 (as nginx): the new process serves, the old one exits with status 0.
    std::fs::remove_file(&exe).unwrap();
    std::fs::hard_link(padis_bin(), &exe).unwrap();
    stack.first.signal(libc::SIGUSR2);
    let status = stack.first.wait_exit(Duration::from_secs(20)).expect("the old process exits after SIGUSR2");
    assert!(status.success(), "{status}\nlog:\n{}", stack.log_text());
    let now = stack.serving_pid();
    reaper.0.push(now);
    assert_ne!(now, first);
    assert_eq!(serves(&stack), Some(200));
    dns_udp_query(stack.dns, 9).await.expect("DNS from the new process");
}

/// The whole gateway in a network namespace: XDP on the link to a BIRD router, the VIP announced over BGP with
/// graceful restart. Across two upgrades under load, the VIP's route never leaves BIRD's table (the new process
/// takes over the pinned XDP link and the BGP session restarts gracefully), and the clients lose nothing.
#[test]
fn routed_upgrade_keeps_the_vip_route() {
    let r = padis_tests::upgrade::routed(2, Duration::from_millis(1500));
    eprintln!("{} withdrawn={} graceful_restarts={}", r.report, r.withdrawn, r.graceful_restarts);
    assert_eq!(r.upgrades, 2);
    assert_eq!(r.withdrawn, 0, "{}", r.bird_log);
    assert_eq!(r.graceful_restarts, 2, "BIRD saw each upgrade as a graceful restart:\n{}", r.bird_log);
    let rep = &r.report;
    assert_eq!((rep.failed, rep.broken, rep.unanswered), (0, 0, 0), "{rep}");
    assert!(rep.requests > 300 && rep.queries > 300 && rep.ws_messages > 100, "{rep}");
}
