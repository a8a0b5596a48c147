//! The config file as a source: loaded at start, reloaded on SIGHUP and whenever the file changes.
//! A file that fails validation is rejected (logged, counted) and the running state stays.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use padis_model::{parse_config, ConfigErrors, Valid};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::reconcile::Reconciler;

/// The config in use at the start: a file, or the default config embedded in the binary.
#[derive(Debug, Clone)]
pub enum ConfigOrigin {
    /// A file on disk (watched and reloadable).
    File(PathBuf),
    /// `examples/default.toml`, compiled in.
    Embedded,
}

/// The embedded default config (`examples/default.toml`).
pub const EMBEDDED_CONFIG: &str = include_str!("../../examples/default.toml");

impl ConfigOrigin {
    /// Reads and validates the config.
    pub fn load(&self) -> Result<Valid, ConfigErrors> {
        match self {
            ConfigOrigin::File(p) => {
                let text = read_stable(p)?;
                parse_config(&text, &p.display().to_string(), &self.base_dir())
            }
            ConfigOrigin::Embedded => parse_config(EMBEDDED_CONFIG, "<embedded examples/default.toml>", Path::new(".")),
        }
    }

    /// Directory relative paths are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self {
            ConfigOrigin::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".")),
            ConfigOrigin::Embedded => PathBuf::from("."),
        }
    }
}

/// Reads the config file, refusing content that is still being written: the file is read twice a moment
/// apart and must not change in between, and an empty file (a writer that truncated and has not written yet)
/// is an error, never "serve nothing".
fn read_stable(path: &Path) -> Result<String, ConfigErrors> {
    let origin = path.display().to_string();
    let read = || std::fs::read_to_string(path).map_err(|e| ConfigErrors::single(&origin, format!("cannot read: {e}")));
    let mut text = read()?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(25));
        let again = read()?;
        if again == text {
            break;
        }
        text = again;
    }
    if text.trim().is_empty() {
        return Err(ConfigErrors::single(&origin, "the config file is empty (being written?); not applied"));
    }
    Ok(text)
}

/// Loads the config once more and hands it to the reconciler. Returns whether it was accepted.
pub fn reload(origin: &ConfigOrigin, reconciler: &Mutex<Reconciler>, why: &str) -> bool {
    // Zone files are read again too, whether or not the config changed (they are not part of it).
    padis_dns::request_zone_reload();
    let loaded = origin.load();
    let mut r = reconciler.lock().unwrap_or_else(|p| p.into_inner());
    // `apply_config` records its own rejections (a clash with a dynamic source); record load failures here.
    let result = match loaded {
        Ok(v) => r.apply_config(v, origin.base_dir()),
        Err(e) => {
            r.config_rejected(&e);
            Err(e)
        }
    };
    match result {
        Ok(s) => {
            tracing::info!(why, generation = s.generation, "config loaded");
            true
        }
        Err(e) => {
            for err in &e.0 {
                tracing::error!(why, error = %err, "config rejected; the running config stays");
            }
            false
        }
    }
}

/// Reloads on SIGHUP and on changes of the file (debounced), until `shutdown`.
pub async fn watch(origin: ConfigOrigin, reconciler: Arc<Mutex<Reconciler>>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler");
            return;
        }
    };
    // The watcher lives as long as this task.
    let _watcher = match &origin {
        ConfigOrigin::File(path) => file_watcher(path, tx.clone()),
        ConfigOrigin::Embedded => None,
    };
    loop {
        let why = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = hup.recv() => "SIGHUP",
            Some(w) = rx.recv() => {
                // Debounce: editors write files in several steps.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                w
            }
        };
        let origin = origin.clone();
        let r = reconciler.clone();
        let _ = tokio::task::spawn_blocking(move || reload(&origin, &r, why)).await;
    }
}

/// Watches the file's directory (editors and config managers replace files by rename).
fn file_watcher(path: &Path, tx: mpsc::Sender<&'static str>) -> Option<notify::RecommendedWatcher> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path.parent()?.to_path_buf();
    let name = path.file_name()?.to_os_string();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            use notify::event::{AccessKind, AccessMode, ModifyKind};
            use notify::EventKind;
            let relevant = ev.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()));
            // A finished write (close after writing) or a file moved/created into place; not every partial
            // write, which would read a half-written file.
            let kind_ok = matches!(
                ev.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Create(_)
                    | EventKind::Modify(ModifyKind::Name(_))
            );
            if relevant && kind_ok {
                let _ = tx.try_send("file changed");
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; SIGHUP still reloads"))
    .ok()?;
    if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; SIGHUP still reloads");
        return None;
    }
    Some(w)
}
