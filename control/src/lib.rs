//! Padis control: sources (config file, Marathon) -> reconciler -> validated snapshots -> data planes; plus
//! the admin API, Prometheus metrics, logging and route announcement.
