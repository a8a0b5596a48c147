//! The ECMP + backend-churn proof (issue 6, "No jitter"): a router running BIRD 2 spreads a VIP over several
//! real `padis` daemons by ECMP with L4 hashing, the daemons balance by XDP (DSR) onto 10-20 backends, and a
//! fleet of long-lived client connections streams data while nodes come and go and backends grow and shrink.
//! Every connection that breaks (RST, EOF, stall, wrong data) is counted per step; the breaks the issue allows
//! are those of connections whose own backend was removed.
//!
//! ```text
//!  client ns ── router ns (BIRD: BGP with every node, kernel ECMP route, fib_multipath_hash_policy=1)
//!                  │ lan0
//!  lan ns: bridge ─┼── node 1..N ns (padis daemon: XDP native on eth0, [bgp] to the router)
//!                  └── backend 0..M ns (VIP on lo, arp_ignore/arp_announce, echo server; replies via the router)
//! ```
//!
//! - [`Topology`]: the namespaces, links and BIRD (removed on drop, also on panic).
//! - [`PadisNode`]: one `padis run` process inside a node namespace, configured by [`NodeConfig`].
//! - [`BackendServer`] and [`Fleet`]: the streaming servers and client connections with break accounting.
//! - [`run`]: a [`Plan`] of [`Step`]s in one [`Mode`] (Padis or the naive control case), giving a [`RunReport`].

mod error;
mod node;
mod scenario;
mod stream;
mod topo;

pub use error::EcmpError;
pub use node::{NodeConfig, PadisNode};
pub use scenario::{run, Mode, Plan, RunReport, Step, StepReport, SYNC_PORT};
pub use stream::{BackendServer, Break, BreakReason, Fleet, StreamConfig};
pub use topo::{backend_addr, node_addr, Topology, CLIENT, PADIS_ASN, PORT, ROUTER_ASN, ROUTER_LAN, VIP};
