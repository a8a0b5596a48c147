//! Command line: `padis run`, `padis check`, `padis status`, `padis demo`, `padis drain`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config_source::ConfigOrigin;

/// Padis: L4 (XDP) + L7 (HTTP/TLS) load balancer and authoritative DNS for Marathon platforms.
#[derive(Parser, Debug)]
#[command(name = "padis", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Config file (TOML). Without it, the embedded default config (examples/default.toml) runs.
        #[arg(long, short, env = "PADIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print what would run; exit status 1 when it is invalid.
    Check {
        /// Config file (TOML).
        #[arg(long, short, env = "PADIS_CONFIG")]
        config: PathBuf,
    },
    /// Show listeners, routes, backends and their health from a running daemon.
    Status {
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9901", env = "PADIS_ADMIN")]
        admin: SocketAddr,
        /// Bearer token of the admin API.
        #[arg(long, env = "PADIS_ADMIN_TOKEN")]
        token: Option<String>,
        /// Print the raw `/v1/state` JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start demo backends and run the daemon on the embedded default config.
    Demo,
    /// Ask a running daemon to withdraw its routes (graceful-shutdown community, then withdraw).
    Drain {
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9901", env = "PADIS_ADMIN")]
        admin: SocketAddr,
        /// Bearer token of the admin API.
        #[arg(long, env = "PADIS_ADMIN_TOKEN")]
        token: Option<String>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let origin = config.map(ConfigOrigin::File).unwrap_or(ConfigOrigin::Embedded);
            crate::daemon::main(origin, false)
        }
        Command::Demo => crate::daemon::main(ConfigOrigin::Embedded, true),
        Command::Check { config } => match ConfigOrigin::File(config.clone()).load() {
            Ok(v) => {
                print!("{}", crate::summary::render(&v.state));
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Status { admin, token, json } => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("padis: {e}");
                    return ExitCode::from(1);
                }
            };
            let res = rt.block_on(async {
                let body = crate::status::fetch(admin, token.as_deref(), "/v1/state").await?;
                if json {
                    return Ok::<_, crate::status::StatusError>(String::from_utf8_lossy(&body).into_owned());
                }
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                Ok(crate::status::render(&v))
            });
            match res {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("padis status: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Drain { admin, token } => {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("padis: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(crate::status::post(admin, token.as_deref(), "/v1/drain")) {
                Ok(b) => {
                    print!("{}", String::from_utf8_lossy(&b));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("padis drain: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
