//! Sockets of single-hop BFD (RFC 5881): one receiving socket per address family on UDP 3784 that reports
//! each datagram's TTL / hop limit (GTSM check: 255 only), and one sending socket per session bound to a
//! source port in 49152-65535 with TTL / hop limit 255.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::BfdError;

/// UDP destination port of single-hop BFD Control packets.
pub const CONTROL_PORT: u16 = 3784;
/// TTL / hop limit of every packet sent, and the only one accepted.
pub const GTSM_TTL: u8 = 255;

const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Opens the receiving socket of `family`'s peers on port 3784 (`local` or the unspecified address).
pub(crate) fn bind_receiver(v6: bool, local: Option<IpAddr>) -> Result<UdpSocket, BfdError> {
    let ip = local.unwrap_or(if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) });
    let addr = SocketAddr::new(ip, CONTROL_PORT);
    let err = |source| BfdError::Bind { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if v6 {
        s.set_only_v6(true).map_err(err)?;
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv6RecvHopLimit, &true)
            .map_err(|e| err(e.into()))?;
    } else {
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4RecvTtl, &true).map_err(|e| err(e.into()))?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// Opens a session's sending socket towards `peer`:3784, from a free source port in 49152-65535, TTL 255.
pub(crate) fn bind_sender(peer: IpAddr, local: Option<IpAddr>) -> Result<UdpSocket, BfdError> {
    let dest = SocketAddr::new(peer, CONTROL_PORT);
    let ip = local.unwrap_or(if peer.is_ipv6() {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let err = |source| BfdError::Sender { peer, source };
    let s = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP)).map_err(err)?;
    if peer.is_ipv6() {
        s.set_unicast_hops_v6(GTSM_TTL.into()).map_err(err)?;
    } else {
        s.set_ttl_v4(GTSM_TTL.into()).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let first = fastrand::u32(0..span);
    let mut bound = Err(io::Error::from(io::ErrorKind::AddrInUse));
    // Walk the range from a random start until a port is free (bounded by the range).
    for k in 0..span {
        let port = SOURCE_PORTS.start() + u16::try_from((first + k) % span).unwrap_or(0);
        match s.bind(&SocketAddr::new(ip, port).into()) {
            Ok(()) => {
                bound = Ok(());
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => {
                bound = Err(e);
                break;
            }
        }
    }
    bound.map_err(err)?;
    s.connect(&dest.into()).map_err(err)?;
    UdpSocket::from_std(s.into()).map_err(err)
}

/// One received datagram: its length, sender and TTL / hop limit (`None` if the kernel did not say).
pub(crate) struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub ttl: Option<u8>,
}

/// Receives one datagram with its TTL / hop limit.
pub(crate) async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    sock.async_io(Interest::READABLE, || recv_now(sock, buf)).await
}

fn recv_now(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::c_int, libc::c_int);
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let mut ttl = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) = c {
            ttl = u8::try_from(t).ok();
        }
    }
    let from = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    Ok(Received { len: msg.bytes, from, ttl })
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    let v6 = a.as_sockaddr_in6()?;
    let ip = v6.ip();
    // An IPv4-mapped source is the IPv4 peer.
    let ip = ip.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(ip));
    Some(SocketAddr::new(ip, v6.port()))
}
