//! Test helpers: L4. A [`Fixture`] loads the XDP balancer with private (unpinned) maps, programs it from a TOML
//! config through the same path the daemon uses (`desired::compute` + `Programmer::apply`), and runs packets
//! through it with BPF_PROG_TEST_RUN.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use padis_l4::desired;
use padis_l4::programmer::{ApplyReport, Programmer};
use padis_l4::{Balancer, LoadOptions};

/// XDP verdicts.
pub mod verdict {
    /// XDP_DROP.
    pub const DROP: u32 = 1;
    /// XDP_PASS.
    pub const PASS: u32 = 2;
    /// XDP_TX.
    pub const TX: u32 = 3;
}

/// A loaded, programmable balancer for packet fixtures.
pub struct Fixture {
    /// The balancer (maps accessible for assertions).
    pub bal: Balancer,
    /// Its programmer.
    pub prog: Programmer,
    /// Health per (VIP name, backend): absent = usable.
    pub unusable: HashMap<(String, IpAddr), bool>,
}

impl Fixture {
    /// Loads the program (small private maps) and programs `toml`.
    pub fn new(toml: &str) -> Fixture {
        let opts = LoadOptions::private(8, 64, 4096);
        let bal = Balancer::load(opts.clone()).expect("load XDP program (needs root and BPF)");
        let prog = Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends);
        let mut f = Fixture { bal, prog, unusable: HashMap::new() };
        f.program(toml);
        f
    }

    /// Re-programs the maps from `toml` (a diff against what is installed).
    pub fn program(&mut self, toml: &str) -> ApplyReport {
        let valid = padis_model::parse_config(toml, "fixture.toml", Path::new("."))
            .unwrap_or_else(|e| panic!("fixture config: {e}"));
        let unusable = self.unusable.clone();
        let usable = move |vip: &str, a: SocketAddr| !unusable.contains_key(&(vip.to_string(), a.ip()));
        let d = desired::compute(&valid.state.l4, &valid.state.vips, &usable, &mut |_| None);
        self.prog.apply(&mut self.bal.maps, &d).expect("program maps")
    }

    /// Runs one packet: (verdict, output frame).
    pub fn run(&self, pkt: &[u8]) -> (u32, Vec<u8>) {
        self.bal.test_run(pkt).expect("BPF_PROG_TEST_RUN")
    }

    /// Packets counted under global counter `idx` (`padis_ebpf_common::stat::*`).
    pub fn stat(&self, idx: u32) -> u64 {
        padis_l4::stats::global_one(&self.bal.maps, idx).expect("read stats").packets
    }

    /// Entries in the connection table.
    pub fn flows(&self) -> usize {
        self.bal.maps.conntrack.keys().filter(|k| k.is_ok()).count()
    }
}
