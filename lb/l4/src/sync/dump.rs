//! Bulk dump of the connection table, at a bounded rate, on a blocking thread (map iteration is one syscall per
//! entry): to one peer that (re)starts, or to every peer as a periodic re-announcement (anti-entropy).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Origin, SyncKey, WireFlow, MAX_RECORDS};
use super::index::SyncIndex;
use super::SyncMetrics;

/// Why a dump is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A peer (re)started: it gets the whole table.
    Dump,
    /// Periodic re-announcement to every peer (records lost on UDP or on a full ring).
    Refresh,
}

/// One dump to do.
pub(super) struct DumpJob {
    pub purpose: Purpose,
    pub conntrack: crate::conntrack::ConnTable,
    pub index: watch::Receiver<Arc<SyncIndex>>,
    /// Local address to send from (port 0: any).
    pub from: SocketAddr,
    pub to: Vec<SocketAddr>,
    pub key: Arc<SyncKey>,
    pub origin: Arc<Origin>,
    /// Records per second.
    pub rate: u32,
    /// Most entries visited (the table's size: iteration restarts if entries vanish under it).
    pub max: u32,
    pub metrics: SyncMetrics,
    pub stop: CancellationToken,
}

/// Sends the whole table to every address of `job.to`; returns the number of records sent.
pub(super) fn run(job: DumpJob) -> u64 {
    let sock = match UdpSocket::bind(job.from) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "sync dump: no socket");
            job.stop.cancel();
            return 0;
        }
    };
    let index = job.index.borrow().clone();
    let per_datagram = Duration::from_secs_f64(MAX_RECORDS as f64 / job.rate.max(1) as f64);
    let mut next = Instant::now();
    let mut batch = Vec::with_capacity(MAX_RECORDS);
    let mut sent = 0u64;
    let mut send = |batch: &mut Vec<WireFlow>| {
        for d in codec::encode_flows(&job.origin, batch, &job.key) {
            for to in &job.to {
                if sock.send_to(&d, to).is_err() {
                    job.metrics.send_errors.inc();
                }
            }
        }
        job.metrics.sent.inc_by(batch.len() as u64);
        sent += batch.len() as u64;
        batch.clear();
        next += per_datagram;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    };
    let dest = |id| index.dest(id);
    for (k, st) in job.conntrack.entries(&dest).take(job.max as usize) {
        if job.stop.is_cancelled() {
            break;
        }
        match index.backend_addr(st.backend) {
            Some(backend) => batch.push(WireFlow { key: k, backend }),
            None => job.metrics.skipped.with_label_values(&["stale_backend"]).inc(),
        }
        if batch.len() == MAX_RECORDS {
            send(&mut batch);
        }
    }
    if !batch.is_empty() && !job.stop.is_cancelled() {
        send(&mut batch);
    }
    match job.purpose {
        Purpose::Dump => {
            if !job.stop.is_cancelled() {
                // Tells the receiver it now knows our whole table (it may be waiting for that to be announced).
                match codec::encode(&job.origin.message(codec::Body::DumpDone), &job.key) {
                    Ok(d) => {
                        for to in &job.to {
                            if sock.send_to(&d, to).is_err() {
                                job.metrics.send_errors.inc();
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "sync: dump end not encoded"),
                }
            }
            tracing::info!(peers = ?job.to, records = sent, "sync: connection table dump sent")
        }
        Purpose::Refresh => {
            if !job.stop.is_cancelled() {
                job.metrics.refresh_passes.inc();
            }
            tracing::debug!(peers = ?job.to, records = sent, "sync: connection table re-announced");
        }
    }
    job.stop.cancel();
    sent
}
