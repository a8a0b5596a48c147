//! Streaming traffic with break accounting. Each backend runs an echo server on [`super::PORT`] that first
//! sends its backend id; each client connection then sends a sequence number every `interval` and expects it
//! back. A connection is broken on RST, EOF, an echo that does not come back within `stall`, or an echo with
//! other data than sent. Broken connections are not reopened; each break records the step it happened in.
//!
//! Like real clients, the fleet renews itself between steps ([`Fleet::renew`]): some connections end cleanly
//! (not counted) and new ones open on the backend set of the moment.
//!
//! Sockets are created inside their namespace (client or backend) and then driven by one shared tokio
//! runtime: a socket stays in the namespace it was created in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::topo::{PORT, VIP};
use super::EcmpError;
use crate::netns::Netns;

/// An echo server in one backend namespace; stopping it (or dropping it) closes the listener and every
/// connection (the instance is gone).
pub struct BackendServer {
    /// Backend index.
    pub id: u32,
    cancel: CancellationToken,
}

impl BackendServer {
    /// Binds `0.0.0.0:PORT` inside `ns` and serves on `rt`.
    pub fn start(rt: &Handle, ns: &Netns, id: u32) -> Result<BackendServer, EcmpError> {
        let std = ns
            .enter(|| std::net::TcpListener::bind(("0.0.0.0", PORT)))?
            .map_err(|e| EcmpError::io(format!("bind backend {id}"), e))?;
        std.set_nonblocking(true).map_err(|e| EcmpError::io("nonblocking", e))?;
        let listener = {
            let _g = rt.enter();
            tokio::net::TcpListener::from_std(std).map_err(|e| EcmpError::io("register listener", e))?
        };
        let cancel = CancellationToken::new();
        rt.spawn(serve(listener, id, cancel.clone()));
        Ok(BackendServer { id, cancel })
    }
}

impl Drop for BackendServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn serve(listener: tokio::net::TcpListener, id: u32, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => { tokio::spawn(echo(s, id, cancel.clone())); }
                Err(e) => {
                    tracing::warn!(backend = id, error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn echo(mut s: TcpStream, id: u32, cancel: CancellationToken) {
    let _ = s.set_nodelay(true);
    let work = async {
        s.write_all(&id.to_be_bytes()).await?;
        let mut buf = [0u8; 8];
        loop {
            s.read_exact(&mut buf).await?;
            s.write_all(&buf).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = work => {}
    }
}

/// Why a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BreakReason {
    /// Reset by the peer (a backend without the connection answers with RST).
    Reset,
    /// Closed by the peer (EOF).
    Closed,
    /// No echo within the stall timeout.
    Stall,
    /// The echo carried other data than sent (the stream landed on another socket).
    Mismatch,
    /// Another socket error.
    Other,
}

/// A counted break.
#[derive(Debug, Clone, Copy)]
pub struct Break {
    /// The step that was current when it broke.
    pub step: usize,
    /// Why.
    pub reason: BreakReason,
}

/// Traffic shape of a [`Fleet`].
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    /// Time between two round trips of one connection.
    pub interval: Duration,
    /// No echo within this: the connection is broken (stalled).
    pub stall: Duration,
    /// Connections being opened at once.
    pub open_parallel: usize,
}

const NO_BACKEND: u32 = u32::MAX;

struct Slot {
    backend: AtomicU32,
    rounds: AtomicU64,
    broken: Mutex<Option<Break>>,
    /// Ended cleanly by the client (renewal): neither alive nor broken.
    retired: AtomicBool,
    cancel: CancellationToken,
}

/// Long-lived client connections to the VIP from the client namespace.
pub struct Fleet {
    slots: Vec<Arc<Slot>>,
    step: Arc<AtomicUsize>,
    cancel: CancellationToken,
    cfg: StreamConfig,
}

impl Fleet {
    /// Opens `n` connections from `client` (each on its own source port) and starts streaming on `rt`. Fails if
    /// any connection cannot be opened or does not get its greeting.
    pub fn open(rt: &Handle, client: &Netns, n: usize, cfg: StreamConfig) -> Result<Fleet, EcmpError> {
        let mut fleet =
            Fleet { slots: Vec::new(), step: Arc::new(AtomicUsize::new(0)), cancel: CancellationToken::new(), cfg };
        fleet.add(rt, client, n)?;
        Ok(fleet)
    }

    /// Renewal, as real clients do: ends the `retire` oldest unbroken connections cleanly (not counted as
    /// breaks), then opens new ones until `target` are unbroken.
    pub fn renew(&mut self, rt: &Handle, client: &Netns, retire: usize, target: usize) -> Result<(), EcmpError> {
        for (i, _) in self.alive().into_iter().take(retire) {
            self.slots[i].retired.store(true, Ordering::SeqCst);
            self.slots[i].cancel.cancel();
        }
        let missing = target.saturating_sub(self.alive().len());
        self.add(rt, client, missing)
    }

    fn add(&mut self, rt: &Handle, client: &Netns, n: usize) -> Result<(), EcmpError> {
        if n == 0 {
            return Ok(());
        }
        let cfg = self.cfg;
        let addr: SocketAddr = format!("{VIP}:{PORT}").parse().map_err(|e| EcmpError::Setup(format!("{e}")))?;
        let sockets = client.enter(|| (0..n).map(|_| TcpSocket::new_v4()).collect::<Result<Vec<_>, _>>())?;
        let sockets = sockets.map_err(|e| EcmpError::io("client socket", e))?;
        let gate = Arc::new(tokio::sync::Semaphore::new(cfg.open_parallel.max(1)));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        for (k, sock) in sockets.into_iter().enumerate() {
            let slot = Arc::new(Slot {
                backend: AtomicU32::new(NO_BACKEND),
                rounds: AtomicU64::new(0),
                broken: Mutex::new(None),
                retired: AtomicBool::new(false),
                cancel: self.cancel.child_token(),
            });
            self.slots.push(slot.clone());
            let step = self.step.clone();
            let gate = gate.clone();
            let done = done_tx.clone();
            // Spread the connections' rhythm over the interval.
            let phase = cfg.interval.mul_f64(k as f64 / n as f64);
            rt.spawn(async move {
                let opened = {
                    let _permit = gate.acquire().await;
                    open_one(sock, addr, &slot, cfg.stall).await
                };
                match opened {
                    Ok(stream) => {
                        let _ = done.send(Ok(()));
                        stream_loop(stream, &slot, &step, cfg, phase).await;
                    }
                    Err(e) => {
                        let _ = done.send(Err(e));
                    }
                }
            });
        }
        drop(done_tx);
        let limit = Duration::from_secs(60) + cfg.stall;
        let t = Instant::now();
        for _ in 0..n {
            let left = limit.saturating_sub(t.elapsed());
            match done_rx.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(EcmpError::Setup(format!("opening client connections: {e}"))),
                Err(_) => return Err(EcmpError::Timeout { what: format!("{n} client connections"), limit }),
            }
        }
        Ok(())
    }

    /// Number of connections ever opened (broken and retired ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the fleet has no connections.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Makes `step` the step that new breaks are attributed to.
    pub fn set_step(&self, step: usize) {
        self.step.store(step, Ordering::SeqCst);
    }

    fn broken(&self, i: usize) -> Option<Break> {
        *self.slots[i].broken.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_alive(&self, i: usize) -> bool {
        !self.slots[i].retired.load(Ordering::SeqCst) && self.broken(i).is_none()
    }

    /// Unbroken (and not retired) connections, oldest first: (index, backend id).
    pub fn alive(&self) -> Vec<(usize, u32)> {
        (0..self.slots.len())
            .filter(|&i| self.is_alive(i))
            .map(|i| (i, self.slots[i].backend.load(Ordering::SeqCst)))
            .collect()
    }

    /// Unbroken connections per backend id.
    pub fn per_backend(&self) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for (_, b) in self.alive() {
            *m.entry(b).or_insert(0) += 1;
        }
        m
    }

    /// Connections broken in `step`: (index, backend id, break).
    pub fn broken_in(&self, step: usize) -> Vec<(usize, u32, Break)> {
        (0..self.slots.len())
            .filter_map(|i| {
                self.broken(i).filter(|b| b.step == step).map(|b| (i, self.slots[i].backend.load(Ordering::SeqCst), b))
            })
            .collect()
    }

    /// Round trips completed so far, per connection.
    pub fn rounds(&self) -> Vec<u64> {
        self.slots.iter().map(|s| s.rounds.load(Ordering::SeqCst)).collect()
    }

    /// Waits until every unbroken connection has completed `extra` round trips more than in `since` (or broke):
    /// every surviving connection demonstrably still streams.
    pub fn wait_progress(&self, since: &[u64], extra: u64, limit: Duration) -> Result<(), EcmpError> {
        let t = Instant::now();
        loop {
            let lagging = (0..self.slots.len())
                .filter(|&i| self.is_alive(i) && self.slots[i].rounds.load(Ordering::SeqCst) < since[i] + extra)
                .count();
            if lagging == 0 {
                return Ok(());
            }
            if t.elapsed() > limit {
                return Err(EcmpError::Timeout {
                    what: format!("{lagging} connections neither streaming nor broken"),
                    limit,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops every connection (cleanly, not counted).
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn open_one(sock: TcpSocket, addr: SocketAddr, slot: &Slot, stall: Duration) -> Result<TcpStream, String> {
    let mut s = tokio::time::timeout(stall, sock.connect(addr))
        .await
        .map_err(|_| format!("connect {addr}: timed out"))?
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut id = [0u8; 4];
    tokio::time::timeout(stall, s.read_exact(&mut id))
        .await
        .map_err(|_| "greeting: timed out".to_string())?
        .map_err(|e| format!("greeting: {e}"))?;
    slot.backend.store(u32::from_be_bytes(id), Ordering::SeqCst);
    Ok(s)
}

async fn stream_loop(mut s: TcpStream, slot: &Slot, step: &AtomicUsize, cfg: StreamConfig, phase: Duration) {
    let cancel = &slot.cancel;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        let round = async {
            s.write_all(&seq.to_be_bytes()).await?;
            let mut buf = [0u8; 8];
            s.read_exact(&mut buf).await?;
            Ok::<u64, std::io::Error>(u64::from_be_bytes(buf))
        };
        let reason = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(cfg.stall, round) => match r {
                Ok(Ok(echo)) if echo == seq => None,
                Ok(Ok(_)) => Some(BreakReason::Mismatch),
                Ok(Err(e)) => Some(match e.kind() {
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => BreakReason::Reset,
                    std::io::ErrorKind::UnexpectedEof => BreakReason::Closed,
                    _ => BreakReason::Other,
                }),
                Err(_) => Some(BreakReason::Stall),
            },
        };
        match reason {
            None => {
                slot.rounds.fetch_add(1, Ordering::SeqCst);
            }
            Some(reason) => {
                let b = Break { step: step.load(Ordering::SeqCst), reason };
                *slot.broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(b);
                return;
            }
        }
    }
}
