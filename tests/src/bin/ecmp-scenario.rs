//! `ecmp-scenario [--conns N] [--mode padis|maglev-only|naive|all]`: runs every step of issue 6 (node add, drain,
//! kill, backends 10 -> 20 -> 10, node add + grow at once) with N long-lived streaming connections, with Padis
//! (Maglev + connection-table sync), Maglev without sync, and the naive control scheduler, prints each, and ends
//! with
//! `RESULT suite=ecmp conns=N broken_padis=X broken_naive=Y broken_allowed=Z converge_ms=X`.
//! Needs root; `PADIS_BIN` names the daemon (bench/run sets it).

use std::process::ExitCode;

use padis_tests::ecmp::{run, Mode, Plan, RunReport};

fn usage() -> ExitCode {
    eprintln!("usage: ecmp-scenario [--conns N] [--mode padis|maglev-only|naive|all]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut conns = 2000usize;
    let mut modes = vec![Mode::Padis, Mode::MaglevOnly, Mode::Naive];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--conns", Some(v)) => match v.parse() {
                Ok(n) if n > 0 => conns = n,
                _ => return usage(),
            },
            ("--mode", Some(v)) => {
                modes = match v.as_str() {
                    "padis" => vec![Mode::Padis],
                    "maglev-only" => vec![Mode::MaglevOnly],
                    "naive" => vec![Mode::Naive],
                    "all" => vec![Mode::Padis, Mode::MaglevOnly, Mode::Naive],
                    _ => return usage(),
                }
            }
            _ => return usage(),
        }
    }
    let plan = Plan::full(conns);
    let mut reports: Vec<RunReport> = Vec::new();
    for mode in modes {
        match run(mode, &plan) {
            Ok(r) => {
                eprintln!("{r}");
                reports.push(r);
            }
            Err(e) => {
                eprintln!("ecmp {}: {e}", mode.name());
                return ExitCode::FAILURE;
            }
        }
    }
    let get = |m: Mode| reports.iter().find(|r| r.mode == m);
    let num = |v: Option<usize>| v.map(|n| n.to_string()).unwrap_or_else(|| "NA".into());
    let padis = get(Mode::Padis);
    let naive = get(Mode::Naive);
    let converge = padis.or(naive).and_then(|r| r.converge()).map(|d| d.as_millis().to_string());
    println!(
        "RESULT suite=ecmp conns={conns} broken_padis={} broken_naive={} broken_allowed={} converge_ms={}",
        num(padis.map(|r| r.broken())),
        num(naive.map(|r| r.broken())),
        num(padis.or(naive).map(|r| r.allowed())),
        converge.unwrap_or_else(|| "NA".into())
    );
    ExitCode::SUCCESS
}
