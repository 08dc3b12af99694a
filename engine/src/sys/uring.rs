//! io_uring setup with the flags every loop uses, and a diagnosis of why io_uring is not
//! available when it is not. Owns no connection state.
use std::io;

use io_uring::{squeue, IoUring};

/// Why the engine cannot run on this host; the message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum UringError {
    #[error("io_uring is switched off by the sysctl kernel.io_uring_disabled={0}; run `sysctl -w kernel.io_uring_disabled=0` (see tuning/sysctl.conf)")]
    DisabledBySysctl(u32),
    #[error("io_uring_setup was refused with EPERM: a seccomp profile blocks io_uring (Docker's and containerd's default profiles do); run it with a profile that allows io_uring_setup, io_uring_enter and io_uring_register (for Docker: --security-opt seccomp=PROFILE.json with those three added, or seccomp=unconfined)")]
    BlockedBySeccomp,
    #[error("this kernel has no io_uring (io_uring_setup: ENOSYS); ringcast needs Linux 6.1 or newer built with CONFIG_IO_URING=y")]
    NoKernelSupport,
    #[error("this kernel's io_uring lacks SINGLE_ISSUER/DEFER_TASKRUN (io_uring_setup: EINVAL); ringcast needs Linux 6.1 or newer")]
    KernelTooOld,
    #[error("io_uring_setup failed: {0}; if memory is short, raise `ulimit -l` or lower --loops")]
    Other(io::Error),
}

/// Ring sizes for one loop.
#[derive(Clone, Copy, Debug)]
pub struct RingSize {
    pub sq_entries: u32,
    pub cq_entries: u32,
}

/// Builds a ring for the calling thread, which becomes its only submitter
/// (`SINGLE_ISSUER`); completions run only when that thread enters the kernel
/// (`DEFER_TASKRUN`), so no interrupt-driven task work disturbs the loop.
///
/// # Errors
/// A [`UringError`] naming the cause and the fix when io_uring cannot be used.
pub fn build_ring(size: RingSize) -> Result<IoUring, UringError> {
    IoUring::<squeue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(size.cq_entries)
        .setup_clamp()
        .build(size.sq_entries)
        .map_err(diagnose)
}

/// Checks that this host lets the engine build its rings: a small ring with the loops'
/// flags is built and dropped.
///
/// # Errors
/// As [`build_ring`].
pub fn probe() -> Result<(), UringError> {
    build_ring(RingSize {
        sq_entries: 8,
        cq_entries: 16,
    })
    .map(drop)
}

/// Turns an `io_uring_setup` failure into the reason an operator can act on.
fn diagnose(err: io::Error) -> UringError {
    match err.raw_os_error() {
        Some(libc::ENOSYS) => UringError::NoKernelSupport,
        Some(libc::EINVAL) => UringError::KernelTooOld,
        Some(libc::EPERM) => match sysctl_io_uring_disabled() {
            Some(v) if v > 0 => UringError::DisabledBySysctl(v),
            _ => UringError::BlockedBySeccomp,
        },
        _ => UringError::Other(err),
    }
}

fn sysctl_io_uring_disabled() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Submits pending entries and runs deferred completions without waiting.
///
/// `Submitter::submit` leaves out `IORING_ENTER_GETEVENTS` when it has nothing to wait
/// for, and with `DEFER_TASKRUN` completions are only reaped by an enter that carries it.
///
/// # Errors
/// The `io_uring_enter` error, `EBUSY` included (the caller reaps and retries).
pub fn submit_and_reap(ring: &IoUring) -> io::Result<usize> {
    let submitter = ring.submitter();
    let pending = ring_sq_len(ring);
    // SAFETY: no argument pointer is passed (`None`), and every queued entry's buffers are
    // owned by the loop until their completions return (the loop's own invariant).
    unsafe { submitter.enter::<libc::sigset_t>(pending, 0, io_uring::EnterFlags::GETEVENTS.bits(), None) }
}

fn ring_sq_len(ring: &IoUring) -> u32 {
    // SAFETY: the loop thread is the only user of the ring; reading the queue length through
    // a shared view while no `submission()` borrow is alive cannot race with a push.
    let len = unsafe { ring.submission_shared().len() };
    len as u32
}

/// Queues `entry`, handing the queue to the kernel first when it is full.
///
/// # Safety
/// Every buffer, `msghdr`, `iovec` or timespec `entry` points to must stay valid and
/// untouched until the kernel posts the entry's final completion.
///
/// # Panics
/// If the kernel refuses the submission for a reason other than a transient one.
pub unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    loop {
        // SAFETY: the caller guarantees the entry's buffers outlive its completion.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            if !matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EINTR | libc::EAGAIN)) {
                panic!("io_uring_enter failed while submitting: {e}");
            }
        }
    }
}

/// One completion: `user_data`, result and flags.
pub type Cqe = (u64, i32, u32);

/// Moves every posted completion into `batch` (cleared first); false when there were none.
/// Dispatching from a batch, rather than from the queue, lets handlers push new entries.
pub fn take_completions(ring: &mut IoUring, batch: &mut Vec<Cqe>) -> bool {
    batch.clear();
    batch.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
    !batch.is_empty()
}

/// A ring that only rings other rings: `MSG_RING` doorbells from a thread with no loop of
/// its own (the backplane thread). Built on, and used only by, that thread.
pub struct Bell {
    ring: IoUring,
    completions: Vec<Cqe>,
}

impl Bell {
    /// # Errors
    /// As [`build_ring`].
    pub fn new() -> Result<Bell, UringError> {
        Ok(Bell {
            ring: build_ring(RingSize {
                sq_entries: 64,
                cq_entries: 256,
            })?,
            completions: Vec::new(),
        })
    }

    /// Posts a completion carrying `data` on the ring behind `fd`, waking its loop.
    pub fn ring(&mut self, fd: std::os::fd::RawFd, data: u64) {
        let entry = io_uring::opcode::MsgRingData::new(io_uring::types::Fd(fd), 0, data, None)
            .build()
            .user_data(0);
        // SAFETY: a MSG_RING entry points at no memory of ours.
        unsafe { push(&mut self.ring, &entry) };
        let _ = submit_and_reap(&self.ring);
        // Its own completions say only that the message was posted; they are dropped.
        while take_completions(&mut self.ring, &mut self.completions) {}
    }
}
