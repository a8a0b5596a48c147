//! Padis load balancing: the L7 reverse proxy (hyper + rustls), the balancing algorithms and Maglev table
//! (shared with the L4 balancer), and health checking. It only reads control snapshots.
