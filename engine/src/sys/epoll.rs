//! The syscalls of the epoll driver: epoll itself and nonblocking socket I/O. Results are
//! byte counts or descriptors, or negated errno values, as io_uring completions carry them,
//! so the driver hands both kinds of result to a loop the same way.
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Readiness a registered socket reports: input (or its end), output room, errors.
/// Edge-triggered: each is reported once per change, so the driver reads until `EAGAIN`
/// or remembers that it stopped early.
pub const SOCKET_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Readiness of a listener or a doorbell: input only, edge-triggered.
pub const INPUT_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLET) as u32;

fn result(ret: isize) -> i32 {
    if ret < 0 {
        -io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
    } else {
        ret as i32
    }
}

/// A new epoll instance.
///
/// # Errors
/// The epoll_create1(2) error.
pub fn create() -> io::Result<OwnedFd> {
    // SAFETY: plain epoll_create1(2) call; the result is checked before use.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by epoll_create1(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers `fd` in `epfd` for `events`, reported with `key`; 0 or a negated errno.
pub fn add(epfd: RawFd, fd: RawFd, events: u32, key: u64) -> i32 {
    let mut ev = libc::epoll_event { events, u64: key };
    // SAFETY: `ev` is a live epoll_event; bad descriptors only make the call fail.
    result(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } as isize)
}

/// Removes `fd` from `epfd`; 0 or a negated errno.
pub fn remove(epfd: RawFd, fd: RawFd) -> i32 {
    // SAFETY: EPOLL_CTL_DEL takes no event; bad descriptors only make the call fail.
    result(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) } as isize)
}

/// Waits up to `timeout_ms` (0: not at all) for readiness into `events`; how many are
/// ready, or a negated errno (`-EINTR` on a signal).
pub fn wait(epfd: RawFd, events: &mut [libc::epoll_event], timeout_ms: i32) -> i32 {
    let max = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: the kernel writes at most `max` entries into `events`.
    result(unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), max, timeout_ms) } as isize)
}

/// Accepts one connection from the nonblocking listener `fd` as a nonblocking socket,
/// writing the peer's address into `peer`; the new descriptor or a negated errno.
pub fn accept(fd: RawFd, peer: &mut libc::sockaddr_storage) -> i32 {
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `peer` and `len` are live and `len` is `peer`'s size.
    result(unsafe {
        libc::accept4(
            fd,
            std::ptr::from_mut(peer).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    } as isize)
}

/// Puts `fd` in nonblocking mode.
///
/// # Errors
/// The fcntl(2) error.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives at most `buf.len()` bytes without waiting.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> i32 {
    // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
    result(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// Receives at most `len` bytes into `buf` without waiting.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes.
pub unsafe fn recv_raw(fd: RawFd, buf: *mut u8, len: u32) -> i32 {
    // SAFETY: the caller guarantees `buf[..len]` is writable.
    result(unsafe { libc::recv(fd, buf.cast(), len as usize, libc::MSG_DONTWAIT) })
}

/// Sends `buf[..len]` without waiting (and without SIGPIPE).
///
/// # Safety
/// `buf` must be valid for reads of `len` bytes.
pub unsafe fn send(fd: RawFd, buf: *const u8, len: u32) -> i32 {
    // SAFETY: the caller guarantees `buf[..len]` is readable.
    result(unsafe {
        libc::send(
            fd,
            buf.cast(),
            len as usize,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// Sends what `msg` gathers without waiting (and without SIGPIPE).
///
/// # Safety
/// `msg` and every iovec it points to must be valid for reads.
pub unsafe fn sendmsg(fd: RawFd, msg: *const libc::msghdr) -> i32 {
    // SAFETY: the caller guarantees `msg` and its iovecs are readable.
    result(unsafe { libc::sendmsg(fd, msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) })
}

/// Shuts the write side of `fd` down; 0 or a negated errno.
pub fn shutdown_write(fd: RawFd) -> i32 {
    // SAFETY: shutdown(2) on a descriptor; a bad one only makes the call fail.
    result(unsafe { libc::shutdown(fd, libc::SHUT_WR) } as isize)
}

/// Closes `fd`; 0 or a negated errno.
///
/// # Safety
/// `fd` must be owned by the caller and not used again.
pub unsafe fn close(fd: RawFd) -> i32 {
    // SAFETY: the caller owns `fd` and gives it up.
    result(unsafe { libc::close(fd) } as isize)
}
