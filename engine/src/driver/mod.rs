//! The I/O drivers: the only code that performs a loop's I/O.
//!
//! A loop (a [`crate::shard::Shard`] or the ingest thread) is sans-IO: it queues [`Op`]s
//! in its outbox and is handed [`Completion`]s, with the caller's `now` for its clock. It
//! owns no ring, no epoll and no buffer lent to the kernel. A driver runs a loop:
//!
//! ```text
//!   loop.before_wait() -> may sleep? --> driver: submit outbox, wait for I/O
//!          ^                                    |
//!          |                                    v
//!   loop.end_turn() <-- loop.complete(c) for each completion (new ops go to the outbox)
//! ```
//!
//! Two drivers share that contract, with io_uring's semantics: an op completes exactly
//! once, or many times with `more` set until its final completion (multishot receive and
//! accept); a cancelled op completes with `-ECANCELED`; results are byte counts or
//! negated errno values.
//!
//! - [`uring`]: io_uring with direct descriptors, multishot accept and receive from a
//!   provided-buffer ring, a multishot timeout for the tick, `MSG_RING` doorbells.
//! - [`epoll`]: for hosts that refuse io_uring (container seccomp profiles, the
//!   `kernel.io_uring_disabled` sysctl, old kernels): one edge-triggered epoll per loop,
//!   nonblocking sockets read on readiness into one buffer per loop (an idle connection
//!   still holds none), gathered writes, eventfd doorbells.
//!
//! The driver is chosen once per process (`--driver`); every loop and the ingest thread
//! run on the same one, because their doorbells must reach each other.
pub mod epoll;
pub mod tag;
pub mod uring;

use std::os::fd::RawFd;

use crate::sys::uring::UringError;

/// Which driver to run on, as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// io_uring, or epoll (saying why) when the host refuses io_uring.
    Auto,
    /// io_uring only: exit with the cause and the fix when it is refused.
    IoUring,
    /// epoll only.
    Epoll,
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Choice::Auto => "auto",
            Choice::IoUring => "io-uring",
            Choice::Epoll => "epoll",
        })
    }
}

/// The driver the process runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    IoUring,
    Epoll,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::IoUring => "io-uring",
            Kind::Epoll => "epoll",
        }
    }
}

/// Resolves `choice` on this host. With `auto`, a refused io_uring is logged once with
/// its cause and the epoll driver is used.
///
/// # Errors
/// With `io-uring`: why io_uring cannot be used here, and what to do about it.
pub fn resolve(choice: Choice) -> Result<Kind, UringError> {
    match choice {
        Choice::Epoll => Ok(Kind::Epoll),
        Choice::IoUring => crate::sys::uring::probe().map(|()| Kind::IoUring),
        Choice::Auto => match crate::sys::uring::probe() {
            Ok(()) => Ok(Kind::IoUring),
            Err(e) => {
                eprintln!("ringcast: io_uring is not available, running on epoll: {e}");
                Ok(Kind::Epoll)
            }
        },
    }
}

/// One I/O request. Pointers name memory the requesting loop owns and leaves untouched
/// until the op's final completion; `data` comes back in every completion of the op.
///
/// `file` is what an accept completed with: a direct descriptor on io_uring (for the
/// loops), a plain descriptor on epoll and for the ingest thread.
#[derive(Debug)]
pub enum Op {
    /// Accept on the driver's listener `listener`. `slot` names one of several accepts in
    /// flight on it; `multishot` keeps accepting until it ends; `peer` asks for the
    /// client's address key in [`Completion::peer`].
    Accept {
        listener: usize,
        slot: usize,
        multishot: bool,
        peer: bool,
        data: u64,
    },
    /// Cancels every accept on `listener` (each completes with `-ECANCELED`).
    CancelAccepts { listener: usize, data: u64 },
    /// Receives into buffers the driver provides, completion after completion, until the
    /// peer closes, an error, or a cancel: [`Completion::buf`] holds each one's bytes.
    RecvMulti { file: u32, data: u64 },
    /// Completes once, with the `poll(2)` event mask, when `file` is readable (or at its
    /// EOF or error). Holds no buffer and less kernel memory than an armed `RecvMulti`.
    PollIn { file: u32, data: u64 },
    /// Cancels the one op on `file` whose `data` is `op` (it completes with
    /// `-ECANCELED`), then completes with 0, or `-ENOENT` when that op had already ended.
    CancelOp { file: u32, op: u64, data: u64 },
    /// Receives once into `buf[..len]`.
    Recv {
        file: u32,
        buf: *mut u8,
        len: u32,
        data: u64,
    },
    /// Sends `buf[..len]`; completes with the bytes the kernel took.
    Send {
        file: u32,
        buf: *const u8,
        len: u32,
        data: u64,
    },
    /// Sends what `msg` gathers; completes with the bytes the kernel took.
    SendMsg {
        file: u32,
        msg: *const libc::msghdr,
        data: u64,
    },
    /// Shuts the write side down.
    Shutdown { file: u32, data: u64 },
    /// Cancels every op on `file` (each completes with `-ECANCELED`), then completes.
    Cancel { file: u32, data: u64 },
    /// Closes `file`.
    Close { file: u32, data: u64 },
    /// Rings another loop's doorbell (`target` from [`Loop`]'s start): it is woken and
    /// handed a completion carrying `deliver`.
    Bell { target: RawFd, deliver: u64, data: u64 },
}

/// What happened to an [`Op`] (or a tick, or a doorbell).
pub struct Completion<'a> {
    pub data: u64,
    /// Bytes, a descriptor, 0, or a negated errno.
    pub res: i32,
    /// More completions of the same op follow.
    pub more: bool,
    /// A multishot receive's bytes, lent for the duration of the call.
    pub buf: Option<&'a mut [u8]>,
    /// An accept's client address key (see [`crate::admission::address_key`]), when asked.
    pub peer: Option<u64>,
}

impl Completion<'_> {
    pub fn of(data: u64, res: i32, more: bool) -> Completion<'static> {
        Completion {
            data,
            res,
            more,
            buf: None,
            peer: None,
        }
    }
}

/// A sans-IO loop, as a driver runs it.
pub trait Loop {
    /// The ops queued since the driver last took them; the driver empties it.
    fn outbox(&mut self) -> &mut Vec<Op>;
    /// Handles one completion at `now`.
    fn complete(&mut self, c: Completion<'_>, now: std::time::Instant);
    /// Work before the driver waits; true when the loop may sleep until I/O or a doorbell.
    fn before_wait(&mut self) -> bool;
    /// After the wait (`slept`: it was allowed to sleep), before completions are handed in.
    fn after_wait(&mut self, slept: bool);
    /// After a turn's completions; true when the loop is done and the driver returns.
    fn end_turn(&mut self) -> bool;
}

/// What a driver needs of the loop it runs beyond [`Loop`].
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    /// Completions of every tick carry this.
    pub tick_data: u64,
    pub tick_ms: u64,
    /// Completions handed in when the loop's doorbell rings. On epoll one doorbell
    /// carries them all; on io_uring the ringer names which.
    pub bell_data: &'static [u64],
    /// Accepted sockets become direct descriptors (io_uring only).
    pub direct: bool,
    /// Registered file table slots (io_uring with `direct`), or sockets kept (epoll).
    pub files: u32,
    /// io_uring submission queue entries; the completion queue is eight times larger.
    pub sq_entries: u32,
}

/// A doorbell ringer for a thread that has no loop of its own (the backplane thread).
pub enum Ringer {
    Uring(Box<crate::sys::uring::Bell>),
    Event,
}

impl Ringer {
    /// # Errors
    /// As [`crate::sys::uring::build_ring`] on io_uring.
    pub fn new(kind: Kind) -> Result<Ringer, UringError> {
        match kind {
            Kind::IoUring => crate::sys::uring::Bell::new().map(|b| Ringer::Uring(Box::new(b))),
            Kind::Epoll => Ok(Ringer::Event),
        }
    }

    /// Wakes the loop behind `target`, handing it `data` (io_uring) or ringing its one
    /// doorbell (epoll).
    pub fn ring(&mut self, target: RawFd, data: u64) {
        match self {
            Ringer::Uring(bell) => bell.ring(target, data),
            Ringer::Event => crate::sys::eventfd::ring(target),
        }
    }
}
