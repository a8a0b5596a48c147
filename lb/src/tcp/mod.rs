//! TCP proxy mode (HAProxy's `mode tcp`): a `[[listener]]` with `mode = "tcp"` relays each accepted connection,
//! byte for byte and both ways, to one backend of its `group`.
//!
//! Per connection: the accept loop's admission (listener and per-client limits) has already counted it; a backend
//! is picked by the group's balancer (`padis-balance`: round robin, least connections through the in-flight
//! count held for the connection's life, Maglev on the client address) among the healthy ones that take new
//! connections; a connect failure or timeout (`connect_timeout`) reports a passive failure and tries another
//! backend, up to `retries` more times. The PROXY protocol header (`proxy_protocol` of the group) goes first; then
//! `relay` moves bytes (a buffer copy for short messages, splice(2) through pooled pipes once a direction carries
//! a bulk transfer) until both sides closed (a half-close is passed on), the connection was idle too long, or the
//! shutdown grace is over. The listener's metric handles are looked up once, not per connection.
//! Measured (release, `bench/run tcp`, shared 2-core machine): bulk 8.7-11.4 Gbit/s (haproxy 8.7-8.9), 16-17k
//! connections/s (haproxy 18.7k); a connection's cost is almost all in the kernel (loopback wake-ups of the peers).
//! Draining or removed backends get no new connections; connections to them finish.

mod proxy_header;
mod relay;
mod splice;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use padis_balance::SelectCtx;
use padis_model::{Listener, ListenerMode};
use prometheus::{IntCounter, IntGauge};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::conn::{Accepted, ActiveGuard};
use crate::metrics::Metrics;
use crate::plane::PlaneShared;

/// A TCP listener's share of the runtime (shared by its connections).
#[derive(Clone)]
pub(crate) struct TcpListenerRt(Arc<TcpListenerInner>);

struct TcpListenerInner {
    /// The backend group connections go to.
    group: String,
    /// Idle timeout of a relayed connection (default: the group's `idle_timeout`).
    idle_timeout: Option<Duration>,
    /// Its metric handles, looked up at its first connection rather than at each.
    metrics: OnceLock<TcpMetrics>,
}

/// A TCP listener's metric handles.
struct TcpMetrics {
    /// `padis_tcp_active_connections`.
    active: IntGauge,
    /// `padis_tcp_bytes_total` in and out.
    bytes: relay::Counters,
    /// `padis_tcp_connections_total` per backend address (the group's backends of this snapshot: bounded).
    per_backend: Mutex<Vec<(SocketAddr, IntCounter)>>,
}

/// Backend counters kept per listener at most (more are looked up at each connection).
const PER_BACKEND_MAX: usize = 4096;

impl TcpListenerRt {
    /// The TCP settings of `l`, if it is a `mode = "tcp"` listener (validation guarantees its group).
    pub fn of(l: &Listener) -> Option<TcpListenerRt> {
        (l.mode == ListenerMode::Tcp).then(|| {
            TcpListenerRt(Arc::new(TcpListenerInner {
                group: l.group.clone().unwrap_or_default(),
                idle_timeout: l.idle_timeout,
                metrics: OnceLock::new(),
            }))
        })
    }

    fn metrics(&self, m: &Metrics, listener: &str) -> &TcpMetrics {
        self.0.metrics.get_or_init(|| TcpMetrics {
            active: m.tcp_active.with_label_values(&[listener]),
            bytes: relay::Counters {
                up: m.tcp_bytes.with_label_values(&[listener, "in"]),
                down: m.tcp_bytes.with_label_values(&[listener, "out"]),
            },
            per_backend: Mutex::new(Vec::new()),
        })
    }
}

impl TcpMetrics {
    /// Counts a connection relayed to `backend`.
    fn count_connection(&self, m: &Metrics, listener: &str, backend: SocketAddr) {
        let Ok(mut known) = self.per_backend.lock() else { return };
        if let Some((_, c)) = known.iter().find(|(a, _)| *a == backend) {
            c.inc();
            return;
        }
        let c = m.tcp_connections.with_label_values(&[listener, &backend.to_string()]);
        c.inc();
        if known.len() < PER_BACKEND_MAX {
            known.push((backend, c));
        }
    }
}

/// Lowers `padis_tcp_active_connections` when the connection ends.
struct ActiveTcp<'a>(&'a IntGauge);

impl Drop for ActiveTcp<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The client side of a relayed connection.
enum Client {
    Plain(TcpStream),
    /// TLS terminated by the listener (boxed: the session is large).
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Relays one accepted connection of a TCP listener until it ends or `hard` (the shutdown grace is over).
pub(crate) async fn serve(plane: Arc<PlaneShared>, a: Accepted, hard: CancellationToken) {
    let _guard = ActiveGuard::new(&plane, &a.listener, a.count.clone(), a.client);
    let found = {
        let rt = plane.runtime.load();
        rt.listeners.get(&*a.listener).and_then(|l| {
            let t = l.tcp.clone()?;
            let g = rt.balancers.group(&t.0.group)?.clone();
            let idle = t.0.idle_timeout.unwrap_or(g.config().idle_timeout);
            // A TLS listener whose config could not be built serves nobody in plaintext.
            let tls = match (l.tls_required, crate::conn::Configs::of(l)) {
                (true, None) => return None,
                (_, tls) => tls,
            };
            Some((t, g, idle, tls, rt.limits.header_read_timeout))
        })
    };
    let Some((tcp, group, idle, tls, handshake_timeout)) = found else {
        tracing::warn!(listener = &*a.listener, "TCP listener without its group or TLS config: connection closed");
        return;
    };
    let metrics = tcp.metrics(&plane.metrics, &a.listener);
    metrics.active.inc();
    let _active = ActiveTcp(&metrics.active);
    let client = a.stream;
    let _ = client.set_nodelay(true);
    // TLS terminated here (`SSL_CERT` on a Marathon TCP port): the handshake before a backend is chosen.
    let client = match tls {
        None => Client::Plain(client),
        Some(cfg) => {
            let done =
                crate::conn::tls_handshake(&plane, client, cfg, a.peer, &a.listener, handshake_timeout, &hard).await;
            match done {
                Some((s, _)) => Client::Tls(Box::new(s)),
                None => return,
            }
        }
    };
    let cfg = group.config();
    let headers = http::HeaderMap::new();
    let ctx = SelectCtx { client_ip: a.peer.ip(), headers: &headers };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut connected = None;
    for _ in 0..=cfg.retries {
        let Some(pick) = group.select(&ctx, &tried) else { break };
        let addr = pick.backend.addr;
        let attempt = tokio::select! {
            r = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(addr)) => r,
            _ = hard.cancelled() => return,
        };
        match attempt {
            Ok(Ok(s)) => {
                pick.backend.health.report_success();
                connected = Some((s, pick.backend));
                break;
            }
            Ok(Err(e)) => tracing::debug!(group = %cfg.name, backend = %addr, error = %e, "TCP connect failed"),
            Err(_) => tracing::debug!(group = %cfg.name, backend = %addr, "TCP connect timed out"),
        }
        pick.backend.health.report_failure();
        let label = addr.to_string();
        plane.metrics.connect_errors.with_label_values(&[cfg.name.as_str(), &label]).inc();
        tried.push(addr);
    }
    let Some((mut backend, entry)) = connected else {
        tracing::debug!(listener = &*a.listener, group = %cfg.name, peer = %a.peer, "no backend reachable");
        if let Client::Plain(c) = &client {
            let _ = c.set_zero_linger();
        }
        return;
    };
    let _in_flight = entry.begin();
    let _ = backend.set_nodelay(true);
    metrics.count_connection(&plane.metrics, &a.listener, entry.addr);
    if let Some(version) = cfg.proxy_protocol {
        let header = proxy_header::encode(version, a.peer, a.local);
        if let Err(e) = backend.write_all(&header).await {
            tracing::debug!(backend = %entry.addr, error = %e, "PROXY header not sent");
            return;
        }
    }
    let ended = match client {
        Client::Plain(client) => relay::relay(client, backend, idle, &metrics.bytes, &hard).await,
        Client::Tls(client) => relay::relay_stream(client, backend, idle, &metrics.bytes, &hard).await,
    };
    match ended {
        Ok(end) => tracing::trace!(listener = &*a.listener, ?end, "TCP connection ended"),
        Err(e) => tracing::debug!(listener = &*a.listener, backend = %entry.addr, error = %e, "TCP relay ended"),
    }
}
