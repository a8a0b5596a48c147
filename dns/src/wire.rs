//! Small wire-format helpers: lowercase uncompressed names, skipping names and records in raw messages.

use hickory_proto::rr::Name;

/// A domain name in lowercase, uncompressed wire form (ends with the root label `0`).
pub type WireName = std::sync::Arc<[u8]>;

/// The lowercase wire form of `name`.
pub fn wire_of(name: &Name) -> WireName {
    let mut buf = Vec::with_capacity(name.len() + 2);
    for label in name.iter() {
        buf.push(label.len() as u8);
        buf.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    buf.push(0);
    buf.into()
}

/// The parent of a wire name (`None` for the root).
pub fn parent(wire: &[u8]) -> Option<&[u8]> {
    let len = *wire.first()? as usize;
    if len == 0 {
        return None;
    }
    wire.get(1 + len..)
}

/// Whether `wire` is `origin` or below it.
pub fn in_zone(wire: &[u8], origin: &[u8]) -> bool {
    let mut w = wire;
    loop {
        if w == origin {
            return true;
        }
        match parent(w) {
            Some(p) => w = p,
            None => return false,
        }
    }
}

/// Skips a (possibly compressed) name at `pos`; returns the position after it.
pub fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len as usize,
            0xC0 => return if pos + 2 <= msg.len() { Some(pos + 2) } else { None },
            _ => return None,
        }
    }
}

/// Skips a resource record at `pos`; returns the position after it.
pub fn skip_record(msg: &[u8], pos: usize) -> Option<usize> {
    let p = skip_name(msg, pos)?;
    let rdlen = u16::from_be_bytes([*msg.get(p + 8)?, *msg.get(p + 9)?]) as usize;
    let end = p + 10 + rdlen;
    (end <= msg.len()).then_some(end)
}

/// Reads a big-endian u16.
pub fn u16_at(msg: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]))
}

/// Position of the first byte after the question section (`None` if malformed).
pub fn after_questions(msg: &[u8]) -> Option<usize> {
    let qd = u16_at(msg, 4)?;
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos)? + 4;
    }
    (pos <= msg.len()).then_some(pos)
}

/// Position after the last record the header announces (`None` if the message is shorter than announced).
pub fn message_end(msg: &[u8]) -> Option<usize> {
    let mut pos = after_questions(msg)?;
    let n = u16_at(msg, 6)? as usize + u16_at(msg, 8)? as usize + u16_at(msg, 10)? as usize;
    for _ in 0..n {
        pos = skip_record(msg, pos)?;
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        let n = Name::from_ascii("WwW.Example.COM.").unwrap();
        let w = wire_of(&n);
        assert_eq!(&*w, b"\x03www\x07example\x03com\x00");
        let o = wire_of(&Name::from_ascii("example.com.").unwrap());
        assert!(in_zone(&w, &o));
        assert!(!in_zone(&o, &w));
        assert_eq!(parent(&w), Some(&o[..]));
        assert_eq!(skip_name(b"\x01a\xc0\x0c", 0), Some(4));
        assert_eq!(skip_name(b"\x01a\x80", 0), None);
    }
}
