//! Command line: `padis run`, `padis check`, `padis status`, `padis demo`, `padis drain`, `padis reload`,
//! `padis upgrade`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use padis_model::Secret;

use crate::config_source::ConfigOrigin;
use crate::status::{Endpoint, StatusError};

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
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw `/v1/state` JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start demo backends and run the daemon on the embedded default config.
    Demo,
    /// Ask a running daemon to withdraw its routes (graceful-shutdown community, then withdraw).
    Drain {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ask a running daemon to reload its config file now (like SIGHUP) and print the outcome.
    Reload {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a running daemon by the binary now installed at its path, without losing a request (like
    /// SIGUSR2): the new process takes over the listening sockets and the XDP program; the old one finishes its
    /// in-flight work and exits. Exit status 1, and the reason, when the new process could not start (the old
    /// one serves on).
    Upgrade {
        /// How to reach the admin API.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the CLI reaches a running daemon's admin API: its Unix socket, or TCP with the bearer token (changing
/// commands need one of the two).
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Admin API address.
    #[arg(long, default_value = "127.0.0.1:9901", env = "PADIS_ADMIN")]
    pub admin: SocketAddr,
    /// Bearer token of the admin API (prefer --token-file: a command line is visible to other users).
    #[arg(long, env = "PADIS_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token (mode 0600 or stricter).
    #[arg(long, env = "PADIS_ADMIN_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The daemon's Unix socket (`[admin] socket`); used instead of --admin.
    #[arg(long, env = "PADIS_ADMIN_SOCKET")]
    pub socket: Option<PathBuf>,
}

impl AdminArgs {
    /// Where to send requests.
    pub fn endpoint(&self) -> Result<Endpoint, padis_model::secret::SecretFileError> {
        if let Some(s) = &self.socket {
            return Ok(Endpoint::Unix(s.clone()));
        }
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(Secret::new(t.as_str())),
            (None, Some(f)) => Some(Secret::from_file(f)?),
            (None, None) => None,
        };
        Ok(Endpoint::Tcp { addr: self.admin, token })
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Runs one admin API command and prints its answer; exit status 1 on any error.
fn admin_command(
    name: &str,
    args: &AdminArgs,
    f: impl AsyncFnOnce(Endpoint) -> Result<String, StatusError>,
) -> ExitCode {
    let endpoint = match args.endpoint() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("padis {name}: token file {e}");
            return ExitCode::from(1);
        }
    };
    let res = match runtime() {
        Ok(rt) => rt.block_on(f(endpoint)),
        Err(e) => {
            eprintln!("padis: {e}");
            return ExitCode::from(1);
        }
    };
    match res {
        Ok(s) => {
            print!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("padis {name}: {e}");
            ExitCode::from(1)
        }
    }
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
                // Zone files load as the DNS plane would load them; an error names file:line.
                let zone_errors =
                    padis_dns::check_zone_files(&v.state.dns, &ConfigOrigin::File(config.clone()).base_dir());
                if !zone_errors.is_empty() {
                    for e in &zone_errors {
                        eprintln!("{e}");
                    }
                    return ExitCode::from(1);
                }
                println!("{}: OK", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Status { admin, json } => admin_command("status", &admin, async |e| {
            let body = crate::status::fetch(&e, "/v1/state").await?;
            if json {
                return Ok(String::from_utf8_lossy(&body).into_owned());
            }
            let v: serde_json::Value = serde_json::from_slice(&body)?;
            Ok(crate::status::render(&v))
        }),
        Command::Drain { admin } => admin_command("drain", &admin, async |e| {
            Ok(String::from_utf8_lossy(&crate::status::post(&e, "/v1/drain").await?).into_owned())
        }),
        Command::Reload { admin } => admin_command("reload", &admin, async |e| {
            Ok(String::from_utf8_lossy(&crate::status::post(&e, "/v1/reload").await?).into_owned())
        }),
        Command::Upgrade { admin } => admin_command("upgrade", &admin, async |e| {
            let render = |v: &serde_json::Value| -> Option<String> {
                if v["upgraded"].as_bool()? {
                    Some(format!(
                        "upgraded: process {} serves ({} sockets handed over, {} taken at its start); process {} \
                         finishes its in-flight work and exits\n",
                        v["new_pid"], v["sockets"], v["taken"], v["old_pid"]
                    ))
                } else {
                    Some(format!("upgrade failed, the running process serves on: {}", v["error"].as_str()?))
                }
            };
            match crate::status::post(&e, "/v1/upgrade").await {
                Ok(body) => {
                    let v: serde_json::Value = serde_json::from_slice(&body)?;
                    Ok(render(&v).unwrap_or_else(|| format!("{v}\n")))
                }
                Err(StatusError::Status(code, body)) => {
                    let msg = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| render(&v));
                    Err(StatusError::Status(code, msg.unwrap_or(body)))
                }
                Err(e) => Err(e),
            }
        }),
    }
}
