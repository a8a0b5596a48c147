//! The service manager's protocol (systemd `Type=notify`, see dist/systemd/padis.service): `READY=1` once the
//! config is loaded and every plane and the admin API are up, `STATUS=` with the generation in force and the
//! last reload's result, `WATCHDOG=1` at half of `WatchdogSec` while the runtime and the reconciler answer, and
//! `STOPPING=1` when a graceful stop begins. Without `NOTIFY_SOCKET` in the environment nothing is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use padis_model::SnapshotReader;
use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::reconcile::Reconciler;

/// Sends `states` to the service manager; a failure is logged (the daemon serves on regardless).
fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The one-line status the service manager shows (`systemctl status padis`).
fn status_line(reconciler: &Mutex<Reconciler>) -> String {
    let r = reconciler.lock().unwrap_or_else(|p| p.into_inner());
    let generation = r.store().load().generation;
    let reload = r.reload_status();
    if reload.ok {
        format!("serving generation {generation}; last reload ok")
    } else {
        format!(
            "serving generation {generation}; LAST RELOAD FAILED ({} errors, see padis status)",
            reload.errors.len()
        )
    }
}

/// Tells the service manager that Padis is ready, then keeps its status line current and feeds its watchdog
/// until `stop`. Call once everything is started.
pub async fn run(mut reader: SnapshotReader, reconciler: Arc<Mutex<Reconciler>>, stop: CancellationToken) {
    let mut status = status_line(&reconciler);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    tracing::debug!(status, "service manager notified: ready");
    // systemd asks for a ping every WATCHDOG_USEC; pinging at half of it leaves room for a slow tick.
    let period = sd_notify::watchdog_enabled().map(|d| (d / 2).max(Duration::from_millis(100)));
    let mut ping = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A refused reload publishes no snapshot: the status line is also checked every second.
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ping.tick(), if period.is_some() => {
                // The ping proves the runtime runs and the reconciler (held by every reload and source update)
                // is not stuck: a lock held past the period misses the ping, and systemd restarts Padis.
                let r = reconciler.clone();
                let probe = tokio::task::spawn_blocking(move || drop(r.lock().unwrap_or_else(|p| p.into_inner())));
                match tokio::time::timeout(period.unwrap_or_default(), probe).await {
                    Ok(Ok(())) => send(&[NotifyState::Watchdog]),
                    _ => tracing::error!("the reconciler did not answer within the watchdog period: no ping sent"),
                }
                continue;
            }
            _ = check.tick() => {}
            ok = reader.changed() => if !ok { return },
        }
        let now = status_line(&reconciler);
        if now != status {
            send(&[NotifyState::Status(&now)]);
            status = now;
        }
    }
}

/// Tells the service manager that a graceful stop has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: withdrawing routes, finishing in-flight work")]);
}

/// Tells the service manager that the new process `pid` of an upgrade is the main process now.
pub fn handed_over(pid: u32) {
    let status = format!("upgraded: process {pid} serves; this one finishes its in-flight work");
    send(&[NotifyState::MainPid(pid), NotifyState::Status(&status)]);
}

/// After an upgrade, once the old process has made this one the main process: ready (the first `READY=1` came
/// before the service manager would take it from this process).
pub fn ready_again(reconciler: &Mutex<Reconciler>) {
    send(&[NotifyState::Ready, NotifyState::Status(&status_line(reconciler))]);
}
