//! One BGP peer: the RFC 4271 state machine (announce-only), its timers and reconnect with back-off; the
//! Adj-RIB-Out ([`crate::rib`]) is kept in step with the wanted route set by sending only diffs.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use padis_model::bgp::{BgpConfig, BgpPeer};
use rustbgpd_wire::{Message, NotificationCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use crate::bfd::{self, BfdLink};
use crate::error::SessionError;
use crate::rib::{Nexthops, Rib, Writer};
use crate::status::{PeerStatus, SessionState};
use crate::wire::{self, PathParams, PeerOpen, GRACEFUL_SHUTDOWN};
use crate::Announcement;

/// What the whole announcer is doing; sessions follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Announce the wanted routes.
    Run,
    /// Re-announce with GRACEFUL_SHUTDOWN and lowered preference.
    Drain,
    /// Withdraw everything, send Cease, stop.
    Stop,
}

/// Hold time while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// The longest a restarted session waits for a route to announce before its End-of-RIB.
const EOR_SETTLE: Duration = Duration::from_secs(30);
/// Cease subcode "BFD Down" (RFC 9384).
const CEASE_BFD_DOWN: u8 = 10;
/// LOCAL_PREF / MED used while draining (RFC 8326: lowest preference).
const DRAIN_LOCAL_PREF: u32 = 0;
const DRAIN_MED: u32 = u32::MAX;

/// Messages (or the read error that ended them) from the connection's reader task.
type Incoming = mpsc::Receiver<Result<Message, SessionError>>;

/// A peer's session task.
pub(crate) struct Session {
    pub cfg: Arc<BgpConfig>,
    pub peer: BgpPeer,
    pub routes: watch::Receiver<BTreeSet<Announcement>>,
    pub phase: watch::Receiver<Phase>,
    pub status: PeerStatus,
    /// Connections accepted for a passive peer.
    pub incoming: Option<mpsc::Receiver<TcpStream>>,
    /// The peer's BFD session (`bfd = true`).
    pub bfd: Option<BfdLink>,
    /// This process took the session over from one that handed it over (an upgrade): the next OPEN says so
    /// (graceful restart), and its End-of-RIB waits for the routes.
    pub restarting: bool,
}

impl Session {
    /// Runs until the phase becomes [`Phase::Stop`].
    pub(crate) async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            if self.stopping() {
                break;
            }
            let conn = self.connect().await;
            let mut established = false;
            let result = match conn {
                Ok(stream) => self.session(stream, &mut established).await,
                Err(e) => Err(e),
            };
            match &result {
                Err(SessionError::Stopped) => {
                    self.status.down(None, established);
                    break;
                }
                Err(e) => {
                    if established {
                        warn!(peer = %self.peer.address, error = %e, "BGP session down");
                    } else {
                        debug!(peer = %self.peer.address, error = %e, "BGP session failed");
                    }
                    self.status.down(Some(e.to_string()), established);
                }
                Ok(()) => self.status.down(None, established),
            }
            failures = if established { 0 } else { failures.saturating_add(1) };
            // A passive peer decides when to come back: only a short pause, so its next attempt is not left
            // waiting in the accept queue.
            let backoff = if self.incoming.is_some() {
                Duration::from_millis(100)
            } else {
                self.cfg.connect_retry * 2u32.pow(failures.min(3))
            };
            tokio::select! {
                _ = sleep(backoff) => {}
                _ = wait_stop(&mut self.phase) => break,
            }
        }
    }

    fn stopping(&self) -> bool {
        *self.phase.borrow() == Phase::Stop
    }

    async fn connect(&mut self) -> Result<TcpStream, SessionError> {
        let addr = SocketAddr::new(self.peer.address, self.peer.port);
        if let Some(rx) = self.incoming.as_mut() {
            self.status.set_state(SessionState::Active);
            return tokio::select! {
                s = rx.recv() => s.ok_or(SessionError::Stopped),
                _ = wait_stop(&mut self.phase) => Err(SessionError::Stopped),
            };
        }
        self.status.set_state(SessionState::Connect);
        let sock = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(local) = self.cfg.local_address {
            sock.bind(SocketAddr::new(local, 0))?;
        }
        // Before the SYN: it must carry the signature (and TTL 255), and the answer is checked.
        if let Some(key) = &self.peer.password {
            crate::sockopt::set_md5(&sock, addr.ip(), key.expose().as_bytes())
                .map_err(|source| SessionError::SocketOption { what: "TCP MD5 key", source })?;
        }
        if self.peer.gtsm {
            crate::sockopt::set_gtsm(&sock, addr.ip())
                .map_err(|source| SessionError::SocketOption { what: "GTSM", source })?;
        }
        let wait = self.cfg.connect_retry.max(Duration::from_secs(3));
        tokio::select! {
            r = timeout(wait, sock.connect(addr)) => match r {
                Ok(s) => Ok(s?),
                Err(_) => Err(SessionError::ConnectTimeout(self.peer.address)),
            },
            _ = wait_stop(&mut self.phase) => Err(SessionError::Stopped),
        }
    }

    /// One TCP connection, from OPEN to its end. `established` tells the caller whether to count a flap.
    async fn session(&mut self, stream: TcpStream, established: &mut bool) -> Result<(), SessionError> {
        let _ = stream.set_nodelay(true);
        let ebgp = !self.peer.is_ibgp(self.cfg.asn);
        // Single-hop eBGP sends with TTL 1 (hop limit 1), like routers do; `multihop` raises it; GTSM sends 255
        // (and an accepted connection gets its minimum TTL here when the listener could not have it).
        if self.peer.gtsm {
            crate::sockopt::set_gtsm(&stream, self.peer.address)
                .map_err(|source| SessionError::SocketOption { what: "GTSM", source })?;
        }
        let ttl = match (self.peer.gtsm, self.peer.multihop) {
            (true, _) => crate::sockopt::GTSM_TTL,
            (false, Some(t)) => u32::from(t),
            (false, None) if ebgp => 1,
            (false, None) => 64,
        };
        let sock = socket2::SockRef::from(&stream);
        let set = if stream.local_addr()?.is_ipv4() { sock.set_ttl_v4(ttl) } else { sock.set_unicast_hops_v6(ttl) };
        if let Err(e) = set {
            debug!(peer = %self.peer.address, error = %e, "BGP: cannot set TTL");
        }
        let local = stream.local_addr()?.ip();
        let (mut rd, wr) = stream.into_split();
        let mut out = Writer {
            wr: Box::new(wr),
            status: self.status.clone(),
            // RFC 9687 (send hold timer): a peer that stops reading must not wedge the session.
            timeout: (self.cfg.hold_time * 2).max(Duration::from_secs(30)),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let reader = tokio::spawn(async move {
            loop {
                let m = wire::read_message(&mut rd).await;
                let end = m.is_err();
                if tx.send(m).await.is_err() || end {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(reader);

        let hold = u16::try_from(self.cfg.hold_time.as_secs()).unwrap_or(u16::MAX);
        let gr = self.cfg.graceful_restart.map(|t| (u16::try_from(t.as_secs()).unwrap_or(4095), self.restarting));
        out.send(&wire::open(self.cfg.asn, hold, self.cfg.router_id, gr)).await?;
        // End-of-RIB to send once Established: whether this process restarted, and when it is due at the latest.
        let mut eor: Option<(bool, Instant)> = None;
        self.status.set_state(SessionState::OpenSent);
        let mut hold_deadline = Some(Instant::now() + OPEN_HOLD);
        let mut hold_time: Option<Duration> = None;
        let mut keepalive_at = Instant::now() + OPEN_HOLD;
        let mut state = SessionState::OpenSent;
        let mut rib = Rib::default();
        let mut params: Option<(PeerOpen, Nexthops)> = None;
        let mut stop_rx = self.phase.clone();
        // BFD is not waited for, but once it has been Up, its next failure ends this session (RFC 5882).
        let mut bfd_rx = self.bfd.as_ref().map(BfdLink::watch);
        let bfd_seen = bfd_rx.as_ref().map(|r| r.borrow().failures).unwrap_or(0);

        loop {
            tokio::select! {
                m = rx.recv() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(SessionError::Decode(e))) => {
                            let (code, sub, data) = e.to_notification();
                            let _ = out.send(&wire::notification(code.as_u8(), sub, data)).await;
                            return Err(e.into());
                        }
                        Some(Err(e)) => return Err(e),
                        None => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
                    };
                    if let Some(h) = hold_time {
                        hold_deadline = Some(Instant::now() + h);
                    }
                    match (state, m) {
                        (_, Message::Notification(n)) => {
                            let code = n.code.as_u8();
                            return Err(SessionError::PeerNotification {
                                code,
                                subcode: n.subcode,
                                text: rustbgpd_wire::notification::description(n.code, n.subcode),
                            });
                        }
                        (SessionState::OpenSent, Message::Open(o)) => {
                            let po = match wire::check_open(&o, self.peer.asn, self.cfg.router_id, hold, !ebgp) {
                                Ok(p) => p,
                                Err(r) => {
                                    let _ = out.send(&r.notification()).await;
                                    return Err(SessionError::BadOpen(r.reason));
                                }
                            };
                            out.send(&Message::Keepalive).await?;
                            hold_time = (po.hold_secs > 0).then(|| Duration::from_secs(po.hold_secs.into()));
                            // Hold time 0 (negotiated): no hold timer and no keepalives.
                            hold_deadline = hold_time.map(|h| Instant::now() + h);
                            keepalive_at = Instant::now() + keepalive_interval(hold_time);
                            self.status.set_hold(po.hold_secs);
                            state = SessionState::OpenConfirm;
                            self.status.set_state(state);
                            let nh = Nexthops::new(&self.peer, local);
                            params = Some((po, nh));
                        }
                        (SessionState::OpenConfirm, Message::Keepalive) => {
                            state = SessionState::Established;
                            self.status.set_state(state);
                            *established = true;
                            if let Some((po, _)) = &params {
                                info!(peer = %self.peer.address, asn = po.asn, hold = po.hold_secs, "BGP session established");
                            }
                            // A restarted speaker's End-of-RIB ends the router's wait for our routes (RFC 4724):
                            // it waits until a route is announced, half the restart time at most.
                            // (Otherwise right after the first UPDATEs: the timer is only a backstop.)
                            let settle = match (self.restarting, self.cfg.graceful_restart) {
                                (true, Some(t)) => (t / 2).min(EOR_SETTLE),
                                _ => Duration::from_secs(1),
                            };
                            // (Sent with graceful restart only: it is part of it, RFC 4724 section 2.)
                            if self.cfg.graceful_restart.is_some() {
                                eor = Some((self.restarting, Instant::now() + settle));
                            }
                            self.restarting = false;
                            self.routes.mark_changed();
                            if *self.phase.borrow() != Phase::Run {
                                self.phase.mark_changed();
                            }
                        }
                        (SessionState::Established, Message::Keepalive) => {}
                        (SessionState::Established, Message::Update(_)) => {
                            // Announce-only: routes the peer sends us are ignored.
                        }
                        (SessionState::Established, Message::RouteRefresh(_)) => {
                            if let Some((po, nh)) = &params {
                                let draining = *self.phase.borrow() != Phase::Run;
                                let all: Vec<IpNet> = rib.out.keys().copied().collect();
                                rib.out.clear();
                                rib.sync(&mut out, all.into_iter().collect(), po, nh, self.path(po, draining), draining).await?;
                            }
                        }
                        (s, m) => {
                            let _ = out.send(&wire::notification(NotificationCode::FsmError.as_u8(), fsm_subcode(s), Bytes::new())).await;
                            return Err(SessionError::Fsm(msg_name(&m), state_name(s)));
                        }
                    }
                }
                _ = sleep_until(hold_deadline.unwrap_or_else(Instant::now)), if hold_deadline.is_some() => {
                    let _ = out.send(&wire::notification(NotificationCode::HoldTimerExpired.as_u8(), 0, Bytes::new())).await;
                    return Err(SessionError::HoldTimerExpired);
                }
                _ = sleep_until(keepalive_at), if state != SessionState::OpenSent && hold_time.is_some() => {
                    out.send(&Message::Keepalive).await?;
                    keepalive_at = Instant::now() + keepalive_interval(hold_time);
                }
                r = self.routes.changed(), if state == SessionState::Established => {
                    if r.is_err() {
                        return self.stop(&mut out, &mut rx, &mut rib, &params).await;
                    }
                    let want: BTreeSet<IpNet> = self.routes.borrow_and_update().iter().map(|a| a.prefix).collect();
                    let some = !want.is_empty();
                    if let Some((po, nh)) = &params {
                        let draining = *self.phase.borrow() != Phase::Run;
                        rib.sync(&mut out, want, po, nh, self.path(po, draining), draining).await?;
                        if eor.is_some_and(|(restarted, _)| !restarted || some) {
                            eor = None;
                            send_end_of_rib(&mut out, po).await?;
                        }
                    }
                }
                _ = sleep_until(eor.map_or_else(Instant::now, |e| e.1)), if eor.is_some() && state == SessionState::Established => {
                    eor = None;
                    if let Some((po, _)) = &params {
                        info!(peer = %self.peer.address, "BGP: nothing to announce yet after the restart: End-of-RIB sent");
                        send_end_of_rib(&mut out, po).await?;
                    }
                }
                r = self.phase.changed(), if state == SessionState::Established => {
                    let phase = if r.is_err() { Phase::Stop } else { *self.phase.borrow_and_update() };
                    match phase {
                        Phase::Stop => return self.stop(&mut out, &mut rx, &mut rib, &params).await,
                        Phase::Drain | Phase::Run => {
                            if let Some((po, nh)) = &params {
                                let draining = phase == Phase::Drain;
                                let want: BTreeSet<IpNet> = self.routes.borrow().iter().map(|a| a.prefix).collect();
                                // Re-announces everything with the new attributes, withdraws what left.
                                rib.sync(&mut out, want, po, nh, self.path(po, draining), draining).await?;
                                if draining {
                                    info!(peer = %self.peer.address, routes = rib.out.len(), "BGP: GRACEFUL_SHUTDOWN announced");
                                }
                            }
                        }
                    }
                }
                _ = bfd::failed_after(bfd_rx.as_mut(), bfd_seen) => {
                    warn!(peer = %self.peer.address, state = state_name(state), "BFD session failed: closing the BGP session");
                    let _ = out.send(&wire::notification(NotificationCode::Cease.as_u8(), CEASE_BFD_DOWN, Bytes::new())).await;
                    let _ = out.wr.shutdown().await;
                    return Err(SessionError::BfdDown);
                }
                _ = wait_stop(&mut stop_rx), if state != SessionState::Established => {
                    let _ = out.send(&cease()).await;
                    self.close_then_admin_down(&mut out, &mut rx).await;
                    return Err(SessionError::Stopped);
                }
            }
        }
    }

    fn path(&self, po: &PeerOpen, draining: bool) -> PathParams {
        let ebgp = !self.peer.is_ibgp(self.cfg.asn);
        PathParams {
            local_asn: self.cfg.asn,
            ebgp,
            four_octet: po.four_octet,
            med: if draining { Some(DRAIN_MED) } else { self.cfg.med },
            local_pref: (!ebgp && draining).then_some(DRAIN_LOCAL_PREF),
            communities: if draining { vec![GRACEFUL_SHUTDOWN] } else { vec![] },
        }
    }

    /// Withdraws everything, sends Cease / Administrative Shutdown.
    async fn stop(
        &self,
        out: &mut Writer,
        rx: &mut Incoming,
        rib: &mut Rib,
        params: &Option<(PeerOpen, Nexthops)>,
    ) -> Result<(), SessionError> {
        if let Some((po, nh)) = params {
            rib.sync(out, BTreeSet::new(), po, nh, self.path(po, true), true).await?;
        }
        out.send(&cease()).await?;
        self.close_then_admin_down(out, rx).await;
        info!(peer = %self.peer.address, "BGP session closed (administrative shutdown)");
        Err(SessionError::Stopped)
    }

    /// After our Cease: closes our side, waits (1 s at most) until the router closes its side, i.e. has taken
    /// the Cease, and only then puts BFD AdminDown. Routers that follow RFC 5882 ignore the order, but BIRD 2.0
    /// tears BGP down on any BFD Down, AdminDown included, and would log the graceful stop as "BFD session
    /// down" if the AdminDown came first.
    async fn close_then_admin_down(&self, out: &mut Writer, rx: &mut Incoming) {
        let _ = out.wr.shutdown().await;
        let Some(b) = &self.bfd else { return };
        let _ = timeout(Duration::from_secs(1), async { while let Some(Ok(_)) = rx.recv().await {} }).await;
        b.admin_down().await;
    }
}

/// The End-of-RIB markers of the families negotiated.
async fn send_end_of_rib(out: &mut Writer, po: &PeerOpen) -> Result<(), SessionError> {
    for m in wire::end_of_rib(po.ipv4, po.ipv6, po.four_octet)? {
        out.send(&m).await?;
    }
    Ok(())
}

fn cease() -> Message {
    wire::notification(NotificationCode::Cease.as_u8(), 2, Bytes::new())
}

async fn wait_stop(phase: &mut watch::Receiver<Phase>) {
    loop {
        if *phase.borrow_and_update() == Phase::Stop {
            return;
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}

fn keepalive_interval(hold: Option<Duration>) -> Duration {
    hold.map(|h| h / 3).unwrap_or(OPEN_HOLD).max(Duration::from_millis(500))
}

fn fsm_subcode(s: SessionState) -> u8 {
    // RFC 6608: unexpected message in OpenSent (1), OpenConfirm (2), Established (3).
    match s {
        SessionState::OpenSent => 1,
        SessionState::OpenConfirm => 2,
        SessionState::Established => 3,
        _ => 0,
    }
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Idle => "Idle",
        SessionState::Connect => "Connect",
        SessionState::Active => "Active",
        SessionState::OpenSent => "OpenSent",
        SessionState::OpenConfirm => "OpenConfirm",
        SessionState::Established => "Established",
    }
}

fn msg_name(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh(_) => "ROUTE-REFRESH",
        _ => "message",
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
