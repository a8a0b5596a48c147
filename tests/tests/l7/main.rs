//! The L7 proxy (HTTP/1.1, h2, TLS, TCP mode, limits, reloads, the fast path and the hyper path held to the
//! same policy), in-process against real backends and peers.
//!
//! One test binary of modules (cargo's own `tests/testsuite` layout): every end-to-end test binary links the
//! whole workspace, so the tests of an area share one. Run one module with a filter, e.g.
//! `cargo test -p padis-tests --test l7 l7_balance::`.

mod l7_balance;
mod l7_client_faults;
mod l7_client_limits;
mod l7_differential;
mod l7_edge;
mod l7_fast;
mod l7_h2_limits;
mod l7_limits;
mod l7_mtls;
mod l7_policy;
mod l7_reload;
mod l7_routing;
mod l7_tcp;
mod l7_tls;
mod l7_upstream;
mod l7_websocket;
