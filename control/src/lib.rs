//! Padis control: sources (config file, Marathon) -> reconciler -> validated snapshots -> data planes; plus
//! the admin API, Prometheus metrics, logging and route announcement. The `padis` binary is [`cli`].

pub mod admin;
pub mod cli;
pub mod config_source;
pub mod daemon;
pub mod demo;
pub mod logging;
pub mod metrics;
pub mod planes;
pub mod reconcile;
pub mod restart;
pub mod service;
pub mod status;
pub mod statuspage;
pub mod summary;
pub mod upgrade;
