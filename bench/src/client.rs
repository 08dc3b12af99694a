//! The client engine of `hold`: one io_uring per thread, every connection a direct
//! descriptor in that ring's registered file table. `RLIMIT_NOFILE` caps each ring's
//! table, not their sum (DESIGN.md §3), so a process holds `rings x per-ring`
//! connections with a handful of plain descriptors.
//!
//! A connection is opened by one linked chain of requests,
//! `SOCKET(slot) -> [SETSOCKOPT IP_BIND_ADDRESS_NO_PORT -> BIND 127.0.0.x:0] -> CONNECT -> SEND`,
//! then read by one multishot `RECV` from the ring's provided buffers, so an idle
//! connection pins no buffer of ours. What arrives is judged by the sans-IO scanners
//! ([`handshake`], [`ws`]); this module only moves bytes and counts.
//!
//! ```text
//!  Unopened --chain--> Connecting --request sent--> Reading --scan: held--> Held
//!                          |                           |                     |
//!                          +----- error, timeout, refused, closed ----------+--> Done
//! ```
//!
//! A held long-poll answers each response with the next poll (`after=<next>`), so it
//! stays held; a held WebSocket answers pings with masked pongs. Slots are never
//! reused: connection `i` of the ring lives in slot `i` for the ring's whole life.
//! Dropping a [`Client`] closes the ring, which closes every socket in its table.
//!
//! Every `unsafe` here pushes a request whose pointers (request bytes, socket addresses,
//! the option value) live in the [`Client`] until the request completes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ringcast::sys::bufring::BufRing;
use ringcast::sys::uring::{self, Cqe, RingSize};

use crate::handshake::{self, PollScan, Scan};
use crate::plan;
use crate::sys;
use crate::worker::Transport;
use crate::ws;

/// `user_data` = connection index << [`TAG_BITS`] | tag.
const TAG_BITS: u32 = 8;
const TAG_SOCKET: u64 = 1;
const TAG_SOCKOPT: u64 = 2;
const TAG_BIND: u64 = 3;
const TAG_CONNECT: u64 = 4;
const TAG_SEND: u64 = 5;
const TAG_RECV: u64 = 6;
/// Cancel and close of a connection given up on; their completions say nothing new.
const TAG_CLOSE: u64 = 7;

/// Provided receive buffers: enough for a burst of heartbeats on every held connection
/// at once to be absorbed (a drained ring ends multishot receives with `ENOBUFS`, and
/// they are re-armed).
const BUF_GROUP: u16 = 0;
const BUF_COUNT: u16 = 512;
const BUF_SIZE: u32 = 4096;
/// A chain is at most five entries; 256 chains in flight fit the queue at once.
const SQ_ENTRIES: u32 = 2048;
const CQ_ENTRIES: u32 = 16_384;
/// Latency histogram range: 1 µs to 10 minutes, 3 significant figures.
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Longest wait in the kernel while connecting; bounds how late timeouts fire.
const CONNECT_WAIT: Duration = Duration::from_millis(20);
/// Longest wait in the kernel while holding; bounds how late a stop is seen.
const HOLD_WAIT: Duration = Duration::from_millis(200);

/// What one ring opens.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Engine address.
    pub target: SocketAddrV4,
    /// `Host` header value.
    pub host: String,
    /// Request path with query.
    pub path: String,
    /// How each connection subscribes.
    pub transport: Transport,
    /// Source addresses 127.0.0.2 ..= 127.0.0.(1+N); 0 lets the kernel choose.
    pub sources: u32,
    /// Global index of this ring's first connection (picks source addresses).
    pub start_index: u64,
    /// Connections this ring opens.
    pub count: u64,
    /// Connections between chain and held at once.
    pub concurrency: usize,
    /// Bound on one connection's connect + handshake.
    pub conn_timeout: Duration,
    /// Connections opened per second, 0 for as fast as `concurrency` allows.
    pub connect_rate: f64,
    /// `wait` of a held long-poll, seconds.
    pub poll_wait_secs: u64,
}

/// Counters every ring of a process updates and its main thread reads.
#[derive(Debug, Default)]
pub struct Shared {
    /// Connections held now.
    pub held: AtomicU64,
    /// Connections failed so far.
    pub failed: AtomicU64,
    /// Set when the parent said `close` or went away.
    pub stop: AtomicBool,
}

/// The end of one ring's connect phase.
#[derive(Debug)]
pub struct Connected {
    /// Connections held.
    pub held: u64,
    /// Failed connections by kind.
    pub failures: BTreeMap<String, u64>,
    /// Connect + handshake latency of held connections, microseconds.
    pub latency_us: Histogram<u64>,
}

/// What a ring saw while holding.
#[derive(Debug, Default, Clone, Copy)]
pub struct Holding {
    /// Held connections the server closed.
    pub dropped: u64,
    /// Long-polls answered and re-issued.
    pub repolls: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The chain is in flight.
    Connecting,
    /// The request is out; the answer so far is in `buf`.
    Reading,
    /// Subscribed; kept open.
    Held,
    /// Failed or closed; later completions are ignored.
    Done,
}

struct Conn {
    state: State,
    started: Instant,
    /// `Sec-WebSocket-Key` (WebSocket only).
    key: [u8; ws::KEY_LEN],
    /// Bytes received and not consumed: a response head, a partial frame, a poll answer.
    buf: Vec<u8>,
    /// Bytes being sent; the kernel reads them until the send completes.
    out: Vec<u8>,
    /// Offset of the unsent part of `out`.
    out_at: usize,
    /// Bytes to send once `out` is done.
    queued: Vec<u8>,
}

impl Conn {
    fn sending(&self) -> bool {
        !self.out.is_empty()
    }
}

/// Addresses and option values the kernel reads at issue time; boxed so they stay put.
struct Fixed {
    target: libc::sockaddr_in,
    sources: Vec<libc::sockaddr_in>,
    one: libc::c_int,
}

/// One ring and the connections in its table.
pub struct Client {
    // Field order is drop order: the ring closes (with every socket) before the buffers
    // it was given are unmapped.
    ring: IoUring,
    bufs: BufRing,
    fixed: Box<Fixed>,
    setup: Setup,
    conns: Vec<Conn>,
    /// The subscription request (the first poll for `poll`); a WebSocket's is per key.
    request: Vec<u8>,
    in_flight: usize,
    /// Every connection below this index is finished connecting.
    low: usize,
    held: u64,
    failures: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
    mask: [u8; 4],
    batch: Vec<Cqe>,
    scratch: Vec<u8>,
    holding: Holding,
}

impl Client {
    /// Sets up a ring with a sparse file table of `setup.count` slots.
    ///
    /// # Errors
    /// The io_uring setup or registration failure, with what to do about it.
    pub fn new(setup: Setup) -> Result<Client, String> {
        let ring = uring::build_ring(RingSize {
            sq_entries: SQ_ENTRIES,
            cq_entries: CQ_ENTRIES,
        })
        .map_err(|e| e.to_string())?;
        let slots = u32::try_from(setup.count.max(1)).map_err(|_| "too many connections for one ring")?;
        ring.submitter().register_files_sparse(slots).map_err(|e| {
            format!("registering a file table of {slots} slots: {e}; lower --per-ring below RLIMIT_NOFILE")
        })?;
        let bufs = BufRing::new(&ring.submitter(), BUF_GROUP, BUF_COUNT, BUF_SIZE)
            .map_err(|e| format!("registering the receive buffer ring: {e}"))?;
        let sources = (0..setup.sources)
            .map(|i| {
                sockaddr(SocketAddrV4::new(
                    plan::source_for(u64::from(i), setup.sources).unwrap_or(Ipv4Addr::LOCALHOST),
                    0,
                ))
            })
            .collect();
        let fixed = Box::new(Fixed {
            target: sockaddr(setup.target),
            sources,
            one: 1,
        });
        let accept = match setup.transport {
            Transport::Sse => "text/event-stream",
            Transport::Ndjson => "application/x-ndjson",
            Transport::Poll | Transport::Ws => "application/json",
        };
        let path = match setup.transport {
            Transport::Poll => with_query(&setup.path, "wait=0"),
            _ => setup.path.clone(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {accept}\r\n\r\n",
            setup.host
        )
        .into_bytes();
        let mut mask = [0u8; 4];
        sys::random_bytes(&mut mask).map_err(|e| format!("getrandom: {e}"))?;
        Ok(Client {
            ring,
            bufs,
            fixed,
            conns: Vec::with_capacity(setup.count as usize),
            setup,
            request,
            in_flight: 0,
            low: 0,
            held: 0,
            failures: BTreeMap::new(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .map_err(|e| format!("histogram: {e}"))?,
            mask,
            batch: Vec::with_capacity(CQ_ENTRIES as usize),
            scratch: Vec::with_capacity(BUF_SIZE as usize),
            holding: Holding::default(),
        })
    }

    /// Opens every connection and drives each to held or failed, until every one is
    /// finished, `deadline` passes or `shared.stop` is set.
    pub fn connect_phase(&mut self, shared: &Shared, deadline: Instant) -> Connected {
        let started = Instant::now();
        loop {
            self.open_more(shared, started);
            let all_opened = self.conns.len() as u64 == self.setup.count;
            if all_opened && self.in_flight == 0 {
                break;
            }
            let now = Instant::now();
            if now >= deadline || shared.stop.load(Ordering::Relaxed) {
                self.expire(shared, now, true);
                break;
            }
            if let Err(e) = self.turn(shared, CONNECT_WAIT) {
                eprintln!("hold-worker: io_uring_enter: {e}");
                self.expire(shared, now, true);
                break;
            }
            self.expire(shared, Instant::now(), false);
        }
        let unopened = self.setup.count - self.conns.len() as u64;
        if unopened > 0 {
            *self.failures.entry("timeout/not-opened".to_owned()).or_insert(0) += unopened;
            shared.failed.fetch_add(unopened, Ordering::Relaxed);
        }
        Connected {
            held: self.held,
            failures: self.failures.clone(),
            latency_us: self.latency_us.clone(),
        }
    }

    /// Keeps the held connections (reading, answering pings and polls) until
    /// `shared.stop` is set or `deadline` passes.
    pub fn hold_phase(&mut self, shared: &Shared, deadline: Instant) -> Holding {
        while Instant::now() < deadline && !shared.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.turn(shared, HOLD_WAIT) {
                eprintln!("hold-worker: io_uring_enter: {e}");
                break;
            }
        }
        self.holding
    }

    /// Submits what is queued, waits up to `wait` for a completion, handles them all.
    fn turn(&mut self, shared: &Shared, wait: Duration) -> std::io::Result<()> {
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => return Err(e),
        }
        while uring::take_completions(&mut self.ring, &mut self.batch) {
            let batch = std::mem::take(&mut self.batch);
            for &(user_data, res, flags) in &batch {
                self.complete(shared, user_data, res, flags);
            }
            self.batch = batch;
        }
        Ok(())
    }

    fn open_more(&mut self, shared: &Shared, started: Instant) {
        let allowed = if self.setup.connect_rate > 0.0 {
            (started.elapsed().as_secs_f64() * self.setup.connect_rate) as u64 + 1
        } else {
            u64::MAX
        };
        while self.in_flight < self.setup.concurrency
            && (self.conns.len() as u64) < self.setup.count
            && (self.conns.len() as u64) < allowed
        {
            let index = self.conns.len();
            let mut key = [0u8; ws::KEY_LEN];
            if self.setup.transport == Transport::Ws {
                let mut nonce = [0u8; 16];
                if let Err(e) = sys::random_bytes(&mut nonce) {
                    self.conns.push(Conn::new(State::Done, key, Vec::new()));
                    self.count_failure(shared, format!("getrandom/{}", errno_of(&e)));
                    continue;
                }
                key = ws::key_from(nonce);
            }
            let request = match self.setup.transport {
                Transport::Ws => ws::upgrade_request(&self.setup.path, &self.setup.host, &key),
                _ => self.request.clone(),
            };
            self.conns.push(Conn::new(State::Connecting, key, request));
            self.in_flight += 1;
            self.push_chain(index);
        }
    }

    /// Queues the linked chain that opens connection `index` and sends its request.
    fn push_chain(&mut self, index: usize) {
        let slot = index as u32;
        let global = self.setup.start_index + index as u64;
        let fixed = types::Fixed(slot);
        let linked = squeue::Flags::IO_LINK;
        let mut chain: Vec<squeue::Entry> = Vec::with_capacity(5);
        let destination = types::DestinationSlot::try_from_slot_target(slot)
            .expect("slot indices are below the table size, which fits the kernel's range");
        chain.push(
            // No SOCK_CLOEXEC: a direct descriptor has no fd to inherit, and the kernel
            // refuses the flag with a file slot (EINVAL).
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(destination))
                .build()
                .flags(linked)
                .user_data(tag(index, TAG_SOCKET)),
        );
        if self.setup.sources > 0 {
            let source = (global % u64::from(self.setup.sources)) as usize;
            chain.push(
                opcode::SetSockOpt::new(
                    fixed,
                    libc::IPPROTO_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    std::ptr::addr_of!(self.fixed.one).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
                .build()
                .flags(linked)
                .user_data(tag(index, TAG_SOCKOPT)),
            );
            chain.push(
                opcode::Bind::new(
                    fixed,
                    std::ptr::addr_of!(self.fixed.sources[source]).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
                .build()
                .flags(linked)
                .user_data(tag(index, TAG_BIND)),
            );
        }
        chain.push(
            opcode::Connect::new(
                fixed,
                std::ptr::addr_of!(self.fixed.target).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
            .build()
            .flags(linked)
            .user_data(tag(index, TAG_CONNECT)),
        );
        chain.push(self.send_entry(index));
        for entry in &chain {
            // SAFETY: the addresses and the option value live in `self.fixed` (boxed, kept
            // for the ring's life); the request bytes live in `conns[index].out`, which is
            // neither touched nor freed until the send's completion.
            unsafe { uring::push(&mut self.ring, entry) };
        }
    }

    /// A send of the unsent part of connection `index`'s `out`.
    fn send_entry(&self, index: usize) -> squeue::Entry {
        let conn = &self.conns[index];
        let rest = &conn.out[conn.out_at..];
        opcode::Send::new(types::Fixed(index as u32), rest.as_ptr(), rest.len() as u32)
            .build()
            .user_data(tag(index, TAG_SEND))
    }

    fn push_send(&mut self, index: usize) {
        let entry = self.send_entry(index);
        // SAFETY: the bytes live in `conns[index].out`, untouched until the completion.
        unsafe { uring::push(&mut self.ring, &entry) };
    }

    fn push_recv(&mut self, index: usize) {
        let entry = opcode::RecvMulti::new(types::Fixed(index as u32), self.bufs.group())
            .build()
            .user_data(tag(index, TAG_RECV));
        // SAFETY: the receive writes only into provided buffers, which `self.bufs` owns.
        unsafe { uring::push(&mut self.ring, &entry) };
    }

    /// Queues bytes for connection `index`, after whatever is being sent.
    fn send(&mut self, index: usize, bytes: &[u8]) {
        let conn = &mut self.conns[index];
        if conn.sending() {
            conn.queued.extend_from_slice(bytes);
            return;
        }
        conn.out.extend_from_slice(bytes);
        conn.out_at = 0;
        self.push_send(index);
    }

    fn complete(&mut self, shared: &Shared, user_data: u64, res: i32, flags: u32) {
        let index = (user_data >> TAG_BITS) as usize;
        match user_data & ((1 << TAG_BITS) - 1) {
            TAG_RECV => self.on_recv(shared, index, res, flags),
            TAG_SEND => self.on_sent(shared, index, res),
            TAG_CLOSE => {}
            step => {
                if res < 0
                    && self
                        .conns
                        .get(index)
                        .is_some_and(|c| c.state == State::Connecting)
                {
                    let name = match step {
                        TAG_SOCKET => "socket",
                        TAG_SOCKOPT => "setsockopt",
                        TAG_BIND => "bind",
                        _ => "connect",
                    };
                    self.fail(shared, index, format!("{name}/{}", sys::errno_name(-res)));
                }
            }
        }
    }

    fn on_sent(&mut self, shared: &Shared, index: usize, res: i32) {
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        if conn.state == State::Done {
            return;
        }
        if res < 0 {
            let phase = if conn.state == State::Held {
                "send-held"
            } else {
                "send"
            };
            return self.lose(shared, index, format!("{phase}/{}", sys::errno_name(-res)));
        }
        conn.out_at += res as usize;
        if conn.out_at < conn.out.len() {
            return self.push_send(index);
        }
        conn.out.clear();
        conn.out_at = 0;
        let first = conn.state == State::Connecting;
        if first {
            conn.state = State::Reading;
            // The request is out: free its bytes rather than keep them per idle connection.
            conn.out = Vec::new();
            self.push_recv(index);
        }
        let conn = &mut self.conns[index];
        if !conn.queued.is_empty() {
            std::mem::swap(&mut conn.out, &mut conn.queued);
            self.push_send(index);
        }
    }

    fn on_recv(&mut self, shared: &Shared, index: usize, res: i32, flags: u32) {
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        if res > 0 {
            let bid = cqueue::buffer_select(flags).expect("a multishot receive names its buffer");
            data.extend_from_slice(self.bufs.get(bid, res as usize));
            self.bufs.recycle(bid);
        }
        let alive = self
            .conns
            .get(index)
            .is_some_and(|c| matches!(c.state, State::Reading | State::Held));
        if alive && !data.is_empty() {
            self.on_data(shared, index, &data);
        }
        self.scratch = data;
        let alive = self.conns[index].state != State::Done;
        if !alive || cqueue::more(flags) {
            return;
        }
        match res {
            // The multishot receive ended without an error (the buffer ring ran dry, or the
            // kernel ended it): arm another.
            r if r > 0 || r == -libc::ENOBUFS => self.push_recv(index),
            0 => self.lose(shared, index, "closed".to_owned()),
            r => self.lose(shared, index, format!("recv/{}", sys::errno_name(-r))),
        }
    }

    fn on_data(&mut self, shared: &Shared, index: usize, data: &[u8]) {
        let transport = self.setup.transport;
        let conn = &mut self.conns[index];
        if conn.state == State::Held && matches!(transport, Transport::Sse | Transport::Ndjson) {
            // Heartbeats and events on an idle subscription: read and dropped.
            return;
        }
        conn.buf.extend_from_slice(data);
        if conn.state == State::Reading {
            let scan = match transport {
                Transport::Sse => handshake::scan(&conn.buf),
                Transport::Ndjson => handshake::scan_ndjson(&conn.buf),
                Transport::Ws => ws::scan(&conn.buf, &ws::accept_for(&conn.key)),
                Transport::Poll => match handshake::scan_poll(&conn.buf) {
                    PollScan::Partial => Scan::Partial,
                    PollScan::Refused(r) => Scan::Refused(r),
                    PollScan::Complete { .. } => Scan::Held,
                },
            };
            match scan {
                Scan::Partial => return,
                Scan::Refused(refusal) => return self.fail(shared, index, refusal.kind()),
                Scan::Held => self.mark_held(shared, index),
            }
        }
        match transport {
            Transport::Ws => self.on_frames(shared, index),
            Transport::Poll => self.on_poll_answers(shared, index),
            Transport::Sse | Transport::Ndjson => {}
        }
    }

    fn mark_held(&mut self, shared: &Shared, index: usize) {
        let transport = self.setup.transport;
        let conn = &mut self.conns[index];
        let us = conn.started.elapsed().as_micros() as u64;
        match transport {
            // Frames that came with the 101 (a ping, replayed events) stay as held input.
            Transport::Ws => match conn.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(at) => {
                    conn.buf.drain(..at + 4);
                }
                None => conn.buf.clear(),
            },
            // The first answer stays in `buf` for `on_poll_answers` to issue the next poll.
            Transport::Poll => {}
            Transport::Sse | Transport::Ndjson => conn.buf = Vec::new(),
        }
        conn.state = State::Held;
        self.latency_us.saturating_record(us.clamp(1, LATENCY_US_MAX));
        self.held += 1;
        self.in_flight -= 1;
        shared.held.fetch_add(1, Ordering::Relaxed);
    }

    /// Consumes the frames a held WebSocket received, answering pings.
    fn on_frames(&mut self, shared: &Shared, index: usize) {
        let mask = self.mask;
        match ws::on_held_input(&mut self.conns[index].buf, mask) {
            Ok(held) if held.closed => self.lose(shared, index, "ws/closed".to_owned()),
            Ok(held) => {
                if !held.pongs.is_empty() {
                    self.send(index, &held.pongs);
                }
                self.shrink_idle(index);
            }
            Err(e) => self.lose(shared, index, e.kind().to_owned()),
        }
    }

    /// Answers every whole poll response in a held long-poll's input with the next poll.
    fn on_poll_answers(&mut self, shared: &Shared, index: usize) {
        loop {
            match handshake::scan_poll(&self.conns[index].buf) {
                PollScan::Partial => break,
                PollScan::Refused(r) => return self.lose(shared, index, format!("poll/{}", r.kind())),
                PollScan::Complete { next, consumed } => {
                    self.conns[index].buf.drain(..consumed);
                    let query = format!("after={next}&wait={}", self.setup.poll_wait_secs);
                    let request = format!(
                        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\r\n",
                        with_query(&self.setup.path, &query),
                        self.setup.host
                    );
                    self.send(index, request.as_bytes());
                    self.holding.repolls += 1;
                }
            }
        }
        self.shrink_idle(index);
    }

    /// Frees the input buffer of a held connection with nothing pending.
    fn shrink_idle(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if conn.buf.is_empty() {
            conn.buf = Vec::new();
        }
    }

    /// A held connection ended: counted as dropped, no longer held.
    fn lose(&mut self, shared: &Shared, index: usize, kind: String) {
        if self.conns[index].state == State::Held {
            self.held -= 1;
            self.holding.dropped += 1;
            shared.held.fetch_sub(1, Ordering::Relaxed);
            self.close(index);
            self.count_failure(shared, format!("dropped/{kind}"));
        } else {
            self.fail(shared, index, kind);
        }
    }

    /// Gives up on a connection that was not held yet.
    fn fail(&mut self, shared: &Shared, index: usize, kind: String) {
        if matches!(self.conns[index].state, State::Connecting | State::Reading) {
            self.in_flight -= 1;
        }
        self.close(index);
        self.count_failure(shared, kind);
    }

    /// Cancels what is in flight on the connection's slot, then closes the slot.
    fn close(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        conn.state = State::Done;
        conn.buf = Vec::new();
        conn.queued = Vec::new();
        let slot = types::Fixed(index as u32);
        let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::fd(slot).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(tag(index, TAG_CLOSE));
        let close = opcode::Close::new(slot).build().user_data(tag(index, TAG_CLOSE));
        // SAFETY: neither request points at memory of ours. A send still in flight keeps
        // reading `out`, which stays allocated (never freed while `Done`).
        unsafe {
            uring::push(&mut self.ring, &cancel);
            uring::push(&mut self.ring, &close);
        }
    }

    fn count_failure(&mut self, shared: &Shared, kind: String) {
        *self.failures.entry(kind).or_insert(0) += 1;
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Fails connections still connecting after the per-connection bound, or all of
    /// them when `all` (the phase is over).
    fn expire(&mut self, shared: &Shared, now: Instant, all: bool) {
        while self.low < self.conns.len() && !self.conns[self.low].in_flight() {
            self.low += 1;
        }
        for index in self.low..self.conns.len() {
            let conn = &self.conns[index];
            if !conn.in_flight() || (!all && now.duration_since(conn.started) < self.setup.conn_timeout) {
                continue;
            }
            let kind = match conn.state {
                State::Connecting => "timeout/connect",
                _ if conn.buf.is_empty() => "timeout/no-response",
                _ => "timeout/response",
            };
            self.fail(shared, index, kind.to_owned());
        }
    }
}

impl Conn {
    fn new(state: State, key: [u8; ws::KEY_LEN], out: Vec<u8>) -> Conn {
        Conn {
            state,
            started: Instant::now(),
            key,
            buf: Vec::new(),
            out,
            out_at: 0,
            queued: Vec::new(),
        }
    }

    fn in_flight(&self) -> bool {
        matches!(self.state, State::Connecting | State::Reading)
    }
}

fn tag(index: usize, tag: u64) -> u64 {
    ((index as u64) << TAG_BITS) | tag
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn errno_of(e: &std::io::Error) -> String {
    sys::errno_name(e.raw_os_error().unwrap_or(0))
}

/// `path` with `param` appended to its query.
pub fn with_query(path: &str, param: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{param}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips_index_and_tag() {
        for index in [0usize, 1, 19_999, 1 << 20] {
            for t in [TAG_SOCKET, TAG_RECV, TAG_CLOSE] {
                let ud = tag(index, t);
                assert_eq!((ud >> TAG_BITS) as usize, index);
                assert_eq!(ud & ((1 << TAG_BITS) - 1), t);
            }
        }
    }

    #[test]
    fn queries_are_appended() {
        assert_eq!(with_query("/poll?topic=a", "wait=0"), "/poll?topic=a&wait=0");
        assert_eq!(with_query("/poll", "wait=0"), "/poll?wait=0");
    }

    #[test]
    fn socket_addresses_are_in_network_order() {
        let a = sockaddr(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 8080));
        assert_eq!(a.sin_port, 8080u16.to_be());
        assert_eq!(a.sin_addr.s_addr.to_ne_bytes(), [127, 0, 0, 2]);
    }
}
