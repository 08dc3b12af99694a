//! eventfd doorbells for the epoll driver: a loop sleeping in `epoll_wait` is woken by
//! another thread writing to its eventfd, as `MSG_RING` wakes a loop on io_uring.
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A nonblocking eventfd.
///
/// # Errors
/// The eventfd(2) error.
pub fn create() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2) call; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Rings the doorbell `fd`. A counter at its maximum (`EAGAIN`) is already ringing.
pub fn ring(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor the caller names; a stale or
    // wrong descriptor only makes the write fail.
    unsafe { libc::write(fd, std::ptr::from_ref(&one).cast(), 8) };
}

/// Resets the doorbell `fd` after a wake-up.
pub fn drain(fd: RawFd) {
    let mut count: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64.
    unsafe { libc::read(fd, std::ptr::from_mut(&mut count).cast(), 8) };
}
