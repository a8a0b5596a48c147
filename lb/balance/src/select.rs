//! Backend selection: every algorithm implements one trait, [`Selector`], over the indices of a group's backends
//! (as pingora-load-balancing does). [`GroupBalancer`] wraps a selector with the usable filter (health, draining,
//! exclusions) and sticky cookies.

mod cookie;
mod hashed;
mod least_request;
mod round_robin;
mod sticky;

use std::net::IpAddr;

pub use cookie::cookie_value;
pub use hashed::MaglevSelector;
pub use least_request::LeastRequest;
pub use round_robin::RoundRobin;
pub use sticky::Sticky;

pub use crate::balancers::Balancers;
pub use crate::group::{BackendEntry, GroupBalancer, InFlight, Pick};

/// What a selector may look at in a request.
#[derive(Debug, Clone, Copy)]
pub struct SelectCtx<'a> {
    /// The client's address (after PROXY protocol / trusted forwarding, as the caller decides).
    pub client_ip: IpAddr,
    /// The request headers (hash keys, sticky cookies).
    pub headers: &'a http::HeaderMap,
}

/// A balancing algorithm over a fixed list of backends (indices `0..n` of its group).
pub trait Selector: Send + Sync {
    /// Picks one index for which `usable` holds, or `None` when there is none.
    fn select(&self, ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize>;
}
