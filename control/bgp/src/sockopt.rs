//! Transport protection of BGP sessions, set on the sockets before any segment is exchanged: TCP MD5 signatures
//! (RFC 2385, Linux `TCP_MD5SIG`: the kernel signs every segment to the peer and drops unsigned or wrongly signed
//! ones from it) and GTSM (RFC 5082: we send with TTL / hop limit 255 and the kernel drops the session's packets
//! that arrive with less than 254, i.e. from farther than one hop).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};

/// Longest TCP MD5 key the kernel takes (`TCP_MD5SIG_MAXKEYLEN`).
pub(crate) const MD5_MAX_KEY: usize = 80;
/// TTL / hop limit GTSM sends with.
pub(crate) const GTSM_TTL: u32 = 255;
/// Smallest TTL / hop limit GTSM accepts (a directly connected router's 255, minus one hop).
const GTSM_MIN_TTL: libc::c_int = 254;

/// `struct tcp_md5sig` of `<linux/tcp.h>` (not in the libc crate).
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY],
}

fn setsockopt<T>(fd: &impl AsFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live, initialised `T` and its size is passed with it; the fd is open (borrowed).
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `fd` is an IPv6 socket.
fn is_v6(fd: &impl AsFd) -> io::Result<bool> {
    Ok(socket2::SockRef::from(fd).domain()? == socket2::Domain::IPV6)
}

/// Installs `key` as the TCP MD5 key for segments to and from `peer` on `fd` (a listening socket, or one about
/// to connect). On an IPv6 socket an IPv4 peer is keyed by its IPv4-mapped address, as the kernel sees it.
pub(crate) fn set_md5(fd: &impl AsFd, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.is_empty() || key.len() > MD5_MAX_KEY {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "TCP MD5 key of 1 to 80 bytes"));
    }
    // SAFETY: all-zero bytes are a valid `TcpMd5Sig` (plain integers and arrays).
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let peer = match peer {
        IpAddr::V4(a) if is_v6(fd)? => IpAddr::V6(a.to_ipv6_mapped()),
        other => other,
    };
    let storage = socket2::SockAddr::from(std::net::SocketAddr::new(peer, 0));
    // SAFETY: `SockAddr` holds a sockaddr_storage-sized, initialised address of `len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(
            storage.as_ptr().cast::<u8>(),
            (&mut sig.addr as *mut libc::sockaddr_storage).cast::<u8>(),
            storage.len() as usize,
        );
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    let r = setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_MD5SIG, &sig);
    // The key copy on the stack is wiped (the kernel keeps its own).
    sig.key.fill(0);
    std::hint::black_box(&sig.key);
    r
}

/// GTSM on `fd` for a peer of `peer`'s family: TTL (hop limit) 255 on what we send, and the kernel drops
/// received packets with a TTL below 254.
pub(crate) fn set_gtsm(fd: &impl AsFd, peer: IpAddr) -> io::Result<()> {
    let sock = socket2::SockRef::from(fd);
    if peer.is_ipv4() {
        if is_v6(fd)? {
            // IPv4 traffic of an IPv6 socket (mapped addresses) carries the IPv4 TTL.
            sock.set_unicast_hops_v6(GTSM_TTL)?;
        }
        sock.set_ttl_v4(GTSM_TTL)?;
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_MINTTL, &GTSM_MIN_TTL)
    } else {
        sock.set_unicast_hops_v6(GTSM_TTL)?;
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, &GTSM_MIN_TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(fd: &impl AsFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are live and sized for an int option.
        let r = unsafe {
            libc::getsockopt(fd.as_fd().as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len)
        };
        assert_eq!(r, 0, "getsockopt: {}", io::Error::last_os_error());
        v
    }

    #[test]
    fn gtsm_sets_ttl_and_min_ttl_per_family() {
        let s4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_gtsm(&s4, "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(opt(&s4, libc::IPPROTO_IP, libc::IP_TTL), 255);
        assert_eq!(opt(&s4, libc::IPPROTO_IP, libc::IP_MINTTL), 254);
        let s6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        set_gtsm(&s6, "::1".parse().unwrap()).unwrap();
        assert_eq!(opt(&s6, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS), 255);
        assert_eq!(opt(&s6, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT), 254);
    }

    #[test]
    fn md5_keys_are_accepted_for_both_families_and_bounded() {
        let s4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        set_md5(&s4, "127.0.0.2".parse().unwrap(), b"secret").unwrap();
        let s6 = std::net::TcpListener::bind("[::]:0").unwrap();
        set_md5(&s6, "127.0.0.2".parse().unwrap(), b"secret").unwrap();
        set_md5(&s6, "::2".parse().unwrap(), &[7; MD5_MAX_KEY]).unwrap();
        assert_eq!(
            set_md5(&s4, "127.0.0.2".parse().unwrap(), &[7; 81]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(set_md5(&s4, "127.0.0.2".parse().unwrap(), b"").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
