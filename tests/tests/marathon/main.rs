//! The Marathon follower: the source against the Marathon test double, and the daemon following it (labels,
//! service ports, scaling under load).
//!
//! One test binary of modules (cargo's own `tests/testsuite` layout): every end-to-end test binary links the
//! whole workspace, so the tests of an area share one. Run one module with a filter, e.g.
//! `cargo test -p padis-tests --test marathon marathon_e2e::`.

mod marathon_e2e;
mod marathon_labels;
mod marathon_service_ports;
mod marathon_source;
