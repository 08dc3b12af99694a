//! The epoll driver, for hosts that refuse io_uring: the same [`Op`]s and the same
//! completion semantics as the io_uring driver, performed with nonblocking syscalls on
//! readiness.
//!
//! - One epoll per loop; each socket is registered once, edge-triggered, for input, output
//!   room and hang-up, keyed by its descriptor. Listeners and the doorbell (an eventfd)
//!   are registered beside them.
//! - A multishot receive is a standing wish to read: on readiness (and when armed, since
//!   bytes may already wait) the driver reads into its one per-loop buffer and hands each
//!   read to the loop before the next, so an idle connection holds no buffer. At most
//!   [`READS_PER_TURN`] reads per socket per turn; a socket with more to read is kept on
//!   a ready list, and the next wait does not sleep.
//! - A send is tried at once; what the kernel would not take (`EAGAIN`) waits for the
//!   socket's output edge. Either way it completes exactly once, with the bytes taken.
//! - Ops that end at once (shutdown, close, cancel, a send that went out) complete in the
//!   same turn, after the completion that caused them.
//! - A poll for input completes at once: the registration already waits for readiness,
//!   so there is no armed receive to trade for it (the loops park receives only on
//!   io_uring), and the receive armed next reads what is there or waits.
//! - The tick is the wait's timeout; no timerfd.
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{Completion, Loop, Op, Setup};
use crate::sys::{epoll, eventfd};

/// Reads per socket per turn before others get theirs.
const READS_PER_TURN: usize = 16;
/// Connections a multishot accept takes per turn before others get theirs.
const ACCEPTS_PER_TURN: usize = 64;
/// Readiness reports taken per wait.
const EVENTS_MAX: usize = 1024;

/// Keys above every descriptor: listeners and the doorbell.
const LISTENER_KEY: u64 = 1 << 40;
const BELL_KEY: u64 = 1 << 41;

/// A standing accept on a listener.
#[derive(Clone, Copy)]
struct Accept {
    multishot: bool,
    peer: bool,
    data: u64,
}

struct Listener {
    fd: OwnedFd,
    armed: Vec<Accept>,
}

/// A receive or send waiting for readiness.
#[derive(Clone, Copy)]
enum Wait {
    Recv { buf: *mut u8, len: u32, data: u64 },
    Send { buf: *const u8, len: u32, data: u64 },
    SendMsg { msg: *const libc::msghdr, data: u64 },
}

/// What the driver holds for one socket, indexed by descriptor: 16 bytes.
#[derive(Clone, Copy, Default)]
struct Socket {
    /// The armed multishot receive's `data`, or 0.
    multi: u64,
    registered: bool,
    /// A single-shot receive waits in `waits` (at most one).
    recv_waits: bool,
    /// A send waits in `waits` (at most one).
    send_waits: bool,
}

/// One loop's epoll.
pub struct Epoll {
    epfd: OwnedFd,
    bell: OwnedFd,
    listeners: Vec<Listener>,
    sockets: Vec<Socket>,
    /// Receives and sends waiting for readiness, by descriptor; a `Vec` holds at most two.
    waits: HashMap<RawFd, Vec<Wait>>,
    /// Sockets with input still to read after their turn's reads.
    ready: Vec<RawFd>,
    /// Listeners with connections still to accept after their turn's accepts.
    ready_listeners: Vec<usize>,
    /// Completions of ops that ended at once, handed in after the current one.
    done: VecDeque<(u64, i32, bool)>,
    buf: Box<[u8]>,
    events: Vec<libc::epoll_event>,
    setup: Setup,
    next_tick: Instant,
    ops: Vec<Op>,
}

impl Epoll {
    /// One epoll with `listeners` (made nonblocking) and a doorbell, and a receive buffer
    /// of `recv_bytes`.
    ///
    /// # Errors
    /// A message naming what failed.
    pub fn new(setup: Setup, listeners: Vec<OwnedFd>, recv_bytes: usize) -> Result<Epoll, String> {
        let epfd = epoll::create().map_err(|e| format!("cannot create an epoll instance: {e}"))?;
        let bell = eventfd::create().map_err(|e| format!("cannot create the doorbell eventfd: {e}"))?;
        if epoll::add(epfd.as_raw_fd(), bell.as_raw_fd(), epoll::INPUT_EVENTS, BELL_KEY) < 0 {
            return Err(format!(
                "cannot watch the doorbell: {}",
                io::Error::last_os_error()
            ));
        }
        for (i, l) in listeners.iter().enumerate() {
            epoll::set_nonblocking(l.as_raw_fd())
                .map_err(|e| format!("cannot make a listener nonblocking: {e}"))?;
            let res = epoll::add(
                epfd.as_raw_fd(),
                l.as_raw_fd(),
                epoll::INPUT_EVENTS,
                LISTENER_KEY + i as u64,
            );
            if res < 0 {
                return Err(format!(
                    "cannot watch a listener: {}",
                    io::Error::from_raw_os_error(-res)
                ));
            }
        }
        Ok(Epoll {
            epfd,
            bell,
            listeners: listeners
                .into_iter()
                .map(|fd| Listener {
                    fd,
                    armed: Vec::new(),
                })
                .collect(),
            sockets: Vec::new(),
            waits: HashMap::new(),
            ready: Vec::new(),
            ready_listeners: Vec::new(),
            done: VecDeque::new(),
            buf: vec![0; recv_bytes.max(1)].into_boxed_slice(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
            setup,
            next_tick: Instant::now() + Duration::from_millis(setup.tick_ms),
            ops: Vec::with_capacity(256),
        })
    }

    /// The eventfd other threads ring this loop's doorbell on.
    pub fn bell(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    /// Runs `lp` until it says it is done.
    ///
    /// # Errors
    /// Only an `epoll_wait` failure the loop cannot recover from.
    pub fn run(mut self, lp: &mut impl Loop) -> io::Result<()> {
        loop {
            let sleep = lp.before_wait();
            self.perform(lp);
            let busy = !self.ready.is_empty() || !self.ready_listeners.is_empty() || !self.done.is_empty();
            let timeout = if sleep && !busy {
                let left = self.next_tick.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
                    + i32::from(!left.subsec_micros().is_multiple_of(1000))
            } else {
                0
            };
            let n = epoll::wait(self.epfd.as_raw_fd(), &mut self.events, timeout);
            lp.after_wait(sleep);
            if n < 0 && n != -libc::EINTR {
                return Err(io::Error::from_raw_os_error(-n));
            }
            let now = Instant::now();
            for i in 0..n.max(0) as usize {
                let ev = self.events[i];
                self.on_event(lp, ev.u64, ev.events, now);
            }
            self.retry_ready(lp, now);
            if now >= self.next_tick {
                self.next_tick = (self.next_tick + Duration::from_millis(self.setup.tick_ms)).max(now);
                lp.complete(Completion::of(self.setup.tick_data, 0, true), now);
            }
            self.perform(lp);
            if lp.end_turn() {
                return Ok(());
            }
        }
    }

    /// Performs the loop's queued ops and hands in what completed at once, until neither
    /// is left.
    fn perform(&mut self, lp: &mut impl Loop) {
        loop {
            std::mem::swap(&mut self.ops, lp.outbox());
            if self.ops.is_empty() && self.done.is_empty() {
                return;
            }
            let mut ops = std::mem::take(&mut self.ops);
            for op in ops.drain(..) {
                self.start(op);
            }
            self.ops = ops;
            let now = Instant::now();
            while let Some((data, res, more)) = self.done.pop_front() {
                lp.complete(Completion::of(data, res, more), now);
            }
        }
    }

    fn socket(&mut self, fd: RawFd) -> &mut Socket {
        let i = fd as usize;
        if i >= self.sockets.len() {
            self.sockets
                .resize((i + 1).next_power_of_two(), Socket::default());
        }
        &mut self.sockets[i]
    }

    /// Registers `fd` for readiness on its first op.
    fn register(&mut self, fd: RawFd) {
        let epfd = self.epfd.as_raw_fd();
        let s = self.socket(fd);
        if !s.registered {
            s.registered = true;
            let res = epoll::add(epfd, fd, epoll::SOCKET_EVENTS, fd as u64);
            debug_assert!(res == 0 || res == -libc::EEXIST, "epoll_ctl ADD {fd}: {res}");
        }
    }

    fn start(&mut self, op: Op) {
        match op {
            Op::Accept {
                listener,
                multishot,
                peer,
                data,
                ..
            } => {
                self.listeners[listener].armed.push(Accept {
                    multishot,
                    peer,
                    data,
                });
                // Connections may already wait: the listener's edge will not come again.
                self.ready_listeners.push(listener);
            }
            Op::CancelAccepts { listener, data } => {
                for a in std::mem::take(&mut self.listeners[listener].armed) {
                    self.done.push_back((a.data, -libc::ECANCELED, false));
                }
                self.done.push_back((data, 0, false));
            }
            Op::RecvMulti { file, data } => {
                let fd = file as RawFd;
                self.register(fd);
                self.socket(fd).multi = data;
                // Bytes may already wait: their edge may have passed before this receive.
                self.ready.push(fd);
            }
            // The registration already waits for readiness: report it at once, and the
            // receive armed next waits on the same registration.
            Op::PollIn { data, .. } => self.done.push_back((data, libc::POLLIN as i32, false)),
            Op::CancelOp { file, op, data } => {
                let s = self.socket(file as RawFd);
                let res = if op != 0 && s.multi == op {
                    s.multi = 0;
                    self.done.push_back((op, -libc::ECANCELED, false));
                    0
                } else {
                    -libc::ENOENT
                };
                self.done.push_back((data, res, false));
            }
            Op::Recv { file, buf, len, data } => {
                let fd = file as RawFd;
                self.register(fd);
                // SAFETY: the loop keeps `buf[..len]` alive and untouched until completion.
                let res = unsafe { epoll::recv_raw(fd, buf, len) };
                if res == -libc::EAGAIN {
                    self.socket(fd).recv_waits = true;
                    self.waits
                        .entry(fd)
                        .or_default()
                        .push(Wait::Recv { buf, len, data });
                } else {
                    self.done.push_back((data, res, false));
                }
            }
            Op::Send { file, buf, len, data } => self.send(file as RawFd, Wait::Send { buf, len, data }),
            Op::SendMsg { file, msg, data } => self.send(file as RawFd, Wait::SendMsg { msg, data }),
            Op::Shutdown { file, data } => {
                let res = epoll::shutdown_write(file as RawFd);
                self.done.push_back((data, res, false));
            }
            Op::Cancel { file, data } => {
                let fd = file as RawFd;
                self.cancel(fd);
                self.done.push_back((data, 0, false));
            }
            Op::Close { file, data } => {
                let fd = file as RawFd;
                self.cancel(fd);
                *self.socket(fd) = Socket::default();
                // SAFETY: the loop owns the descriptor an accept gave it and closes it once,
                // with nothing of its own in flight on it (cancelled above).
                let res = unsafe { epoll::close(fd) };
                self.done.push_back((data, res, false));
            }
            Op::Bell { target, data, .. } => {
                eventfd::ring(target);
                self.done.push_back((data, 0, false));
            }
        }
    }

    /// Ends every op waiting on `fd` with `-ECANCELED` and stops watching it.
    fn cancel(&mut self, fd: RawFd) {
        let epfd = self.epfd.as_raw_fd();
        let s = self.socket(fd);
        let multi = std::mem::take(&mut s.multi);
        let registered = std::mem::take(&mut s.registered);
        s.recv_waits = false;
        s.send_waits = false;
        if multi != 0 {
            self.done.push_back((multi, -libc::ECANCELED, false));
        }
        for w in self.waits.remove(&fd).unwrap_or_default() {
            let data = match w {
                Wait::Recv { data, .. } | Wait::Send { data, .. } | Wait::SendMsg { data, .. } => data,
            };
            self.done.push_back((data, -libc::ECANCELED, false));
        }
        if registered {
            epoll::remove(epfd, fd);
        }
    }

    fn send(&mut self, fd: RawFd, w: Wait) {
        self.register(fd);
        match try_send(fd, w) {
            Some((data, res)) => self.done.push_back((data, res, false)),
            None => {
                self.socket(fd).send_waits = true;
                self.waits.entry(fd).or_default().push(w);
            }
        }
    }

    fn on_event(&mut self, lp: &mut impl Loop, key: u64, events: u32, now: Instant) {
        if key == BELL_KEY {
            eventfd::drain(self.bell.as_raw_fd());
            for &data in self.setup.bell_data {
                lp.complete(Completion::of(data, 0, false), now);
            }
            return;
        }
        if key >= LISTENER_KEY {
            return self.accept(lp, (key - LISTENER_KEY) as usize, now);
        }
        let fd = key as RawFd;
        if events & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
            self.retry_send(lp, fd, now);
        }
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
            self.read(lp, fd, now);
        }
        self.perform(lp);
    }

    /// Another turn for sockets and listeners that had more than their share.
    fn retry_ready(&mut self, lp: &mut impl Loop, now: Instant) {
        let mut listeners = std::mem::take(&mut self.ready_listeners);
        listeners.sort_unstable();
        listeners.dedup();
        for listener in listeners {
            self.accept(lp, listener, now);
        }
        let mut ready = std::mem::take(&mut self.ready);
        ready.sort_unstable();
        ready.dedup();
        for fd in ready {
            self.read(lp, fd, now);
            self.perform(lp);
        }
    }

    fn retry_send(&mut self, lp: &mut impl Loop, fd: RawFd, now: Instant) {
        if !self.socket(fd).send_waits {
            return;
        }
        let Some(waits) = self.waits.get_mut(&fd) else {
            return;
        };
        let Some(at) = waits.iter().position(|w| !matches!(w, Wait::Recv { .. })) else {
            return;
        };
        if let Some((data, res)) = try_send(fd, waits[at]) {
            waits.remove(at);
            if waits.is_empty() {
                self.waits.remove(&fd);
            }
            self.socket(fd).send_waits = false;
            lp.complete(Completion::of(data, res, false), now);
        }
    }

    fn read(&mut self, lp: &mut impl Loop, fd: RawFd, now: Instant) {
        if self.socket(fd).recv_waits {
            self.read_once(lp, fd, now);
        }
        for _ in 0..READS_PER_TURN {
            let data = self.socket(fd).multi;
            if data == 0 {
                return;
            }
            let res = epoll::recv(fd, &mut self.buf);
            if res == -libc::EAGAIN {
                return;
            }
            if res <= 0 {
                // End of input or an error ends the receive, as its final completion.
                self.socket(fd).multi = 0;
                lp.complete(Completion::of(data, res, false), now);
                return;
            }
            let buf = &mut self.buf[..res as usize];
            lp.complete(
                Completion {
                    data,
                    res,
                    more: true,
                    buf: Some(buf),
                    peer: None,
                },
                now,
            );
            // Ops the loop queued for this socket (a reply) go out before the next read.
            self.perform(lp);
        }
        self.ready.push(fd);
    }

    fn read_once(&mut self, lp: &mut impl Loop, fd: RawFd, now: Instant) {
        let Some(waits) = self.waits.get_mut(&fd) else {
            return;
        };
        let Some(at) = waits.iter().position(|w| matches!(w, Wait::Recv { .. })) else {
            return;
        };
        let Wait::Recv { buf, len, data } = waits[at] else {
            unreachable!("found a receive above");
        };
        // SAFETY: the loop keeps `buf[..len]` alive and untouched until completion.
        let res = unsafe { epoll::recv_raw(fd, buf, len) };
        if res == -libc::EAGAIN {
            return;
        }
        waits.remove(at);
        if waits.is_empty() {
            self.waits.remove(&fd);
        }
        self.socket(fd).recv_waits = false;
        lp.complete(Completion::of(data, res, false), now);
    }

    fn accept(&mut self, lp: &mut impl Loop, listener: usize, now: Instant) {
        let lfd = self.listeners[listener].fd.as_raw_fd();
        let mut taken = 0;
        while taken < ACCEPTS_PER_TURN {
            let Some(&a) = self.listeners[listener].armed.first() else {
                return;
            };
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let res = epoll::accept(lfd, &mut addr);
            if res == -libc::EAGAIN {
                return;
            }
            taken += 1;
            let more = a.multishot && res >= 0;
            if !more {
                self.listeners[listener].armed.remove(0);
            }
            if res >= 0 {
                // A new descriptor: whatever the driver knew of an earlier one by that
                // number is gone with it.
                *self.socket(res) = Socket::default();
            }
            let peer = (res >= 0 && a.peer)
                .then(|| crate::admission::address_key(&addr))
                .flatten();
            lp.complete(
                Completion {
                    data: a.data,
                    res,
                    more,
                    buf: None,
                    peer,
                },
                now,
            );
            self.perform(lp);
            if res < 0 {
                return;
            }
        }
        self.ready_listeners.push(listener);
    }
}

/// Sends what `w` names; `None` when the kernel took nothing and the send must wait.
fn try_send(fd: RawFd, w: Wait) -> Option<(u64, i32)> {
    let (data, res) = match w {
        // SAFETY: the loop keeps the bytes alive and untouched until completion.
        Wait::Send { buf, len, data } => (data, unsafe { epoll::send(fd, buf, len) }),
        // SAFETY: the loop keeps the msghdr and its iovecs alive until completion.
        Wait::SendMsg { msg, data } => (data, unsafe { epoll::sendmsg(fd, msg) }),
        Wait::Recv { .. } => unreachable!("a receive is not sent"),
    };
    (res != -libc::EAGAIN).then_some((data, res))
}

#[cfg(test)]
mod tests {
    //! The driver against real TCP sockets on loopback: readers that fall behind, so that
    //! sends wait for output room, while input arrives on the same sockets.
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{IntoRawFd, RawFd};
    use std::thread;
    use std::time::{Duration, Instant};

    use super::{Completion, Epoll, Loop, Op, Setup};

    const CONNS: usize = 24;
    const BYTES_PER_CONN: usize = 3 << 20;
    const ECHO_BYTES: usize = 4096;
    const TICK: u64 = u64::MAX;
    const RECV: u64 = 1 << 32;
    const NO_BELLS: &[u64] = &[];

    /// Byte `i` of every connection's stream.
    fn pattern(i: usize) -> u8 {
        (i.wrapping_mul(31) ^ (i >> 9)) as u8
    }

    struct Conn {
        fd: RawFd,
        sent: usize,
        /// The send in flight: its length, and whether it was gathered.
        in_flight: Option<usize>,
        sends: u64,
        received: usize,
        iov: [libc::iovec; 2],
        msg: libc::msghdr,
    }

    /// Streams `BYTES_PER_CONN` of the pattern down every connection, one send in flight
    /// each, alternating plain and gathered sends of uneven sizes, and takes the input the
    /// peers send back meanwhile.
    struct Streams {
        outbox: Vec<Op>,
        /// Never resized while the driver runs: sends point into it.
        conns: Vec<Conn>,
        data: Vec<u8>,
        deadline: Instant,
        failed: Option<String>,
    }

    impl Streams {
        fn next_send(&mut self, i: usize) {
            let c = &mut self.conns[i];
            if c.sent == BYTES_PER_CONN {
                return;
            }
            let len = (1000 + (c.sends as usize * 7919) % 60_000).min(BYTES_PER_CONN - c.sent);
            let data = (i as u64) | (c.sends << 16);
            let base = self.data[c.sent..].as_ptr();
            c.in_flight = Some(len);
            if c.sends.is_multiple_of(2) {
                self.outbox.push(Op::Send {
                    file: c.fd as u32,
                    buf: base,
                    len: len as u32,
                    data,
                });
            } else {
                let half = len / 2;
                c.iov = [
                    libc::iovec {
                        iov_base: base as *mut libc::c_void,
                        iov_len: half,
                    },
                    libc::iovec {
                        // SAFETY: `half < len` and `base[..len]` lies inside `data`.
                        iov_base: unsafe { base.add(half) } as *mut libc::c_void,
                        iov_len: len - half,
                    },
                ];
                // SAFETY: all-zero is a valid msghdr.
                c.msg = unsafe { std::mem::zeroed() };
                c.msg.msg_iov = c.iov.as_mut_ptr();
                c.msg.msg_iovlen = 2;
                self.outbox.push(Op::SendMsg {
                    file: c.fd as u32,
                    msg: &c.msg,
                    data,
                });
            }
        }
    }

    impl Loop for Streams {
        fn outbox(&mut self) -> &mut Vec<Op> {
            &mut self.outbox
        }

        fn complete(&mut self, c: Completion<'_>, now: Instant) {
            if c.data == TICK {
                if now > self.deadline {
                    self.failed.get_or_insert_with(|| "streams stalled".into());
                }
                return;
            }
            let i = (c.data & 0xffff) as usize;
            if c.data & RECV != 0 {
                let conn = &mut self.conns[i];
                match c.buf {
                    Some(buf) => conn.received += buf.len(),
                    None if conn.received < ECHO_BYTES => {
                        self.failed.get_or_insert_with(|| {
                            format!(
                                "connection {i}: receive ended with {} after {}",
                                c.res, conn.received
                            )
                        });
                    }
                    None => {}
                }
                return;
            }
            let conn = &mut self.conns[i];
            let seq = c.data >> 16;
            if conn.in_flight.is_none() || seq != conn.sends {
                self.failed
                    .get_or_insert_with(|| format!("connection {i}: completion of send {seq} unexpected"));
                return;
            }
            let len = conn.in_flight.take().unwrap_or(0);
            if c.res <= 0 || c.res as usize > len {
                self.failed
                    .get_or_insert_with(|| format!("connection {i}: send of {len} completed with {}", c.res));
                return;
            }
            conn.sent += c.res as usize;
            conn.sends += 1;
            self.next_send(i);
        }

        fn before_wait(&mut self) -> bool {
            true
        }

        fn after_wait(&mut self, _slept: bool) {}

        fn end_turn(&mut self) -> bool {
            self.failed.is_some()
                || self
                    .conns
                    .iter()
                    .all(|c| c.sent == BYTES_PER_CONN && c.in_flight.is_none() && c.received == ECHO_BYTES)
        }
    }

    /// A reader that takes the stream in small pieces with pauses, checks every byte, and
    /// sends `ECHO_BYTES` back in pieces meanwhile.
    fn slow_reader(mut s: TcpStream, seed: usize) -> Result<(), String> {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut at = 0;
        let mut buf = vec![0u8; 8192];
        let mut echoed = 0;
        let mut round = seed;
        // The engine's sockets fill before the first read: its sends must wait.
        thread::sleep(Duration::from_millis(50));
        while at < BYTES_PER_CONN {
            round += 1;
            let want = 512 + (round * 977) % buf.len().saturating_sub(512);
            let n = s
                .read(&mut buf[..want])
                .map_err(|e| format!("read at {at}: {e}"))?;
            if n == 0 {
                return Err(format!("end of stream at {at}"));
            }
            if let Some(bad) = (0..n).find(|&k| buf[k] != pattern(at + k)) {
                return Err(format!("byte {} differs", at + bad));
            }
            at += n;
            if round.is_multiple_of(64) {
                thread::sleep(Duration::from_millis(2));
            }
            if echoed < ECHO_BYTES && round.is_multiple_of(16) {
                s.write_all(&[7u8; 256]).map_err(|e| e.to_string())?;
                echoed += 256;
            }
        }
        while echoed < ECHO_BYTES {
            s.write_all(&[7u8; 256]).map_err(|e| e.to_string())?;
            echoed += 256;
        }
        Ok(())
    }

    #[test]
    fn sends_that_wait_for_output_room_complete_exactly_once_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut readers = Vec::new();
        let mut conns = Vec::new();
        for i in 0..CONNS {
            let client = TcpStream::connect(addr).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            server.set_nonblocking(true).expect("nonblocking");
            let fd = server.into_raw_fd();
            // As the engine's listeners: little unsent data per socket, so sends wait.
            let lowat: libc::c_int = 16 * 1024;
            // SAFETY: `lowat` outlives the call and its size is passed with it.
            let res = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NOTSENT_LOWAT,
                    std::ptr::from_ref(&lowat).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(res, 0, "TCP_NOTSENT_LOWAT");
            readers.push(thread::spawn(move || slow_reader(client, i * 13)));
            conns.push(Conn {
                fd,
                sent: 0,
                in_flight: None,
                sends: 0,
                received: 0,
                // SAFETY: all-zero iovecs are valid values, replaced before use.
                iov: unsafe { std::mem::zeroed() },
                // SAFETY: as above, for the msghdr.
                msg: unsafe { std::mem::zeroed() },
            });
        }
        let setup = Setup {
            tick_data: TICK,
            tick_ms: 50,
            bell_data: NO_BELLS,
            direct: false,
            files: 1024,
            sq_entries: 64,
        };
        let driver = Epoll::new(setup, Vec::new(), 2048).expect("epoll");
        let mut streams = Streams {
            outbox: Vec::new(),
            conns,
            data: (0..BYTES_PER_CONN).map(pattern).collect(),
            deadline: Instant::now() + Duration::from_secs(20),
            failed: None,
        };
        for i in 0..CONNS {
            let fd = streams.conns[i].fd;
            streams.outbox.push(Op::RecvMulti {
                file: fd as u32,
                data: RECV | i as u64,
            });
            streams.next_send(i);
        }
        driver.run(&mut streams).expect("driver");
        assert_eq!(streams.failed, None);
        for r in readers {
            r.join().expect("reader thread").expect("reader");
        }
        for c in &streams.conns {
            assert!(c.sends as usize > BYTES_PER_CONN / 60_000, "sends were split");
            // SAFETY: the test owns the descriptor and the driver is gone.
            unsafe { libc::close(c.fd) };
        }
    }
}
