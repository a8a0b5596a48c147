//! Kernel host routes and addresses over rtnetlink (the `rtnetlink` crate): what `ip route replace ... table T
//! proto 237` and `ip addr replace ...` would do, without spawning `ip`.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressHeaderFlags;
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::task::JoinHandle;

/// Route protocol number of our kernel routes (`proto 237`): unassigned in /etc/iproute2/rt_protos
/// (186 would be "bgp", which FRR's zebra treats as its own).
pub const ROUTE_PROTO: u8 = 237;

const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

/// A netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The netlink socket could not be opened.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel refused a request.
    #[error("{what}: {source}")]
    Request {
        /// What we asked for.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// No such interface.
    #[error("interface `{0}` not found")]
    NoInterface(String),
}

/// Where a host route goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteSpec {
    /// Output interface.
    pub ifindex: u32,
    /// Kernel table.
    pub table: u32,
    /// Route metric (priority); raised while draining.
    pub metric: u32,
}

/// A netlink connection in the namespace of the task that opened it.
pub(crate) struct Kernel {
    handle: Handle,
    conn: JoinHandle<()>,
}

impl Drop for Kernel {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if matches!(m.to_io().raw_os_error(), Some(ESRCH | EADDRNOTAVAIL)))
}

impl Kernel {
    /// Opens the netlink socket (must run inside a tokio runtime).
    pub(crate) fn open() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(Self { handle, conn: tokio::spawn(conn) })
    }

    /// Interface index of `name`.
    pub(crate) async fn ifindex(&self, name: &str) -> Result<u32, KernelError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(l.header.index),
            Ok(None) => Err(KernelError::NoInterface(name.into())),
            Err(rtnetlink::Error::NetlinkError(m)) if m.to_io().raw_os_error() == Some(19) => {
                Err(KernelError::NoInterface(name.into()))
            }
            Err(source) => Err(KernelError::Request { what: format!("link {name}"), source }),
        }
    }

    fn route(p: &IpNet, r: RouteSpec) -> RouteMessage {
        let b = RouteMessageBuilder::<IpAddr>::new();
        // The prefix comes from an IpNet: address and length always agree.
        let b = b.destination_prefix(p.addr(), p.prefix_len()).unwrap_or_else(|_| RouteMessageBuilder::<IpAddr>::new());
        b.output_interface(r.ifindex)
            .table_id(r.table)
            .priority(r.metric)
            .protocol(RouteProtocol::Other(ROUTE_PROTO))
            .scope(RouteScope::Link)
            .build()
    }

    /// `ip route replace <p> dev <ifindex> table <table> proto 237 metric <metric>`.
    pub(crate) async fn add_route(&self, p: &IpNet, r: RouteSpec) -> Result<(), KernelError> {
        let table = r.table;
        let m = Self::route(p, r);
        self.handle
            .route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(|source| KernelError::Request { what: format!("add route {p} table {table}"), source })
    }

    /// Removes our route; a route already gone is not an error.
    pub(crate) async fn del_route(&self, p: &IpNet, r: RouteSpec) -> Result<(), KernelError> {
        let table = r.table;
        match self.handle.route().del(Self::route(p, r)).execute().await {
            Err(e) if !is_gone(&e) => {
                Err(KernelError::Request { what: format!("delete route {p} table {table}"), source: e })
            }
            _ => Ok(()),
        }
    }

    /// Deletes every route of protocol 237 in `table` (leftovers of a previous run). Returns how many.
    pub(crate) async fn flush(&self, table: u32) -> Result<usize, KernelError> {
        let mut n = 0;
        for v6 in [false, true] {
            let filter = if v6 {
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
            } else {
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
            };
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await
                .map_err(|source| KernelError::Request { what: "dump routes".into(), source })?;
            for r in routes {
                let t = r
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        RouteAttribute::Table(t) => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(u32::from(r.header.table));
                if t == table && r.header.protocol == RouteProtocol::Other(ROUTE_PROTO) {
                    match self.handle.route().del(r).execute().await {
                        Err(e) if !is_gone(&e) => {
                            return Err(KernelError::Request { what: format!("flush table {table}"), source: e })
                        }
                        _ => n += 1,
                    }
                }
            }
        }
        Ok(n)
    }

    /// `ip addr replace <p> dev <ifindex> [nodad]`.
    pub(crate) async fn add_addr(&self, p: &IpNet, ifindex: u32) -> Result<(), KernelError> {
        let mut req = self.handle.address().add(ifindex, p.addr(), p.prefix_len()).replace();
        if p.addr().is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        req.execute().await.map_err(|source| KernelError::Request { what: format!("add address {p}"), source })
    }

    /// `ip addr del <p> dev <ifindex>`; an address already gone is not an error.
    pub(crate) async fn del_addr(&self, p: &IpNet, ifindex: u32) -> Result<(), KernelError> {
        let mut addrs = self.handle.address().get().set_link_index_filter(ifindex).execute();
        loop {
            match addrs.try_next().await {
                Ok(Some(m)) => {
                    let mine = m.header.prefix_len == p.prefix_len()
                        && m.attributes.iter().any(|a| {
                            matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(x) if *x == p.addr())
                        });
                    if mine {
                        return match self.handle.address().del(m).execute().await {
                            Err(e) if !is_gone(&e) => {
                                Err(KernelError::Request { what: format!("delete address {p}"), source: e })
                            }
                            _ => Ok(()),
                        };
                    }
                }
                Ok(None) => return Ok(()),
                Err(source) => return Err(KernelError::Request { what: "dump addresses".into(), source }),
            }
        }
    }
}
