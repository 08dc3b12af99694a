//! Termination signals (SIGINT, SIGTERM) and the reload signal (SIGHUP): blocked in every
//! thread and taken synchronously by one waiter, so no handler ever runs on a loop thread.
use std::io;

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread and every thread it spawns afterwards.
///
/// # Errors
/// The `pthread_sigmask` error.
pub fn block_termination() -> io::Result<()> {
    let set = termination_set();
    // SAFETY: `set` is a valid signal set; the old mask is not requested.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// The reload signal's number.
pub const RELOAD: i32 = libc::SIGHUP;

/// Waits for SIGINT, SIGTERM or SIGHUP (blocked beforehand) and returns its number.
pub fn wait_termination() -> i32 {
    let set = termination_set();
    let mut sig = 0;
    // SAFETY: `set` and `sig` are valid for the call.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}
