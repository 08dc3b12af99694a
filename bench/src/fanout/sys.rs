//! The `unsafe` libc calls of `fanout` that the shared [`crate::sys`] does not offer: a
//! socket whose receive buffer is set before it connects (a slow reader's small window
//! must be in its SYN), and the clock-tick rate for CPU times read from `/proc`.
//!
//! Every wrapper is safe to call and owns what it opens through [`OwnedFd`].

use std::io;
use std::mem::size_of;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Connects (blocking) to `target` from a socket with `SO_RCVBUF` set to `rcvbuf` first.
///
/// # Errors
/// The failing call's error, named.
pub fn connect_with_rcvbuf(target: SocketAddrV4, rcvbuf: u32) -> io::Result<OwnedFd> {
    let named = |call: &str| {
        let e = io::Error::last_os_error();
        io::Error::new(e.kind(), format!("{call}: {e}"))
    };
    // SAFETY: plain syscall with integer arguments.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(named("socket"));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let value = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value is a valid c_int and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(named("setsockopt SO_RCVBUF"));
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: target.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(target.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sin` is a valid sockaddr_in and the length passed is its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(named("connect"));
    }
    Ok(fd)
}

/// Clock ticks per second, the unit of CPU times in `/proc/<pid>/stat`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}
