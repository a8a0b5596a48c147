//! NOTIFY (RFC 1996) to the zone's secondaries after each serial change, signed with the transfer key, retried
//! until acknowledged. An acknowledgement counts only if it is NOERROR and, for a signed NOTIFY, carries a valid
//! TSIG of the same key; a refusal (e.g. the secondary requires a key we do not sign with) is not retried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{DNSClass, RecordType};
use tokio::net::UdpSocket;

use crate::metrics::Metrics;
use crate::tsig::{self, Signer, TsigFailure, TsigKey};
use crate::zone::ZoneData;

const TRIES: usize = 5;
const WAIT: Duration = Duration::from_secs(1);

/// Why a NOTIFY did not get through.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The message could not be encoded.
    #[error("cannot encode NOTIFY: {0}")]
    Encode(#[from] hickory_proto::ProtoError),
    /// No answer after every try.
    #[error("no answer after {TRIES} tries")]
    NoAnswer,
    /// The secondary answered with an error (e.g. NOTAUTH when it wants a TSIG key we do not sign with).
    #[error("refused with rcode {rcode}{}", tsig.map(|t| format!(" (TSIG {t})")).unwrap_or_default())]
    Refused {
        /// Response code.
        rcode: u8,
        /// TSIG failure the secondary reported or we found in its answer.
        tsig: Option<TsigFailure>,
    },
}

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
                    tracing::warn!(zone = %zname, %target, serial = zone.serial, error = %e, "NOTIFY not acknowledged");
                    match e {
                        NotifyError::Refused { .. } => "refused",
                        _ => "failed",
                    }
                }
            };
            metrics.notifies.with_label_values(&[&zname, result]).inc();
        });
    }
}

/// Checks the answer to our NOTIFY: NOERROR, and signed with the zone's key when ours was.
fn check_answer(answer: &[u8], signer: Option<&Signer>, key: Option<&TsigKey>) -> Result<(), NotifyError> {
    let rcode = answer[3] & 0x0F;
    let found = tsig::find(answer).map_err(|f| NotifyError::Refused { rcode, tsig: Some(f) })?;
    let (Some(signer), Some(key)) = (signer, key) else {
        return if rcode == 0 { Ok(()) } else { Err(NotifyError::Refused { rcode, tsig: None }) };
    };
    let Some(found) = found else {
        // An answer to a signed request must be signed (RFC 8945 5.3), unless it is an unsigned error.
        return Err(NotifyError::Refused { rcode, tsig: Some(TsigFailure::BadSig) });
    };
    if let Some(code) = found.tsig.error.map(u16::from) {
        let f = match code {
            16 => TsigFailure::BadSig,
            17 => TsigFailure::BadKey,
            18 => TsigFailure::BadTime,
            _ => TsigFailure::Malformed,
        };
        return Err(NotifyError::Refused { rcode, tsig: Some(f) });
    }
    tsig::verify_response(answer, &found, key, signer.last_mac())
        .map_err(|f| NotifyError::Refused { rcode, tsig: Some(f) })?;
    if rcode == 0 {
        Ok(())
    } else {
        Err(NotifyError::Refused { rcode, tsig: None })
    }
}

async fn notify_one(zone: &ZoneData, target: SocketAddr) -> Result<(), NotifyError> {
    let bind: SocketAddr = if target.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(target).await?;
    let id: u16 = rand::random();
    let mut m = Message::new(id, MessageType::Query, OpCode::Notify);
    m.metadata.authoritative = true;
    let mut q = Query::query(zone.origin.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    m.add_answer(zone.soa_record());
    let mut bytes = m.to_vec()?;
    let key = zone.policy.transfer_key.as_deref();
    let signer = key.map(|k| {
        let mut s = Signer::new(k.clone(), Vec::new());
        s.sign(&mut bytes, None);
        s
    });
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
            let answer = &buf[..n];
            if n < 12 || answer[0..2] != id.to_be_bytes() || answer[2] & 0x80 == 0 || (answer[2] >> 3) & 0x0F != 4 {
                continue; // not an answer to this NOTIFY
            }
            check_answer(answer, signer.as_ref(), key)?;
            tracing::debug!(zone = %zone.origin, %target, serial = zone.serial, "NOTIFY acknowledged");
            return Ok(());
        }
    }
    Err(NotifyError::NoAnswer)
}
