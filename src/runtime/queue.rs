//! QUEUE: the NFQUEUE sockets, through the `nfq` crate, and the kernel's
//! per-queue counters.
//!
//! nfq 0.2.5 does not expose its socket, yet two socket options matter: a
//! receive buffer big enough that a burst is not lost below saturation
//! (the default 208 KiB holds about 256 queued packets), and a receive
//! timeout so an idle worker still sees a stop request. The socket is
//! found as the one new descriptor `Queue::open` created, checked to be a
//! netfilter netlink socket, and set with `setsockopt`. This is the only
//! `unsafe` in portcloak.

#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use nfq::Queue;

use crate::config::Daemon;

/// How long a worker's `recv` waits before it looks at its stop flag.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// An open, bound and configured queue.
pub struct BoundQueue {
    /// The nfq handle.
    pub queue: Queue,
    /// Its queue number.
    pub num: u16,
    /// Its worker inspects every packet, however far behind: the hidden
    /// ports' queue, which must never let one through unseen.
    pub inspects_all: bool,
}

/// Opens queue `num`: binds it, sets copy range, length, fail-open, the
/// receive buffer and the receive timeout.
///
/// Call from one thread at a time: the socket is told apart by the
/// descriptors that appear while it opens.
pub fn open(num: u16, daemon: &Daemon, copy_range: u16, fail_open: bool) -> io::Result<BoundQueue> {
    let before = netfilter_fds()?;
    let mut queue = Queue::open()?;
    let after = netfilter_fds()?;
    let fd = new_fd(&before, &after)
        .ok_or_else(|| io::Error::other("cannot find the NFQUEUE socket that nfq opened"))?;
    let ctx = |what: &'static str| {
        move |e: io::Error| io::Error::new(e.kind(), format!("queue {num}: {what}: {e}"))
    };
    set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, daemon.recv_buffer)
        .or_else(|_| set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, daemon.recv_buffer))
        .map_err(ctx("receive buffer"))?;
    queue.bind(num).map_err(ctx("bind (is another program bound to it?)"))?;
    queue.set_copy_range(num, copy_range).map_err(ctx("copy range"))?;
    queue.set_queue_max_len(num, daemon.queue_maxlen).map_err(ctx("queue length"))?;
    queue.set_fail_open(num, fail_open).map_err(ctx("fail-open flag"))?;
    set_timeout(fd, RECV_TIMEOUT).map_err(ctx("receive timeout"))?;
    Ok(BoundQueue { queue, num, inspects_all: false })
}

/// The descriptors of this process that are netfilter netlink sockets.
fn netfilter_fds() -> io::Result<BTreeSet<RawFd>> {
    let mut fds = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = entry?.file_name().to_str().and_then(|s| s.parse().ok())
            && get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Some(libc::AF_NETLINK)
            && get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(libc::NETLINK_NETFILTER)
        {
            fds.insert(fd);
        }
    }
    Ok(fds)
}

/// The one descriptor in `after` but not in `before`.
fn new_fd(before: &BTreeSet<RawFd>, after: &BTreeSet<RawFd>) -> Option<RawFd> {
    let mut found = after.difference(before).copied();
    let fd = found.next()?;
    found.next().is_none().then_some(fd)
}

fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(size_of::<libc::c_int>()).ok()?;
    // SAFETY: `value` and `len` are valid for writes of the sizes given,
    // and getsockopt on a descriptor that is not a socket only fails.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &raw mut len) };
    (rc == 0).then_some(value)
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: usize) -> io::Result<()> {
    set_opt(fd, level, name, &libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX))
}

fn set_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(1),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    set_opt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)
}

/// `setsockopt` with a plain-data value (a c_int or a timeval).
fn set_opt<T: Copy>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `fd` is the queue's live socket (its `Queue` is alive), and
    // `value` points to `len` readable bytes that outlive the call.
    let rc = unsafe { libc::setsockopt(fd, level, name, std::ptr::from_ref(value).cast(), len) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One line of `/proc/net/netfilter/nfnetlink_queue`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KernelQueue {
    /// Queue number.
    pub queue: u16,
    /// Packets waiting for a verdict now.
    pub waiting: u32,
    /// Dropped because the queue was full (fail-closed only).
    pub queue_dropped: u64,
    /// Dropped because the socket buffer was full (fail-closed only).
    pub user_dropped: u64,
    /// Last packet id handed out: packets delivered to the socket.
    pub id_sequence: u64,
}

/// Reads the kernel's counters for every bound queue of this namespace.
pub fn kernel_queues() -> Vec<KernelQueue> {
    std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
        .map(|t| parse_kernel_queues(&t))
        .unwrap_or_default()
}

/// Parses the file's lines: queue, portid, waiting, copy mode, copy range,
/// queue_dropped, user_dropped, id_sequence, 1.
pub fn parse_kernel_queues(text: &str) -> Vec<KernelQueue> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(KernelQueue {
                queue: f.first()?.parse().ok()?,
                waiting: f.get(2)?.parse().ok()?,
                queue_dropped: f.get(5)?.parse().ok()?,
                user_dropped: f.get(6)?.parse().ok()?,
                id_sequence: f.get(7)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_parse() {
        let text = "    0  12345     3 2 128     7     9    4242  1\n    1 -4000     0 2 128 0 0 0 1\nbad\n";
        let q = parse_kernel_queues(text);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q[0],
            KernelQueue {
                queue: 0,
                waiting: 3,
                queue_dropped: 7,
                user_dropped: 9,
                id_sequence: 4242
            }
        );
        assert_eq!(q[1].queue, 1);
    }
}
