//! NOTIFY (RFC 1996) to the zone's secondaries after each serial change, signed with the transfer key, retried
//! until acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::net::UdpSocket;

use crate::metrics::Metrics;
use crate::tsig::Signer;
use crate::zone::ZoneData;

const TRIES: usize = 5;
const WAIT: Duration = Duration::from_secs(1);

/// Sends NOTIFY for `zone` to each of its targets (in background tasks).
pub fn notify_all(zone: Arc<ZoneData>, metrics: Metrics) {
    for target in zone.policy.notify.clone() {
        let zone = zone.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let zname = zone.origin.to_ascii();
            let result = match notify_one(&zone, target).await {
                Ok(()) => "ok",
                Err(e) => {
                    tracing::warn!(zone = %zname, %target, error = %e, "NOTIFY not acknowledged");
                    "failed"
                }
            };
            metrics.notifies.with_label_values(&[&zname, result]).inc();
        });
    }
}

async fn notify_one(zone: &ZoneData, target: SocketAddr) -> std::io::Result<()> {
    let bind: SocketAddr = if target.is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }
        .map_err(|_| std::io::Error::other("bad bind address"))?;
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(target).await?;
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    let mut q = Query::query(zone.origin.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    m.add_answer(zone.soa_record());
    let mut bytes = m.to_vec().map_err(std::io::Error::other)?;
    if let Some(k) = &zone.policy.transfer_key {
        Signer::new((**k).clone(), Vec::new()).sign(&mut bytes, None);
    }
    let mut buf = [0u8; 4096];
    for _ in 0..TRIES {
        sock.send(&bytes).await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(r) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            let n = match r {
                Ok(n) => n,
                Err(_) => {
                    // ICMP unreachable: try again after the wait
                    tokio::time::sleep_until(deadline).await;
                    break;
                }
            };
            if n >= 12 && buf[0..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
                tracing::debug!(zone = %zone.origin, %target, serial = zone.serial, "NOTIFY acknowledged");
                return Ok(());
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))
}
