//! `serve`: Padis's XDP balancer programmed from a config file and attached natively to `[l4].interfaces`.

use std::path::Path;
use std::time::Duration;

use padis_ebpf_common::stat;
use padis_l4::desired;
use padis_l4::programmer::Programmer;
use padis_l4::{Balancer, LoadOptions};

use crate::E2eError;

/// Programs and attaches the balancer (backend MACs from `[l4.neighbors]` or the neighbour table), prints
/// `ready`, runs until stdin closes, then prints the program's own `forwarded=<packets>` counter and detaches.
pub fn serve(path: &Path) -> Result<(), E2eError> {
    let valid = padis_model::load_config(path).map_err(|e| E2eError::Config(e.to_string()))?;
    let l4 = &valid.state.l4;
    let opts = LoadOptions::private(l4.max_vips, l4.max_backends, l4.max_flows);
    let mut bal = Balancer::load(opts.clone())?;
    let mut prog = Programmer::new(opts.max_vips, opts.max_rings(), opts.max_backends);
    let wanted = valid.state.vips.iter().flat_map(|v| v.backends.iter()).count();
    let mut resolved = false;
    for _ in 0..50 {
        let table = padis_l4::neigh::table();
        let d = desired::compute(l4, &valid.state.vips, &|_, _| true, &mut |a| {
            let m = table.get(&a).copied();
            if m.is_none() {
                padis_l4::neigh::solicit(a);
            }
            m
        });
        prog.apply(&mut bal.maps, &d)?;
        if d.macs.len() == wanted {
            resolved = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !resolved {
        return Err(E2eError::Config("backend MACs not resolved within 5 s".into()));
    }
    let mut links = Vec::new();
    for i in &l4.interfaces {
        links.push(bal.attach(i, false, false, None)?);
    }
    println!("ready");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    let forwarded = padis_l4::stats::global_one(&bal.maps, stat::FORWARDED)?.packets;
    println!("forwarded={forwarded}");
    for l in links {
        l.release(false);
    }
    Ok(())
}
