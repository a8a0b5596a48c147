//! TSIG (RFC 8945) on raw messages: verifying requests, signing responses (including every message of a zone
//! transfer and the BADTIME error answer) and signing our own NOTIFY requests, with HMAC-SHA1/224/256/384/512.
//!
//! Why not hickory-proto's `TSigner`: 0.26 computes MACs only for hmac-sha256/384/512 (through ring), and it has
//! no server side (replay cache, fudge cap, error answers). The MACs here are RustCrypto's `hmac` over `sha1` and
//! `sha2`; the TSIG record itself is hickory's (`TSIG`, `emit_tsig_for_mac`).
//!
//! Server policy beyond the RFC's minimum, as BIND/Knot do or stricter:
//! - the time window is the signer's fudge capped at [`MAX_FUDGE`] (a fudge of 65535 s does not widen it);
//! - a request MAC seen before within its window is refused ([`ReplayCache`], applied to UPDATE and NOTIFY);
//! - MACs must be full length (a truncated MAC gets BADTRUNC, RFC 8945 5.2.2.1);
//! - BADTIME answers are signed with the key and carry our clock in Other Data; BADKEY/BADSIG answers are
//!   unsigned and name the key and algorithm of the request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TSIG};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding};
use hmac::{Hmac, Mac};

use crate::wire::{after_questions, skip_record, u16_at};

/// Fudge we put in our own signatures (seconds of clock skew allowed).
pub const FUDGE: u16 = 300;

/// Largest time window accepted from a signer, whatever fudge it asks for.
pub const MAX_FUDGE: u16 = 300;

/// An HMAC algorithm of TSIG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// hmac-sha1
    Sha1,
    /// hmac-sha224
    Sha224,
    /// hmac-sha256
    Sha256,
    /// hmac-sha384
    Sha384,
    /// hmac-sha512
    Sha512,
}

impl Algorithm {
    /// The algorithm of a config name (`hmac-sha256`, ...), case-insensitive.
    pub fn from_config(name: &str) -> Option<Algorithm> {
        Some(match name.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha1" => Algorithm::Sha1,
            "hmac-sha224" => Algorithm::Sha224,
            "hmac-sha256" => Algorithm::Sha256,
            "hmac-sha384" => Algorithm::Sha384,
            "hmac-sha512" => Algorithm::Sha512,
            _ => return None,
        })
    }

    /// The algorithm named in a TSIG record, if we implement it.
    pub fn from_wire(a: &TsigAlgorithm) -> Option<Algorithm> {
        Algorithm::from_config(&a.to_name().to_ascii())
    }

    /// The hickory name of the algorithm.
    pub fn to_wire(self) -> TsigAlgorithm {
        match self {
            Algorithm::Sha1 => TsigAlgorithm::HmacSha1,
            Algorithm::Sha224 => TsigAlgorithm::HmacSha224,
            Algorithm::Sha256 => TsigAlgorithm::HmacSha256,
            Algorithm::Sha384 => TsigAlgorithm::HmacSha384,
            Algorithm::Sha512 => TsigAlgorithm::HmacSha512,
        }
    }

    /// MAC length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha224 => 28,
            Algorithm::Sha256 => 32,
            Algorithm::Sha384 => 48,
            Algorithm::Sha512 => 64,
        }
    }
}

/// A running HMAC of one of the algorithms.
enum MacState {
    Sha1(Hmac<sha1::Sha1>),
    Sha224(Hmac<sha2::Sha224>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
}

fn keyed<M: Mac + hmac::digest::KeyInit>(secret: &[u8]) -> M {
    // HMAC accepts keys of any length: this cannot fail.
    <M as hmac::digest::KeyInit>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("hmac takes any key length"))
}

impl MacState {
    fn new(alg: Algorithm, secret: &[u8]) -> MacState {
        match alg {
            Algorithm::Sha1 => MacState::Sha1(keyed(secret)),
            Algorithm::Sha224 => MacState::Sha224(keyed(secret)),
            Algorithm::Sha256 => MacState::Sha256(keyed(secret)),
            Algorithm::Sha384 => MacState::Sha384(keyed(secret)),
            Algorithm::Sha512 => MacState::Sha512(keyed(secret)),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            MacState::Sha1(m) => m.update(data),
            MacState::Sha224(m) => m.update(data),
            MacState::Sha256(m) => m.update(data),
            MacState::Sha384(m) => m.update(data),
            MacState::Sha512(m) => m.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            MacState::Sha1(m) => m.finalize().into_bytes().to_vec(),
            MacState::Sha224(m) => m.finalize().into_bytes().to_vec(),
            MacState::Sha256(m) => m.finalize().into_bytes().to_vec(),
            MacState::Sha384(m) => m.finalize().into_bytes().to_vec(),
            MacState::Sha512(m) => m.finalize().into_bytes().to_vec(),
        }
    }

    /// Constant-time comparison with `tag` (its leftmost bytes when it is truncated).
    fn verify(self, tag: &[u8]) -> bool {
        match self {
            MacState::Sha1(m) => m.verify_truncated_left(tag).is_ok(),
            MacState::Sha224(m) => m.verify_truncated_left(tag).is_ok(),
            MacState::Sha256(m) => m.verify_truncated_left(tag).is_ok(),
            MacState::Sha384(m) => m.verify_truncated_left(tag).is_ok(),
            MacState::Sha512(m) => m.verify_truncated_left(tag).is_ok(),
        }
    }
}

/// A TSIG key. `Debug` shows its name and algorithm, never the secret.
#[derive(Clone)]
pub struct TsigKey {
    /// Key name (lowercase, absolute).
    pub name: Name,
    /// HMAC algorithm.
    pub algorithm: Algorithm,
    /// Secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey({} {:?})", self.name, self.algorithm)
    }
}

impl PartialEq for TsigKey {
    fn eq(&self, o: &TsigKey) -> bool {
        use hmac::digest::Digest;
        // Compared through digests so that equal-length prefixes do not leak through timing.
        self.name == o.name
            && self.algorithm == o.algorithm
            && sha2::Sha256::digest(&self.secret) == sha2::Sha256::digest(&o.secret)
    }
}

/// A TSIG key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key name is not a DNS name.
    #[error("key name `{name}`: {source}")]
    Name {
        /// The name as configured.
        name: String,
        /// Why it is not a DNS name.
        source: hickory_proto::ProtoError,
    },
    /// The secret is not base64.
    #[error("key `{0}`: secret is not valid base64")]
    Secret(String),
    /// The algorithm is not one we implement.
    #[error("key `{0}`: algorithm `{1}` is not one of hmac-sha1, hmac-sha224, hmac-sha256, hmac-sha384, hmac-sha512")]
    Algorithm(String, String),
}

impl TsigKey {
    /// Loads a configured key.
    pub fn from_config(k: &padis_model::dns::TsigKey) -> Result<TsigKey, KeyError> {
        let mut name = Name::from_ascii(&k.name).map_err(|source| KeyError::Name { name: k.name.clone(), source })?;
        name.set_fqdn(true);
        let algorithm = Algorithm::from_config(&k.algorithm)
            .ok_or_else(|| KeyError::Algorithm(k.name.clone(), k.algorithm.clone()))?;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(k.secret_value().trim())
            .map_err(|_| KeyError::Secret(k.name.clone()))?;
        Ok(TsigKey { name: name.to_lowercase(), algorithm, secret })
    }

    fn mac(&self) -> MacState {
        MacState::new(self.algorithm, &self.secret)
    }
}

/// Why a signed request was rejected (the TSIG error code to return).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TsigFailure {
    /// Unknown key or algorithm (BADKEY, 17).
    #[error("BADKEY")]
    BadKey,
    /// MAC mismatch (BADSIG, 16).
    #[error("BADSIG")]
    BadSig,
    /// Time outside the fudge window (BADTIME, 18).
    #[error("BADTIME")]
    BadTime,
    /// A valid MAC truncated below our policy (BADTRUNC, 22).
    #[error("BADTRUNC")]
    BadTrunc,
    /// Malformed TSIG record (FORMERR).
    #[error("malformed TSIG")]
    Malformed,
}

impl TsigFailure {
    /// The TSIG error code.
    pub fn code(self) -> u16 {
        match self {
            TsigFailure::BadKey => 17,
            TsigFailure::BadSig => 16,
            TsigFailure::BadTime => 18,
            TsigFailure::BadTrunc => 22,
            TsigFailure::Malformed => 1,
        }
    }
}

/// A TSIG record found at the end of a message.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where the TSIG record starts.
    pub start: usize,
    /// Key name.
    pub key_name: Name,
    /// The record data.
    pub tsig: TSIG,
}

/// Finds the TSIG record (the last additional record), if any.
pub fn find(msg: &[u8]) -> Result<Option<Found>, TsigFailure> {
    let (Some(an), Some(ns), Some(ar)) = (u16_at(msg, 6), u16_at(msg, 8), u16_at(msg, 10)) else {
        return Err(TsigFailure::Malformed);
    };
    if ar == 0 {
        return Ok(None);
    }
    let mut pos = after_questions(msg).ok_or(TsigFailure::Malformed)?;
    for _ in 0..(an as usize + ns as usize + ar as usize - 1) {
        pos = skip_record(msg, pos).ok_or(TsigFailure::Malformed)?;
    }
    let start = pos;
    let mut dec = BinDecoder::new(&msg[start..]);
    let rec = Record::read(&mut dec).map_err(|_| TsigFailure::Malformed)?;
    if rec.record_type() != RecordType::TSIG {
        return Ok(None);
    }
    match rec.data {
        RData::TSIG(tsig) => Ok(Some(Found { start, key_name: rec.name, tsig })),
        _ => Err(TsigFailure::Malformed),
    }
}

/// The current unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn variables(tsig: &TSIG, key_name: &Name) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut buf);
    // Encoding into a Vec cannot fail.
    let _ = tsig.emit_tsig_for_mac(&mut enc, key_name);
    buf
}

/// The message as it was before signing: TSIG removed, ARCOUNT decremented, original ID restored.
fn unsigned(msg: &[u8], found: &Found) -> Vec<u8> {
    let mut m = msg[..found.start].to_vec();
    let ar = u16::from_be_bytes([m[10], m[11]]).saturating_sub(1);
    m[10..12].copy_from_slice(&ar.to_be_bytes());
    m[0..2].copy_from_slice(&found.tsig.oid.to_be_bytes());
    m
}

/// Whether `time` signed with `fudge` is acceptable at `now` (the window capped at [`MAX_FUDGE`]).
fn in_window(time: u64, fudge: u16, now: u64) -> bool {
    now.abs_diff(time) <= u64::from(fudge.min(MAX_FUDGE))
}

/// Checks the MAC length (RFC 8945 5.2.2.1): longer than the algorithm's output or shorter than 10 bytes or half
/// of it is malformed; a shorter one that passes is below our policy (full length only).
fn mac_len_ok(alg: Algorithm, mac: &[u8]) -> Result<bool, TsigFailure> {
    let out = alg.output_len();
    if mac.len() > out || mac.len() < 10.max(out / 2) {
        return Err(TsigFailure::Malformed);
    }
    Ok(mac.len() == out)
}

/// Verifies a signed request with `key` (RFC 8945 5.2: key, then MAC, then time, then truncation).
/// Returns the request MAC (needed to sign the response).
pub fn verify_request(msg: &[u8], found: &Found, key: &TsigKey) -> Result<Vec<u8>, TsigFailure> {
    if found.key_name.to_lowercase() != key.name || Algorithm::from_wire(&found.tsig.algorithm) != Some(key.algorithm) {
        return Err(TsigFailure::BadKey);
    }
    let theirs = &found.tsig.mac;
    let full = mac_len_ok(key.algorithm, theirs)?;
    let mut mac = key.mac();
    mac.update(&unsigned(msg, found));
    mac.update(&variables(&found.tsig, &found.key_name));
    if !mac.verify(theirs) {
        return Err(TsigFailure::BadSig);
    }
    if !in_window(found.tsig.time, found.tsig.fudge, now()) {
        return Err(TsigFailure::BadTime);
    }
    if !full {
        return Err(TsigFailure::BadTrunc);
    }
    Ok(theirs.clone())
}

/// Verifies a signed response to a request of ours whose MAC was `request_mac` (RFC 8945 5.3.1: the request
/// MAC, the response without its TSIG, then the TSIG variables).
pub fn verify_response(msg: &[u8], found: &Found, key: &TsigKey, request_mac: &[u8]) -> Result<(), TsigFailure> {
    if found.key_name.to_lowercase() != key.name || Algorithm::from_wire(&found.tsig.algorithm) != Some(key.algorithm) {
        return Err(TsigFailure::BadKey);
    }
    if found.tsig.error.is_some_and(|e| u16::from(e) != 0) || found.tsig.mac.is_empty() {
        return Err(TsigFailure::BadSig);
    }
    if !mac_len_ok(key.algorithm, &found.tsig.mac)? {
        return Err(TsigFailure::BadTrunc);
    }
    let mut mac = key.mac();
    mac.update(&(request_mac.len() as u16).to_be_bytes());
    mac.update(request_mac);
    mac.update(&unsigned(msg, found));
    mac.update(&variables(&found.tsig, &found.key_name));
    if !mac.verify(&found.tsig.mac) {
        return Err(TsigFailure::BadSig);
    }
    if !in_window(found.tsig.time, found.tsig.fudge, now()) {
        return Err(TsigFailure::BadTime);
    }
    Ok(())
}

/// Request MACs seen recently, per key: a signed request whose MAC was already accepted within its time window
/// is a replay. Entries expire when their window has passed; the cache is bounded (when full of unexpired
/// entries, new requests are refused rather than forgotten, so that a replay is never let through).
#[derive(Debug)]
pub struct ReplayCache {
    inner: Mutex<ReplayInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct ReplayInner {
    seen: HashMap<(Name, Vec<u8>), u64>,
    order: VecDeque<(u64, (Name, Vec<u8>))>,
}

/// What the replay cache says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// First time seen: remembered until its window has passed.
    Fresh,
    /// Seen before within its window.
    Replayed,
    /// Too many recent requests to remember another one.
    Full,
}

impl ReplayCache {
    /// A cache remembering at most `capacity` requests.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache { inner: Mutex::new(ReplayInner::default()), capacity }
    }

    /// Checks and remembers the request MAC of an accepted request signed at `time` with `fudge`.
    pub fn check(&self, key: &Name, mac: &[u8], time: u64, fudge: u16) -> Replay {
        self.check_at(key, mac, time, fudge, now())
    }

    fn check_at(&self, key: &Name, mac: &[u8], time: u64, fudge: u16, now: u64) -> Replay {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        // Expire in order of expiry (every entry lives the same MAX_FUDGE past its signing time at most).
        while let Some((exp, _)) = inner.order.front() {
            if *exp >= now {
                break;
            }
            if let Some((_, k)) = inner.order.pop_front() {
                if inner.seen.get(&k).is_some_and(|e| *e < now) {
                    inner.seen.remove(&k);
                }
            }
        }
        let k = (key.clone(), mac.to_vec());
        if inner.seen.contains_key(&k) {
            return Replay::Replayed;
        }
        if inner.seen.len() >= self.capacity {
            return Replay::Full;
        }
        let expires = time.saturating_add(u64::from(fudge.min(MAX_FUDGE)));
        inner.seen.insert(k.clone(), expires);
        // Keep `order` sorted by expiry: times differ by at most a window, so insert from the back.
        let pos = inner.order.iter().rposition(|(e, _)| *e <= expires).map_or(0, |p| p + 1);
        inner.order.insert(pos, (expires, k));
        Replay::Fresh
    }
}

/// Signing state across the messages of one response (a zone transfer is several messages).
#[derive(Debug)]
pub struct Signer {
    key: TsigKey,
    prior_mac: Vec<u8>,
    first: bool,
    /// For a BADTIME answer: the request's Time Signed, echoed (RFC 8945 5.2.3).
    request_time: Option<u64>,
}

impl Signer {
    /// Signs the response(s) to a request whose MAC was `request_mac` (empty for a request of our own).
    pub fn new(key: TsigKey, request_mac: Vec<u8>) -> Signer {
        Signer { key, prior_mac: request_mac, first: true, request_time: None }
    }

    /// Signs the BADTIME answer to a request signed at `request_time` with MAC `request_mac`: the answer carries
    /// the request's time and our clock in Other Data, and is signed with the key (RFC 8945 5.2.3).
    pub fn bad_time(key: TsigKey, request_mac: Vec<u8>, request_time: u64) -> Signer {
        Signer { key, prior_mac: request_mac, first: true, request_time: Some(request_time) }
    }

    /// The MAC of the last message signed (a response to it is verified against it).
    pub fn last_mac(&self) -> &[u8] {
        &self.prior_mac
    }

    /// Name of the signing key.
    pub fn key_name(&self) -> &Name {
        &self.key.name
    }

    /// Appends a TSIG record to `msg` (a complete message) and bumps ARCOUNT. `error`: the TSIG error of the
    /// answer (BADTIME for a [`Signer::bad_time`] signer).
    pub fn sign(&mut self, msg: &mut Vec<u8>, error: Option<u16>) {
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let now = now();
        let (time, other, error) = match self.request_time {
            Some(t) => (t, (now & 0xffff_ffff_ffff).to_be_bytes()[2..].to_vec(), Some(TsigFailure::BadTime.code())),
            None => (now, Vec::new(), error),
        };
        let tsig = TSIG::new(self.key.algorithm.to_wire(), time, FUDGE, Vec::new(), id, error.map(Into::into), other);
        let mut mac = self.key.mac();
        if !self.prior_mac.is_empty() {
            mac.update(&(self.prior_mac.len() as u16).to_be_bytes());
            mac.update(&self.prior_mac);
        }
        mac.update(msg);
        if self.first {
            mac.update(&variables(&tsig, &self.key.name));
        } else {
            mac.update(&((time >> 32) as u16).to_be_bytes());
            mac.update(&(time as u32).to_be_bytes());
            mac.update(&tsig.fudge.to_be_bytes());
        }
        let mac = mac.finalize();
        self.first = false;
        self.prior_mac.clone_from(&mac);
        append(msg, self.key.name.clone(), tsig.set_mac(mac));
    }
}

/// Appends the unsigned TSIG error answer (BADKEY, BADSIG, BADTRUNC) to a request signed as in `found`: the
/// request's key name, algorithm and time, an empty MAC (RFC 8945 5.3.2).
pub fn append_unsigned_error(msg: &mut Vec<u8>, found: &Found, failure: TsigFailure) {
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let t = &found.tsig;
    let tsig = TSIG::new(t.algorithm.clone(), t.time, t.fudge, Vec::new(), id, Some(failure.code().into()), Vec::new());
    append(msg, found.key_name.clone(), tsig);
}

fn append(msg: &mut Vec<u8>, key_name: Name, tsig: TSIG) {
    let mut rec = Record::from_rdata(key_name, 0, RData::TSIG(tsig));
    rec.dns_class = DNSClass::ANY;
    let mut tail = Vec::with_capacity(128);
    {
        let mut enc = BinEncoder::new(&mut tail);
        let mut enc = enc.with_name_encoding(NameEncoding::Uncompressed);
        let _ = rec.emit(&mut enc);
    }
    msg.extend_from_slice(&tail);
    let ar = u16::from_be_bytes([msg[10], msg[11]]).wrapping_add(1);
    msg[10..12].copy_from_slice(&ar.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alg: Algorithm) -> TsigKey {
        TsigKey { name: Name::from_ascii("k.").unwrap(), algorithm: alg, secret: b"0123456789abcdef".to_vec() }
    }

    #[test]
    fn sign_then_verify_round_trip_every_algorithm() {
        for alg in [Algorithm::Sha1, Algorithm::Sha224, Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
            let key = key(alg);
            let mut msg = vec![0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            Signer::new(key.clone(), Vec::new()).sign(&mut msg, None);
            let found = find(&msg).unwrap().unwrap();
            assert_eq!(found.tsig.mac.len(), alg.output_len());
            assert!(verify_request(&msg, &found, &key).is_ok(), "{alg:?}");
            let other = TsigKey { secret: b"x".to_vec(), ..key.clone() };
            assert_eq!(verify_request(&msg, &found, &other), Err(TsigFailure::BadSig));
            let other_alg =
                TsigKey { algorithm: if alg == Algorithm::Sha1 { Algorithm::Sha256 } else { Algorithm::Sha1 }, ..key };
            assert_eq!(verify_request(&msg, &found, &other_alg), Err(TsigFailure::BadKey));
        }
    }

    #[test]
    fn fudge_is_capped() {
        assert!(in_window(1000, 65535, 1300));
        assert!(!in_window(1000, 65535, 1301));
        assert!(!in_window(1000, 65535, 1000 + 18 * 3600));
        assert!(in_window(1000, 10, 990) && !in_window(1000, 10, 989));
    }

    #[test]
    fn replays_are_seen_until_their_window_passed() {
        let c = ReplayCache::new(3);
        let k = Name::from_ascii("k.").unwrap();
        assert_eq!(c.check_at(&k, b"mac1", 1000, 300, 1000), Replay::Fresh);
        assert_eq!(c.check_at(&k, b"mac1", 1000, 300, 1200), Replay::Replayed);
        assert_eq!(c.check_at(&Name::from_ascii("j.").unwrap(), b"mac1", 1000, 300, 1200), Replay::Fresh);
        assert_eq!(c.check_at(&k, b"mac2", 1100, 65535, 1200), Replay::Fresh);
        assert_eq!(c.check_at(&k, b"mac3", 1100, 30, 1200), Replay::Full);
        // mac1's window (1300) passed: forgotten, room again; mac2's (1400) not yet.
        assert_eq!(c.check_at(&k, b"mac3", 1350, 30, 1350), Replay::Fresh);
        assert_eq!(c.check_at(&k, b"mac2", 1100, 300, 1350), Replay::Replayed);
    }
}
