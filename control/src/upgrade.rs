//! Upgrade without loss (`padis upgrade`, SIGUSR2, as nginx): the running process starts the binary it was
//! started from (the new one once the package replaced it) with the same arguments, hands it every listening
//! socket it has (L7 listeners, Marathon service ports and TCP-mode ones included, the DNS UDP/TCP sockets, the
//! admin sockets: see `padis_model::handover`) over a Unix socket pair with SCM_RIGHTS, and waits. The new
//! process validates its config, takes the sockets its config names (binding the others fresh), takes over the
//! pinned XDP program and maps, and says it is ready; only then does the old one stop accepting, finish its
//! in-flight work (up to `limits.shutdown_grace`) and exit. A new process that fails (invalid config, a socket
//! it cannot bind, a crash, no answer within the timeout) leaves the old one serving, which says why.
//!
//! The channel is a socket pair the old process creates for the one child it starts (`PADIS_UPGRADE_FD` names
//! the child's end): no path to protect, and no other process can ask for the sockets.
//!
//! Messages are JSON, one per SOCK_SEQPACKET datagram, the sockets riding with [`Msg::Sockets`] in batches.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use padis_model::handover::{self, Tag};
use serde::{Deserialize, Serialize};

/// The environment variable that gives the new process its end of the channel.
pub const ENV_FD: &str = "PADIS_UPGRADE_FD";
/// Sockets per message (the kernel takes at most 253 descriptors in one).
const BATCH: usize = 64;
/// The largest message.
const MAX_MSG: usize = 256 * 1024;

/// One message of the upgrade channel.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    /// Old to new: sockets, one descriptor per tag, in order.
    Sockets { tags: Vec<Tag> },
    /// Old to new: every socket was sent.
    Done { sockets: usize },
    /// New to old: serving (config valid, planes and admin API started).
    Ready { pid: u32, taken: usize },
    /// New to old: cannot start, and why.
    Failed { reason: String },
    /// Old to new: the old process stops accepting now and has told the service manager the new main PID.
    Released,
}

/// Why an upgrade did not happen (the running process serves on).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The binary could not be started.
    #[error("cannot start {}: {source}", exe.display())]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The new process said why it cannot start.
    #[error("the new process refused to start: {reason} ({status})")]
    Refused {
        /// Its words (a config error names file:line).
        reason: String,
        /// How it ended.
        status: String,
    },
    /// The new process ended before it said it was ready.
    #[error("the new process ended before it was ready ({status})")]
    Exited {
        /// How it ended.
        status: String,
    },
    /// No word from the new process in time: it was killed.
    #[error("the new process was not ready within {0:?}: killed")]
    Timeout(Duration),
    /// The channel failed.
    #[error("upgrade channel: {0}")]
    Channel(#[from] std::io::Error),
    /// An upgrade is already under way.
    #[error("an upgrade is already under way")]
    Busy,
}

/// A successful handover: the new process serves.
#[derive(Debug, Clone, Serialize)]
pub struct Handover {
    /// The new process.
    pub pid: u32,
    /// Sockets handed over.
    pub sockets: usize,
    /// Of them, those its config took at start.
    pub taken: usize,
}

fn send(fd: BorrowedFd<'_>, msg: &Msg, fds: &[RawFd]) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let iov = [IoSlice::new(&body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// The next message and the descriptors that came with it; `None` at the end of the channel.
fn recv(fd: BorrowedFd<'_>) -> std::io::Result<Option<(Msg, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MSG];
    let mut space = nix::cmsg_space!([RawFd; BATCH]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let m = loop {
            match recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        let mut fds = Vec::new();
        for c in m.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                // SAFETY: SCM_RIGHTS gave these descriptors to this process; each is owned once, here.
                fds.extend(list.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        (m.bytes, fds)
    };
    if n == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..n])
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad upgrade message: {e}")))?;
    Ok(Some((msg, fds)))
}

fn set_timeout(fd: &OwnedFd, t: Option<Duration>) -> std::io::Result<()> {
    socket2::SockRef::from(fd).set_read_timeout(t)
}

fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "still running".into(),
    }
}

/// Waits up to `t` for the child to end.
fn reap(child: &mut std::process::Child, t: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + t;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// The old process's side, started by [`Predecessor::start`]: a ready new process, waiting for
/// [`Predecessor::release`].
pub struct Predecessor {
    chan: OwnedFd,
    /// What was handed over.
    pub handover: Handover,
}

impl Predecessor {
    /// Starts `exe args` as the new process, hands it every registered socket and waits (blocking, up to
    /// `timeout`) until it is ready. On any failure the new process is gone and this one serves on.
    pub fn start(
        exe: &std::path::Path,
        args: &[std::ffi::OsString],
        timeout: Duration,
    ) -> Result<Predecessor, UpgradeError> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(std::io::Error::from)?;
        let sockets = handover::registered()?;
        let raw = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(exe);
        cmd.args(args).env(ENV_FD, raw.to_string()).stdin(std::process::Stdio::null());
        // SAFETY: fcntl is async-signal-safe; the child keeps its end of the channel across exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| UpgradeError::Spawn { exe: exe.to_path_buf(), source })?;
        drop(theirs);
        tracing::info!(pid = child.id(), exe = %exe.display(), sockets = sockets.len(), "upgrade: new process started");
        let fail = |child: &mut std::process::Child, e: UpgradeError| {
            // Not ready: it must not serve beside this one.
            let _ = child.kill();
            let _ = reap(child, Duration::from_secs(5));
            e
        };
        let sent = (|| -> std::io::Result<()> {
            for batch in sockets.chunks(BATCH) {
                let tags = batch.iter().map(|(t, _)| t.clone()).collect();
                let fds: Vec<RawFd> = batch.iter().map(|(_, f)| f.as_raw_fd()).collect();
                send(ours.as_fd(), &Msg::Sockets { tags }, &fds)?;
            }
            send(ours.as_fd(), &Msg::Done { sockets: sockets.len() }, &[])
        })();
        drop(sockets);
        if let Err(e) = sent {
            // It closed its end: it ended (or never started); its exit status says more than the broken pipe.
            let status = reap(&mut child, Duration::from_secs(5));
            return Err(match status {
                Some(s) => UpgradeError::Exited { status: describe(Some(s)) },
                None => fail(&mut child, UpgradeError::Channel(e)),
            });
        }
        set_timeout(&ours, Some(timeout))?;
        match recv(ours.as_fd()) {
            Ok(Some((Msg::Ready { pid, taken }, _))) => {
                let handover = Handover { pid, sockets: handover::registered()?.len(), taken };
                // The child runs on when this process exits (it is then reparented).
                drop(child);
                Ok(Predecessor { chan: ours, handover })
            }
            Ok(Some((Msg::Failed { reason }, _))) => {
                let status = describe(reap(&mut child, Duration::from_secs(5)));
                Err(fail(&mut child, UpgradeError::Refused { reason, status }))
            }
            Ok(None) => {
                let status = describe(reap(&mut child, Duration::from_secs(5)));
                Err(fail(&mut child, UpgradeError::Exited { status }))
            }
            Ok(Some((other, _))) => Err(fail(
                &mut child,
                UpgradeError::Channel(std::io::Error::other(format!("unexpected message {other:?}"))),
            )),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(fail(&mut child, UpgradeError::Timeout(timeout)))
            }
            // It ended with our messages unread (a reset): its exit status says more.
            Err(e) => match reap(&mut child, Duration::from_secs(5)) {
                Some(s) => Err(UpgradeError::Exited { status: describe(Some(s)) }),
                None => Err(fail(&mut child, UpgradeError::Channel(e))),
            },
        }
    }

    /// Tells the new process that this one stops accepting now.
    pub fn release(self) {
        if let Err(e) = send(self.chan.as_fd(), &Msg::Released, &[]) {
            tracing::warn!(error = %e, "upgrade: cannot tell the new process it was released");
        }
    }
}

/// The new process's side: the channel to the process it replaces.
pub struct Successor {
    chan: OwnedFd,
    /// Sockets received.
    pub received: usize,
}

impl Successor {
    /// When this process was started by an upgrade (`PADIS_UPGRADE_FD`): receives the sockets (kept by
    /// `padis_model::handover` for the planes to take) and returns the channel. The variable is removed (a
    /// process this one starts is not an upgrade of it).
    pub fn from_env() -> Result<Option<Successor>, std::io::Error> {
        let Some(v) = std::env::var_os(ENV_FD) else { return Ok(None) };
        // SAFETY: single-threaded here (before the runtime starts); nothing else reads the environment now.
        unsafe { std::env::remove_var(ENV_FD) };
        let raw: RawFd = v
            .to_str()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 2)
            .ok_or_else(|| std::io::Error::other(format!("{ENV_FD}={v:?} is not a descriptor number")))?;
        // SAFETY: the parent passed this descriptor for us alone; checked to be a socket before use.
        let chan = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: F_SETFD on a descriptor this process owns.
        unsafe { libc::fcntl(chan.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        socket2::SockRef::from(&chan).r#type()?;
        set_timeout(&chan, Some(Duration::from_secs(30)))?;
        let mut received = Vec::new();
        loop {
            match recv(chan.as_fd())? {
                Some((Msg::Sockets { tags }, fds)) if tags.len() == fds.len() => {
                    received.extend(tags.into_iter().zip(fds));
                }
                Some((Msg::Done { sockets }, _)) if sockets == received.len() => break,
                Some((m, fds)) => {
                    return Err(std::io::Error::other(format!(
                        "unexpected upgrade message {m:?} ({} sockets)",
                        fds.len()
                    )))
                }
                None => return Err(std::io::Error::other("the old process closed the upgrade channel")),
            }
        }
        let n = received.len();
        handover::inherit(received);
        Ok(Some(Successor { chan, received: n }))
    }

    /// Says why this process cannot start (the old one serves on).
    pub fn failed(&self, reason: &str) {
        let _ = send(self.chan.as_fd(), &Msg::Failed { reason: reason.to_string() }, &[]);
    }

    /// Says this process serves, then waits (blocking, up to `timeout`) until the old one has stopped
    /// accepting. `false` if it did not say so (it ended: the new process serves alone all the same).
    pub fn ready(self, timeout: Duration) -> bool {
        let taken = self.received - handover::unclaimed();
        if let Err(e) = send(self.chan.as_fd(), &Msg::Ready { pid: std::process::id(), taken }, &[]) {
            tracing::warn!(error = %e, "upgrade: cannot tell the old process this one is ready");
            return false;
        }
        if set_timeout(&self.chan, Some(timeout)).is_err() {
            return false;
        }
        matches!(recv(self.chan.as_fd()), Ok(Some((Msg::Released, _))))
    }
}
