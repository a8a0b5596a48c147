//! `padis run`: load and validate the config (refusing to start on errors), publish the first snapshot,
//! start the admin API, the data planes and the sources, then follow changes until SIGTERM/SIGINT, and shut
//! down gracefully (routes withdrawn first, then listeners closed and in-flight work finished).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use padis_model::{Snapshot, SnapshotStore};
use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config_source::{self, ConfigOrigin};
use crate::metrics::ControlMetrics;
use crate::planes::Planes;
use crate::reconcile::Reconciler;

/// Runs the daemon; `demo` also starts the demo backends. Returns the process exit code.
pub fn main(origin: ConfigOrigin, demo: bool) -> ExitCode {
    // Validate before anything else: an invalid config never starts.
    let valid = match origin.load() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("padis: refusing to start with an invalid config");
            return ExitCode::from(2);
        }
    };
    let log = crate::logging::init(&valid.state.log);
    // One worker: a current-thread runtime (no work-stealing overhead); otherwise a multi-thread one.
    let mut rt = match valid.state.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n);
            }
            b
        }
    };
    let rt = match rt.enable_all().thread_name("padis").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("padis: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(origin, valid, log, demo)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "padis stopped");
            eprintln!("padis: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(
    origin: ConfigOrigin,
    valid: padis_model::Valid,
    log: crate::logging::LogHandle,
    demo: bool,
) -> anyhow::Result<()> {
    if demo {
        crate::demo::start().await.context("demo backends")?;
        tracing::info!(backends = ?crate::demo::DEMO_BACKENDS, "demo backends started");
    }
    let registry = Registry::new();
    let metrics = ControlMetrics::new(&registry)?;
    let store = SnapshotStore::new(Snapshot::empty());
    let reader = store.reader();
    let admin_cfg = valid.state.admin.clone();
    let admin_addr = admin_cfg.listen;
    let reconciler = Arc::new(Mutex::new(Reconciler::new(store, metrics)));
    reconciler.lock().unwrap_or_else(|p| p.into_inner()).apply_config(valid, origin.base_dir())?;
    registry.register(Box::new(crate::metrics::ReloadCollector::new(Arc::downgrade(&reconciler))?))?;

    let shutdown = CancellationToken::new();
    let admin_listener = admin::bind(&admin_cfg, &registry).await.context("admin API")?;
    let reports = crate::planes::Reports::default();
    let drain = Arc::new(Mutex::new(None));
    let extra_registries: admin::ExtraRegistries = Arc::new(Mutex::new(BTreeMap::new()));

    // Data planes and dynamic sources.
    let planes_token = CancellationToken::new();
    let planes = Planes::start(
        reader.clone(),
        &registry,
        reconciler.clone(),
        &reports,
        &drain,
        &extra_registries,
        planes_token.clone(),
    )
    .await?;

    let admin_state = AdminState {
        reconciler: reconciler.clone(),
        origin: origin.clone(),
        registry: registry.clone(),
        extra_registries,
        reports,
        drain,
    };
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, shutdown.clone()));
    let watch_task = tokio::spawn(config_source::watch(origin.clone(), reconciler.clone(), shutdown.clone()));
    let log_task = tokio::spawn(follow_log_config(reader.clone(), log, shutdown.clone()));
    // systemd (Type=notify): ready now that the config, the planes and the admin API are up; then the watchdog.
    let service_task = tokio::spawn(crate::service::run(reader.clone(), reconciler.clone(), shutdown.clone()));
    match &admin_cfg.socket {
        Some(sock) => tracing::info!(admin = %admin_addr, socket = %sock.display(), "padis running"),
        None => tracing::info!(admin = %admin_addr, "padis running"),
    }

    wait_for_stop_signal().await?;
    crate::service::stopping();
    let grace = reader.load().state.limits.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: withdrawing routes, then finishing in-flight work");
    planes.stop(grace, planes_token).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = admin_task.await;
        let _ = watch_task.await;
        let _ = log_task.await;
        let _ = service_task.await;
    })
    .await;
    tracing::info!("padis stopped");
    Ok(())
}

/// Applies `[log]` changes of new snapshots.
async fn follow_log_config(
    mut reader: padis_model::SnapshotReader,
    log: crate::logging::LogHandle,
    stop: CancellationToken,
) {
    let mut current = reader.load().state.log.clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            ok = reader.changed() => if !ok { return },
        }
        let next = reader.load().state.log.clone();
        if next != current {
            log.apply(&next);
            current = next;
        }
    }
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}
