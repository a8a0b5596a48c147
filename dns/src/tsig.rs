//! TSIG (RFC 8945) with HMAC-SHA256 on raw messages: verifying requests, signing responses (including every
//! message of a zone transfer) and signing our own NOTIFY requests.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TSIG};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{after_questions, skip_record, u16_at};

type HmacSha256 = Hmac<Sha256>;

/// Default fudge (seconds of clock skew allowed).
pub const FUDGE: u16 = 300;

/// A TSIG key.
#[derive(Clone)]
pub struct TsigKey {
    /// Key name (lowercase, absolute).
    pub name: Name,
    /// Secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TsigKey({})", self.name)
    }
}

/// A TSIG key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key name is not a DNS name.
    #[error("key name `{0}`: {1}")]
    Name(String, String),
    /// The secret is not base64.
    #[error("key `{0}`: secret is not valid base64")]
    Secret(String),
}

impl TsigKey {
    /// Loads a configured key.
    pub fn from_config(k: &padis_model::dns::TsigKey) -> Result<TsigKey, KeyError> {
        let mut name = Name::from_ascii(&k.name).map_err(|e| KeyError::Name(k.name.clone(), e.to_string()))?;
        name.set_fqdn(true);
        let secret = base64::engine::general_purpose::STANDARD
            .decode(k.secret.trim())
            .map_err(|_| KeyError::Secret(k.name.clone()))?;
        Ok(TsigKey { name: name.to_lowercase(), secret })
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length: this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!("hmac takes any key length"))
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

fn now() -> u64 {
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

/// Verifies a signed request with `key`. Returns the request MAC (needed to sign the response).
pub fn verify_request(msg: &[u8], found: &Found, key: &TsigKey) -> Result<Vec<u8>, TsigFailure> {
    if found.key_name.to_lowercase() != key.name || found.tsig.algorithm != TsigAlgorithm::HmacSha256 {
        return Err(TsigFailure::BadKey);
    }
    let mut mac = key.mac();
    mac.update(&unsigned(msg, found));
    mac.update(&variables(&found.tsig, &found.key_name));
    let theirs = &found.tsig.mac;
    if theirs.len() < 16 || mac.verify_truncated_left(theirs).is_err() {
        return Err(TsigFailure::BadSig);
    }
    if now().abs_diff(found.tsig.time) > u64::from(found.tsig.fudge) {
        return Err(TsigFailure::BadTime);
    }
    Ok(theirs.clone())
}

/// Verifies a signed response to a request of ours whose MAC was `request_mac` (RFC 8945 5.3.1: the request
/// MAC, the response without its TSIG, then the TSIG variables).
pub fn verify_response(msg: &[u8], found: &Found, key: &TsigKey, request_mac: &[u8]) -> Result<(), TsigFailure> {
    if found.key_name.to_lowercase() != key.name || found.tsig.algorithm != TsigAlgorithm::HmacSha256 {
        return Err(TsigFailure::BadKey);
    }
    if found.tsig.error.is_some_and(|e| u16::from(e) != 0) || found.tsig.mac.is_empty() {
        return Err(TsigFailure::BadSig);
    }
    let mut mac = key.mac();
    mac.update(&(request_mac.len() as u16).to_be_bytes());
    mac.update(request_mac);
    mac.update(&unsigned(msg, found));
    mac.update(&variables(&found.tsig, &found.key_name));
    if found.tsig.mac.len() < 16 || mac.verify_truncated_left(&found.tsig.mac).is_err() {
        return Err(TsigFailure::BadSig);
    }
    if now().abs_diff(found.tsig.time) > u64::from(found.tsig.fudge) {
        return Err(TsigFailure::BadTime);
    }
    Ok(())
}

/// Signing state across the messages of one response (a zone transfer is several messages).
#[derive(Debug)]
pub struct Signer {
    key: TsigKey,
    prior_mac: Vec<u8>,
    first: bool,
}

impl Signer {
    /// Signs the response(s) to a request whose MAC was `request_mac` (empty for a request of our own).
    pub fn new(key: TsigKey, request_mac: Vec<u8>) -> Signer {
        Signer { key, prior_mac: request_mac, first: true }
    }

    /// The MAC of the last message signed (a response to it is verified against it).
    pub fn last_mac(&self) -> &[u8] {
        &self.prior_mac
    }

    /// Name of the signing key.
    pub fn key_name(&self) -> &Name {
        &self.key.name
    }

    /// Appends a TSIG record to `msg` (a complete message) and bumps ARCOUNT.
    pub fn sign(&mut self, msg: &mut Vec<u8>, error: Option<u16>) {
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let tsig = TSIG::new(TsigAlgorithm::HmacSha256, now(), FUDGE, Vec::new(), id, error.map(Into::into), Vec::new());
        let mac = if error.is_some_and(|e| e == 16 || e == 17) {
            Vec::new() // BADSIG/BADKEY answers are unsigned
        } else {
            let mut mac = self.key.mac();
            if !self.prior_mac.is_empty() {
                mac.update(&(self.prior_mac.len() as u16).to_be_bytes());
                mac.update(&self.prior_mac);
            }
            mac.update(msg);
            if self.first {
                mac.update(&variables(&tsig, &self.key.name));
            } else {
                let t = tsig.time;
                mac.update(&((t >> 32) as u16).to_be_bytes());
                mac.update(&(t as u32).to_be_bytes());
                mac.update(&tsig.fudge.to_be_bytes());
            }
            mac.finalize().into_bytes().to_vec()
        };
        self.first = false;
        self.prior_mac.clone_from(&mac);
        let rec = Record::from_rdata(self.key.name.clone(), 0, RData::TSIG(tsig.set_mac(mac)));
        let mut rec = rec;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_round_trip() {
        let key = TsigKey { name: Name::from_ascii("k.").unwrap(), secret: b"0123456789abcdef".to_vec() };
        let mut msg = vec![0x12, 0x34, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        Signer::new(key.clone(), Vec::new()).sign(&mut msg, None);
        let found = find(&msg).unwrap().unwrap();
        assert!(verify_request(&msg, &found, &key).is_ok());
        let other = TsigKey { secret: b"x".to_vec(), ..key.clone() };
        assert_eq!(verify_request(&msg, &found, &other), Err(TsigFailure::BadSig));
        msg[13] ^= 1; // corrupt
        assert!(find(&msg).is_err() || verify_request(&msg, &find(&msg).unwrap().unwrap(), &key).is_err());
    }
}
