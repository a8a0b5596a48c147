//! Translation between node-local ids (VIP id, backend index: they differ between nodes) and identities (VIP
//! key, backend address), rebuilt after every successful programming round.

use std::collections::HashMap;

use padis_ebpf_common::{FlowKey, VipKey};

use crate::desired::{addr16, Desired};
use crate::programmer::Programmer;

/// One VIP's local view: its id and the local index of each of its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipEntry {
    /// Local VIP id.
    pub id: u32,
    /// Backend address -> local index (every configured backend, draining and unhealthy ones included: they
    /// keep their established flows).
    pub backends: HashMap<[u8; 16], u32>,
}

/// Both directions of the translation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncIndex {
    vips: HashMap<VipKey, VipEntry>,
    addrs: HashMap<u32, [u8; 16]>,
    ids: HashMap<u32, VipKey>,
}

/// Why a received flow cannot be inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// No such VIP here.
    Vip,
    /// The VIP exists here but not with this backend.
    Backend,
}

/// The VIP a connection-table key belongs to.
pub fn vip_of(k: &FlowKey) -> VipKey {
    VipKey { addr: k.dst, port: k.dport, proto: k.proto, pad: 0 }
}

impl SyncIndex {
    /// The index of what `programmer` has installed for `desired`.
    pub fn build(programmer: &Programmer, desired: &Desired) -> SyncIndex {
        let mut out = SyncIndex::default();
        for (addr, idx) in programmer.backend_slots() {
            out.addrs.insert(idx, addr16(addr));
        }
        for v in &desired.vips {
            let Some(id) = programmer.vip_id(&v.key) else { continue };
            let backends =
                v.backends.iter().filter_map(|b| Some((addr16(b.addr), programmer.backend_index(b.addr)?))).collect();
            out.vips.insert(v.key, VipEntry { id, backends });
            out.ids.insert(id, v.key);
        }
        out
    }

    /// Address of local backend `idx`.
    pub fn backend_addr(&self, idx: u32) -> Option<[u8; 16]> {
        self.addrs.get(&idx).copied()
    }

    /// Destination (address, port, protocol) of local VIP `id`.
    pub fn dest(&self, id: u32) -> Option<([u8; 16], u16, u8)> {
        self.ids.get(&id).map(|k| (k.addr, k.port, k.proto))
    }

    /// Local (VIP id, backend index) for a peer's flow to `backend`.
    pub fn local(&self, k: &FlowKey, backend: &[u8; 16]) -> Result<(u32, u32), Unknown> {
        let v = self.vips.get(&vip_of(k)).ok_or(Unknown::Vip)?;
        let idx = v.backends.get(backend).ok_or(Unknown::Backend)?;
        Ok((v.id, *idx))
    }
}
