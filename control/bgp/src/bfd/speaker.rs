//! The BFD task: every peer's session, their timers and the sockets. Received packets are checked (TTL 255,
//! codec checks), demultiplexed by Your Discriminator (or by source address while it is 0), and fed to the
//! session; what is dropped is counted by reason. [`start`] runs it on its own thread with its own runtime
//! (sockets and timers included), so that only the BGP sessions wait when the daemon's runtime is busy.

use std::net::IpAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, info, warn};

use super::packet::{ControlPacket, State};
use super::session::{Machine, Timers, Transition};
use super::socket::{self, Received, GTSM_TTL};
use super::{BfdError, BfdLink, BfdReport, Command};
use crate::status::Metrics;

/// Starts the BFD task on a thread of its own (`padis-bfd`, a current-thread runtime that owns the sockets and
/// timers) and returns once its sockets are open: a future that resolves when the task has ended (every
/// [`BfdLink`] dropped and the AdminDowns sent), and each peer's link (the order of `peers`).
pub(crate) fn start(
    timers: Timers,
    peers: &[IpAddr],
    local: Option<IpAddr>,
    metrics: Metrics,
) -> Result<(impl std::future::Future<Output = ()> + Send + 'static, Vec<BfdLink>), BfdError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let peers = peers.to_vec();
    std::thread::Builder::new()
        .name("padis-bfd".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(BfdError::Thread(e)));
                    return;
                }
            };
            // Sockets register with the reactor of the runtime they are created in: this one.
            match rt.block_on(async { Speaker::new(timers, &peers, local, metrics) }) {
                Ok((speaker, links)) => {
                    let _ = ready_tx.send(Ok(links));
                    rt.block_on(speaker.run());
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
            let _ = done_tx.send(());
        })
        .map_err(BfdError::Thread)?;
    let links = ready_rx
        .recv()
        .map_err(|_| BfdError::Thread(std::io::Error::other("the BFD thread ended while starting")))??;
    Ok((
        async move {
            let _ = done_rx.await;
        },
        links,
    ))
}

/// AdminDown packets sent when Padis stops (the router needs to hear one).
const ADMIN_DOWN_REPEAT: u32 = 3;

struct Peer {
    addr: IpAddr,
    label: String,
    tx: UdpSocket,
    m: Machine,
    status: watch::Sender<BfdReport>,
}

/// The BFD task of an announcer.
struct Speaker {
    peers: Vec<Peer>,
    rx4: Option<UdpSocket>,
    rx6: Option<UdpSocket>,
    cmds: mpsc::Receiver<Command>,
    metrics: Metrics,
}

impl Speaker {
    /// Opens the sockets and creates one session per address in `peers`; returns the task and each peer's
    /// link (same order).
    fn new(
        timers: Timers,
        peers: &[IpAddr],
        local: Option<IpAddr>,
        metrics: Metrics,
    ) -> Result<(Speaker, Vec<BfdLink>), BfdError> {
        let rx4 = peers
            .iter()
            .any(IpAddr::is_ipv4)
            .then(|| socket::bind_receiver(false, local.filter(IpAddr::is_ipv4)))
            .transpose()?;
        let rx6 = peers
            .iter()
            .any(IpAddr::is_ipv6)
            .then(|| socket::bind_receiver(true, local.filter(IpAddr::is_ipv6)))
            .transpose()?;
        let (cmd_tx, cmds) = mpsc::channel(peers.len().max(1));
        let now = Instant::now();
        let mut out = Vec::new();
        let mut links = Vec::new();
        for (index, &addr) in peers.iter().enumerate() {
            let tx = socket::bind_sender(addr, local.filter(|l| l.is_ipv4() == addr.is_ipv4()))?;
            // A random non-zero discriminator, unique among our sessions.
            let discr = loop {
                let d = fastrand::u32(1..);
                if out.iter().all(|p: &Peer| p.m.local_discr() != d) {
                    break d;
                }
            };
            let m = Machine::new(discr, timers, now);
            let (status, rx) = watch::channel(report(&m));
            let label = addr.to_string();
            metrics.bfd_up.with_label_values(&[&label]).set(0);
            out.push(Peer { addr, label, tx, m, status });
            links.push(BfdLink { index, status: rx, cmds: cmd_tx.clone() });
        }
        for reason in ["ttl", "malformed", "discriminator", "unknown_peer"] {
            metrics.bfd_dropped.with_label_values(&[reason]).inc_by(0);
        }
        let s = Speaker { peers: out, rx4, rx6, cmds, metrics };
        Ok((s, links))
    }

    /// Runs until every BGP session has ended (dropping its [`BfdLink`]); then puts every BFD session still
    /// running AdminDown (a BGP session does so itself after its Cease).
    async fn run(mut self) {
        let mut buf4 = [0u8; 512];
        let mut buf6 = [0u8; 512];
        loop {
            let wake = self.peers.iter().filter_map(|p| p.m.next_event()).min();
            tokio::select! {
                r = recv(self.rx4.as_ref(), &mut buf4) => self.datagram(r, &buf4),
                r = recv(self.rx6.as_ref(), &mut buf6) => self.datagram(r, &buf6),
                _ = sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    for i in 0..self.peers.len() {
                        self.service(i);
                    }
                }
                c = self.cmds.recv() => match c {
                    Some(Command::AdminDown { peer, done }) => {
                        self.admin_down(peer);
                        let _ = done.send(());
                    }
                    None => break,
                },
            }
        }
        for i in 0..self.peers.len() {
            self.admin_down(i);
        }
        let spacing = self
            .peers
            .iter()
            .map(|p| p.m.tx_interval())
            .min()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_millis(100));
        for _ in 1..ADMIN_DOWN_REPEAT {
            sleep(spacing).await;
            for i in 0..self.peers.len() {
                let pkt = self.peers[i].m.transmit(Instant::now());
                self.send(i, &pkt);
            }
        }
    }

    fn admin_down(&mut self, i: usize) {
        let now = Instant::now();
        if let Some(t) = self.peers.get_mut(i).and_then(|p| p.m.admin_down(now)) {
            self.transition(i, t);
            self.service(i);
        }
    }

    /// Runs a session's timers: detection time, periodic / pending transmission; publishes its report.
    fn service(&mut self, i: usize) {
        let (t, pkt) = self.peers[i].m.poll_timers(Instant::now());
        if let Some(t) = t {
            self.transition(i, t);
        }
        if let Some(pkt) = pkt {
            self.send(i, &pkt);
        }
        let p = &self.peers[i];
        let r = report(&p.m);
        p.status.send_if_modified(|cur| {
            let changed = *cur != r;
            *cur = r;
            changed
        });
    }

    fn send(&self, i: usize, pkt: &ControlPacket) {
        let p = &self.peers[i];
        if let Err(e) = p.tx.try_send(&pkt.encode()) {
            debug!(peer = %p.addr, error = %e, "BFD: send failed");
        }
    }

    fn transition(&self, i: usize, t: Transition) {
        let p = &self.peers[i];
        let to = t.to.to_string();
        self.metrics.bfd_transitions.with_label_values(&[&p.label, &to]).inc();
        self.metrics.bfd_up.with_label_values(&[&p.label]).set(i64::from(t.to == State::Up));
        if t.failure {
            warn!(peer = %p.addr, from = %t.from, to = %t.to, diag = ?t.diag, "BFD session failed");
        } else {
            info!(peer = %p.addr, from = %t.from, to = %t.to, diag = ?t.diag, "BFD session state");
        }
    }

    fn drop_packet(&self, reason: &str, from: std::net::SocketAddr, detail: &dyn std::fmt::Display) {
        self.metrics.bfd_dropped.with_label_values(&[reason]).inc();
        debug!(%from, reason, %detail, "BFD packet dropped");
    }

    fn datagram(&mut self, r: std::io::Result<Received>, buf: &[u8]) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "BFD receive");
                return;
            }
        };
        if r.ttl != Some(GTSM_TTL) {
            let ttl = r.ttl.map(|t| t.to_string()).unwrap_or_else(|| "unknown".into());
            return self.drop_packet("ttl", r.from, &format_args!("TTL {ttl}, 255 required (GTSM)"));
        }
        let pkt = match ControlPacket::decode(&buf[..r.len.min(buf.len())]) {
            Ok(p) => p,
            Err(e) => return self.drop_packet("malformed", r.from, &e),
        };
        let ip = r.from.ip();
        let found = if pkt.your_discr != 0 {
            self.peers.iter().position(|p| p.m.local_discr() == pkt.your_discr && p.addr == ip)
        } else {
            self.peers.iter().position(|p| p.addr == ip)
        };
        let Some(i) = found else {
            let (reason, what) = if pkt.your_discr != 0 {
                ("discriminator", format!("Your Discriminator {} is none of ours", pkt.your_discr))
            } else {
                ("unknown_peer", "not a BFD peer".to_string())
            };
            return self.drop_packet(reason, r.from, &what);
        };
        if let Some(t) = self.peers[i].m.receive(&pkt, Instant::now()) {
            self.transition(i, t);
        }
        self.service(i);
    }
}

fn report(m: &Machine) -> BfdReport {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    BfdReport {
        state: m.state(),
        remote_state: m.remote_state(),
        diag: m.diag(),
        remote_diag: m.remote_diag(),
        local_discriminator: m.local_discr(),
        remote_discriminator: m.remote_discr(),
        tx_interval_ms: ms(m.tx_interval()),
        detection_time_ms: ms(m.detection_time()),
        failures: m.failures(),
    }
}

async fn recv(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<Received> {
    match sock {
        Some(s) => socket::recv(s, buf).await,
        None => std::future::pending().await,
    }
}
