//! Wire format of sync messages (UDP datagrams), authenticated with HMAC-SHA256 over everything before the tag.
//!
//! ```text
//! "PDS2" | kind u8 | 0 u8 | count u16 | node u64 | incarnation u64 | seq u64 | records (count x 53) | HMAC-SHA256 (32)
//! record = src [16] | dst [16] | sport [2] | dport [2] | proto u8 | backend address [16]
//! ```
//! A `TicketKeys` message (kind 4) carries the node's TLS session ticket keys, encrypted (ChaCha20-Poly1305 with a
//! key derived from the shared secret by HKDF-SHA256, the header as associated data) and then signed like every
//! message: `count` keys, `records` = nonce (12) | sealed (count x 56 + tag 16), key = epoch u64 | name [16] |
//! key [32]. Nobody without the shared secret learns a ticket key from the wire.
//!
//! Integers are big endian; ports are copied as the connection table holds them (network order). Addresses are
//! 16 bytes (IPv4-mapped for IPv4). The VIP is the flow's (dst, dport, proto); the backend travels as its address
//! because backend indexes are per node. `incarnation` is the sender's start time (Unix ns: it grows across
//! restarts) and `seq` counts the sender's datagrams from 0 in each incarnation (hellos, live batches, dumps and
//! re-announcements share it): both are signed, so a receiver can refuse replays (see `replay`).

use padis_ebpf_common::FlowKey;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hkdf, hmac};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 4] = b"PDS2";
/// Bytes before the records.
pub const HEADER_LEN: usize = 32;
/// Bytes of one record.
pub const RECORD_LEN: usize = 53;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 32;
/// Largest datagram we send (fits a 1500-byte MTU with IPv6 + UDP headers).
pub const MAX_DATAGRAM: usize = 1400;
/// Records per datagram.
pub const MAX_RECORDS: usize = (MAX_DATAGRAM - HEADER_LEN - TAG_LEN) / RECORD_LEN;

const KIND_HELLO: u8 = 1;
const KIND_FLOWS: u8 = 2;
const KIND_DUMP_DONE: u8 = 3;
const KIND_TICKET_KEYS: u8 = 4;
/// Bytes of one ticket key record (before encryption).
const TICKET_KEY_LEN: usize = 8 + padis_tickets::NAME_LEN + padis_tickets::KEY_LEN;
/// Nonce and tag around the sealed ticket keys.
const SEAL_OVERHEAD: usize = ring::aead::NONCE_LEN + 16;
/// Ticket keys per message at most (4 epochs of at most `MAX_PER_EPOCH` keys).
pub const MAX_TICKET_KEYS: usize = 4 * padis_tickets::MAX_PER_EPOCH;

/// One synchronised flow: the connection-table key and the backend's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFlow {
    /// The connection-table key (VIP = dst, dport, proto).
    pub key: FlowKey,
    /// Backend address (16 bytes, IPv4-mapped for IPv4).
    pub backend: [u8; 16],
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// "I am alive" (sent every second); a new incarnation asks the receiver for a bulk dump.
    Hello,
    /// New flows (live, or part of a bulk dump).
    Flows(Vec<WireFlow>),
    /// The bulk dump to this receiver is complete (it now knows every flow the sender had).
    DumpDone,
    /// The sender's TLS session ticket keys (sent encrypted).
    TicketKeys(Vec<padis_tickets::KeyRecord>),
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender's node id.
    pub node: u64,
    /// Sender's incarnation (its start time in Unix ns: grows at every start).
    pub incarnation: u64,
    /// Sender's datagram sequence number within the incarnation.
    pub seq: u64,
    /// Content.
    pub body: Body,
}

/// Why a datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Shorter than a header and a tag, or the record count does not match the length.
    #[error("truncated or mis-sized message ({0} bytes)")]
    Length(usize),
    /// Not a Padis sync message (or another version).
    #[error("bad magic")]
    Magic,
    /// The HMAC does not match: wrong key, or altered in transit.
    #[error("authentication failed")]
    Auth,
    /// Unknown message kind.
    #[error("unknown message kind {0}")]
    Kind(u8),
    /// More records than one datagram holds.
    #[error("{0} records exceed {MAX_RECORDS} per message")]
    TooMany(usize),
    /// Ticket keys could not be sealed (no randomness for the nonce).
    #[error("ticket keys not sealed")]
    Seal,
}

/// The shared key: HMAC-SHA256 for every message, and the AEAD key (derived by HKDF) for ticket keys.
pub struct SyncKey {
    mac: hmac::Key,
    seal: aead::LessSafeKey,
    rng: SystemRandom,
}

/// HKDF info of the key that encrypts ticket keys.
const SEAL_INFO: &[u8] = b"padis sync: tls ticket keys";

impl SyncKey {
    /// A key from the shared secret's bytes.
    pub fn new(secret: &[u8]) -> SyncKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"padis sync v2").extract(secret);
        let okm = prk.expand(&[SEAL_INFO], padis_tickets::wire_algorithm()).expect("one AEAD key of HKDF output");
        SyncKey {
            mac: hmac::Key::new(hmac::HMAC_SHA256, secret),
            seal: aead::LessSafeKey::new(aead::UnboundKey::from(okm)),
            rng: SystemRandom::new(),
        }
    }
}

/// Encodes `msg` (at most [`MAX_RECORDS`] flows) into one authenticated datagram.
pub fn encode(msg: &Message, key: &SyncKey) -> Result<Vec<u8>, CodecError> {
    let (kind, flows): (u8, &[WireFlow]) = match &msg.body {
        Body::Hello => (KIND_HELLO, &[]),
        Body::Flows(f) => (KIND_FLOWS, f),
        Body::DumpDone => (KIND_DUMP_DONE, &[]),
        Body::TicketKeys(_) => (KIND_TICKET_KEYS, &[]),
    };
    if flows.len() > MAX_RECORDS {
        return Err(CodecError::TooMany(flows.len()));
    }
    let count = match &msg.body {
        Body::TicketKeys(k) if k.len() > MAX_TICKET_KEYS => return Err(CodecError::TooMany(k.len())),
        Body::TicketKeys(k) => k.len(),
        _ => flows.len(),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + flows.len() * RECORD_LEN + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(kind);
    out.push(0);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(&msg.node.to_be_bytes());
    out.extend_from_slice(&msg.incarnation.to_be_bytes());
    out.extend_from_slice(&msg.seq.to_be_bytes());
    if let Body::TicketKeys(keys) = &msg.body {
        seal_keys(keys, key, &mut out)?;
    }
    for f in flows {
        out.extend_from_slice(&f.key.src);
        out.extend_from_slice(&f.key.dst);
        out.extend_from_slice(&f.key.sport.to_ne_bytes());
        out.extend_from_slice(&f.key.dport.to_ne_bytes());
        out.push(f.key.proto);
        out.extend_from_slice(&f.backend);
    }
    let tag = hmac::sign(&key.mac, &out);
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Appends nonce | sealed ticket keys | AEAD tag to `out` (the header so far, which is the associated data).
fn seal_keys(keys: &[padis_tickets::KeyRecord], key: &SyncKey, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let mut nonce = [0u8; aead::NONCE_LEN];
    key.rng.fill(&mut nonce).map_err(|_| CodecError::Seal)?;
    let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(keys.len() * TICKET_KEY_LEN));
    for k in keys {
        plain.extend_from_slice(&k.epoch.to_be_bytes());
        plain.extend_from_slice(&k.name);
        plain.extend_from_slice(&k.secret[..]);
    }
    let aad = aead::Aad::from(out[..HEADER_LEN].to_vec());
    let tag = key
        .seal
        .seal_in_place_separate_tag(aead::Nonce::assume_unique_for_key(nonce), aad, &mut plain[..])
        .map_err(|_| CodecError::Seal)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plain);
    out.extend_from_slice(tag.as_ref());
    Ok(())
}

/// Opens the ticket keys of an authenticated message (`body`: header and records, without the HMAC).
fn open_keys(body: &[u8], count: usize, key: &SyncKey) -> Result<Vec<padis_tickets::KeyRecord>, CodecError> {
    let (header, rest) = body.split_at(HEADER_LEN);
    let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| CodecError::Auth)?;
    let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
    let plain = key.seal.open_in_place(nonce, aead::Aad::from(header), &mut buf[..]).map_err(|_| CodecError::Auth)?;
    if plain.len() != count * TICKET_KEY_LEN {
        return Err(CodecError::Length(body.len()));
    }
    Ok(plain
        .chunks_exact(TICKET_KEY_LEN)
        .map(|r| {
            let mut secret = zeroize::Zeroizing::new([0u8; padis_tickets::KEY_LEN]);
            secret.copy_from_slice(&r[8 + padis_tickets::NAME_LEN..]);
            padis_tickets::KeyRecord { epoch: u64::from_be_bytes(arr(r, 0)), name: arr(r, 8), secret }
        })
        .collect())
}

/// This node as a sender: its id, incarnation and datagram counter (shared by every task that sends).
#[derive(Debug)]
pub struct Origin {
    /// Node id.
    pub node: u64,
    /// Incarnation (start time, Unix ns).
    pub incarnation: u64,
    seq: AtomicU64,
}

impl Origin {
    /// A sender whose next datagram is number 0.
    pub fn new(node: u64, incarnation: u64) -> Origin {
        Origin { node, incarnation, seq: AtomicU64::new(0) }
    }

    /// A message with the next sequence number.
    pub fn message(&self, body: Body) -> Message {
        Message { node: self.node, incarnation: self.incarnation, seq: self.seq.fetch_add(1, Ordering::Relaxed), body }
    }
}

/// Encodes flows into as many datagrams as needed, each with its own sequence number.
pub fn encode_flows(origin: &Origin, flows: &[WireFlow], key: &SyncKey) -> Vec<Vec<u8>> {
    flows.chunks(MAX_RECORDS).filter_map(|c| encode(&origin.message(Body::Flows(c.to_vec())), key).ok()).collect()
}

fn arr<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// Checks the tag, then decodes a datagram.
pub fn decode(data: &[u8], key: &SyncKey) -> Result<Message, CodecError> {
    if data.len() < HEADER_LEN + TAG_LEN {
        return Err(CodecError::Length(data.len()));
    }
    if &data[..4] != MAGIC {
        return Err(CodecError::Magic);
    }
    let (body, tag) = data.split_at(data.len() - TAG_LEN);
    hmac::verify(&key.mac, body, tag).map_err(|_| CodecError::Auth)?;
    let count = u16::from_be_bytes(arr(body, 6)) as usize;
    let records_len = match body[4] {
        KIND_TICKET_KEYS => count * TICKET_KEY_LEN + SEAL_OVERHEAD,
        _ => count * RECORD_LEN,
    };
    if body.len() != HEADER_LEN + records_len {
        return Err(CodecError::Length(data.len()));
    }
    let node = u64::from_be_bytes(arr(body, 8));
    let incarnation = u64::from_be_bytes(arr(body, 16));
    let seq = u64::from_be_bytes(arr(body, 24));
    let body = match body[4] {
        KIND_HELLO if count == 0 => Body::Hello,
        KIND_DUMP_DONE if count == 0 => Body::DumpDone,
        KIND_HELLO | KIND_DUMP_DONE => return Err(CodecError::Length(data.len())),
        KIND_TICKET_KEYS if count <= MAX_TICKET_KEYS => Body::TicketKeys(open_keys(body, count, key)?),
        KIND_TICKET_KEYS => return Err(CodecError::TooMany(count)),
        KIND_FLOWS => Body::Flows(
            body[HEADER_LEN..]
                .chunks_exact(RECORD_LEN)
                .map(|r| WireFlow {
                    key: FlowKey {
                        src: arr(r, 0),
                        dst: arr(r, 16),
                        sport: u16::from_ne_bytes(arr(r, 32)),
                        dport: u16::from_ne_bytes(arr(r, 34)),
                        proto: r[36],
                        pad: [0; 3],
                    },
                    backend: arr(r, 37),
                })
                .collect(),
        ),
        k => return Err(CodecError::Kind(k)),
    };
    Ok(Message { node, incarnation, seq, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use padis_ebpf_common::v4_mapped;

    fn flow(i: u8) -> WireFlow {
        WireFlow {
            key: FlowKey {
                src: v4_mapped([10, 0, 0, i]),
                dst: v4_mapped([192, 0, 2, 1]),
                sport: (40000u16 + i as u16).to_be(),
                dport: 80u16.to_be(),
                proto: 6,
                pad: [0; 3],
            },
            backend: v4_mapped([10, 1, 0, i]),
        }
    }

    #[test]
    fn round_trip() {
        let key = SyncKey::new(b"0123456789abcdef");
        let flows: Vec<WireFlow> = (0..MAX_RECORDS as u8).map(flow).collect();
        let msg = Message { node: 7, incarnation: 99, seq: 5, body: Body::Flows(flows.clone()) };
        let wire = encode(&msg, &key).unwrap();
        assert!(wire.len() <= MAX_DATAGRAM);
        assert_eq!(decode(&wire, &key).unwrap(), msg);
        let done = Message { node: 1, incarnation: 2, seq: 3, body: Body::DumpDone };
        assert_eq!(decode(&encode(&done, &key).unwrap(), &key).unwrap(), done);
        let hello = Message { node: 1, incarnation: 2, seq: u64::MAX, body: Body::Hello };
        assert_eq!(decode(&encode(&hello, &key).unwrap(), &key).unwrap(), hello);
        // Splitting into datagrams keeps every record, in order.
        let many: Vec<WireFlow> = (0..60).map(flow).collect();
        let origin = Origin::new(3, 4);
        let out = encode_flows(&origin, &many, &key);
        assert_eq!(out.len(), 60usize.div_ceil(MAX_RECORDS));
        // Every datagram has its own sequence number, in order, and the counter goes on after them.
        let seqs: Vec<u64> = out.iter().map(|d| decode(d, &key).unwrap().seq).collect();
        assert_eq!(seqs, (0..out.len() as u64).collect::<Vec<_>>());
        assert_eq!(origin.message(Body::Hello).seq, out.len() as u64);
        let back: Vec<WireFlow> = out
            .iter()
            .flat_map(|d| match decode(d, &key).unwrap().body {
                Body::Flows(f) => f,
                Body::Hello | Body::DumpDone | Body::TicketKeys(_) => Vec::new(),
            })
            .collect();
        assert_eq!(back, many);
        assert_eq!(
            encode(&Message { node: 0, incarnation: 0, seq: 0, body: Body::Flows(many) }, &key),
            Err(CodecError::TooMany(60))
        );
    }

    #[test]
    fn truncated_and_garbage() {
        let key = SyncKey::new(b"0123456789abcdef");
        let wire =
            encode(&Message { node: 7, incarnation: 1, seq: 1, body: Body::Flows(vec![flow(1), flow(2)]) }, &key)
                .unwrap();
        for cut in [0, 3, HEADER_LEN, HEADER_LEN + TAG_LEN - 1] {
            assert_eq!(decode(&wire[..cut], &key), Err(CodecError::Length(cut)));
        }
        // Cut inside the records: the tag no longer matches.
        assert_eq!(decode(&wire[..wire.len() - 10], &key), Err(CodecError::Auth));
        let mut bad = wire.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, &key), Err(CodecError::Magic));
        // A correctly signed message whose count lies about its length.
        let mut lie = wire[..wire.len() - TAG_LEN].to_vec();
        lie[7] = 3;
        let tag = hmac::sign(&key.mac, &lie);
        lie.extend_from_slice(tag.as_ref());
        assert_eq!(decode(&lie, &key), Err(CodecError::Length(lie.len())));
        // A correctly signed message of an unknown kind.
        let mut odd = wire[..wire.len() - TAG_LEN].to_vec();
        odd[4] = 9;
        let tag = hmac::sign(&key.mac, &odd);
        odd.extend_from_slice(tag.as_ref());
        assert_eq!(decode(&odd, &key), Err(CodecError::Kind(9)));
    }

    /// Ticket keys travel encrypted: none of their bytes is on the wire, they come back whole with the key,
    /// and the message is refused with another key or once altered.
    #[test]
    fn ticket_keys_encrypted() {
        let key = SyncKey::new(b"0123456789abcdef");
        let keys = padis_tickets::TicketKeys::new(std::time::Duration::from_secs(60)).export();
        assert_eq!(keys.len(), 2);
        let msg = Message { node: 7, incarnation: 1, seq: 9, body: Body::TicketKeys(keys.clone()) };
        let wire = encode(&msg, &key).unwrap();
        assert!(wire.len() <= MAX_DATAGRAM);
        for k in &keys {
            assert!(!wire.windows(8).any(|w| k.secret.windows(8).any(|s| s == w)), "key bytes on the wire");
            assert!(!wire.windows(8).any(|w| k.name.windows(8).any(|s| s == w)), "key name on the wire");
        }
        assert_eq!(decode(&wire, &key).unwrap(), msg);
        assert_eq!(decode(&wire, &SyncKey::new(b"0123456789abcdeX")), Err(CodecError::Auth));
        let mut bad = wire.clone();
        bad[HEADER_LEN + 20] ^= 1;
        assert_eq!(decode(&bad, &key), Err(CodecError::Auth));
        // Re-signed after a change to the sealed part: the HMAC passes, the AEAD refuses.
        let mut forged = wire[..wire.len() - TAG_LEN].to_vec();
        forged[HEADER_LEN + 20] ^= 1;
        let tag = hmac::sign(&key.mac, &forged);
        forged.extend_from_slice(tag.as_ref());
        assert_eq!(decode(&forged, &key), Err(CodecError::Auth));
        // A full set fits one datagram.
        let many: Vec<padis_tickets::KeyRecord> = (0..MAX_TICKET_KEYS).map(|_| keys[0].clone()).collect();
        let wire = encode(&Message { body: Body::TicketKeys(many), ..msg.clone() }, &key).unwrap();
        assert!(wire.len() <= MAX_DATAGRAM, "{}", wire.len());
    }

    #[test]
    fn bad_hmac() {
        let key = SyncKey::new(b"0123456789abcdef");
        let other = SyncKey::new(b"0123456789abcdeX");
        let wire =
            encode(&Message { node: 7, incarnation: 1, seq: 1, body: Body::Flows(vec![flow(1)]) }, &key).unwrap();
        assert_eq!(decode(&wire, &other), Err(CodecError::Auth));
        // Any flipped bit (header, record or tag) fails authentication.
        // Byte 31 is in the sequence number: a replayed datagram cannot be renumbered.
        for i in [5, 9, 31, HEADER_LEN + 3, HEADER_LEN + 40, wire.len() - 1] {
            let mut w = wire.clone();
            w[i] ^= 0x10;
            assert_eq!(decode(&w, &key), Err(CodecError::Auth), "byte {i}");
        }
    }
}
