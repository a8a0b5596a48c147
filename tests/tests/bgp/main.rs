//! Routing: the BGP speaker, BFD and OSPF against BIRD, FRR and scripted peers in network namespaces, and the
//! ECMP churn scenario (root).
//!
//! One test binary of modules (cargo's own `tests/testsuite` layout): every end-to-end test binary links the
//! whole workspace, so the tests of an area share one. Run one module with a filter, e.g.
//! `cargo test -p padis-tests --test bgp bgp_bfd::`.

mod bgp_bfd;
mod bgp_bird;
mod bgp_ecmp;
mod bgp_fake_peer;
mod bgp_frr;
mod bgp_ospf;
mod ecmp_churn;
