//! The Padis XDP balancer: VIP lookup, per-VIP ACL, connection table + Maglev backend choice, DSR (MAC rewrite)
//! or IP-in-IP forwarding, ICMP "too big" handling, per-CPU statistics. Maps are written by `padis-l4` only.
#![no_std]
#![no_main]

mod csum;
mod fwd;
mod lb;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Entry point: attached to each configured interface.
#[xdp]
pub fn padis_xdp(ctx: XdpContext) -> u32 {
    parse::process(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Verdict helpers shared by the modules.
pub(crate) mod verdict {
    use super::xdp_action;
    /// Hand to the kernel stack.
    pub const PASS: u32 = xdp_action::XDP_PASS;
    /// Drop.
    pub const DROP: u32 = xdp_action::XDP_DROP;
    /// Send back out of the receiving interface.
    pub const TX: u32 = xdp_action::XDP_TX;
}
