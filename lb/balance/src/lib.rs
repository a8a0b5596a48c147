//! Padis backend selection.
//!
//! - [`select`]: the balancing algorithms behind one [`Selector`] trait (smooth weighted round robin, P2C least
//!   request, Maglev consistent hash, sticky cookie), wrapped per backend group by [`GroupBalancer`] and per
//!   snapshot by [`Balancers`].
//! - [`maglev`]: the deterministic Maglev table, shared by L7 and L4 (which copies it into a BPF map).
//! - [`health`]: the [`HealthRegistry`] of active checks and passive ejection, kept across snapshots.
//!
//! Use from a data plane: on every snapshot `Balancers::build(&snap, &health, Some(&previous))`; per request
//! `group.select(&ctx, &tried)` -> [`Pick`], hold `pick.backend.begin()` while the request runs, then
//! `pick.backend.health.report_success()` / `report_failure()` (5xx, connect error) and add `pick.set_cookie`
//! to the response. L4 builds [`Maglev`] tables itself and syncs its own targets under the owner `"l4"`.

pub mod balancers;
pub mod group;
pub mod hash;
pub mod health;
pub mod maglev;
pub mod select;

pub use balancers::{config_base, health_targets, health_targets_with_transport, Balancers, L7_OWNER};
pub use group::{BackendEntry, GroupBalancer, InFlight, Pick, DEFAULT_STICKY_COOKIE};
pub use health::{
    client_tls_config, BackendHealth, CheckTls, CheckTransport, HealthRegistry, HealthReport, HealthTarget, TargetKey,
};
pub use maglev::{next_prime_at_least, Maglev, MaglevError, DEFAULT_TABLE_SIZE};
pub use select::{SelectCtx, Selector};
