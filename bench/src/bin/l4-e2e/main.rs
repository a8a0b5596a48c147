//! L4 end-to-end benchmark tools for `bench/suites/l4-e2e` (needs root):
//! - `serve <config>`: Padis's XDP balancer attached to `[l4].interfaces` (see [`serve`]).
//! - `run ...`: on one veth end, a packet generator (an XDP program run in live-frames mode:
//!   `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, each `XDP_TX` a real frame out of the interface) and
//!   a sink (an XDP program that counts what comes back by destination MAC, i.e. per backend, and drops it).
//!   Prints `offered=.. forwarded=.. ..` (see [`run`]).

mod bpf;
mod insn;
mod progs;
mod serve;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    /// A bpf(2) command failed.
    #[error("bpf {what}: {source}")]
    Bpf { what: &'static str, source: std::io::Error },
    /// The verifier refused a program.
    #[error("loading {name}: {source}\n{log}")]
    Verifier { name: String, source: std::io::Error, log: String },
    /// Reading a system file failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// Bad argument or system file content.
    #[error("{0}")]
    Parse(String),
    /// Bad Padis config.
    #[error("config: {0}")]
    Config(String),
    /// Loading or programming the balancer failed.
    #[error(transparent)]
    L4(#[from] padis_l4::L4Error),
}

#[derive(Parser)]
#[command(about = "L4 end-to-end benchmark tools (root)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Padis's XDP balancer on `[l4].interfaces` until stdin closes; then prints `forwarded=<packets>`.
    Serve {
        /// Padis config file.
        config: PathBuf,
    },
    /// Generate from DEV towards the forwarder for SECONDS, count what comes back to DEV per backend MAC.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The generator's interface (its peer is the forwarder's).
    #[arg(long)]
    dev: String,
    /// The forwarder's MAC (the frames' destination).
    #[arg(long, value_parser = mac)]
    dst_mac: [u8; 6],
    /// Destination address (the VIP).
    #[arg(long)]
    vip: Ipv4Addr,
    /// Destination UDP port.
    #[arg(long)]
    port: u16,
    /// Source network: the first two octets are kept, the last two and the source port carry the flow.
    #[arg(long, default_value = "10.64.0.0")]
    src_net: Ipv4Addr,
    /// Distinct flows (5-tuples), a power of two up to 2^24, drawn at random per packet.
    #[arg(long)]
    flows: u32,
    /// Generation time.
    #[arg(long)]
    seconds: f64,
    /// Frames the generator hands to the device per flush (live-frames `batch_size`, up to 256).
    #[arg(long, default_value_t = 64)]
    batch: u32,
    /// A backend's MAC (repeat): frames arriving with it as destination count as forwarded.
    #[arg(long = "backend-mac", value_parser = mac, required = true)]
    backend_macs: Vec<[u8; 6]>,
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    padis_model::l4::parse_mac(s).ok_or_else(|| format!("bad MAC {s}"))
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Serve { config } => serve::serve(&config),
        Cmd::Run(a) => run(&a),
    };
    if let Err(e) = r {
        eprintln!("l4-e2e: {e}");
        std::process::exit(1);
    }
}

fn ifindex(name: &str) -> Result<u32, E2eError> {
    let c = std::ffi::CString::new(name).map_err(|e| E2eError::Parse(e.to_string()))?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(E2eError::Parse(format!("no interface {name}")));
    }
    Ok(i)
}

fn own_mac(dev: &str) -> Result<[u8; 6], E2eError> {
    let path = format!("/sys/class/net/{dev}/address");
    let s = std::fs::read_to_string(&path).map_err(|source| E2eError::Io { what: path.clone(), source })?;
    mac(s.trim()).map_err(E2eError::Parse)
}

/// Frames of the first test-run call. Each call sets up and tears down its page pool, which stalls the output
/// briefly, so later calls are sized from the measured rate to last about [`CALL_SECS`] (within the time left).
const FIRST_CHUNK: u32 = 1 << 18;
/// Target duration of one test-run call.
const CALL_SECS: f64 = 0.5;
/// Largest call.
const MAX_CHUNK: u32 = 1 << 24;
/// Smallest call (the end of the time budget).
const MIN_CHUNK: u32 = 1 << 12;

/// Attaches the sink to `dev`, generates for `seconds`, waits for the forwarded frames to drain (at most 2 s),
/// and prints `offered=<frames> forwarded=<frames> seconds=<generation time> offered_pps=.. forwarded_pps=..
/// backends=<a>/<b>/.. other=<frames with another destination MAC>`.
fn run(a: &RunArgs) -> Result<(), E2eError> {
    if !a.flows.is_power_of_two() || a.flows > progs::MAX_FLOWS {
        return Err(E2eError::Parse(format!("--flows {}: a power of two up to {}", a.flows, progs::MAX_FLOWS)));
    }
    if !(a.seconds > 0.0 && a.seconds <= 60.0) {
        return Err(E2eError::Parse(format!("--seconds {}: 0 to 60", a.seconds)));
    }
    let idx = ifindex(&a.dev)?;
    let spec = progs::FlowSpec {
        dst_mac: a.dst_mac,
        src_mac: own_mac(&a.dev)?,
        src_net: a.src_net,
        dst: a.vip,
        port: a.port,
        flows: a.flows,
    };
    let counters = bpf::Counters::new(256)?;
    let sink = bpf::Program::load_xdp("l4e2e_sink", &progs::sink(counters.raw_fd()))?;
    let gen = bpf::Program::load_xdp("l4e2e_gen", &progs::generator(&spec))?;
    let _link = sink.attach(idx)?;
    let frame = progs::frame(&spec);
    let total = |c: &bpf::Counters| -> Result<u64, E2eError> { (0..256).map(|i| c.sum(i)).sum() };
    let before = total(&counters)?;
    let start = Instant::now();
    let mut offered: u64 = 0;
    let mut chunk = FIRST_CHUNK;
    while start.elapsed().as_secs_f64() < a.seconds {
        let t = Instant::now();
        gen.run_live(&frame, idx, chunk, a.batch)?;
        offered += u64::from(chunk);
        let rate = f64::from(chunk) / t.elapsed().as_secs_f64().max(1e-6);
        let left = (a.seconds - start.elapsed().as_secs_f64()).max(0.0);
        chunk = (rate * CALL_SECS.min(left)).clamp(f64::from(MIN_CHUNK), f64::from(MAX_CHUNK)) as u32;
    }
    let secs = start.elapsed().as_secs_f64();
    // Frames still in the forwarder's rings arrive within milliseconds: wait until the count settles.
    let mut last = total(&counters)?;
    let drain_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(100));
        let now = total(&counters)?;
        if now == last {
            break;
        }
        last = now;
    }
    let mut per_backend = Vec::new();
    for m in &a.backend_macs {
        per_backend.push(counters.sum(u32::from(m[5]))?);
    }
    let forwarded: u64 = per_backend.iter().sum();
    let other = last - before - forwarded;
    let shares: Vec<String> = per_backend.iter().map(u64::to_string).collect();
    println!(
        "offered={offered} forwarded={forwarded} seconds={secs:.3} offered_pps={:.0} forwarded_pps={:.0} backends={} other={other}",
        offered as f64 / secs,
        forwarded as f64 / secs,
        shares.join("/"),
    );
    Ok(())
}
