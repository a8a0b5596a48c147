//! Sticky sessions: a cookie holds an opaque id of the backend chosen first (by weighted round robin).

use super::{cookie_value, RoundRobin, SelectCtx, Selector};

/// A valid cookie naming a usable backend wins; otherwise smooth weighted round robin.
#[derive(Debug)]
pub struct Sticky {
    cookie: String,
    ids: Vec<String>,
    fallback: RoundRobin,
}

impl Sticky {
    /// A selector over backends with these sticky ids and weights, reading cookie `cookie`.
    pub fn new(cookie: String, ids: Vec<String>, weights: &[u32]) -> Sticky {
        Sticky { cookie, ids, fallback: RoundRobin::new(weights) }
    }

    /// The cookie name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The backend index named by the request's cookie, if any.
    pub fn pinned(&self, ctx: &SelectCtx<'_>) -> Option<usize> {
        let id = cookie_value(ctx.headers, &self.cookie)?;
        self.ids.iter().position(|i| i == id)
    }

    /// Picks like [`Selector::select`] and tells whether the pick came from the client's cookie (`true`: no
    /// new cookie is needed).
    pub fn select_pinned(&self, ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<(usize, bool)> {
        match self.pinned(ctx) {
            Some(i) if usable(i) => Some((i, true)),
            _ => self.fallback.select(ctx, usable).map(|i| (i, false)),
        }
    }
}

impl Selector for Sticky {
    fn select(&self, ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.select_pinned(ctx, usable).map(|(i, _)| i)
    }
}
