//! Pre-signed zones: the DNSSEC records a signer wrote into a master file (dnssec-signzone, ldns-signzone,
//! Knot's kzonesign) are served as they are, as NSD does. hickory's zone parser refuses these types ("should
//! be dynamically generated"), so [`split`] takes them out of the text first (blank lines keep the line
//! numbers of the rest) and encodes their RDATA itself; they are kept as opaque RDATA (`RData::Unknown`), which
//! is exactly what goes on the wire. Answers to queries with the DO bit carry the RRSIGs of their RRsets and,
//! for NXDOMAIN and NODATA, the NSEC or NSEC3 records that prove them (NSEC3: RFC 5155 closest-encloser proofs,
//! hashes computed with the zone's NSEC3PARAM).

use std::str::FromStr;

use base64::Engine;
use hickory_proto::rr::rdata::NULL;
use hickory_proto::rr::{Name, RData, RecordType};

/// Record types taken out of the text and encoded here.
const TYPES: [&str; 8] = ["RRSIG", "NSEC", "NSEC3", "NSEC3PARAM", "DNSKEY", "CDNSKEY", "DS", "CDS"];

/// A master file with its DNSSEC records taken out.
#[derive(Debug, Default)]
pub struct Split {
    /// The rest of the text, same line numbers, for hickory's parser.
    pub text: String,
    /// The DNSSEC records: owner (as written), TTL, RDATA.
    pub records: Vec<(Name, u32, RData)>,
}

/// The text of `line` without its comment (a `;` outside quotes).
fn code(line: &str) -> &str {
    let mut quoted = false;
    let mut esc = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if esc => esc = false,
            '\\' => esc = true,
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

fn parse_ttl(s: &str) -> Option<u32> {
    if s.chars().all(|c| c.is_ascii_digit()) {
        return s.parse().ok();
    }
    // 1h30m, 2d, 1W ...
    let (mut total, mut n) = (0u64, 0u64);
    let mut any = false;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            n = n * 10 + u64::from(d);
            any = true;
            continue;
        }
        let unit = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return None,
        };
        total += n * unit;
        n = 0;
    }
    (any && n == 0).then(|| u32::try_from(total).ok()).flatten()
}

fn absolute(tok: &str, origin: &Name) -> Result<Name, String> {
    if tok == "@" {
        return Ok(origin.clone());
    }
    let n = Name::from_ascii(tok).map_err(|e| format!("`{tok}`: {e}"))?;
    if n.is_fqdn() {
        Ok(n)
    } else {
        n.append_domain(origin).map_err(|e| format!("`{tok}`: {e}"))
    }
}

/// Takes the DNSSEC records out of a master file of the zone `origin`. Errors: (line, message).
pub fn split(text: &str, origin: &Name) -> Result<Split, (usize, String)> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Split { text: String::with_capacity(text.len()), records: Vec::new() };
    let mut cur_origin = origin.clone();
    let mut owner: Option<Name> = None;
    let (mut last_ttl, mut dollar_ttl): (Option<u32>, Option<u32>) = (None, None);
    let mut i = 0;
    while i < lines.len() {
        let start = i;
        let mut depth = 0i32;
        let mut joined = String::new();
        loop {
            let c = code(lines[i]);
            depth += c.matches('(').count() as i32 - c.matches(')').count() as i32;
            joined.push_str(c);
            joined.push(' ');
            i += 1;
            if depth <= 0 || i >= lines.len() {
                break;
            }
        }
        let entry = &lines[start..i];
        let first = entry[0];
        let blank_owner = first.starts_with([' ', '\t']);
        let spaced = joined.replace(['(', ')'], " ");
        let mut toks: Vec<&str> = spaced.split_whitespace().collect();
        if toks.is_empty() {
            out.text.extend(entry.iter().copied());
            continue;
        }
        let err = |m: String| (start + 1, m);
        if !blank_owner && toks[0].starts_with('$') {
            match toks[0].to_ascii_uppercase().as_str() {
                "$ORIGIN" => cur_origin = absolute(toks.get(1).copied().unwrap_or(""), origin).map_err(err)?,
                "$TTL" => dollar_ttl = toks.get(1).and_then(|t| parse_ttl(t)),
                _ => {}
            }
            out.text.extend(entry.iter().copied());
            continue;
        }
        if !blank_owner {
            owner = Some(absolute(toks[0], &cur_origin).map_err(err)?);
            toks.remove(0);
        }
        let mut ttl = None;
        let mut k = 0;
        while k < toks.len() {
            let t = toks[k].to_ascii_uppercase();
            if matches!(t.as_str(), "IN" | "CH" | "HS" | "CS") {
                k += 1;
            } else if let Some(v) = parse_ttl(&t) {
                ttl = Some(v);
                k += 1;
            } else {
                break;
            }
        }
        if ttl.is_some() {
            last_ttl = ttl;
        }
        let rtype = toks.get(k).map(|t| t.to_ascii_uppercase()).unwrap_or_default();
        if !TYPES.contains(&rtype.as_str()) {
            // Not ours: hickory parses it; an entry continuing the previous owner gets it written out, since the
            // previous entry may be one taken out here.
            match (&owner, blank_owner) {
                (Some(o), true) => {
                    out.text.push_str(&o.to_ascii());
                    out.text.push_str(entry[0]);
                    out.text.extend(entry[1..].iter().copied());
                }
                _ => out.text.extend(entry.iter().copied()),
            }
            continue;
        }
        let Some(name) = owner.clone() else { return Err(err("a record without an owner name".into())) };
        let ttl = ttl.or(last_ttl).or(dollar_ttl).ok_or_else(|| err("no TTL and no $TTL".into()))?;
        let rdata = encode(&rtype, &toks[k + 1..], &cur_origin).map_err(|m| err(format!("{rtype}: {m}")))?;
        let code = RecordType::from_str(&rtype).map_err(|e| err(e.to_string()))?;
        out.records.push((name, ttl, RData::Unknown { code, rdata: NULL::with(rdata) }));
        for l in entry {
            out.text.push_str(if l.ends_with('\n') { "\n" } else { "" });
        }
    }
    Ok(out)
}

fn num<T: FromStr>(t: Option<&&str>, what: &str) -> Result<T, String> {
    t.and_then(|t| t.parse().ok()).ok_or_else(|| format!("bad or missing {what}"))
}

fn type_code(t: &str) -> Result<u16, String> {
    let u = t.to_ascii_uppercase();
    if let Some(n) = u.strip_prefix("TYPE") {
        if let Ok(v) = n.parse() {
            return Ok(v);
        }
    }
    RecordType::from_str(&u).map(u16::from).map_err(|_| format!("unknown type `{t}`"))
}

/// Uncompressed wire form of a name, its case kept (RFC 6840 5.1: NSEC next names are not lowercased).
fn name_wire(t: &str, origin: &Name, out: &mut Vec<u8>) -> Result<(), String> {
    let n = absolute(t, origin)?;
    for l in n.iter() {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    Ok(())
}

fn bitmap(types: &[&str], out: &mut Vec<u8>) -> Result<(), String> {
    let mut codes: Vec<u16> = types.iter().map(|t| type_code(t)).collect::<Result<_, _>>()?;
    codes.sort_unstable();
    codes.dedup();
    let mut i = 0;
    while i < codes.len() {
        let window = codes[i] >> 8;
        let mut bits = [0u8; 32];
        let mut len = 0;
        while i < codes.len() && codes[i] >> 8 == window {
            let low = (codes[i] & 0xff) as usize;
            bits[low / 8] |= 0x80 >> (low % 8);
            len = len.max(low / 8 + 1);
            i += 1;
        }
        out.extend_from_slice(&[window as u8, len as u8]);
        out.extend_from_slice(&bits[..len]);
    }
    Ok(())
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| "bad hex".to_string())).collect()
}

fn base32hex(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').chars() {
        let v = c.to_digit(32).ok_or("bad base32hex")?;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// RRSIG times: YYYYMMDDHHmmSS (UTC) or seconds.
fn sig_time(t: &str) -> Result<u32, String> {
    if t.len() == 14 && t.chars().all(|c| c.is_ascii_digit()) {
        let p = |a: usize, b: usize| t[a..b].parse::<i64>().unwrap_or(0);
        let (y, m, d) = (p(0, 4), p(4, 6), p(6, 8));
        // Days from civil (H. Hinnant).
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        let secs = days * 86400 + p(8, 10) * 3600 + p(10, 12) * 60 + p(12, 14);
        return Ok(secs as u32); // serial number arithmetic (RFC 4034 3.1.5)
    }
    t.parse().map_err(|_| format!("bad time `{t}`"))
}

fn b64(parts: &[&str]) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(parts.concat()).map_err(|_| "bad base64".to_string())
}

fn encode(rtype: &str, t: &[&str], origin: &Name) -> Result<Vec<u8>, String> {
    let mut o = Vec::new();
    match rtype {
        "DNSKEY" | "CDNSKEY" => {
            o.extend_from_slice(&num::<u16>(t.first(), "flags")?.to_be_bytes());
            o.push(num(t.get(1), "protocol")?);
            o.push(num(t.get(2), "algorithm")?);
            o.extend(b64(t.get(3..).unwrap_or_default())?);
        }
        "DS" | "CDS" => {
            o.extend_from_slice(&num::<u16>(t.first(), "key tag")?.to_be_bytes());
            o.push(num(t.get(1), "algorithm")?);
            o.push(num(t.get(2), "digest type")?);
            o.extend(hex(&t.get(3..).unwrap_or_default().concat())?);
        }
        "RRSIG" => {
            o.extend_from_slice(&type_code(t.first().ok_or("missing type covered")?)?.to_be_bytes());
            o.push(num(t.get(1), "algorithm")?);
            o.push(num(t.get(2), "labels")?);
            o.extend_from_slice(&num::<u32>(t.get(3), "original TTL")?.to_be_bytes());
            o.extend_from_slice(&sig_time(t.get(4).ok_or("missing expiration")?)?.to_be_bytes());
            o.extend_from_slice(&sig_time(t.get(5).ok_or("missing inception")?)?.to_be_bytes());
            o.extend_from_slice(&num::<u16>(t.get(6), "key tag")?.to_be_bytes());
            let mut signer = Vec::new();
            name_wire(t.get(7).ok_or("missing signer")?, origin, &mut signer)?;
            o.extend(signer.iter().map(u8::to_ascii_lowercase));
            o.extend(b64(t.get(8..).unwrap_or_default())?);
        }
        "NSEC" => {
            name_wire(t.first().ok_or("missing next name")?, origin, &mut o)?;
            bitmap(t.get(1..).unwrap_or_default(), &mut o)?;
        }
        "NSEC3" | "NSEC3PARAM" => {
            o.push(num(t.first(), "hash algorithm")?);
            o.push(num(t.get(1), "flags")?);
            o.extend_from_slice(&num::<u16>(t.get(2), "iterations")?.to_be_bytes());
            let salt = match *t.get(3).ok_or("missing salt")? {
                "-" => Vec::new(),
                s => hex(s)?,
            };
            o.push(salt.len() as u8);
            o.extend(salt);
            if rtype == "NSEC3" {
                let next = base32hex(t.get(4).ok_or("missing next hashed owner")?)?;
                o.push(next.len() as u8);
                o.extend(next);
                bitmap(t.get(5..).unwrap_or_default(), &mut o)?;
            }
        }
        _ => return Err("unsupported".into()),
    }
    Ok(o)
}

/// The type an RRSIG's RDATA covers.
pub fn covered(rdata: &RData) -> Option<RecordType> {
    match rdata {
        RData::Unknown { code: RecordType::RRSIG, rdata } => {
            let b = &rdata.anything;
            (b.len() >= 2).then(|| RecordType::from(u16::from_be_bytes([b[0], b[1]])))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_dnssec_records_out_keeping_lines() {
        let origin = Name::from_ascii("s.test.").unwrap();
        let text = "$TTL 60\n@ IN SOA ns a 1 2 3 4 5\n  60 RRSIG SOA 13 2 60 (\n 20270101000000 20261201000000 12345 \
                    s.test.\n AAEC )\n\
                    \tIN NS ns\nns A 192.0.2.1\n   NSEC s.test. A RRSIG NSEC TYPE65534\n";
        let s = split(text, &origin).unwrap();
        assert_eq!(s.text.lines().count(), text.lines().count());
        assert!(s.text.contains("s.test.\tIN NS ns"), "{}", s.text);
        assert_eq!(s.records.len(), 2);
        let RData::Unknown { rdata, .. } = &s.records[0].2 else { panic!() };
        let b = &rdata.anything;
        assert_eq!(&b[..4], &[0, 6, 13, 2]);
        assert_eq!(u32::from_be_bytes([b[8], b[9], b[10], b[11]]), 1798761600, "2027-01-01");
        assert_eq!(covered(&s.records[0].2), Some(RecordType::SOA));
        assert_eq!(s.records[1].0.to_ascii(), "ns.s.test.");
        let RData::Unknown { rdata, .. } = &s.records[1].2 else { panic!() };
        // next name, window 0 (A=1, RRSIG=46, NSEC=47), window 255 (65534).
        let mut want = vec![0, 6, 0x40, 0, 0, 0, 0, 0x03, 255, 32];
        want.extend([0; 31]);
        want.push(0x02);
        assert_eq!(&rdata.anything[8..], &want[..]);
    }
}
