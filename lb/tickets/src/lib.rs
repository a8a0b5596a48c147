//! TLS session ticket keys of a Padis node, and the rustls ticketer over them.
//!
//! Keys belong to epochs of `rotation` (wall-clock time divided by the rotation interval, so every node of a
//! cluster agrees on the current epoch). Tickets are sealed with the current epoch's key and opened with any key
//! of the current epoch, the two before it (the previous two still accepted) or the next one (a peer whose clock
//! is a little ahead). The key of the next epoch is made one epoch in advance, so that nodes sharing their keys
//! (see [`TicketKeys::export`] and [`TicketKeys::import`], carried encrypted by the L4 sync channel) have agreed
//! on it before it is used: of several keys of one epoch, every node seals with the one of the smallest name.
//!
//! Keys live in memory only (wiped when dropped), are never written anywhere and never printed: [`KeyRecord`]'s
//! `Debug` shows the epoch and name only; [`TicketKeys::status`] counts keys.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Bytes of a key name (the first bytes of every ticket: which key opens it).
pub const NAME_LEN: usize = 16;
/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Most keys kept per epoch (one per node that made one before hearing of the others; more are ignored).
pub const MAX_PER_EPOCH: usize = 4;
/// Epochs before the current one whose keys still open tickets.
const PREVIOUS: u64 = 2;

/// One ticket key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The epoch it seals tickets in.
    pub epoch: u64,
    /// Its name, at the start of each ticket it sealed.
    pub name: [u8; NAME_LEN],
    /// The key.
    pub secret: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord").field("epoch", &self.epoch).field("name", &hex(&self.name)).finish_non_exhaustive()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A key ready to seal and open.
struct Key {
    record: KeyRecord,
    aead: LessSafeKey,
    /// Received from a peer (not made here).
    from_peer: bool,
}

impl Key {
    fn new(record: KeyRecord, from_peer: bool) -> Key {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &record.secret[..]).expect("a 32-byte ChaCha20 key");
        Key { record, aead: LessSafeKey::new(unbound), from_peer }
    }
}

/// What `/v1/state` may show of the keys: no secret, no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TicketStatus {
    /// The current epoch.
    pub epoch: u64,
    /// The rotation interval, seconds.
    pub rotation_secs: u64,
    /// Keys held (of the accepted epochs and the next one).
    pub keys: usize,
    /// Of them, received from peers.
    pub from_peers: usize,
}

/// The session ticket keys of this node.
pub struct TicketKeys {
    rotation: u64,
    rng: SystemRandom,
    epochs: Mutex<BTreeMap<u64, Vec<Key>>>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys").field("status", &self.status()).finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Keys rotating every `rotation` (at least one second).
    pub fn new(rotation: Duration) -> Arc<TicketKeys> {
        Arc::new(TicketKeys {
            rotation: rotation.as_secs().max(1),
            rng: SystemRandom::new(),
            epochs: Mutex::new(BTreeMap::new()),
        })
    }

    /// The rotation interval.
    pub fn rotation(&self) -> Duration {
        Duration::from_secs(self.rotation)
    }

    fn epoch_now(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / self.rotation
    }

    /// The keys as of epoch `now`: older epochs dropped, the current and next ones made if none is known.
    fn with_epochs<T>(&self, now: u64, f: impl FnOnce(&mut BTreeMap<u64, Vec<Key>>) -> T) -> T {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        epochs.retain(|e, _| *e + PREVIOUS >= now && *e <= now + 1);
        for e in [now, now + 1] {
            let keys = epochs.entry(e).or_default();
            if keys.is_empty() {
                if let Some(k) = self.make(e) {
                    keys.push(Key::new(k, false));
                }
            }
        }
        f(&mut epochs)
    }

    fn make(&self, epoch: u64) -> Option<KeyRecord> {
        let mut name = [0u8; NAME_LEN];
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        self.rng.fill(&mut name).ok()?;
        self.rng.fill(&mut secret[..]).ok()?;
        Some(KeyRecord { epoch, name, secret })
    }

    /// Every key of the accepted epochs and the next one, to send to the peers (encrypted).
    pub fn export(&self) -> Vec<KeyRecord> {
        self.export_at(self.epoch_now())
    }

    fn export_at(&self, now: u64) -> Vec<KeyRecord> {
        self.with_epochs(now, |epochs| epochs.values().flatten().map(|k| k.record.clone()).collect())
    }

    /// Takes the keys a peer sent: those of the accepted epochs and the next one not known yet (at most
    /// [`MAX_PER_EPOCH`] per epoch). Returns how many were new.
    pub fn import(&self, records: Vec<KeyRecord>) -> usize {
        self.import_at(self.epoch_now(), records)
    }

    fn import_at(&self, now: u64, records: Vec<KeyRecord>) -> usize {
        self.with_epochs(now, |epochs| {
            let mut added = 0;
            for r in records {
                let Some(keys) = epochs.get_mut(&r.epoch) else { continue };
                if keys.len() >= MAX_PER_EPOCH || keys.iter().any(|k| k.record.name == r.name) {
                    continue;
                }
                keys.push(Key::new(r, true));
                added += 1;
            }
            added
        })
    }

    /// Counts, for the state report.
    pub fn status(&self) -> TicketStatus {
        let now = self.epoch_now();
        self.with_epochs(now, |epochs| TicketStatus {
            epoch: now,
            rotation_secs: self.rotation,
            keys: epochs.values().map(Vec::len).sum(),
            from_peers: epochs.values().flatten().filter(|k| k.from_peer).count(),
        })
    }

    /// Seals `plain` with the current epoch's key (the one of the smallest name): name | nonce | ciphertext+tag.
    fn seal_at(&self, now: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        self.with_epochs(now, |epochs| {
            let key = epochs.get(&now)?.iter().min_by_key(|k| k.record.name)?;
            let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + CHACHA20_POLY1305.tag_len());
            out.extend_from_slice(&key.record.name);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(plain);
            let tag = key
                .aead
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&key.record.name),
                    &mut out[NAME_LEN + NONCE_LEN..],
                )
                .ok()?;
            out.extend_from_slice(tag.as_ref());
            Some(out)
        })
    }

    /// Opens a ticket sealed by any key of the accepted epochs or the next one.
    fn open_at(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + CHACHA20_POLY1305.tag_len() {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        self.with_epochs(now, |epochs| {
            let key = epochs.values().flatten().find(|k| k.record.name == name)?;
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buf = sealed.to_vec();
            let plain = key.aead.open_in_place(nonce, Aad::from(name), &mut buf).ok()?;
            Some(plain.to_vec())
        })
    }
}

/// The rustls ticketer sealing session tickets with a node's [`TicketKeys`].
#[derive(Debug)]
pub struct Ticketer(pub Arc<TicketKeys>);

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    /// Two rotations: a ticket sealed at any time of an epoch still opens then (two previous epochs accepted).
    fn lifetime(&self) -> u32 {
        u32::try_from(self.0.rotation.saturating_mul(2)).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.seal_at(self.0.epoch_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.open_at(self.0.epoch_now(), cipher)
    }
}

/// The AEAD that carries ticket keys between nodes (ChaCha20-Poly1305), for the sync channel's codec.
pub fn wire_algorithm() -> &'static aead::Algorithm {
    &CHACHA20_POLY1305
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_accepts_the_previous_two_epochs() {
        let k = TicketKeys::new(Duration::from_secs(3600));
        let t = k.seal_at(100, b"session state").unwrap();
        assert!(!t.windows(13).any(|w| w == b"session state"), "sealed, not in clear");
        for now in [100, 101, 102] {
            assert_eq!(k.open_at(now, &t).as_deref(), Some(&b"session state"[..]), "epoch {now}");
        }
        assert_eq!(k.open_at(103, &t), None, "three epochs later");
        // A new key each epoch, made one epoch ahead.
        let k = TicketKeys::new(Duration::from_secs(3600));
        let a = k.seal_at(200, b"x").unwrap();
        let b = k.seal_at(201, b"x").unwrap();
        assert_ne!(a[..NAME_LEN], b[..NAME_LEN]);
        assert_eq!(k.export_at(201).iter().map(|r| r.epoch).collect::<Vec<_>>(), vec![200, 201, 202]);
        // Tampering is refused.
        let mut bad = b.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(k.open_at(201, &bad), None);
        assert_eq!(k.open_at(201, &b[..20]), None);
    }

    #[test]
    fn nodes_sharing_keys_open_each_others_tickets_and_agree() {
        let a = TicketKeys::new(Duration::from_secs(60));
        let b = TicketKeys::new(Duration::from_secs(60));
        let from_a = a.seal_at(10, b"on a").unwrap();
        assert_eq!(b.open_at(10, &from_a), None, "not shared yet");
        assert_eq!(b.import_at(10, a.export_at(10)), 2);
        assert_eq!(a.import_at(10, b.export_at(10)), 2);
        assert_eq!(b.import_at(10, a.export_at(10)), 0, "known already");
        assert_eq!(b.open_at(10, &from_a).as_deref(), Some(&b"on a"[..]));
        // Both seal with the same key of the epoch now and at the next one.
        for now in [10, 11] {
            let (x, y) = (a.seal_at(now, b"s").unwrap(), b.seal_at(now, b"s").unwrap());
            assert_eq!(x[..NAME_LEN], y[..NAME_LEN], "epoch {now}");
            assert_eq!(a.open_at(now, &y).as_deref(), Some(&b"s"[..]));
        }
        // Keys of epochs not accepted are not taken; at most MAX_PER_EPOCH per epoch.
        let old = KeyRecord { epoch: 5, name: [1; NAME_LEN], secret: Zeroizing::new([2; KEY_LEN]) };
        assert_eq!(b.import_at(10, vec![old]), 0);
        let many: Vec<KeyRecord> = (0..10u8)
            .map(|i| KeyRecord { epoch: 10, name: [i + 100; NAME_LEN], secret: Zeroizing::new([i; KEY_LEN]) })
            .collect();
        assert_eq!(b.import_at(10, many), MAX_PER_EPOCH - 2);
        // As of the wall clock (those epochs are long gone): the status counts keys, shows none.
        let (a, b) = (TicketKeys::new(Duration::from_secs(60)), TicketKeys::new(Duration::from_secs(60)));
        assert_eq!(a.import(b.export()), 2);
        let s = a.status();
        assert_eq!((s.keys, s.from_peers, s.rotation_secs), (4, 2, 60));
    }

    #[test]
    fn secrets_never_printed() {
        let k = TicketKeys::new(Duration::from_secs(60));
        let records = k.export();
        let text = format!("{records:?} {k:?}");
        for r in &records {
            assert!(!text.contains(&hex(&r.secret[..])), "{text}");
        }
        assert!(text.contains(&hex(&records[0].name)));
    }
}
