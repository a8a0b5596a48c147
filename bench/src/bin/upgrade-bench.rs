//! `bench/run upgrade`: the whole gateway (XDP on the link to a BIRD router, the VIP announced over BGP with
//! graceful restart, HTTP, TLS h2, TCP mode, DNS, the admin API) upgraded `UPGRADE_COUNT` times (default 5),
//! `UPGRADE_SPACING_MS` apart (default 2000), under load: HTTP/1.1 keep-alive, h2 over TLS, long WebSockets and
//! TCP flows, a new connection every few milliseconds, DNS over UDP and TCP (see `padis_tests::upgrade`).
//! Prints `RESULT suite=upgrade failed=N broken=N unanswered=N withdrawn=N gap_ms=X`: failed requests, broken
//! connections, unanswered queries, times BIRD removed the VIP's route, and the longest a new connection waited
//! (connect to the end of its answer) over the whole run. Exit status 1 when any count is not 0.

use std::time::Duration;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    let upgrades = env("UPGRADE_COUNT", 5) as usize;
    let spacing = Duration::from_millis(env("UPGRADE_SPACING_MS", 2000));
    let r = padis_tests::upgrade::routed(upgrades, spacing);
    let rep = &r.report;
    eprintln!("upgrade: {upgrades} upgrades, {spacing:?} apart; {rep}");
    eprintln!("upgrade: BIRD saw {} graceful restarts", r.graceful_restarts);
    println!(
        "RESULT suite=upgrade failed={} broken={} unanswered={} withdrawn={} gap_ms={:.1}",
        rep.failed, rep.broken, rep.unanswered, r.withdrawn, rep.gap_ms
    );
    let clean = rep.failed == 0 && rep.broken == 0 && rep.unanswered == 0 && r.withdrawn == 0;
    if clean && r.upgrades == upgrades {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}
