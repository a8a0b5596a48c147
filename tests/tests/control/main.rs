//! The daemon as a whole: its admin API, reloads, isolation of a bad source item, secrets, metrics and
//! Prometheus rules, the service unit and package, the status page, DNS reloads, and the kept fuzz corpus.
//!
//! One test binary of modules (cargo's own `tests/testsuite` layout): every end-to-end test binary links the
//! whole workspace, so the tests of an area share one. Run one module with a filter, e.g.
//! `cargo test -p padis-tests --test control control_admin::`.

mod control_admin;
mod control_daemon;
mod control_isolation;
mod control_reload_applies;
mod control_reload_load;
mod control_secrets;
mod dns_reload;
mod fuzz_corpus;
mod ops_metrics;
mod ops_prometheus;
mod ops_service;
mod ops_statuspage;
mod ops_upgrade;
