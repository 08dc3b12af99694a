//! Sockets an exited process still has listening, and whether a process still runs.
//!
//! # Why a dead engine's sockets outlive it
//!
//! At exit the kernel closes the process's descriptors at once, but closing an io_uring
//! only queues the ring's teardown on a kernel workqueue. Until that work has cancelled the
//! ring's requests and dropped its registered file table, every file a request or a
//! registered slot refers to stays open: a listener with a pending (multishot) accept keeps
//! listening, completes handshakes into its backlog and resets them when it finally closes.
//! Such a socket is still in the kernel's tables, so `sock_diag` (`NETLINK_SOCK_DIAG`, what
//! `ss` reads) lists it with its inode and owner uid, but no process has it in
//! `/proc/PID/fd`. That is how [`tcp_listeners`] tells it from a live process's
//! listener. A socket a live process holds only inside its ring, its descriptor closed,
//! would look the same: the engine keeps a descriptor for each of its listeners.
//!
//! Measured on Linux 6.18 (2 CPUs, `HZ=250`) after `kill -9` of an engine with two loops
//! holding N clients: the process is a zombie within 0.4 ms (3.4 ms once); its descriptor
//! table, and with it any `flock` or OFD lock it held, is gone within 3-16 ms, once its
//! last thread has exited (82 ms at N = 15,000 with a poller reading `/proc/net/tcp` in a
//! loop); its Unix ingest listener and its TCP listeners go on answering after that. With
//! half SSE and half WebSocket clients in another process, a start right after the reap
//! found the TCP listeners still open and waited for them (8 runs per N; runs where they
//! had closed before the check are not counted): 2-6 ms at N = 20, 8-13 ms at 1,000,
//! 36-60 ms at 5,000 and 69-196 ms at 15,000. A new `SO_REUSEPORT` listener bound beside
//! the dying ones shares their group: of 1,400 connections made in the 50 ms after a kill,
//! 434 landed on the dying listeners and were reset.
//!
//! A lock file would tell "exited" from "alive" as well (the lock is released before the
//! listeners close), but `SO_PEERCRED` on the ingest socket already names the pid that
//! listens there, and `/proc/PID/stat` says whether it has exited: see [`process_state`].
//!
//! Nothing here blocks without a bound: each netlink receive times out, and
//! [`wait_closed`] gives up at its deadline.
use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h): a dump request for one address family.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCP_LISTEN` in the kernel's TCP state numbering (include/net/tcp_states.h).
const TCP_LISTEN: u32 = 10;
/// One netlink receive: the kernel fills it with as many whole messages as fit.
const RECV_BUFFER_BYTES: usize = 32 * 1024;
/// How long one netlink receive may wait for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);
/// Listeners one dump may report on the addresses asked about (a reuseport group per loop).
const MATCHES_MAX: usize = 65_536;
/// How often [`wait_closed`] looks again: the teardown takes milliseconds.
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// `struct inet_diag_sockid` (linux/inet_diag.h). Ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`: one socket of a dump.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DumpRequest {
    header: libc::nlmsghdr,
    body: InetDiagReqV2,
}

const HEADER_BYTES: usize = std::mem::size_of::<libc::nlmsghdr>();
const _: () = assert!(std::mem::size_of::<InetDiagSockId>() == 48);
const _: () = assert!(std::mem::size_of::<InetDiagReqV2>() == 56);
const _: () = assert!(std::mem::size_of::<InetDiagMsg>() == 72);
const _: () = assert!(HEADER_BYTES == 16);

/// A listening TCP socket: where it listens and its inode (`socket:[INODE]` in
/// `/proc/PID/fd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listening {
    pub addr: SocketAddr,
    pub inode: u64,
}

/// A listener on one of the addresses asked about, and the running process that has a
/// descriptor for it, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub socket: Listening,
    /// `None`: no running process holds it, only an exited process's io_uring teardown.
    pub holder: Option<i32>,
}

/// The TCP listeners on `addrs` (same port, and the same address or a wildcard on either
/// side) that belong to this process's user, each with the running process that holds
/// it. Addresses with port 0 are skipped.
///
/// Only listeners of this user count: the kernel lets a socket join another's
/// `SO_REUSEPORT` group only under the same effective uid, and binding beside anyone
/// else's fails with `EADDRINUSE` anyway.
///
/// # Errors
/// The netlink error, when `sock_diag` is unavailable (a kernel without `inet_diag`, a
/// sandbox).
pub fn tcp_listeners(addrs: &[SocketAddr]) -> io::Result<Vec<Held>> {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let sockets = listeners_on(addrs, Some(uid))?;
    if sockets.is_empty() {
        return Ok(Vec::new());
    }
    let holders = holders_of(sockets.iter().map(|l| l.inode).collect());
    Ok(sockets
        .into_iter()
        .map(|socket| Held {
            socket,
            holder: holders
                .iter()
                .find(|&&(inode, _)| inode == socket.inode)
                .map(|&(_, pid)| pid)
                .filter(|&pid| process_state(pid) == Process::Running),
        })
        .collect())
}

/// Which of `sockets` are still listening.
///
/// # Errors
/// The netlink error.
pub fn still_listening(sockets: &[Listening]) -> io::Result<Vec<Listening>> {
    let addrs: Vec<SocketAddr> = sockets.iter().map(|l| l.addr).collect();
    let now: HashSet<u64> = listeners_on(&addrs, None)?.iter().map(|l| l.inode).collect();
    Ok(sockets
        .iter()
        .copied()
        .filter(|l| now.contains(&l.inode))
        .collect())
}

/// How a [`wait_closed`] ended.
#[derive(Debug)]
pub struct Waited {
    pub elapsed: Duration,
    /// The sockets still listening at the deadline; empty when all closed.
    pub left: Vec<Listening>,
}

/// Waits until none of `sockets` listens any more, or `max` has passed.
///
/// # Errors
/// The netlink error.
pub fn wait_closed(sockets: &[Listening], max: Duration) -> io::Result<Waited> {
    let start = Instant::now();
    loop {
        let left = still_listening(sockets)?;
        let elapsed = start.elapsed();
        if left.is_empty() || elapsed >= max {
            return Ok(Waited { elapsed, left });
        }
        std::thread::sleep(POLL_INTERVAL.min(max - elapsed));
    }
}

/// Whether a process runs, as far as `/proc` tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Running,
    /// Gone, or a zombie: it runs no more code, though the kernel may still be tearing down
    /// its io_uring instances and the sockets they hold.
    Exited,
}

/// The state of `pid` from `/proc/PID/stat`: [`Process::Exited`] if there is no such
/// process or its main thread is a zombie (`Z`) or dead (`X`), otherwise
/// [`Process::Running`], also when the file cannot be read, so that a doubt never replaces
/// a live process's socket.
///
/// A pid reused by an unrelated process since reads as running: the caller refuses to
/// start, and succeeds once the old socket has closed.
pub fn process_state(pid: i32) -> Process {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Process::Exited,
        Err(_) => Process::Running,
        Ok(stat) => match stat_state(&stat) {
            Some('Z' | 'X' | 'x') => Process::Exited,
            _ => Process::Running,
        },
    }
}

/// The state field of a `/proc/PID/stat` line: the first after the command name, which is
/// in parentheses and may itself hold spaces and parentheses.
fn stat_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// For each inode among `wanted` that some process has a descriptor for, one such
/// process, from `/proc/*/fd`. Processes whose descriptors cannot be read (gone
/// meanwhile, or not readable) are skipped: a socket of such a process reads as held by
/// none, which at worst makes the caller wait its bounded time for it.
fn holders_of(wanted: HashSet<u64>) -> Vec<(u64, i32)> {
    let mut held: Vec<(u64, i32)> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for proc in procs.flatten() {
        let Some(pid) = proc.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path()).ok().and_then(|t| socket_inode(&t)) else {
                continue;
            };
            if wanted.contains(&inode) && !held.iter().any(|&(i, _)| i == inode) {
                held.push((inode, pid));
            }
        }
        if held.len() == wanted.len() {
            break;
        }
    }
    held
}

/// The inode of a `socket:[INODE]` descriptor link.
fn socket_inode(target: &std::path::Path) -> Option<u64> {
    let s = target.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether a listener on `theirs` takes connections meant for `ours`: the same family and
/// port, and the same address or a wildcard on either side. Port 0 overlaps nothing.
pub fn overlaps(ours: SocketAddr, theirs: SocketAddr) -> bool {
    ours.port() != 0
        && ours.port() == theirs.port()
        && ours.is_ipv4() == theirs.is_ipv4()
        && (ours.ip() == theirs.ip() || ours.ip().is_unspecified() || theirs.ip().is_unspecified())
}

/// The TCP listeners overlapping any of `addrs`, of user `uid` if given.
fn listeners_on(addrs: &[SocketAddr], uid: Option<u32>) -> io::Result<Vec<Listening>> {
    let mut found = Vec::new();
    for (family, wanted) in [(libc::AF_INET, true), (libc::AF_INET6, false)] {
        if !addrs.iter().any(|a| a.is_ipv4() == wanted && a.port() != 0) {
            continue;
        }
        dump_listeners(family, &mut |msg| {
            let addr = msg_addr(msg);
            if uid.is_none_or(|u| u == msg.uid) && addrs.iter().any(|&a| overlaps(a, addr)) {
                if found.len() >= MATCHES_MAX {
                    return Err(io::Error::other(format!(
                        "more than {MATCHES_MAX} listeners on {addrs:?}"
                    )));
                }
                found.push(Listening {
                    addr,
                    inode: u64::from(msg.inode),
                });
            }
            Ok(())
        })?;
    }
    Ok(found)
}

fn msg_addr(msg: &InetDiagMsg) -> SocketAddr {
    let port = u16::from_be_bytes(msg.id.sport);
    let ip = if i32::from(msg.family) == libc::AF_INET {
        let [a, b, c, d, ..] = msg.id.src;
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        IpAddr::V6(Ipv6Addr::from(msg.id.src))
    };
    SocketAddr::new(ip, port)
}

/// Dumps every listening TCP socket of `family` through `NETLINK_SOCK_DIAG` and hands each
/// to `each`. Only the listening hash is walked (the kernel skips established sockets when
/// only `TCP_LISTEN` is asked for), so the cost does not grow with connections.
fn dump_listeners(
    family: libc::c_int,
    each: &mut dyn FnMut(&InetDiagMsg) -> io::Result<()>,
) -> io::Result<()> {
    let sock = netlink_socket()?;
    let request = DumpRequest {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<DumpRequest>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body: InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: 1 << TCP_LISTEN,
            id: InetDiagSockId::default(),
        },
    };
    // SAFETY: sockaddr_nl is plain data; all-zero is the kernel's address (pid 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: `request` and `kernel` are valid for reads of the sizes passed.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            std::ptr::addr_of!(request).cast(),
            std::mem::size_of::<DumpRequest>(),
            0,
            std::ptr::addr_of!(kernel).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    loop {
        let n = recv(sock.as_raw_fd(), &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag ended its dump without NLMSG_DONE",
            ));
        }
        if parse_messages(&buf[..n], each)? {
            return Ok(());
        }
    }
}

/// Walks the netlink messages in `buf`; returns whether the dump is complete.
fn parse_messages(buf: &[u8], each: &mut dyn FnMut(&InetDiagMsg) -> io::Result<()>) -> io::Result<bool> {
    let mut at = 0;
    while at + HEADER_BYTES <= buf.len() {
        // SAFETY: `at + HEADER_BYTES` bytes are in `buf`; read_unaligned copes with any
        // alignment, and nlmsghdr is plain data valid for any bytes.
        let header: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
        let len = header.nlmsg_len as usize;
        if len < HEADER_BYTES || at + len > buf.len() {
            return Err(io::Error::other(format!(
                "malformed sock_diag message: length {len} at offset {at} of {}",
                buf.len()
            )));
        }
        let body = &buf[at + HEADER_BYTES..at + len];
        match i32::from(header.nlmsg_type) {
            libc::NLMSG_DONE => return Ok(true),
            libc::NLMSG_ERROR => {
                // The payload starts with the negated errno (0 would be an acknowledgement).
                let errno = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Err(if errno == 0 {
                    io::Error::other("sock_diag acknowledged instead of dumping")
                } else {
                    io::Error::from_raw_os_error(-errno)
                });
            }
            _ if header.nlmsg_type == SOCK_DIAG_BY_FAMILY
                && body.len() >= std::mem::size_of::<InetDiagMsg>() =>
            {
                // SAFETY: `body` holds at least size_of::<InetDiagMsg>() bytes, and the
                // struct is plain data valid for any bytes.
                let msg: InetDiagMsg = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
                if u32::from(msg.state) == TCP_LISTEN {
                    each(&msg)?;
                }
            }
            _ => {}
        }
        // Netlink messages are padded to 4 bytes (NLMSG_ALIGN).
        at += (len + 3) & !3;
    }
    Ok(false)
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `timeout` outlives the call and its size is passed alongside it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_state_follows_the_last_parenthesis() {
        assert_eq!(stat_state("812 (ringcast) S 1 812"), Some('S'));
        assert_eq!(stat_state("812 (a) b) Z 1 812"), Some('Z'));
        assert_eq!(stat_state("812 (x"), None);
    }

    #[test]
    fn overlapping_addresses_share_the_port_and_an_address_or_a_wildcard() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(overlaps(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(overlaps(a("0.0.0.0:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlaps(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!overlaps(a("127.0.0.1:80"), a("[::]:80")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn this_process_runs_and_a_reaped_child_has_exited() {
        assert_eq!(process_state(std::process::id() as i32), Process::Running);
        let mut child = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = child.id() as i32;
        child.wait().expect("wait");
        assert_eq!(process_state(pid), Process::Exited);
    }

    /// A listener whose only reference is a pending accept in an io_uring, its descriptor
    /// closed, is what a dead engine leaves: no process holds it, yet it listens until the
    /// ring is gone.
    #[test]
    fn a_listener_held_only_by_a_ring_is_found_and_its_close_awaited() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let found = listeners_on(&[addr], None).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].addr, addr);
        let me = std::process::id() as i32;
        let held = tcp_listeners(&[addr]).unwrap();
        assert_eq!(
            held,
            vec![Held {
                socket: found[0],
                holder: Some(me)
            }]
        );
        let mut ring = io_uring::IoUring::new(8).unwrap();
        let accept = io_uring::opcode::AcceptMulti::new(io_uring::types::Fd(listener.as_raw_fd())).build();
        // SAFETY: the accept refers to no memory of ours.
        unsafe { ring.submission().push(&accept).unwrap() };
        ring.submit().unwrap();
        drop(listener);
        let held = tcp_listeners(&[addr]).unwrap();
        assert_eq!(
            held,
            vec![Held {
                socket: found[0],
                holder: None
            }]
        );
        let still = wait_closed(&found, Duration::from_millis(50)).unwrap();
        assert_eq!(
            still.left, found,
            "the ring's accept no longer holds the listener"
        );
        drop(ring);
        let waited = wait_closed(&found, Duration::from_secs(10)).unwrap();
        assert!(
            waited.left.is_empty(),
            "still listening after {:?}",
            waited.elapsed
        );
    }
}
