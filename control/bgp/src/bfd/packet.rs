//! BFD Control packet codec (RFC 5880 section 4.1, no authentication section).
//!
//! Hand-written: no maintained crate on crates.io encodes BFD (there are dissectors and packet-crafting DSLs, no
//! codec meant for a speaker). [`ControlPacket::decode`] applies the packet-local checks of RFC 5880 section 6.8.6
//! (version, length, Detect Mult, Multipoint, discriminators) and reports a typed [`PacketError`].

use serde::Serialize;

/// Length of a Control packet without authentication.
pub const CONTROL_LEN: usize = 24;
/// The protocol version we speak and accept.
pub const VERSION: u8 = 1;

const POLL: u8 = 0x20;
const FINAL: u8 = 0x10;
const CPI: u8 = 0x08;
const AUTH: u8 = 0x04;
const DEMAND: u8 = 0x02;
const MULTIPOINT: u8 = 0x01;

/// Session state (RFC 5880 section 4.1, `Sta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Held down by its operator (here: Padis draining or stopping).
    AdminDown = 0,
    /// Down (also the starting state).
    Down = 1,
    /// The remote system said Down: we heard it, waiting for it to hear us.
    Init = 2,
    /// Both sides hear each other.
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::AdminDown => "admindown",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        })
    }
}

/// Diagnostic code (RFC 5880 section 4.1, `Diag`): why the session last left Up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Diag {
    /// No diagnostic.
    None,
    /// Control Detection Time Expired.
    DetectionTimeExpired,
    /// Echo Function Failed.
    EchoFailed,
    /// Neighbor Signaled Session Down.
    NeighborDown,
    /// Forwarding Plane Reset.
    ForwardingReset,
    /// Path Down.
    PathDown,
    /// Concatenated Path Down.
    ConcatenatedPathDown,
    /// Administratively Down.
    AdminDown,
    /// Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown,
    /// A value RFC 5880 reserves (9..31), kept as received.
    Reserved(u8),
}

impl Diag {
    fn from_bits(b: u8) -> Diag {
        match b & 0x1f {
            0 => Diag::None,
            1 => Diag::DetectionTimeExpired,
            2 => Diag::EchoFailed,
            3 => Diag::NeighborDown,
            4 => Diag::ForwardingReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdminDown,
            8 => Diag::ReverseConcatenatedPathDown,
            v => Diag::Reserved(v),
        }
    }

    fn bits(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::DetectionTimeExpired => 1,
            Diag::EchoFailed => 2,
            Diag::NeighborDown => 3,
            Diag::ForwardingReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdminDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(v) => v & 0x1f,
        }
    }
}

/// Why a received datagram is not a Control packet we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than a Control packet.
    #[error("datagram of {0} bytes is shorter than a BFD Control packet (24)")]
    Short(usize),
    /// Not version 1.
    #[error("unsupported BFD version {0}")]
    Version(u8),
    /// The Length field is below the minimum or beyond the datagram.
    #[error("Length field {length} is invalid for a datagram of {datagram} bytes")]
    Length {
        /// The Length field.
        length: u8,
        /// Bytes received.
        datagram: usize,
    },
    /// The Authentication bit is set: we run without authentication.
    #[error("authentication present but not configured")]
    Authentication,
    /// Detect Mult is zero.
    #[error("Detect Mult is zero")]
    ZeroDetectMult,
    /// The Multipoint bit is set.
    #[error("Multipoint bit set")]
    Multipoint,
    /// My Discriminator is zero.
    #[error("My Discriminator is zero")]
    ZeroMyDiscriminator,
    /// Your Discriminator is zero while the sender's state is Init or Up.
    #[error("Your Discriminator is zero in state {0}")]
    ZeroYourDiscriminator(State),
}

/// A BFD Control packet (intervals in microseconds, as on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket {
    /// Diagnostic code.
    pub diag: Diag,
    /// The sender's session state.
    pub state: State,
    /// Poll: the sender's timers changed, a Final is wanted.
    pub poll: bool,
    /// Final: answers a Poll.
    pub final_: bool,
    /// Control Plane Independent.
    pub cpi: bool,
    /// Demand mode wanted by the sender.
    pub demand: bool,
    /// Detect Mult.
    pub detect_mult: u8,
    /// The sender's discriminator.
    pub my_discr: u32,
    /// The receiver's discriminator as known to the sender (0 if unknown).
    pub your_discr: u32,
    /// Desired Min TX Interval (µs).
    pub desired_min_tx: u32,
    /// Required Min RX Interval (µs).
    pub required_min_rx: u32,
    /// Required Min Echo RX Interval (µs); we do not run the Echo function, so we send 0.
    pub required_min_echo_rx: u32,
}

impl ControlPacket {
    /// The 24 bytes on the wire.
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0] = (VERSION << 5) | self.diag.bits();
        let mut flags = (self.state as u8) << 6;
        for (on, bit) in [(self.poll, POLL), (self.final_, FINAL), (self.cpi, CPI), (self.demand, DEMAND)] {
            if on {
                flags |= bit;
            }
        }
        b[1] = flags;
        b[2] = self.detect_mult;
        b[3] = CONTROL_LEN as u8;
        b[4..8].copy_from_slice(&self.my_discr.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discr.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }

    /// Parses and checks a received datagram (RFC 5880 section 6.8.6, the checks that need no session).
    pub fn decode(d: &[u8]) -> Result<ControlPacket, PacketError> {
        if d.len() < CONTROL_LEN {
            return Err(PacketError::Short(d.len()));
        }
        let version = d[0] >> 5;
        if version != VERSION {
            return Err(PacketError::Version(version));
        }
        let flags = d[1];
        let length = d[3];
        let min = if flags & AUTH != 0 { 26 } else { CONTROL_LEN };
        if usize::from(length) < min || usize::from(length) > d.len() {
            return Err(PacketError::Length { length, datagram: d.len() });
        }
        if flags & AUTH != 0 {
            return Err(PacketError::Authentication);
        }
        if d[2] == 0 {
            return Err(PacketError::ZeroDetectMult);
        }
        if flags & MULTIPOINT != 0 {
            return Err(PacketError::Multipoint);
        }
        let word = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        let state = State::from_bits(flags >> 6);
        let p = ControlPacket {
            diag: Diag::from_bits(d[0]),
            state,
            poll: flags & POLL != 0,
            final_: flags & FINAL != 0,
            cpi: flags & CPI != 0,
            demand: flags & DEMAND != 0,
            detect_mult: d[2],
            my_discr: word(4),
            your_discr: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
        };
        if p.my_discr == 0 {
            return Err(PacketError::ZeroMyDiscriminator);
        }
        if p.your_discr == 0 && !matches!(state, State::Down | State::AdminDown) {
            return Err(PacketError::ZeroYourDiscriminator(state));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Up packet as BIRD sends it once the session is up: version 1, diag 0, state Up (0xc0), mult 3,
    /// length 24, discriminators 0x01020304 / 0x0a0b0c0d, 100 ms / 100 ms / echo 0.
    const UP: [u8; 24] = [
        0x20, 0xc0, 0x03, 0x18, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x01, 0x86, 0xa0, 0x00, 0x01,
        0x86, 0xa0, 0x00, 0x00, 0x00, 0x00,
    ];

    fn up() -> ControlPacket {
        ControlPacket {
            diag: Diag::None,
            state: State::Up,
            poll: false,
            final_: false,
            cpi: false,
            demand: false,
            detect_mult: 3,
            my_discr: 0x0102_0304,
            your_discr: 0x0a0b_0c0d,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn up_packet_round_trips_byte_exact() {
        assert_eq!(ControlPacket::decode(&UP), Ok(up()));
        assert_eq!(up().encode(), UP);
    }

    #[test]
    fn flags_state_and_diag_are_placed_as_in_rfc_5880() {
        // AdminDown with diag 7, Final set: 0x27, 0x10.
        let p = ControlPacket { diag: Diag::AdminDown, state: State::AdminDown, final_: true, ..up() };
        let b = p.encode();
        assert_eq!((b[0], b[1]), (0x27, 0x10));
        assert_eq!(ControlPacket::decode(&b), Ok(p));
        // Down with Poll and Control Plane Independent, diag 1 (detection time expired): 0x21, 0x68.
        let p = ControlPacket {
            diag: Diag::DetectionTimeExpired,
            state: State::Down,
            poll: true,
            cpi: true,
            your_discr: 0,
            ..up()
        };
        let b = p.encode();
        assert_eq!((b[0], b[1]), (0x21, 0x68));
        assert_eq!(ControlPacket::decode(&b), Ok(p));
        // A reserved diag value is kept, trailing bytes beyond Length are ignored.
        let mut d = UP.to_vec();
        d[0] = 0x20 | 20;
        d.extend_from_slice(&[0xff; 4]);
        assert_eq!(ControlPacket::decode(&d).map(|p| p.diag), Ok(Diag::Reserved(20)));
    }

    #[test]
    fn malformed_packets_are_rejected_with_a_typed_error() {
        let with = |i: usize, v: u8| {
            let mut d = UP;
            d[i] = v;
            ControlPacket::decode(&d)
        };
        assert_eq!(ControlPacket::decode(&UP[..23]), Err(PacketError::Short(23)));
        assert_eq!(with(0, 0x40), Err(PacketError::Version(2)));
        assert_eq!(with(0, 0x00), Err(PacketError::Version(0)));
        assert_eq!(with(3, 20), Err(PacketError::Length { length: 20, datagram: 24 }));
        assert_eq!(with(3, 30), Err(PacketError::Length { length: 30, datagram: 24 }));
        // Authentication bit: Length must then be >= 26, and we have no authentication configured.
        assert!(matches!(with(1, 0xc4), Err(PacketError::Length { .. })));
        let mut auth = UP.to_vec();
        auth[1] = 0xc4;
        auth[3] = 28;
        auth.extend_from_slice(&[1, 4, 0, 0]);
        assert_eq!(ControlPacket::decode(&auth), Err(PacketError::Authentication));
        assert_eq!(with(2, 0), Err(PacketError::ZeroDetectMult));
        assert_eq!(with(1, 0xc1), Err(PacketError::Multipoint));
        let mut d = UP;
        d[4..8].fill(0);
        assert_eq!(ControlPacket::decode(&d), Err(PacketError::ZeroMyDiscriminator));
        let mut d = UP;
        d[8..12].fill(0);
        assert_eq!(ControlPacket::decode(&d), Err(PacketError::ZeroYourDiscriminator(State::Up)));
        d[1] = 0x80; // Init
        assert_eq!(ControlPacket::decode(&d), Err(PacketError::ZeroYourDiscriminator(State::Init)));
        d[1] = 0x40; // Down: the sender does not know us yet, fine
        assert_eq!(ControlPacket::decode(&d).map(|p| p.state), Ok(State::Down));
    }
}
