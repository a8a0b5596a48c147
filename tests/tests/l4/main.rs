//! The XDP L4 balancer: BPF_PROG_TEST_RUN fixtures and namespaces with real traffic (root, BPF, XDP on veth).
//!
//! One test binary of modules (cargo's own `tests/testsuite` layout): every end-to-end test binary links the
//! whole workspace, so the tests of an area share one. Run one module with a filter, e.g.
//! `cargo test -p padis-tests --test l4 l4_fixtures::`.

mod l4_fixtures;
mod l4_netns;
mod l4_ptb;
mod l4_sync;
