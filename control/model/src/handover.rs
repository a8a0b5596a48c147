//! Listening sockets across an upgrade (`padis upgrade`, SIGUSR2): each plane registers the sockets it listens
//! on here, tagged by what they are for ([`Tag`]); the running process hands a duplicate of every registered
//! socket to the new one, which takes them back by tag ([`take`]) before it would bind a fresh socket. A socket
//! shared so keeps its accept queue (or its datagram queue): nothing that arrives while the two processes
//! overlap is lost. The transfer itself (SCM_RIGHTS) is `padis-control`'s.
//!
//! The registry is the process's: sockets are process resources, and a process hands over all of them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// What a socket is for: the plane's `kind`, the `addr` its config gives (a configured port 0 stays 0) and, for
/// sockets that are not told apart by their address alone, a `name` (a listener's name, a socket's index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    /// `l7`, `dns-udp`, `dns-tcp`, `admin-tcp`, `admin-unix`.
    pub kind: String,
    /// The configured address (or path).
    pub addr: String,
    /// A listener's name, a socket's index in its group; may be empty.
    #[serde(default)]
    pub name: String,
}

impl Tag {
    /// A tag.
    pub fn new(kind: &str, addr: impl ToString, name: impl ToString) -> Tag {
        Tag { kind: kind.into(), addr: addr.to_string(), name: name.to_string() }
    }
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name.is_empty() {
            true => write!(f, "{} {}", self.kind, self.addr),
            false => write!(f, "{} {} ({})", self.kind, self.addr, self.name),
        }
    }
}

struct Entry {
    id: u64,
    tag: Tag,
    fd: OwnedFd,
}

#[derive(Default)]
struct Registry {
    /// Sockets this process listens on (duplicates, dropped with their [`Registration`]).
    live: Vec<Entry>,
    /// Sockets handed to this process by the one it replaces and not taken yet.
    inherited: Vec<(Tag, OwnedFd)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { live: Vec::new(), inherited: Vec::new() });
static NEXT: AtomicU64 = AtomicU64::new(1);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A socket's place in the registry: removed (its duplicate closed) when dropped, so a listener that stops is
/// neither kept bound nor handed over.
#[derive(Debug)]
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = {
            let mut r = registry();
            r.live.iter().position(|e| e.id == self.0).map(|i| r.live.swap_remove(i))
        };
        drop(gone);
    }
}

/// Registers a listening socket for the next upgrade (a duplicate of `fd` is kept until the registration is
/// dropped).
pub fn register(tag: Tag, fd: impl AsFd) -> std::io::Result<Registration> {
    let fd = fd.as_fd().try_clone_to_owned()?;
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registry().live.push(Entry { id, tag, fd });
    Ok(Registration(id))
}

/// Duplicates of every registered socket, with their tags (what an upgrade hands over).
pub fn registered() -> std::io::Result<Vec<(Tag, OwnedFd)>> {
    registry().live.iter().map(|e| Ok((e.tag.clone(), e.fd.try_clone()?))).collect()
}

/// Sockets received from the process this one replaces, to be taken by [`take`].
pub fn inherit(sockets: Vec<(Tag, OwnedFd)>) {
    registry().inherited.extend(sockets);
}

/// Takes the inherited socket `tag` names, if there is one. A configured port 0 (a port the old process picked)
/// matches only with the same `name`; other addresses match by kind and address (a renamed listener keeps its
/// socket).
pub fn take(tag: &Tag) -> Option<OwnedFd> {
    let mut r = registry();
    let picked_port = tag.addr.ends_with(":0");
    let i = r.inherited.iter().position(|(t, _)| t == tag).or_else(|| {
        if picked_port || tag.kind.starts_with("dns-udp") {
            return None;
        }
        r.inherited.iter().position(|(t, _)| t.kind == tag.kind && t.addr == tag.addr)
    })?;
    Some(r.inherited.swap_remove(i).1)
}

/// Closes the inherited sockets nothing took (listeners the new config no longer has) and returns their tags.
pub fn close_unclaimed() -> Vec<Tag> {
    let left = std::mem::take(&mut registry().inherited);
    left.into_iter().map(|(t, _)| t).collect()
}

/// How many inherited sockets are not taken yet.
pub fn unclaimed() -> usize {
    registry().inherited.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn registered_sockets_are_handed_over_until_dropped_and_taken_by_tag() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = a.local_addr().unwrap();
        let tag = Tag::new("l7-test", addr, "web");
        let reg = register(tag.clone(), &a).unwrap();
        let mine: Vec<_> = registered().unwrap().into_iter().filter(|(t, _)| t.kind == "l7-test").collect();
        assert_eq!(mine.len(), 1);
        inherit(mine);
        drop(reg);
        assert!(registered().unwrap().iter().all(|(t, _)| t.kind != "l7-test"), "a dropped registration stays");
        // Renamed: same kind and address.
        let fd = take(&Tag::new("l7-test", addr, "renamed")).expect("taken by address");
        let l = std::net::TcpListener::from(fd);
        assert_eq!(l.local_addr().unwrap(), addr);
        assert_ne!(l.as_raw_fd(), a.as_raw_fd());
        assert!(take(&tag).is_none(), "taken once");
        // A picked port matches only by name.
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let reg = register(Tag::new("l7-test0", "127.0.0.1:0", "x"), &b).unwrap();
        inherit(registered().unwrap().into_iter().filter(|(t, _)| t.kind == "l7-test0").collect());
        drop(reg);
        assert!(take(&Tag::new("l7-test0", "127.0.0.1:0", "y")).is_none());
        assert!(take(&Tag::new("l7-test0", "127.0.0.1:0", "x")).is_some());
    }
}
