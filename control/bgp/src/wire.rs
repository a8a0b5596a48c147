//! BGP messages on the wire: framing, our OPEN, checking the peer's OPEN, and building UPDATEs.
//!
//! Encoding and decoding of single messages is done by `rustbgpd-wire`; this module decides what we send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};
use ipnet::{Ipv4Net, Ipv6Net};
use rustbgpd_wire::attribute::{
    AsPath, AsPathSegment, MpReachNlri, MpUnreachNlri, Origin, PathAttribute, RawAttribute,
};
use rustbgpd_wire::capability::GracefulRestartFamily;
use rustbgpd_wire::constants::AS_TRANS;
use rustbgpd_wire::nlri::{Ipv4NlriEntry, Ipv4Prefix, Ipv6Prefix, NlriEntry, Prefix};
use rustbgpd_wire::{
    decode_message, encode_message, Afi, Capability, DecodeError, EncodeError, Ipv4UnicastMode, Message,
    NotificationCode, NotificationMessage, OpenMessage, Safi, UpdateMessage, MAX_MESSAGE_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::SessionError;

/// RFC 8326 GRACEFUL_SHUTDOWN well-known community (65535:0).
pub const GRACEFUL_SHUTDOWN: u32 = 0xFFFF_0000;
/// IPv4 prefixes per UPDATE (5 bytes each for /32: far below 4096 bytes).
const V4_CHUNK: usize = 400;
/// IPv6 prefixes per UPDATE (17 bytes each for /128).
const V6_CHUNK: usize = 150;

/// Reads one whole BGP message. Malformed input gives [`SessionError::Decode`] (answer with a NOTIFICATION).
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, SessionError> {
    let mut header = [0u8; 19];
    r.read_exact(&mut header).await?;
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    if !(19..=usize::from(MAX_MESSAGE_LEN)).contains(&len) {
        // Let the decoder produce the precise error (bad marker or bad length).
        let mut b = Bytes::copy_from_slice(&header);
        return Err(match decode_message(&mut b, MAX_MESSAGE_LEN) {
            Err(e) => e.into(),
            Ok(_) => DecodeError::InvalidLength { length: len as u16 }.into(),
        });
    }
    let mut buf = BytesMut::with_capacity(len);
    buf.extend_from_slice(&header);
    buf.resize(len, 0);
    r.read_exact(&mut buf[19..]).await?;
    let mut bytes = buf.freeze();
    Ok(decode_message(&mut bytes, MAX_MESSAGE_LEN)?)
}

/// Encodes a message to send.
pub fn encode(msg: &Message) -> Result<Bytes, EncodeError> {
    encode_message(msg).map(BytesMut::freeze)
}

/// Our OPEN: 4-octet AS, IPv4 and IPv6 unicast (MP-BGP), route refresh; with `graceful_restart` (restart time
/// in seconds, whether this process restarted) the RFC 4724 capability, forwarding state preserved for both
/// families (the XDP program forwards on while the daemon restarts).
pub fn open(asn: u32, hold_secs: u16, router_id: Ipv4Addr, graceful_restart: Option<(u16, bool)>) -> Message {
    let mut capabilities = vec![
        Capability::MultiProtocol { afi: Afi::Ipv4, safi: Safi::Unicast },
        Capability::MultiProtocol { afi: Afi::Ipv6, safi: Safi::Unicast },
        Capability::RouteRefresh,
        Capability::FourOctetAs { asn },
    ];
    if let Some((restart_time, restarted)) = graceful_restart {
        let family = |afi| GracefulRestartFamily { afi, safi: Safi::Unicast, forwarding_preserved: true };
        capabilities.push(Capability::GracefulRestart {
            restart_state: restarted,
            notification: false,
            restart_time: restart_time.min(4095),
            families: vec![family(Afi::Ipv4), family(Afi::Ipv6)],
        });
    }
    Message::Open(OpenMessage {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold_secs,
        bgp_identifier: router_id,
        capabilities,
    })
}

/// End-of-RIB markers (RFC 4724 section 2) of the families sent: an empty UPDATE for IPv4 unicast, an empty
/// MP_UNREACH_NLRI for IPv6 unicast.
pub fn end_of_rib(ipv4: bool, ipv6: bool, four_octet: bool) -> Result<Vec<Message>, EncodeError> {
    let mut out = Vec::new();
    if ipv4 {
        out.push(Message::Update(UpdateMessage::try_build(&[], &[], &[], four_octet, false, Ipv4UnicastMode::Body)?));
    }
    if ipv6 {
        let un = MpUnreachNlri {
            afi: Afi::Ipv6,
            safi: Safi::Unicast,
            withdrawn: vec![],
            flowspec_withdrawn: vec![],
            evpn_withdrawn: vec![],
            bgpls_withdrawn: vec![],
            vpn_withdrawn: vec![],
            labeled_withdrawn: vec![],
            rtc_withdrawn: vec![],
        };
        let attrs = [PathAttribute::MpUnreachNlri(Box::new(un))];
        out.push(Message::Update(UpdateMessage::try_build(
            &[],
            &[],
            &attrs,
            four_octet,
            false,
            Ipv4UnicastMode::Body,
        )?));
    }
    Ok(out)
}

/// A NOTIFICATION message.
pub fn notification(code: u8, subcode: u8, data: Bytes) -> Message {
    Message::Notification(NotificationMessage::new(NotificationCode::from_u8(code), subcode, data))
}

/// What we learnt from the peer's OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerOpen {
    /// The peer's AS.
    pub asn: u32,
    /// Negotiated hold time in seconds (0 = no keepalives).
    pub hold_secs: u16,
    /// The peer's identifier.
    pub router_id: Ipv4Addr,
    /// Peer understands 4-octet AS numbers.
    pub four_octet: bool,
    /// We may send IPv4 unicast.
    pub ipv4: bool,
    /// We may send IPv6 unicast.
    pub ipv6: bool,
}

/// An OPEN we refuse: the NOTIFICATION to send and why.
#[derive(Debug)]
pub struct OpenRejected {
    /// OPEN Message Error subcode (RFC 4271 6.2).
    pub subcode: u8,
    /// NOTIFICATION data.
    pub data: Bytes,
    /// For the log.
    pub reason: String,
}

impl OpenRejected {
    /// The NOTIFICATION to send.
    pub fn notification(&self) -> Message {
        notification(2, self.subcode, self.data.clone())
    }
}

/// Checks the peer's OPEN against the configured AS and our identifier; negotiates hold time and families.
pub fn check_open(
    o: &OpenMessage,
    expected_asn: u32,
    our_id: Ipv4Addr,
    our_hold: u16,
    ibgp: bool,
) -> Result<PeerOpen, OpenRejected> {
    let reject = |subcode: u8, data: Bytes, reason: String| OpenRejected { subcode, data, reason };
    if o.version != 4 {
        return Err(reject(1, Bytes::from_static(&[0, 4]), format!("version {}", o.version)));
    }
    let four = o.capabilities.iter().find_map(|c| match c {
        Capability::FourOctetAs { asn } => Some(*asn),
        _ => None,
    });
    let asn = four.unwrap_or(u32::from(o.my_as));
    if asn != expected_asn {
        return Err(reject(2, Bytes::new(), format!("peer AS {asn}, expected {expected_asn}")));
    }
    if o.hold_time == 1 || o.hold_time == 2 {
        return Err(reject(6, Bytes::new(), format!("hold time {}", o.hold_time)));
    }
    if o.bgp_identifier.is_unspecified() || (ibgp && o.bgp_identifier == our_id) {
        return Err(reject(3, Bytes::new(), format!("BGP identifier {}", o.bgp_identifier)));
    }
    let mp: Vec<(Afi, Safi)> = o
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::MultiProtocol { afi, safi } => Some((*afi, *safi)),
            _ => None,
        })
        .collect();
    Ok(PeerOpen {
        asn,
        hold_secs: our_hold.min(o.hold_time),
        router_id: o.bgp_identifier,
        four_octet: four.is_some(),
        ipv4: mp.is_empty() || mp.contains(&(Afi::Ipv4, Safi::Unicast)),
        ipv6: mp.contains(&(Afi::Ipv6, Safi::Unicast)),
    })
}

/// The path attributes we attach to our routes (besides the next hop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathParams {
    /// Our AS.
    pub local_asn: u32,
    /// eBGP session: our AS is prepended; no LOCAL_PREF.
    pub ebgp: bool,
    /// Peer has the 4-octet AS capability.
    pub four_octet: bool,
    /// MULTI_EXIT_DISC, if any.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only; default 100 there).
    pub local_pref: Option<u32>,
    /// COMMUNITIES.
    pub communities: Vec<u32>,
}

impl PathParams {
    fn attributes(&self) -> Vec<PathAttribute> {
        let mut a = vec![PathAttribute::Origin(Origin::Igp)];
        let path = if self.ebgp { vec![AsPathSegment::AsSequence(vec![self.local_asn])] } else { vec![] };
        a.push(PathAttribute::AsPath(AsPath { segments: path }));
        if let Some(m) = self.med {
            a.push(PathAttribute::Med(m));
        }
        if !self.ebgp {
            a.push(PathAttribute::LocalPref(self.local_pref.unwrap_or(100)));
        }
        if !self.communities.is_empty() {
            a.push(PathAttribute::Communities(self.communities.clone()));
        }
        if self.ebgp && !self.four_octet && self.local_asn > 0xFFFF {
            // RFC 6793: a 2-octet peer sees AS_TRANS in AS_PATH; the real AS travels in AS4_PATH.
            let mut v = vec![2u8, 1];
            v.extend_from_slice(&self.local_asn.to_be_bytes());
            a.push(PathAttribute::Unknown(RawAttribute { flags: 0xC0, type_code: 17, data: Bytes::from(v) }));
        }
        a
    }
}

/// UPDATEs for IPv4 routes: withdrawals first, then announcements with `next_hop`.
pub fn updates_v4(
    announce: &[Ipv4Net],
    withdraw: &[Ipv4Net],
    next_hop: Ipv4Addr,
    p: &PathParams,
) -> Result<Vec<Message>, EncodeError> {
    let entry = |n: &Ipv4Net| Ipv4NlriEntry { path_id: 0, prefix: Ipv4Prefix::new(n.addr(), n.prefix_len()) };
    let mut out = Vec::new();
    for chunk in withdraw.chunks(V4_CHUNK) {
        let w: Vec<_> = chunk.iter().map(entry).collect();
        out.push(Message::Update(UpdateMessage::try_build(&[], &w, &[], p.four_octet, false, Ipv4UnicastMode::Body)?));
    }
    if !announce.is_empty() {
        let mut attrs = p.attributes();
        let at = attrs.iter().position(|a| a.type_code() > 3).unwrap_or(attrs.len());
        attrs.insert(at, PathAttribute::NextHop(next_hop));
        for chunk in announce.chunks(V4_CHUNK) {
            let n: Vec<_> = chunk.iter().map(entry).collect();
            out.push(Message::Update(UpdateMessage::try_build(
                &n,
                &[],
                &attrs,
                p.four_octet,
                false,
                Ipv4UnicastMode::Body,
            )?));
        }
    }
    Ok(out)
}

/// UPDATEs for IPv6 routes (MP_REACH_NLRI / MP_UNREACH_NLRI, RFC 4760): withdrawals first.
pub fn updates_v6(
    announce: &[Ipv6Net],
    withdraw: &[Ipv6Net],
    next_hop: Ipv6Addr,
    p: &PathParams,
) -> Result<Vec<Message>, EncodeError> {
    let entry = |n: &Ipv6Net| NlriEntry { path_id: 0, prefix: Prefix::V6(Ipv6Prefix::new(n.addr(), n.prefix_len())) };
    let mut out = Vec::new();
    for chunk in withdraw.chunks(V6_CHUNK) {
        let un = MpUnreachNlri {
            afi: Afi::Ipv6,
            safi: Safi::Unicast,
            withdrawn: chunk.iter().map(entry).collect(),
            flowspec_withdrawn: vec![],
            evpn_withdrawn: vec![],
            bgpls_withdrawn: vec![],
            vpn_withdrawn: vec![],
            labeled_withdrawn: vec![],
            rtc_withdrawn: vec![],
        };
        let attrs = [PathAttribute::MpUnreachNlri(Box::new(un))];
        out.push(Message::Update(UpdateMessage::try_build(
            &[],
            &[],
            &attrs,
            p.four_octet,
            false,
            Ipv4UnicastMode::Body,
        )?));
    }
    for chunk in announce.chunks(V6_CHUNK) {
        let reach = MpReachNlri {
            afi: Afi::Ipv6,
            safi: Safi::Unicast,
            next_hop: IpAddr::V6(next_hop),
            link_local_next_hop: None,
            announced: chunk.iter().map(entry).collect(),
            flowspec_announced: vec![],
            evpn_announced: vec![],
            bgpls_announced: vec![],
            vpn_announced: vec![],
            labeled_announced: vec![],
            rtc_announced: vec![],
        };
        let mut attrs = p.attributes();
        let at = attrs.iter().position(|a| a.type_code() > 14).unwrap_or(attrs.len());
        attrs.insert(at, PathAttribute::MpReachNlri(Box::new(reach)));
        out.push(Message::Update(UpdateMessage::try_build(
            &[],
            &[],
            &attrs,
            p.four_octet,
            false,
            Ipv4UnicastMode::Body,
        )?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
    const MARKER: &str = "ffffffffffffffffffffffffffffffff";

    #[test]
    fn keepalive_and_notification_bytes() {
        assert_eq!(hex(&encode(&Message::Keepalive).unwrap()), format!("{MARKER}001304"));
        assert_eq!(hex(&encode(&notification(6, 2, Bytes::new())).unwrap()), format!("{MARKER}0015030602"));
    }

    #[test]
    fn open_carries_as_trans_and_capabilities() {
        let b = encode(&open(4_200_000_001, 90, Ipv4Addr::new(10, 0, 0, 1), None)).unwrap();
        // version 4, AS_TRANS, hold 90, id, opt len 22, one capabilities parameter of 20 bytes:
        // MP ipv4/unicast, MP ipv6/unicast, route refresh, 4-octet AS 4200000001.
        let body = "04".to_string()
            + "5ba0"
            + "005a"
            + "0a000001"
            + "16"
            + "0214"
            + "010400010001"
            + "010400020001"
            + "0200"
            + "4104fa56ea01";
        assert_eq!(hex(&b), format!("{MARKER}{:04x}01{body}", 19 + body.len() / 2));
    }

    fn ebgp(communities: Vec<u32>) -> PathParams {
        PathParams {
            local_asn: 4_200_000_001,
            ebgp: true,
            four_octet: true,
            med: Some(0),
            local_pref: None,
            communities,
        }
    }

    #[test]
    fn ipv4_update_bytes() {
        let p: Ipv4Net = "198.51.100.7/32".parse().unwrap();
        let m = updates_v4(&[p], &[], Ipv4Addr::new(10, 0, 0, 1), &ebgp(vec![GRACEFUL_SHUTDOWN])).unwrap();
        assert_eq!(m.len(), 1);
        let attrs = "40010100".to_string() // ORIGIN IGP
            + "400206" + "0201fa56ea01" // AS_PATH: AS_SEQUENCE [4200000001]
            + "4003040a000001" // NEXT_HOP
            + "80040400000000" // MED 0
            + "c00804ffff0000"; // COMMUNITIES 65535:0
        let body = format!("0000{:04x}{attrs}20c6336407", attrs.len() / 2);
        assert_eq!(hex(&encode(&m[0]).unwrap()), format!("{MARKER}{:04x}02{body}", 19 + body.len() / 2));
        let w = updates_v4(&[], &[p], Ipv4Addr::new(10, 0, 0, 1), &ebgp(vec![])).unwrap();
        assert_eq!(hex(&encode(&w[0]).unwrap()), format!("{MARKER}001c02000520c63364070000"));
    }

    #[test]
    fn ipv6_update_bytes_use_mp_reach_and_unreach() {
        let p: Ipv6Net = "2001:db8::7/128".parse().unwrap();
        let nh: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut params = ebgp(vec![]);
        params.med = None;
        let m = updates_v6(&[p], &[], nh, &params).unwrap();
        let reach =
            "0002011020010db8000000000000000000000001".to_string() + "00" + "8020010db8000000000000000000000007";
        let attrs = "40010100".to_string() + "4002060201fa56ea01" + &format!("800e{:02x}{reach}", reach.len() / 2);
        let body = format!("0000{:04x}{attrs}", attrs.len() / 2);
        assert_eq!(hex(&encode(&m[0]).unwrap()), format!("{MARKER}{:04x}02{body}", 19 + body.len() / 2));
        let w = updates_v6(&[], &[p], nh, &params).unwrap();
        let unreach = "000201".to_string() + "8020010db8000000000000000000000007";
        let attrs = format!("800f{:02x}{unreach}", unreach.len() / 2);
        let body = format!("0000{:04x}{attrs}", attrs.len() / 2);
        assert_eq!(hex(&encode(&w[0]).unwrap()), format!("{MARKER}{:04x}02{body}", 19 + body.len() / 2));
    }

    #[test]
    fn ibgp_two_octet_peer_and_as4_path() {
        let mut p = ebgp(vec![]);
        p.ebgp = false;
        p.med = None;
        let a = p.attributes();
        assert!(a.contains(&PathAttribute::LocalPref(100)));
        assert!(a.contains(&PathAttribute::AsPath(AsPath { segments: vec![] })));
        let mut p = ebgp(vec![]);
        p.four_octet = false;
        let n: Ipv4Net = "198.51.100.7/32".parse().unwrap();
        let m = updates_v4(&[n], &[], Ipv4Addr::new(10, 0, 0, 1), &p).unwrap();
        let h = hex(&encode(&m[0]).unwrap());
        assert!(h.contains("40020402015ba0"), "AS_PATH with AS_TRANS: {h}");
        assert!(h.contains("c011060201fa56ea01"), "AS4_PATH: {h}");
    }

    #[test]
    fn many_routes_are_split_below_the_message_limit() {
        let nets: Vec<Ipv4Net> =
            (0..2000u32).map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i), 32).unwrap()).collect();
        let m = updates_v4(&nets, &nets, Ipv4Addr::new(10, 0, 0, 1), &ebgp(vec![])).unwrap();
        assert_eq!(m.len(), 10);
        assert!(m.iter().all(|m| encode(m).unwrap().len() <= 4096));
    }

    fn peer_open(asn: u32, hold: u16, caps: Vec<Capability>) -> OpenMessage {
        OpenMessage {
            version: 4,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time: hold,
            bgp_identifier: Ipv4Addr::new(10, 0, 0, 2),
            capabilities: caps,
        }
    }

    #[test]
    fn open_checks() {
        let id = Ipv4Addr::new(10, 0, 0, 1);
        let caps = vec![
            Capability::FourOctetAs { asn: 4_200_000_002 },
            Capability::MultiProtocol { afi: Afi::Ipv6, safi: Safi::Unicast },
        ];
        let ok = check_open(&peer_open(4_200_000_002, 30, caps.clone()), 4_200_000_002, id, 90, false).unwrap();
        assert_eq!((ok.hold_secs, ok.four_octet, ok.ipv4, ok.ipv6), (30, true, false, true));
        let plain = check_open(&peer_open(65000, 0, vec![]), 65000, id, 90, false).unwrap();
        assert_eq!((plain.hold_secs, plain.four_octet, plain.ipv4, plain.ipv6), (0, false, true, false));
        let sub = |r: Result<PeerOpen, OpenRejected>| match r.unwrap_err().notification() {
            Message::Notification(n) => (n.code.as_u8(), n.subcode),
            _ => (0, 0),
        };
        assert_eq!(sub(check_open(&peer_open(65001, 90, vec![]), 65000, id, 90, false)), (2, 2));
        assert_eq!(sub(check_open(&peer_open(65000, 2, vec![]), 65000, id, 90, false)), (2, 6));
        let mut same = peer_open(65000, 90, vec![]);
        same.bgp_identifier = id;
        assert_eq!(sub(check_open(&same, 65000, id, 90, true)), (2, 3));
    }

    #[tokio::test]
    async fn reader_frames_and_rejects() {
        let mut two = Vec::new();
        two.extend_from_slice(&encode(&Message::Keepalive).unwrap());
        two.extend_from_slice(&encode(&notification(6, 2, Bytes::new())).unwrap());
        let mut r = &two[..];
        assert!(matches!(read_message(&mut r).await.unwrap(), Message::Keepalive));
        assert!(matches!(read_message(&mut r).await.unwrap(), Message::Notification(_)));
        let mut bad = encode(&Message::Keepalive).unwrap().to_vec();
        bad[0] = 0;
        let e = read_message(&mut &bad[..]).await.unwrap_err();
        assert!(matches!(e, SessionError::Decode(DecodeError::InvalidMarker)), "{e:?}");
        let mut long = encode(&Message::Keepalive).unwrap().to_vec();
        long[16] = 0x20;
        let e = read_message(&mut &long[..]).await.unwrap_err();
        let SessionError::Decode(d) = e else { panic!("{e:?}") };
        assert_eq!((d.to_notification().0.as_u8(), d.to_notification().1), (1, 2));
    }
}
