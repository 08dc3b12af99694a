//! The io_uring driver: turns a loop's [`Op`]s into submissions and its ring's
//! completions into [`Completion`]s.
//!
//! Owns the ring (`SINGLE_ISSUER` + `DEFER_TASKRUN`, so it is built on the thread that
//! runs it), the sparse registered file table accepted sockets land in as direct
//! descriptors, the provided-buffer ring multishot receives draw from, the listeners, the
//! address buffers of single-shot accepts, and the tick's multishot timeout. Every buffer
//! a completion lends to the loop is recycled before the next completion is handed in.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::{Completion, Loop, Op, Setup};
use crate::sys::bufring::BufRing;
use crate::sys::uring::{self, RingSize};

use super::tag::{driver as tag, pack, unpack};

/// Single-shot accepts per listener that can carry addresses.
const ACCEPT_SLOTS: usize = 32;

#[derive(Clone, Copy)]
struct Peer {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// The accepts of one listener: the loop's `data` and whether it asked for the address.
struct Accepts {
    fd: OwnedFd,
    /// Boxed: the kernel writes into these while the accepts are in flight.
    peers: Box<[Peer; ACCEPT_SLOTS]>,
    data: [u64; ACCEPT_SLOTS],
    peer: [bool; ACCEPT_SLOTS],
}

/// One loop's io_uring.
pub struct Uring {
    // Field order is drop order: the ring closes before the memory it was lent.
    ring: IoUring,
    bufs: Option<BufRing>,
    listeners: Vec<Accepts>,
    tick_spec: types::Timespec,
    setup: Setup,
    cqes: Vec<uring::Cqe>,
    ops: Vec<Op>,
}

impl Uring {
    /// Builds the ring on the calling thread, with a file table of `setup.files` slots
    /// when `setup.direct`, and a buffer ring of `recv` (count, bytes) when given.
    ///
    /// # Errors
    /// A message naming what failed and what to do.
    pub fn new(setup: Setup, listeners: Vec<OwnedFd>, recv: Option<(u16, u32)>) -> Result<Uring, String> {
        let ring = uring::build_ring(RingSize {
            sq_entries: setup.sq_entries,
            cq_entries: setup.sq_entries * 8,
        })
        .map_err(|e| e.to_string())?;
        if setup.direct {
            ring.submitter().register_files_sparse(setup.files).map_err(|e| {
                format!(
                    "cannot register a file table of {} slots: {e}; lower --max-conns-per-loop",
                    setup.files
                )
            })?;
        }
        let bufs = match recv {
            Some((count, size)) => Some(
                BufRing::new(&ring.submitter(), 0, count, size)
                    .map_err(|e| format!("cannot register the receive buffer ring: {e}"))?,
            ),
            None => None,
        };
        let empty = Peer {
            // SAFETY: all-zero is a valid sockaddr_storage.
            addr: unsafe { std::mem::zeroed() },
            len: 0,
        };
        Ok(Uring {
            ring,
            bufs,
            listeners: listeners
                .into_iter()
                .map(|fd| Accepts {
                    fd,
                    peers: Box::new([empty; ACCEPT_SLOTS]),
                    data: [0; ACCEPT_SLOTS],
                    peer: [false; ACCEPT_SLOTS],
                })
                .collect(),
            tick_spec: types::Timespec::new()
                .sec(setup.tick_ms / 1000)
                .nsec(((setup.tick_ms % 1000) * 1_000_000) as u32),
            setup,
            cqes: Vec::with_capacity(1024),
            ops: Vec::with_capacity(256),
        })
    }

    /// The descriptor other threads ring this loop's doorbell on (`MSG_RING`).
    pub fn bell(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Runs `lp` until it says it is done.
    ///
    /// # Errors
    /// Only an `io_uring_enter` failure the loop cannot recover from.
    pub fn run(mut self, lp: &mut impl Loop) -> io::Result<()> {
        self.arm_tick();
        loop {
            let sleep = lp.before_wait();
            self.submit_outbox(lp);
            let res = if sleep {
                self.ring.submitter().submit_and_wait(1)
            } else {
                uring::submit_and_reap(&self.ring)
            };
            lp.after_wait(sleep);
            match res {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
            self.reap(lp);
            if lp.end_turn() {
                return Ok(());
            }
        }
    }

    fn reap(&mut self, lp: &mut impl Loop) {
        let mut batch = std::mem::take(&mut self.cqes);
        while uring::take_completions(&mut self.ring, &mut batch) {
            let now = Instant::now();
            for &(data, res, flags) in &batch {
                self.complete(lp, data, res, flags, now);
                self.submit_outbox(lp);
            }
        }
        self.cqes = batch;
    }

    fn complete(&mut self, lp: &mut impl Loop, data: u64, res: i32, flags: u32, now: Instant) {
        let more = cqueue::more(flags);
        match unpack(data).0 {
            tag::TICK => {
                if !more {
                    self.arm_tick();
                }
                lp.complete(Completion::of(self.setup.tick_data, res, true), now);
            }
            tag::ACCEPT => {
                let (listener, slot) = (
                    (data as u32 as usize) / ACCEPT_SLOTS,
                    (data as u32 as usize) % ACCEPT_SLOTS,
                );
                let a = &self.listeners[listener];
                let peer = (res >= 0 && a.peer[slot])
                    .then(|| crate::admission::address_key(&a.peers[slot].addr))
                    .flatten();
                let c = Completion {
                    data: a.data[slot],
                    res,
                    more,
                    buf: None,
                    peer,
                };
                lp.complete(c, now);
            }
            _ => match cqueue::buffer_select(flags) {
                Some(bid) => {
                    let mut bufs = self
                        .bufs
                        .take()
                        .expect("a buffer was selected, so a buffer ring exists");
                    let buf = (res > 0).then(|| bufs.get_mut(bid, res as usize));
                    lp.complete(
                        Completion {
                            data,
                            res,
                            more,
                            buf,
                            peer: None,
                        },
                        now,
                    );
                    bufs.recycle(bid);
                    self.bufs = Some(bufs);
                }
                None => lp.complete(Completion::of(data, res, more), now),
            },
        }
    }

    fn submit_outbox(&mut self, lp: &mut impl Loop) {
        std::mem::swap(&mut self.ops, lp.outbox());
        let mut ops = std::mem::take(&mut self.ops);
        for op in ops.drain(..) {
            let entry = self.entry(op);
            // SAFETY: every op's buffers (msghdr, iovecs, queued bytes, receive buffers)
            // are owned by the loop that queued it and stay alive and untouched until the
            // op's final completion (the contract of `Op`); the timespec and the address
            // buffers are the driver's own and live as long as the ring.
            unsafe { uring::push(&mut self.ring, &entry) };
        }
        self.ops = ops;
    }

    fn entry(&mut self, op: Op) -> squeue::Entry {
        let direct = self.setup.direct;
        macro_rules! on {
            ($file:expr, $build:expr) => {
                if direct {
                    let fd = types::Fixed($file);
                    $build(fd)
                } else {
                    let fd = types::Fd($file as RawFd);
                    $build(fd)
                }
            };
        }
        match op {
            Op::Accept {
                listener,
                slot,
                multishot,
                peer,
                data,
            } => {
                assert!(slot < ACCEPT_SLOTS, "accept slot {slot} out of {ACCEPT_SLOTS}");
                let a = &mut self.listeners[listener];
                a.data[slot] = data;
                a.peer[slot] = peer && !multishot;
                let fd = types::Fd(a.fd.as_raw_fd());
                let user = pack(tag::ACCEPT, 0, (listener * ACCEPT_SLOTS + slot) as u32);
                let entry = if multishot {
                    let e = opcode::AcceptMulti::new(fd);
                    if direct {
                        e.allocate_file_index(true).build()
                    } else {
                        e.flags(libc::SOCK_CLOEXEC).build()
                    }
                } else {
                    let p = &mut a.peers[slot];
                    p.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    let e = opcode::Accept::new(fd, std::ptr::from_mut(&mut p.addr).cast(), &mut p.len);
                    if direct {
                        e.file_index(Some(types::DestinationSlot::auto_target())).build()
                    } else {
                        e.flags(libc::SOCK_CLOEXEC).build()
                    }
                };
                entry.user_data(user)
            }
            Op::CancelAccepts { listener, data } => {
                let fd = types::Fd(self.listeners[listener].fd.as_raw_fd());
                opcode::AsyncCancel2::new(types::CancelBuilder::fd(fd).all())
                    .build()
                    .user_data(data)
            }
            Op::RecvMulti { file, data } => {
                let group = self
                    .bufs
                    .as_ref()
                    .expect("multishot receives need a buffer ring")
                    .group();
                on!(file, |fd| opcode::RecvMulti::new(fd, group).build()).user_data(data)
            }
            Op::Recv { file, buf, len, data } => {
                on!(file, |fd| opcode::Recv::new(fd, buf, len).build()).user_data(data)
            }
            Op::PollIn { file, data } => {
                on!(file, |fd| opcode::PollAdd::new(fd, libc::POLLIN as u32).build()).user_data(data)
            }
            Op::CancelOp { op, data, .. } => opcode::AsyncCancel::new(op).build().user_data(data),
            Op::Send { file, buf, len, data } => on!(file, |fd| opcode::Send::new(fd, buf, len)
                .flags(libc::MSG_NOSIGNAL)
                .build())
            .user_data(data),
            Op::SendMsg { file, msg, data } => on!(file, |fd| opcode::SendMsg::new(fd, msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build())
            .user_data(data),
            Op::Shutdown { file, data } => {
                on!(file, |fd| opcode::Shutdown::new(fd, libc::SHUT_WR).build()).user_data(data)
            }
            Op::Cancel { file, data } => on!(file, |fd| opcode::AsyncCancel2::new(
                types::CancelBuilder::fd(fd).all()
            )
            .build())
            .user_data(data),
            Op::Close { file, data } => on!(file, |fd| opcode::Close::new(fd).build()).user_data(data),
            Op::Bell {
                target,
                deliver,
                data,
            } => opcode::MsgRingData::new(types::Fd(target), 0, deliver, None)
                .build()
                .user_data(data),
        }
    }

    fn arm_tick(&mut self) {
        let entry = opcode::Timeout::new(&self.tick_spec)
            .flags(types::TimeoutFlags::MULTISHOT)
            .build()
            .user_data(pack(tag::TICK, 0, 0));
        // SAFETY: the timespec lives in the driver, as long as the ring.
        unsafe { uring::push(&mut self.ring, &entry) };
    }
}
