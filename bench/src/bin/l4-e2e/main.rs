//! L4 end-to-end benchmark tools for `bench/suites/l4-e2e` (needs root):
//! - `serve <config>`: Padis's XDP balancer attached to `[l4].interfaces` (see [`serve`]).
//! - `run ...`: on one veth end, a closed-loop generator: an XDP program counts every frame the forwarder sends
//!   back by destination MAC (per backend) and turns each backend's frame into a new request sent straight back
//!   to the forwarder (`XDP_TX` or `bpf_redirect`, see [`progs::Resend`]); a seeder (`AF_PACKET`) injects
//!   requests to start the loop and to replace lost frames, so that the loop holds as many frames as its rings
//!   do and the slower side's ring stays full. Prints `offered=.. forwarded=.. ..` (see [`run`]).

mod bpf;
mod insn;
mod progs;
mod seed;
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
    /// The forwarder's MAC (the requests' destination).
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
    /// Distinct flows (5-tuples), a power of two up to 2^24, drawn at random per request.
    #[arg(long)]
    flows: u32,
    /// Measured time.
    #[arg(long)]
    seconds: f64,
    /// Requests seeded at the start (more than the forwarder's ring holds: veth's is 256 frames).
    #[arg(long, default_value_t = 1024)]
    fill: usize,
    /// Most requests seeded at one tick (seeding happens at ticks in which no ring of the loop overflowed).
    #[arg(long, default_value_t = 64)]
    seed_batch: usize,
    /// How the loop program sends requests back: `xdp-tx` when the forwarder is an XDP program, `redirect` when
    /// it is not (veth wakes the peer after an `XDP_TX` only if the peer runs XDP).
    #[arg(long, value_enum)]
    resend: ResendArg,
    /// Tick of the seeder, microseconds.
    #[arg(long, default_value_t = 1000)]
    tick_us: u64,
    /// The forwarder's NAPI thread (pid): its CPU time, wait and sleep over the measured time are reported.
    #[arg(long)]
    napi_thread: Option<u32>,
    /// A backend's MAC (repeat): frames arriving with it as destination count as forwarded.
    #[arg(long = "backend-mac", value_parser = mac, required = true)]
    backend_macs: Vec<[u8; 6]>,
}

/// `--resend` values (see [`progs::Resend`]).
#[derive(Clone, Copy, clap::ValueEnum)]
enum ResendArg {
    XdpTx,
    Redirect,
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

/// Runs the loop on `dev` for `seconds` (see the module docs), then stops sending requests, waits for the frames
/// in flight to come back (at most 2 s), and prints one line of `key=value`:
/// - `offered`: requests sent to the forwarder in the measured time (sent back by the loop program + seeded),
///   `seeded`, `refused`: frames `dev` could not hand to the forwarder (its ring was full: `dev`'s
///   `tx_dropped`), `refused_back`: frames the forwarder could not hand back to `dev` (`dev`'s ring was full:
///   its `rx_dropped`, which veth counts for the peer's `XDP_TX` failures),
/// - `forwarded`: frames that came back with a backend's MAC in the measured time, `backends=<a>/<b>/..` (the
///   same, per backend), `other`: frames with another MAC (whole run), `forwarded_total` (whole run, drain
///   included: to compare with the forwarder's own counters), `seconds`, `offered_pps`, `forwarded_pps`,
/// - with `--napi-thread`: `napi_busy_pct` (CPU time / measured time), `napi_wait_pct` (runnable, waiting for
///   the CPU), `napi_idle_pct` (the rest: asleep, no input), `napi_sleeps`, `ns_per_pkt` (CPU time / forwarded).
fn run(a: &RunArgs) -> Result<(), E2eError> {
    if !a.flows.is_power_of_two() || a.flows > progs::MAX_FLOWS {
        return Err(E2eError::Parse(format!("--flows {}: a power of two up to {}", a.flows, progs::MAX_FLOWS)));
    }
    if !(a.seconds > 0.0 && a.seconds <= 60.0) {
        return Err(E2eError::Parse(format!("--seconds {}: 0 to 60", a.seconds)));
    }
    if !(1..=seed::MAX_BATCH).contains(&a.fill) || !(1..=seed::MAX_BATCH).contains(&a.seed_batch) {
        return Err(E2eError::Parse(format!("--fill and --seed-batch: 1 to {}", seed::MAX_BATCH)));
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
    let resend = match a.resend {
        ResendArg::XdpTx => progs::Resend::XdpTx,
        ResendArg::Redirect => progs::Resend::Redirect(idx),
    };
    let nb = a.backend_macs.len();
    let counters = bpf::Counters::new(nb as u32 + 1)?;
    let control = bpf::Control::new(1)?;
    let prog = bpf::Program::load_xdp(
        "l4e2e_loop",
        &progs::loop_program(&spec, resend, &a.backend_macs, counters.raw_fd(), control.raw_fd()),
    )?;
    let _link = prog.attach(idx)?;
    let mut seeder = seed::Seeder::new(idx, progs::frame(&spec), a.flows)?;
    let refused = seed::IfStat::open(&a.dev, "tx_dropped")?;
    let refused_back = seed::IfStat::open(&a.dev, "rx_dropped")?;
    let counts = || -> Result<Vec<u64>, E2eError> { (0..=nb as u32).map(|i| counters.sum(i)).collect() };
    let napi = || a.napi_thread.map(seed::thread_sample).transpose();
    let tick = Duration::from_micros(a.tick_us.max(1));

    let (r0, b0) = (refused.read()?, refused_back.read()?);
    let (c0, t0) = (counts()?, napi()?);
    let start = Instant::now();
    let mut seeded = seeder.send(a.fill)?;
    // A ring of the loop overflowed in the last tick: there are more frames in flight than the loop holds. If
    // neither did, frames may have been lost (a dropping forwarder): seed more.
    let overflows = || -> Result<u64, E2eError> { Ok(refused.read()? + refused_back.read()?) };
    // The batch doubles after a tick without overflow and shrinks to a quarter after one with: a full loop gets
    // a frame or two now and then, a loop that loses frames gets up to `seed_batch` per tick.
    let mut last = overflows()?;
    let mut batch = a.seed_batch;
    let mut next = start + tick;
    let end = start + Duration::from_secs_f64(a.seconds);
    while next < end {
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        next += tick;
        let o = overflows()?;
        if o == last {
            seeded += seeder.send(batch)?;
            batch = (batch * 2).min(a.seed_batch);
            last = overflows()?;
        } else {
            batch = (batch / 4).max(1);
            last = o;
        }
    }
    let (t1, c1) = (napi()?, counts()?);
    let secs = start.elapsed().as_secs_f64();
    let (r1, b1) = (refused.read()?, refused_back.read()?);
    control.set(0)?;
    // The frames in flight come back within milliseconds and are dropped: wait until the count settles.
    let total = |c: &[u64]| -> u64 { c.iter().sum() };
    let mut settled = total(&c1);
    let drain_end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_end {
        std::thread::sleep(Duration::from_millis(50));
        let now = total(&counts()?);
        if now == settled {
            break;
        }
        settled = now;
    }
    let c2 = counts()?;

    let per_backend: Vec<u64> = (0..nb).map(|i| c1[i] - c0[i]).collect();
    let forwarded: u64 = per_backend.iter().sum();
    let forwarded_total: u64 = (0..nb).map(|i| c2[i]).sum();
    let other = c2[nb];
    let offered = forwarded + seeded;
    let shares: Vec<String> = per_backend.iter().map(u64::to_string).collect();
    let mut line = format!(
        "offered={offered} seeded={seeded} refused={} refused_back={} forwarded={forwarded} forwarded_total={forwarded_total} \
         seconds={secs:.3} offered_pps={:.0} forwarded_pps={:.0} backends={} other={other}",
        r1 - r0,
        b1 - b0,
        offered as f64 / secs,
        forwarded as f64 / secs,
        shares.join("/"),
    );
    if let (Some(t0), Some(t1)) = (t0, t1) {
        let pct = |ns: u64| 100.0 * ns as f64 / (secs * 1e9);
        let (run, wait) = (t1.run_ns - t0.run_ns, t1.wait_ns - t0.wait_ns);
        let ns = if forwarded > 0 { format!("{:.0}", run as f64 / forwarded as f64) } else { "NA".into() };
        line += &format!(
            " napi_busy_pct={:.1} napi_wait_pct={:.1} napi_idle_pct={:.1} napi_sleeps={} ns_per_pkt={ns}",
            pct(run),
            pct(wait),
            (100.0 - pct(run) - pct(wait)).max(0.0),
            t1.sleeps - t0.sleeps,
        );
    }
    println!("{line}");
    Ok(())
}
