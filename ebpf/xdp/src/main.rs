//! The Padis XDP balancer: VIP lookup, per-VIP ACL, connection table + Maglev backend choice, DSR (MAC rewrite)
//! or IP-in-IP forwarding, ICMP "too big" handling, per-CPU statistics. Maps are written by `padis-l4` only.
#![no_std]
#![no_main]

mod csum;
mod flows;
mod fwd;
mod key;
mod lb;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Entry point: attached to each configured interface.
#[xdp]
pub fn padis_xdp(ctx: XdpContext) -> u32 {
    parse::process(&ctx)
}

/// Benchmark floor: swaps the MAC addresses and sends the frame back (the least an XDP forwarder does).
#[xdp]
pub fn padis_floor(ctx: XdpContext) -> u32 {
    let Some(eth) = parse::read::<[u8; 12]>(&ctx, 0) else {
        return verdict::PASS;
    };
    let swapped = [
        eth[6], eth[7], eth[8], eth[9], eth[10], eth[11], eth[0], eth[1], eth[2], eth[3], eth[4], eth[5],
    ];
    if parse::write(&ctx, 0, swapped) {
        verdict::TX
    } else {
        verdict::PASS
    }
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
