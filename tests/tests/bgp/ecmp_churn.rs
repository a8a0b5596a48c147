//! Issue 6, CI size: a BIRD 2 router spreads the VIP over real `padis` daemons by ECMP (L4 hashing); 300
//! long-lived connections stream through XDP (DSR) to 10 backends; a third node joins, drains (SIGTERM), then
//! joins again while the backends grow 10 -> 20 on every node. Padis (Maglev + connection-table sync) against the
//! naive per-node scheduler (the control case). Needs root, BIRD 2, native XDP on veth. The bench
//! (`bench/run ecmp`) runs every step of the issue at a larger size.
//!
//! The target holds on every step, the combined one included: zero breaks with Padis (a joining node is
//! announced only once its peers' connection tables are in), breaks with the control case.

use padis_tests::ecmp::{run, Mode, Plan, Step};

#[test]
fn ecmp_changes_and_backend_growth_break_nothing_like_the_naive_scheduler_does() {
    let plan = Plan::ci();
    let padis = run(Mode::Padis, &plan).unwrap_or_else(|e| panic!("padis run: {e}"));
    let naive = run(Mode::Naive, &plan).unwrap_or_else(|e| panic!("naive run: {e}"));
    let report = format!("{padis}\n{naive}");

    // The lab really spreads: every starting node forwarded, every backend holds connections.
    for r in [&padis, &naive] {
        assert_eq!(r.forwarded.len(), plan.start_nodes, "{report}");
        assert!(r.forwarded.iter().all(|&p| p > 0), "a node forwarded nothing: {report}");
        assert_eq!(r.spread.len(), plan.small, "not every backend got connections: {report}");
    }

    // A node joining or draining gracefully moves flows between nodes: none breaks with Padis, many with naive.
    for step in [Step::AddNode, Step::DrainNode] {
        let p = padis.step(step).expect("step ran");
        assert_eq!(p.conns, plan.conns, "{report}");
        assert_eq!(p.broken, 0, "{}: Padis broke connections: {report}", step.label());
    }
    let n = naive.step(Step::AddNode).expect("step ran");
    assert!(n.broken > 0, "the naive control case broke nothing on a node join: the lab proves nothing: {report}");

    // Join + growth at once: no removed backend, so every break is unexpected. The control case breaks; Padis
    // breaks nothing.
    let p = padis.step(Step::AddNodeAndGrow).expect("step ran");
    let n = naive.step(Step::AddNodeAndGrow).expect("step ran");
    assert_eq!((p.allowed, n.allowed), (0, 0), "no backend is removed in this step: {report}");
    assert!(n.broken > n.allowed, "the naive control case broke nothing: {report}");
    assert_eq!(p.broken, 0, "Padis broke connections on a node join with backend growth: {report}");
}
