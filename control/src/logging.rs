//! Logging with `tracing`: human or JSON lines, a filter that follows the config, and the access log
//! (target `padis::access`) switched on and off with `log.access_log`.

use std::io::IsTerminal;

use padis_model::{LogConfig, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// Changes the log filter of the running process.
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
}

/// The filter for a config: `level`, with the access log target on or off. `PADIS_LOG` overrides `level`.
pub fn filter(cfg: &LogConfig) -> Result<EnvFilter, String> {
    let level = std::env::var("PADIS_LOG").unwrap_or_else(|_| cfg.level.clone());
    let access = if cfg.access_log { "padis::access=info" } else { "padis::access=off" };
    EnvFilter::try_new(format!("{level},{access}")).map_err(|e| format!("log.level `{level}`: {e}"))
}

/// Installs the global subscriber. The format is fixed for the life of the process; the filter can change.
pub fn init(cfg: &LogConfig) -> LogHandle {
    let f = filter(cfg).unwrap_or_else(|e| {
        eprintln!("padis: {e}; using `info`");
        EnvFilter::new("info")
    });
    let (filter, handle) = reload::Layer::new(f);
    let fmt = match cfg.format {
        LogFormat::Human => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
    LogHandle { reload: handle }
}

impl LogHandle {
    /// Applies a new config's level and access-log switch.
    pub fn apply(&self, cfg: &LogConfig) {
        match filter(cfg) {
            Ok(f) => {
                if let Err(e) = self.reload.reload(f) {
                    tracing::warn!(error = %e, "cannot change the log filter");
                }
            }
            Err(e) => tracing::warn!(error = %e, "log filter unchanged"),
        }
    }
}
