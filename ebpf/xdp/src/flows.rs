//! The IPv4 connection table, `FLOWS4` (layout and rules: `padis_ebpf_common::flows4`). A lookup reads one cache
//! line and compares a few words (no helper call; the bucket hash also gives the destination tag); an insert
//! writes one 16-byte slot of that line. (Starting the bucket's load early for a SYN, with a volatile read before
//! the VIP lookup, was measured: it made a SYN ~35 ns dearer, not cheaper.)

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::Array};
use padis_ebpf_common::flows4::{self, FlowBucket4, WAYS};
use padis_ebpf_common::FlowState;

use crate::key::Flow4;

/// `BPF_F_MMAPABLE`: `padis-l4` maps the table into its memory (entries are read and written in place).
const MMAPABLE: u32 = 1 << 10;

#[map]
pub static FLOWS4: Array<FlowBucket4> = Array::with_max_entries(padis_ebpf_common::defaults::MAX_FLOWS / 2, MMAPABLE);

/// Buckets - 1 (a power of two minus one), set by `padis-l4` at load time from the table's size.
#[no_mangle]
static FLOW_BUCKET_MASK: u32 = 0;

/// The flow's bucket and hash.
#[inline(always)]
fn bucket(k: &[u32; 4]) -> (Option<*mut FlowBucket4>, u64) {
    let h = flows4::hash(k);
    // SAFETY: a read of a constant the loader sets.
    let mask = unsafe { core::ptr::read_volatile(&FLOW_BUCKET_MASK) };
    (FLOWS4.get_ptr_mut(h as u32 & mask), h)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: no preconditions.
    flows4::units(unsafe { bpf_ktime_get_coarse_ns() })
}

/// The entry of flow `k`, its last use refreshed.
#[inline(always)]
pub fn get(k: &Flow4) -> Option<FlowState> {
    let k = k.words();
    let (b, h) = bucket(k);
    // SAFETY: a value pointer from a successful array lookup; entries are plain words.
    let b = unsafe { &mut *b? };
    let (id, tag) = (flows4::ident(k), flows4::tag(h));
    let mut i = 0;
    while i < WAYS {
        let w0 = b.w[2 * i];
        if w0 & flows4::IDENT == id {
            let w1 = b.w[2 * i + 1];
            if let Some((backend, vip)) = flows4::state(w0, w1, tag) {
                let t = now();
                if (w1 >> 16) & 0xffff != t {
                    b.w[2 * i + 1] = (w1 & !0xffff_0000) | (t << 16);
                }
                return Some(FlowState { backend, vip });
            }
        }
        i += 1;
    }
    None
}

/// Adds or replaces the entry of flow `k`: its own slot, else a free one, else the least recently used.
/// `now_ns`: the coarse clock.
#[inline(always)]
pub fn insert(k: &Flow4, st: &FlowState, now_ns: u64) -> bool {
    let k = k.words();
    let (b, h) = bucket(k);
    let Some(b) = b else { return false };
    // SAFETY: as above.
    let b = unsafe { &mut *b };
    let t = flows4::units(now_ns);
    let w0 = flows4::word0(flows4::ident(k), st.vip);
    let mut victim = 0;
    let mut oldest = 0;
    let mut i = 0;
    while i < WAYS {
        if b.w[2 * i] == w0 {
            victim = i;
            break;
        }
        let a = flows4::age(b.w[2 * i + 1], t);
        if i == 0 || a > oldest {
            oldest = a;
            victim = i;
        }
        i += 1;
    }
    b.w[2 * victim] = w0;
    b.w[2 * victim + 1] = flows4::word1(w0, st.backend, flows4::tag(h), t);
    true
}
