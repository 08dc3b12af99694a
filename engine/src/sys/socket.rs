//! Sockets and process limits: TCP listeners with `SO_REUSEPORT`, the Unix ingest
//! listener with stale-socket detection, `RLIMIT_NOFILE`, CPU affinity.
//!
//! The ingest socket's path names one engine. A socket there that answers belongs to the
//! pid `SO_PEERCRED` reports (the kernel records who called `listen`); while that process
//! runs, a second engine is refused. After it has died, its socket may go on answering
//! for a while, held by its io_uring teardown (see [`super::orphan`]); that socket is
//! replaced at once, which is safe because a Unix socket is reached through its path:
//! once the path names the new socket, no new publisher reaches the old one.
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit whose soft value does not exceed its hard value.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed alongside it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Seconds of silence before the kernel probes a client connection.
const KEEPALIVE_IDLE_SECS: libc::c_int = 120;
const KEEPALIVE_INTERVAL_SECS: libc::c_int = 30;
/// Unanswered probes before the kernel declares the peer dead and the receive ends.
const KEEPALIVE_PROBES: libc::c_int = 4;

/// A listening TCP socket on `addr` with `SO_REUSEPORT`, so that each loop owns one
/// listener on the same address and the kernel spreads new connections across them.
///
/// The bind also succeeds beside any other listener of the same user on `addr`, a running
/// process's or one an exited engine's io_uring teardown still holds, and would share
/// connections with it: the engine checks the address first (see [`super::orphan`]).
///
/// # Errors
/// The socket, bind or listen error (`EADDRINUSE` when another program holds the port).
pub fn tcp_listener(
    addr: SocketAddr,
    backlog: i32,
    user_timeout_ms: u32,
    notsent_lowat: u32,
) -> io::Result<OwnedFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if family == libc::AF_INET6 {
        set_int_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    // Accepted sockets inherit these from the listener, which matters because direct
    // descriptors cannot take a plain setsockopt. No Nagle delay: an event queued while
    // the previous one is unacknowledged must leave at once. Keepalive probes find peers
    // that vanished without a FIN (hosts powered off, NAT entries dropped).
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, KEEPALIVE_IDLE_SECS)?;
    set_int_opt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        KEEPALIVE_INTERVAL_SECS,
    )?;
    set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, KEEPALIVE_PROBES)?;
    // Sent data unacknowledged this long: the peer is gone (RFC 5482). Bounds how long a
    // vanished client holds its socket and queued bytes when heartbeats are flowing.
    if user_timeout_ms > 0 {
        set_int_opt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            user_timeout_ms as libc::c_int,
        )?;
    }
    // Unsent bytes the kernel keeps per socket before a send waits: without it a client
    // that stops reading holds up to tcp_wmem's maximum (megabytes) of stale events in
    // kernel memory before the engine's own queue, and its policy, ever see backpressure.
    if notsent_lowat > 0 {
        set_int_opt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            notsent_lowat as libc::c_int,
        )?;
    }
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for the socket's family.
    cvt(unsafe { libc::bind(fd, std::ptr::addr_of!(storage).cast(), len) })?;
    // SAFETY: `fd` is a bound stream socket.
    cvt(unsafe { libc::listen(fd, backlog) })?;
    Ok(sock)
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero bytes are a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write(std::ptr::addr_of_mut!(storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Why the ingest socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum IngestBindError {
    #[error("ingest socket {path} is in use by a running engine{pid}; stop it or pass --ingest PATH")]
    InUse { path: String, pid: String },
    #[error("cannot bind ingest socket {path}: {source}; pass --ingest PATH")]
    Io { path: String, source: io::Error },
}

/// A bound ingest listener, and what stood at its path before.
#[derive(Debug)]
pub struct Ingest {
    pub listener: UnixListener,
    /// The pid of an exited engine whose socket still answered at the path (its io_uring
    /// teardown held it) and was replaced.
    pub replaced_exited: Option<i32>,
}

/// Binds the Unix ingest listener at `path`, replacing a stale socket file (one nobody
/// listens on) or one still held for a process that has exited, and refusing one held
/// by a running process.
///
/// # Errors
/// [`IngestBindError::InUse`] naming the path and the holder's pid (also when the pid
/// cannot be known, as for a holder in another pid namespace), or the bind error.
pub fn ingest_listener(path: &Path) -> Result<Ingest, IngestBindError> {
    let shown = path.display().to_string();
    let mut replaced_exited = None;
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(stream) => match peer_pid(&stream) {
                Some(pid) if super::orphan::process_state(pid) == super::orphan::Process::Exited => {
                    replaced_exited = Some(pid);
                    let _ = std::fs::remove_file(path);
                }
                holder => {
                    let pid = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
                    return Err(IngestBindError::InUse { path: shown, pid });
                }
            },
            Err(_) => {
                // Nobody answers: a stale file left by an engine that did not clean up.
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| IngestBindError::Io { path: shown, source })?;
    Ok(Ingest {
        listener,
        replaced_exited,
    })
}

/// Identifies the socket file this engine bound, so that at exit it removes only its own
/// file, never one a newer engine has bound at the same path meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    /// The identity of the file at `path` now, if any.
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Removes `path` if it is still this file.
    pub fn remove_if_same(self, path: &Path) {
        if FileId::of(path) == Some(self) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The pid of the process at the other end of a Unix stream (`SO_PEERCRED`).
pub fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let ret = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    (ret == 0 && cred.pid > 0).then_some(cred.pid)
}

/// Pins the calling thread to `cpu` (modulo the CPUs this process may use). Best effort:
/// a container with a restricted CPU set still runs, only unpinned.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `allowed` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) } != 0 {
        return;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .collect();
    if cpus.is_empty() {
        return;
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the chosen CPU index is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpus[cpu % cpus.len()], &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_engine_removes_only_its_own_socket_file() {
        let dir = std::env::temp_dir().join(format!("ringcast-fileid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ingest.sock");
        let _ = std::fs::remove_file(&path);
        let _first = UnixListener::bind(&path).unwrap();
        let old = FileId::of(&path).unwrap();
        // Another engine's socket now stands at the path (the old file is moved aside, so
        // its inode stays taken and the new file cannot reuse it).
        std::fs::rename(&path, dir.join("moved.sock")).unwrap();
        let _second = ingest_listener(&path).unwrap().listener;
        let new = FileId::of(&path).unwrap();
        assert_ne!(old, new);
        old.remove_if_same(&path);
        assert!(
            path.exists(),
            "the older engine removed the newer engine's socket"
        );
        new.remove_if_same(&path);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
