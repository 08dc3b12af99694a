//! The home of `unsafe` and libc in the bench: file-descriptor limits, non-blocking
//! IPv4 sockets bound to a chosen source address, epoll, and the parent-death signal.
//!
//! Every wrapper is safe to call: it owns its descriptors through [`OwnedFd`] and turns
//! `-1`/`errno` into [`io::Error`] or [`SysError`]. Nothing here keeps state.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A failed socket call: which step failed and its `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysError {
    /// `socket`, `bind` or `connect`.
    pub stage: &'static str,
    /// The `errno` value.
    pub errno: i32,
}

impl SysError {
    fn last(stage: &'static str) -> Self {
        SysError {
            stage,
            errno: io::Error::last_os_error().raw_os_error().unwrap_or(0),
        }
    }

    /// Failure-kind label for reports, e.g. `connect/ECONNREFUSED`.
    pub fn kind(self) -> String {
        format!("{}/{}", self.stage, errno_name(self.errno))
    }
}

/// Symbolic name of the `errno` values a load test meets, else `errno<N>`.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::EPIPE => "EPIPE",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EAGAIN => "EAGAIN",
        _ => return format!("errno{errno}"),
    };
    name.to_owned()
}

/// Sets `O_NONBLOCK` on `fd` (a pipe such as stdin), keeping its other flags.
///
/// # Errors
/// If `fcntl` fails.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFL/F_SETFL takes integers and touches no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns `(soft, hard)` after.
///
/// # Errors
/// If `getrlimit` or `setrlimit` fails.
pub fn raise_nofile() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit` for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid `rlimit` that the call only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Asks the kernel to SIGKILL this process when its parent thread exits, so that a
/// worker never outlives a crashed parent.
///
/// # Errors
/// If `prctl` fails.
pub fn kill_me_with_parent() -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes one integer argument (the signal number); no memory
    // is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the process `command` spawns receive SIGKILL when the thread spawning it exits,
/// so that a server this tool started never outlives a killed tool.
pub fn die_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // `prctl`, which is async-signal-safe, allocating nothing and touching no lock.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Opens a non-blocking TCP socket, binds it to `source` (port chosen at connect time,
/// thanks to `IP_BIND_ADDRESS_NO_PORT`) and starts connecting to `target`.
///
/// The connection is usually still in progress on return: wait for `EPOLLOUT` and then
/// read the outcome with [`take_socket_error`].
///
/// # Errors
/// The step that failed and its `errno`.
pub fn connect_start(source: Option<Ipv4Addr>, target: SocketAddrV4) -> Result<OwnedFd, SysError> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain syscall with integer arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, flags, 0) };
    if raw < 0 {
        return Err(SysError::last("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if let Some(ip) = source {
        // Without this, bind() would reserve an ephemeral port per source address for
        // every destination, capping each source at one port range in total.
        set_int_opt(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
            .map_err(|_| SysError::last("bind"))?;
        let local = sockaddr(SocketAddrV4::new(ip, 0));
        // SAFETY: `local` is a valid sockaddr_in and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&local as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(SysError::last("bind"));
        }
    }
    let remote = sockaddr(target);
    // SAFETY: `remote` is a valid sockaddr_in and the length passed is its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = SysError::last("connect");
        if err.errno != libc::EINPROGRESS {
            return Err(err);
        }
    }
    Ok(fd)
}

fn set_int_opt(fd: &OwnedFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a valid c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads and clears the socket's pending error (`SO_ERROR`): the outcome of a
/// non-blocking connect.
///
/// # Errors
/// The connect's `errno`, or `getsockopt`'s own.
pub fn take_socket_error(fd: &OwnedFd) -> Result<(), i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid and writable; `len` holds the size of `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    if value != 0 {
        return Err(value);
    }
    Ok(())
}

/// Sends without blocking and without SIGPIPE.
///
/// # Errors
/// `WouldBlock` when the send buffer is full, else the socket's error.
pub fn send(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes during the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Fills `buf` from the kernel's random source (getrandom(2)).
///
/// # Errors
/// The call's error; `buf` may then be partly filled.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    // Bounded: each round fills at least one byte or returns; requests up to 256 bytes
    // are never cut short once the pool is initialized.
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid for writes of `rest.len()` bytes during the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Receives without blocking; `Ok(0)` is the peer's end of stream.
///
/// # Errors
/// `WouldBlock` when nothing is buffered, else the socket's error.
pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// An epoll instance with level-triggered registrations keyed by a `u64` token.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Creates the instance.
    ///
    /// # Errors
    /// If `epoll_create1` fails.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with an integer argument.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Registers `fd` for `events` under `token`. Closing `fd` removes it.
    ///
    /// # Errors
    /// If `epoll_ctl` fails (e.g. `EPERM` for a regular file).
    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    /// Removes `fd` from the set.
    ///
    /// # Errors
    /// If `epoll_ctl` fails.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Changes the events of a registered `fd`.
    ///
    /// # Errors
    /// If `epoll_ctl` fails.
    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// Waits up to `timeout_ms` and fills `tokens` (cleared first) with the tokens of
    /// ready registrations, at most `max` of them. An interrupted wait returns none.
    /// Callers learn what is ready by trying the descriptor (level-triggered).
    ///
    /// # Errors
    /// If `epoll_wait` fails other than by `EINTR`.
    pub fn wait(&self, tokens: &mut Vec<u64>, max: usize, timeout_ms: i32) -> io::Result<()> {
        let mut raw = vec![libc::epoll_event { events: 0, u64: 0 }; max];
        // SAFETY: `raw` holds `max` writable epoll_event slots for the duration of the call.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                raw.as_mut_ptr(),
                max as libc::c_int,
                timeout_ms,
            )
        };
        tokens.clear();
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(err),
            };
        }
        // Copy the field out: epoll_event is packed on x86-64, so no references into it.
        tokens.extend(raw[..n as usize].iter().map(|ev| ev.u64));
        Ok(())
    }
}
