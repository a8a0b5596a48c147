//! Helpers for the Padis end-to-end tests: spawning padis, network namespaces, certificates, test doubles.
//! Each area keeps its helpers in its own module.

pub mod bgp;
pub mod differential;
pub mod dns;
#[cfg(feature = "l4")]
pub mod ecmp;
#[cfg(feature = "l4")]
pub mod l4;
pub mod l7;
pub mod marathon;
pub mod netns;
pub mod process;
pub mod recording;
pub mod tcp;
pub mod upgrade;
