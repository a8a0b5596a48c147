//! `padis run`: load and validate the config (refusing to start on errors), publish the first snapshot,
//! start the admin API, the data planes and the sources, then follow changes until SIGTERM/SIGINT, and shut
//! down gracefully (routes withdrawn first, then listeners closed and in-flight work finished). SIGUSR2 and
//! `POST /v1/upgrade` start the new binary and hand it over the sockets (see [`crate::upgrade`]); once it
//! serves, this process stops accepting, finishes its in-flight work and exits, leaving routes and the XDP
//! program in place.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::upgrade::{Predecessor, Successor, UpgradeError};

/// Runs the daemon; `demo` also starts the demo backends. Returns the process exit code.
pub fn main(origin: ConfigOrigin, demo: bool) -> ExitCode {
    // Started by an upgrade: the sockets of the process this one replaces come first.
    let successor = match Successor::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("padis: upgrade: {e}");
            return ExitCode::from(1);
        }
    };
    // Where an upgrade starts the new binary from: this one's path now (the package replaces the file there).
    let exe = match std::env::current_exe() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("padis: cannot tell this binary's path ({e}): upgrades will fail");
            None
        }
    };
    let upgrader = Upgrader { exe, args: std::env::args_os().skip(1).collect() };
    // Validate before anything else: an invalid config never starts.
    let valid = match origin.load() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("padis: refusing to start with an invalid config");
            if let Some(s) = &successor {
                s.failed(&format!("invalid config:\n{e}"));
            }
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
            if let Some(s) = &successor {
                s.failed(&format!("cannot start the runtime: {e}"));
            }
            return ExitCode::from(1);
        }
    };
    let mut successor = successor;
    match rt.block_on(run(origin, valid, log, demo, upgrader, &mut successor)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "padis stopped");
            eprintln!("padis: {e:#}");
            if let Some(s) = &successor {
                s.failed(&format!("{e:#}"));
            }
            ExitCode::from(1)
        }
    }
}

/// How to start the new binary: the path and arguments this process was started with.
#[derive(Clone)]
struct Upgrader {
    exe: Option<std::path::PathBuf>,
    args: Vec<std::ffi::OsString>,
}

/// How long a new process has to say it is ready.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

impl Upgrader {
    async fn start(&self) -> Result<Predecessor, UpgradeError> {
        let Some(exe) = self.exe.clone() else {
            return Err(UpgradeError::Spawn {
                exe: "padis".into(),
                source: std::io::Error::other("this binary's path is not known"),
            });
        };
        let args = self.args.clone();
        tokio::task::spawn_blocking(move || Predecessor::start(&exe, &args, UPGRADE_TIMEOUT))
            .await
            .map_err(|e| UpgradeError::Channel(std::io::Error::other(e)))?
    }
}

/// Why the daemon stops.
enum Stop {
    /// SIGTERM/SIGINT: routes withdrawn, then in-flight work finished.
    Signal,
    /// A new process serves: in-flight work finished, routes and XDP left to it.
    Upgraded(Predecessor),
}

async fn run(
    origin: ConfigOrigin,
    valid: padis_model::Valid,
    log: crate::logging::LogHandle,
    demo: bool,
    upgrader: Upgrader,
    successor: &mut Option<Successor>,
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
    // Started by an upgrade: route sessions start once the old process has ended its own (below).
    let mut planes = Planes::start(
        reader.clone(),
        &registry,
        reconciler.clone(),
        &reports,
        &drain,
        &extra_registries,
        planes_token.clone(),
        successor.is_some(),
    )
    .await?;

    let (upgrade_tx, mut upgrade_rx) = tokio::sync::mpsc::channel::<admin::UpgradeReply>(4);
    let admin_state = AdminState {
        reconciler: reconciler.clone(),
        origin: origin.clone(),
        registry: registry.clone(),
        extra_registries,
        reports,
        drain,
        upgrade: Some(upgrade_tx),
    };
    let handed_over = Arc::new(AtomicBool::new(false));
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, shutdown.clone(), handed_over.clone()));
    let watch_task = tokio::spawn(config_source::watch(origin.clone(), reconciler.clone(), shutdown.clone()));
    let log_task = tokio::spawn(follow_log_config(reader.clone(), log, shutdown.clone()));
    // systemd (Type=notify): ready now that the config, the planes and the admin API are up; then the watchdog.
    let service_task = tokio::spawn(crate::service::run(reader.clone(), reconciler.clone(), shutdown.clone()));
    match &admin_cfg.socket {
        Some(sock) => tracing::info!(admin = %admin_addr, socket = %sock.display(), "padis running"),
        None => tracing::info!(admin = %admin_addr, "padis running"),
    }

    if let Some(s) = successor.take() {
        // The old process stops accepting once it hears this one serves; sockets this config does not name
        // are closed then (a Marathon service port waits for the source's first sync).
        let received = s.received;
        let released = tokio::task::spawn_blocking(move || s.ready(Duration::from_secs(10))).await.unwrap_or(false);
        tracing::info!(received, released, "upgrade: serving; the previous process stops accepting");
        crate::service::ready_again(&reconciler);
        // The old process's route sessions are closed (graceful restart keeps the routes at the routers): ours
        // take over.
        planes.start_routing(true)?;
        tokio::spawn(close_unclaimed(reader.clone(), reconciler.clone()));
    }

    let stop = wait_for_stop(&upgrader, &mut upgrade_rx).await?;
    let grace = reader.load().state.limits.shutdown_grace;
    match stop {
        Stop::Signal => {
            crate::service::stopping();
            tracing::info!(grace = ?grace, "shutting down: withdrawing routes, then finishing in-flight work");
            planes.stop(grace, planes_token).await;
        }
        Stop::Upgraded(p) => {
            crate::service::handed_over(p.handover.pid);
            handed_over.store(true, Ordering::Release);
            // The admin API (the new process accepts on its sockets), the config watcher and the service
            // manager's protocol are the new process's now.
            shutdown.cancel();
            tracing::info!(grace = ?grace, pid = p.handover.pid,
                "upgraded: stopping accepting, finishing in-flight work; routes and XDP stay with the new process");
            // The route sessions end first (the new process opens its own), then the new one is told, then
            // accepting stops (it accepts on the same sockets) and in-flight work finishes.
            planes.hand_over(grace, planes_token, move || p.release()).await;
        }
    }
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

/// Waits for SIGTERM/SIGINT, or a successful upgrade (SIGUSR2, `POST /v1/upgrade`); a failed upgrade is
/// logged (and answered) and this process serves on.
async fn wait_for_stop(
    upgrader: &Upgrader,
    requests: &mut tokio::sync::mpsc::Receiver<admin::UpgradeReply>,
) -> anyhow::Result<Stop> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    loop {
        let reply = tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM");
                return Ok(Stop::Signal);
            }
            _ = int.recv() => {
                tracing::info!("SIGINT");
                return Ok(Stop::Signal);
            }
            _ = usr2.recv() => {
                tracing::info!("SIGUSR2: upgrading");
                None
            }
            Some(reply) = requests.recv() => {
                tracing::info!("upgrade requested (admin API)");
                Some(reply)
            }
        };
        match upgrader.start().await {
            Ok(p) => {
                tracing::info!(
                    pid = p.handover.pid,
                    sockets = p.handover.sockets,
                    taken = p.handover.taken,
                    "upgrade: the new process is ready"
                );
                if let Some(r) = reply {
                    let _ = r.send(Ok(p.handover.clone()));
                }
                // Requests that came meanwhile: this process is the old one now.
                while let Ok(r) = requests.try_recv() {
                    let _ = r.send(Err(UpgradeError::Busy.to_string()));
                }
                return Ok(Stop::Upgraded(p));
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade failed: this process serves on");
                if let Some(r) = reply {
                    let _ = r.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Closes the sockets handed over that this process's config does not name, once it has had the chance to
/// take them: at once without Marathon, otherwise after the source's first good sync (its service ports), 60 s
/// at most.
async fn close_unclaimed(mut reader: padis_model::SnapshotReader, reconciler: Arc<Mutex<Reconciler>>) {
    if reader.load().state.marathon.is_some() {
        let synced = || {
            let r = reconciler.lock().unwrap_or_else(|p| p.into_inner());
            r.sources().get("marathon").is_some_and(|c| c.status.ok)
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), async {
            while !synced() {
                tokio::select! {
                    _ = reader.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
        .await;
        // The L7 plane binds the new listeners right after the snapshot is published.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let left = padis_model::handover::close_unclaimed();
    if !left.is_empty() {
        let left: Vec<String> = left.iter().map(ToString::to_string).collect();
        tracing::info!(sockets = ?left, "upgrade: sockets the config no longer names closed");
    }
}
