//! Issue 6, CI size: a BIRD 2 router spreads the VIP over real `padis` daemons by ECMP (L4 hashing); 300
//! long-lived connections stream through XDP (DSR) to 10 backends; then a third node joins while the backends
//! grow 10 -> 20 on every node. With Padis (Maglev + connection-table sync) no connection breaks; with the naive
//! per-node scheduler (the control case) connections moved by ECMP land on other backends and are reset.
//! Needs root, BIRD 2, native XDP on veth. The bench (`bench/run ecmp`) runs every step at a larger size.

use padis_tests::ecmp::{run, Mode, Plan, Step};

#[test]
fn node_join_with_backend_growth_breaks_nothing_with_padis_but_does_with_the_naive_scheduler() {
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

    let p = padis.step(Step::AddNodeAndGrow).expect("step ran");
    let n = naive.step(Step::AddNodeAndGrow).expect("step ran");
    assert_eq!(p.conns, plan.conns, "{report}");
    assert_eq!(p.allowed, 0, "no backend is removed in this step: {report}");
    assert_eq!(p.broken, p.allowed, "Padis broke connections whose backend still exists: {report}");
    assert!(n.broken > n.allowed, "the naive control case broke nothing: the test would prove nothing: {report}");
}
