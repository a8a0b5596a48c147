//! Consistent hashing: a Maglev lookup on the hash of the request key.

use std::sync::Arc;

use padis_model::HashKey;

use super::{cookie_value, SelectCtx, Selector};
use crate::hash::{ip_hash, key_hash};
use crate::maglev::Maglev;

/// Maglev on `hash_key` (client IP by default; a header or cookie, falling back to the client IP when absent).
/// An unusable backend's keys walk deterministically to the next distinct usable table entry.
#[derive(Debug, Clone)]
pub struct MaglevSelector {
    table: Arc<Maglev>,
    key: HashKey,
}

impl MaglevSelector {
    /// A selector over `table` (whose indices are the group's backend indices).
    pub fn new(table: Arc<Maglev>, key: HashKey) -> MaglevSelector {
        MaglevSelector { table, key }
    }

    /// The table in use.
    pub fn table(&self) -> &Arc<Maglev> {
        &self.table
    }

    /// The hash of the request key.
    pub fn request_hash(&self, ctx: &SelectCtx<'_>) -> u64 {
        let value = match &self.key {
            HashKey::ClientIp => None,
            HashKey::Header(name) => ctx.headers.get(name.as_str()).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => cookie_value(ctx.headers, name).map(str::as_bytes),
        };
        match value {
            Some(v) => key_hash(v),
            None => ip_hash(ctx.client_ip),
        }
    }
}

impl Selector for MaglevSelector {
    fn select(&self, ctx: &SelectCtx<'_>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        let hash = self.request_hash(ctx);
        self.table.lookup_usable(hash, &|i| usable(i as usize)).map(|i| i as usize)
    }
}
