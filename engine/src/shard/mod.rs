//! One event loop per core, as a sans-IO state machine: the connection core.
//!
//! A shard owns the slab of its connections, their subscriptions, timers, out-queues and
//! every per-connection side table. It performs no I/O: it queues [`Op`]s (accept,
//! receive, send, shut down, cancel, close, ring a doorbell) in its outbox and is handed
//! their [`Completion`]s with the caller's `now`, by a driver (see [`crate::driver`]) that
//! owns the ring or the epoll, the listeners and the receive buffers. Between turns it
//! drains the broadcast ring and queues each event's shared bytes on every local
//! subscriber.
//!
//! It never sleeps while the broadcast ring holds something it has not read (see
//! [`Broadcast::park`]).
mod accept;
mod admission;
mod auth;
mod backpressure;
mod catchup;
mod drain;
mod poll;
#[cfg(test)]
mod sim;
mod subs;
mod timers;
mod websocket;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::conn::{flags, ops, Conn, OutQueue, State};
use crate::driver::{Completion, Op};
use crate::engine::{Counters, Shared};
use crate::event::Event;
use crate::proto::http::{self, Method, Request};
use crate::proto::Kind;
use crate::proto::{json, sse, ws};
use crate::ring::broadcast::{Broadcast, Read};
use subs::Subscriptions;
use timers::{Deadlines, Static};

use crate::time::{Clock, Wheel};

/// The loop's `user_data` tags and their packing ([`crate::driver::tag`]).
pub use crate::driver::tag::shard as tag;
use crate::driver::tag::{pack, unpack};

/// The `user_data` every doorbell carries.
pub const DOORBELL_DATA: u64 = pack(tag::DOORBELL, 0, 0);

/// The `user_data` of the loop's ticks.
pub const TICK_DATA: u64 = pack(tag::TICK, 0, 0);

/// The loop's clock: one tick per `TICK_MS`.
pub const TICK_MS: u64 = 100;
/// At most this many events, or this many payload bytes, are fanned out per loop turn
/// (see `drain_broadcast`): a turn's events fit in one gathered send per client.
const DRAIN_BATCH_EVENTS: usize = crate::conn::outq::IOV_MAX;
const DRAIN_BATCH_BYTES: usize = 64 << 10;
/// Slots of the connection timer wheel: 4096 ticks of 100 ms, a turn of about 7 minutes.
const WHEEL_SLOTS: usize = 4096;
/// A loop at its connection limit reports it at most this often (10 s).
const FULL_LOG_TICKS: u32 = 100;
/// Queues kept for reuse, so a burst of sends does not allocate per connection.
const OUT_QUEUE_POOL_MAX: usize = 1024;
/// Submission queue entries of an io_uring driver; the completion queue is eight times
/// larger.
pub const SQ_ENTRIES: u32 = 4096;
/// Bytes of a request staged across reads: the head limit plus one read.
const STAGING_MAX: usize = http::HEAD_MAX + 4096;

/// One event loop.
pub struct Shard {
    /// Ops queued for the driver (see [`crate::driver::Loop`]).
    ops: Vec<Op>,
    /// The ring this loop reads events from (`None` only while a turn borrows it).
    broadcast: Option<Arc<Broadcast<Event>>>,
    acceptors: Vec<accept::Acceptor>,
    /// Accepting stopped on a full table; the tick resumes it once a slot is free.
    accept_paused: bool,
    /// When a full table was last reported, so a loop at its limit logs at most every
    /// `FULL_LOG_TICKS`.
    full_logged_at: u32,
    /// The current pause was reported, so its end is reported too.
    pause_reported: bool,
    conns: Slab<Conn>,
    subs: Subscriptions,
    /// Out-queues are boxed so their `msghdr` keeps its address while a send is in
    /// flight; the pool keeps those boxes for the next connection that needs one.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<OutQueue>>,
    /// One timer per connection, keyed by slab index (see `timers`).
    wheel: Wheel,
    deadlines: Deadlines,
    clock: Clock,
    /// Scratch list of timers due this tick.
    due: Vec<u32>,
    /// WebSocket decoders holding a partial frame or message, by slab index. An idle
    /// WebSocket has none: its record stays 40 bytes.
    decoders: HashMap<u32, Box<ws::Decoder>>,
    /// Bytes queued on this loop's connections, all out-queues together (a gauge
    /// published each tick).
    queued: i64,
    /// The most `queued` has been since memory was last handed back to the OS.
    queued_peak: i64,
    /// Client messages were queued for the ingest thread this turn: ring it.
    upstream_waiting: bool,
    /// CORS header lines of held long-polls, when `--cors-origin` is configured.
    poll_cors: HashMap<u32, String>,
    /// Connections catching up from the history or the stream, by slab index (see
    /// `catchup`).
    catchup: HashMap<u32, catchup::CatchUp>,
    /// Catching-up connections waiting for this loop's cursor to pass their id.
    waiting: Vec<u32>,
    /// The ids of resuming clients that will be told of a reset once the stream answers.
    reset_ids: HashMap<u32, Vec<u8>>,
    /// The topics of polls held until the stream answers (they subscribe to nothing).
    poll_topics: HashMap<u32, Vec<Box<str>>>,
    /// With per-address admission limits: each connection's address key, by slab index
    /// (zero-filled pages, resident only where connections have been).
    peer_keys: Option<Vec<u64>>,
    /// Why each refused connection was refused, until it is answered and freed.
    refusals: HashMap<u32, crate::admission::Refusal>,
    /// Per WebSocket that sent messages lately: its message-rate bucket (see `admission`).
    ws_buckets: HashMap<u32, admission::Bucket>,
    /// With subscriber auth: the `sub` of each WebSocket whose token allows upstream
    /// messages, which name their sender by it.
    ws_subs: HashMap<u32, std::sync::Arc<str>>,
    /// xorshift state for the `retry:` jitter of shed streams.
    rng: u64,
    /// With `--auth-jwks`: what each admitted connection keeps of its token.
    sessions: auth::Sessions,
    /// Events refilled from the history after a broadcast-ring overrun, not yet delivered.
    refill: std::collections::VecDeque<Arc<Event>>,
    /// Events read from the ring (or the refill) in one turn, delivered as runs per topic;
    /// kept to reuse its allocation.
    batch: Vec<Arc<Event>>,
    id: usize,
    /// The next broadcast ring position this loop will read.
    next_seq: u64,
    /// The sequence number of the newest event read from the ring. Ring positions and
    /// event sequence numbers are the same on a single node; in a cluster events carry
    /// their stream sequence.
    ring_seq: u64,
    /// The loop was lapped on the ring after the event with this sequence number: the
    /// next event read tells how much to refill from the history.
    lost_after: Option<u64>,
    tick: u32,
    /// The time the driver handed in with the latest completion: the loop reads no clock.
    now: Instant,
    generation: u32,
    max_conns: usize,
    /// Connections with a send in flight; every queue is empty when this is zero.
    sending: usize,
    /// Set once the ingest thread has stopped: the loop drains its connections and exits.
    drain: Option<drain::Drain>,
    /// The ingest thread has stopped: no accept is re-armed, and the loop drains.
    shutting_down: bool,
    stream_head: Bytes,
    stream_head_http10: Bytes,
    ndjson_head: Bytes,
    head_only: Bytes,
    ndjson_head_only: Bytes,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
}

/// The listeners of one loop: one `SO_REUSEPORT` socket per listen address.
///
/// # Errors
/// A message naming the address and what to do.
pub fn listeners(cfg: &crate::config::Config) -> Result<Vec<std::os::fd::OwnedFd>, String> {
    cfg.listen
        .iter()
        .map(|addr| {
            crate::sys::socket::tcp_listener(*addr, 4096, cfg.tcp_user_timeout_ms, cfg.tcp_notsent_lowat)
                .map_err(|e| {
                    format!("cannot listen on {addr}: {e}; is another program using it? pass --listen ADDR")
                })
        })
        .collect()
}

impl Shard {
    /// A loop of at most `max_conns` connections accepting on `listeners` listeners of
    /// its driver; its clock starts at `now`.
    pub fn new(id: usize, max_conns: u32, listeners: usize, shared: Arc<Shared>, now: Instant) -> Shard {
        let mut shard = Shard::idle(id, max_conns, listeners, shared, now);
        shard.arm_accepts();
        shard
    }

    fn idle(id: usize, max_conns: u32, listeners: usize, shared: Arc<Shared>, now: Instant) -> Shard {
        let cfg = &shared.config;
        let retry = cfg.retry_ms;
        let clock = Clock::new(now, std::time::Duration::from_millis(TICK_MS));
        let by_address = shared.admission.as_ref().is_some_and(|a| a.limits().by_address());
        Shard {
            ops: Vec::with_capacity(256),
            broadcast: Some(Arc::clone(&shared.broadcast)),
            acceptors: (0..listeners)
                .map(|_| accept::Acceptor::new(by_address))
                .collect(),
            accept_paused: false,
            full_logged_at: u32::MAX - FULL_LOG_TICKS,
            pause_reported: false,
            // Reserved, not touched: pages become resident only as connections arrive, and
            // the slab never moves its records by growing.
            conns: Slab::with_capacity(max_conns as usize),
            subs: Subscriptions::with_capacity(max_conns as usize),
            pool: Vec::new(),
            wheel: Wheel::with_capacity(WHEEL_SLOTS, 0, max_conns as usize),
            deadlines: Deadlines::new(cfg, &clock),
            clock,
            due: Vec::new(),
            decoders: HashMap::new(),
            queued: 0,
            queued_peak: 0,
            upstream_waiting: false,
            poll_cors: HashMap::new(),
            catchup: HashMap::new(),
            waiting: Vec::new(),
            reset_ids: HashMap::new(),
            poll_topics: HashMap::new(),
            peer_keys: by_address.then(|| vec![0; max_conns as usize]),
            refusals: HashMap::new(),
            ws_buckets: HashMap::new(),
            ws_subs: HashMap::new(),
            rng: 0x2545_f491_4f6c_dd1d ^ ((id as u64 + 1) << 17),
            sessions: auth::Sessions::default(),
            refill: std::collections::VecDeque::new(),
            batch: Vec::with_capacity(DRAIN_BATCH_EVENTS),
            id,
            next_seq: shared.broadcast.head(),
            ring_seq: shared.start_seq,
            lost_after: None,
            tick: 0,
            now,
            generation: 0,
            max_conns: max_conns as usize,
            sending: 0,
            drain: None,
            shutting_down: false,
            stream_head: stream_head(true, retry, id),
            stream_head_http10: stream_head(false, retry, id),
            ndjson_head: ndjson_head(id),
            head_only: Bytes::from_static(SSE_HEADERS_HEAD),
            ndjson_head_only: Bytes::from_static(NDJSON_HEADERS_HEAD),
            counters: Arc::clone(&shared.counters[id]),
            shared,
        }
    }

    /// The driver's setup for this loop: direct descriptors in a table of `max_conns`.
    pub fn setup(max_conns: u32) -> crate::driver::Setup {
        crate::driver::Setup {
            tick_data: TICK_DATA,
            tick_ms: TICK_MS,
            bell_data: &[DOORBELL_DATA],
            direct: true,
            files: max_conns,
            sq_entries: SQ_ENTRIES,
        }
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is held.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Takes the ops queued since the last call (for a driver, or a test).
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// During shutdown, once the ingest thread has stopped: delivers what the ring still
    /// holds, then drains the connections (see `drain`); true when the loop may exit.
    fn flushed(&mut self, broadcast: &Broadcast<Event>) -> bool {
        if !self.shutting_down {
            return false;
        }
        self.drain_broadcast(broadcast);
        if !self.refill.is_empty() || self.next_seq < broadcast.head() {
            return false;
        }
        self.drain_step()
    }

    /// Queues one op for the driver.
    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    fn dispatch(&mut self, c: Completion<'_>, now: Instant) {
        self.now = now;
        let (tag, generation, index) = unpack(c.data);
        match tag {
            tag::ACCEPT => self.on_accept(index as usize, generation as usize, c.res, c.more, c.peer),
            tag::RECV => self.on_recv(index, generation, c.res, c.more, c.buf),
            tag::SEND => self.on_send(index, generation, c.res),
            tag::CLOSE => self.op_done(index, generation, ops::CLOSE),
            tag::CANCEL => self.op_done(index, generation, ops::CANCEL),
            tag::SHUTDOWN => self.op_done(index, generation, ops::SHUTDOWN),
            tag::TICK => self.on_tick(now),
            tag::DOORBELL => {}
            _ => debug_assert!(false, "unknown completion tag {tag} (user_data {:#x})", c.data),
        }
    }

    fn arm_recv(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        conn.ops |= ops::RECV;
        let op = Op::RecvMulti {
            file: conn.file,
            data: pack(tag::RECV, conn.generation, index),
        };
        self.push(op);
    }

    fn on_tick(&mut self, now: Instant) {
        self.tick = self.clock.ticks(now);
        debug_assert!(self.queued >= 0, "queued bytes went negative: {}", self.queued);
        self.counters
            .queued_bytes
            .store(self.queued.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        self.release_memory();
        if self.tick.is_multiple_of(10) && !self.ws_buckets.is_empty() {
            self.prune_ws_buckets();
        }
        if !self.shutting_down
            && self
                .shared
                .ingest_stopped
                .load(std::sync::atomic::Ordering::Acquire)
        {
            self.shutting_down = true;
        }
        if self.conns.len() < self.max_conns && !self.shutting_down {
            self.accept_paused = false;
            if std::mem::take(&mut self.pause_reported) {
                eprintln!(
                    "ringcast: loop {}: accepting again ({} held)",
                    self.id,
                    self.conns.len()
                );
            }
            self.arm_accepts();
        }
        self.run_timers();
    }

    /// Once the loop's backlog has shrunk to a quarter of a peak of a megabyte or more,
    /// hands the freed memory back to the OS: a burst or a flood must not stay resident.
    /// Checked each tick, so it runs at most once per drained peak.
    fn release_memory(&mut self) {
        const PEAK_MIN: i64 = 1 << 20;
        self.queued_peak = self.queued_peak.max(self.queued);
        if self.queued_peak >= PEAK_MIN && self.queued <= self.queued_peak / 4 {
            crate::sys::alloc::release_free_memory();
            self.queued_peak = self.queued;
        }
    }

    // ----- receiving and requests --------------------------------------------------------

    fn live(&self, index: u32, generation: u32) -> bool {
        self.conns
            .get(index as usize)
            .is_some_and(|c| c.generation == generation)
    }

    fn on_recv(&mut self, index: u32, generation: u32, res: i32, more: bool, buf: Option<&mut [u8]>) {
        if !self.live(index, generation) {
            return;
        }
        if !more {
            self.conns[index as usize].ops &= !ops::RECV;
        }
        if res > 0 {
            let data = buf.expect("a receive of bytes lends them");
            self.on_input(index, data);
        } else if res == -libc::ENOBUFS {
            // Every buffer was in use for a moment; the receive ended and is re-armed below.
            bump(&self.counters.recv_enobufs);
        } else {
            // EOF or a socket error: the peer is gone.
            if res == -libc::ETIMEDOUT {
                bump(&self.counters.tcp_timeouts);
            }
            self.close(index);
        }
        if !more {
            self.rearm_or_finish(index);
        }
    }

    fn rearm_or_finish(&mut self, index: u32) {
        match self.conns.get(index as usize).map(|c| c.state) {
            Some(State::Closing) => self.maybe_free(index),
            Some(_) => self.arm_recv(index),
            None => {}
        }
    }

    fn on_input(&mut self, index: u32, data: &mut [u8]) {
        match self.conns[index as usize].state {
            State::Request => self.on_http_input(index, data),
            State::Ws => self.on_ws_input(index, data),
            // Streams and closing connections have nothing more to say to us.
            _ => {}
        }
    }

    fn on_http_input(&mut self, index: u32, data: &mut [u8]) {
        let tick = self.tick;
        let conn = &mut self.conns[index as usize];
        let new_request = conn.staging.is_none() && conn.has_flag(flags::SERVED);
        if new_request {
            // The first bytes of the next request: its head deadline starts now.
            conn.mark = tick;
        }
        conn.last_io = tick;
        match self.conns[index as usize].staging.take() {
            Some(mut staged) => {
                let room = STAGING_MAX.saturating_sub(staged.len());
                staged.extend_from_slice(&data[..data.len().min(room)]);
                let used = self.on_requests(index, &staged);
                self.after_requests(index, &mut staged[..], used);
                if self.still_reading(index) {
                    staged.drain(..used);
                    if !staged.is_empty() {
                        self.conns[index as usize].staging = Some(staged);
                    }
                }
            }
            None => {
                let used = self.on_requests(index, data);
                self.after_requests(index, data, used);
                if self.still_reading(index) && used < data.len() {
                    self.conns[index as usize].staging = Some(Box::new(data[used..].to_vec()));
                }
            }
        }
        if new_request && self.still_reading(index) {
            // A head now partly read: its deadline may be earlier than the idle one.
            self.arm_earlier(index);
        }
    }

    /// After the requests in `buf[..used]`: bytes behind a WebSocket upgrade are frames.
    fn after_requests(&mut self, index: u32, buf: &mut [u8], used: usize) {
        if self
            .conns
            .get(index as usize)
            .is_some_and(|c| c.state == State::Ws)
            && used < buf.len()
        {
            self.on_ws_input(index, &mut buf[used..]);
        }
    }

    /// True while connection `index` is still reading HTTP requests.
    fn still_reading(&self, index: u32) -> bool {
        self.conns
            .get(index as usize)
            .is_some_and(|c| c.state == State::Request)
    }

    /// Handles every complete request in `buf`; returns the bytes consumed.
    fn on_requests(&mut self, index: u32, buf: &[u8]) -> usize {
        let mut at = 0;
        while at < buf.len() {
            if self.conns[index as usize].state != State::Request {
                return at;
            }
            match http::parse_request(&buf[at..]) {
                Ok(http::Parsed::Partial) => return at,
                Ok(http::Parsed::Complete(req)) => {
                    let head = &buf[at..at + req.head_len];
                    at += req.head_len;
                    self.on_request(index, &req, head);
                    // A keep-alive idle deadline may now apply, earlier than the head's.
                    self.arm_earlier(index);
                }
                Err(e) => {
                    bump(&self.counters.bad_requests);
                    self.respond(index, e.status(), e.reason(), false, &[]);
                    return buf.len();
                }
            }
        }
        at
    }

    fn on_request(&mut self, index: u32, req: &Request<'_>, head: &[u8]) {
        // Every event acknowledged before this request arrived is delivered first: its
        // doorbell may have come in the same turn as the request.
        if let Some(broadcast) = self.broadcast.take() {
            if self.next_seq < broadcast.head() {
                self.catch_up(&broadcast);
            }
            self.broadcast = Some(broadcast);
        }
        let tick = self.tick;
        let conn = &mut self.conns[index as usize];
        conn.flags |= flags::SERVED;
        conn.last_io = tick;
        if conn.has_flag(flags::REFUSED) {
            return self.answer_refusal(index, req);
        }
        // A request body is never expected here; rather than skip it, answer and close.
        let keep_alive = req.keep_alive && !req.has_body;
        match (req.path, req.method) {
            ("/sse", Method::Get | Method::Head) => self.subscribe(index, req, keep_alive, false),
            ("/stream", Method::Get | Method::Head) => self.subscribe(index, req, keep_alive, true),
            ("/ws", _) => self.ws_upgrade(index, req, head, false),
            ("/echo", _) if self.shared.config.ws_echo => self.ws_upgrade(index, req, head, true),
            ("/poll", Method::Get) => self.poll(index, req, keep_alive),
            ("/sse" | "/stream" | "/poll", Method::Options) => self.preflight(index, req, keep_alive),
            ("/sse" | "/stream" | "/poll", _) => self.respond(
                index,
                405,
                "method not allowed: use GET",
                keep_alive,
                &[("Allow", "GET, HEAD")],
            ),
            _ => self.respond(
                index,
                404,
                "not found: subscribe at /sse?topic=NAME or /ws?topic=NAME",
                keep_alive,
                &[],
            ),
        }
    }

    /// Queues a plain-text answer; without keep-alive the connection closes after it.
    fn respond(&mut self, index: u32, status: u16, body: &str, keep_alive: bool, headers: &[(&str, &str)]) {
        let bytes = Bytes::from(http::simple_response(status, body, keep_alive, headers));
        if keep_alive {
            self.send_control(index, bytes);
        } else {
            self.send_final(index, bytes);
        }
    }

    // ----- SSE ----------------------------------------------------------------------------

    /// Opens an SSE stream, or with `ndjson` a stream of JSON lines.
    fn subscribe(&mut self, index: u32, req: &Request<'_>, keep_alive: bool, ndjson: bool) {
        let sub = match http::parse_subscription(req.query) {
            Ok(sub) => sub,
            Err(e) => {
                bump(&self.counters.bad_requests);
                self.respond(index, 400, &e.to_string(), false, &[]);
                return;
            }
        };
        let Some(grant) = self.authenticate(index, req, &sub.topics) else {
            return;
        };
        if req.method == Method::Head {
            let head = if ndjson {
                self.ndjson_head_only.clone()
            } else {
                self.head_only.clone()
            };
            if keep_alive {
                self.send_control(index, head);
            } else {
                self.send_final(index, head);
            }
            return;
        }
        let kind = match (ndjson, req.minor_version >= 1) {
            (true, true) => Kind::Ndjson,
            (true, false) => {
                self.respond(index, 505, "NDJSON streams are chunked: use HTTP/1.1", false, &[]);
                return;
            }
            (false, true) => Kind::Sse,
            (false, false) => Kind::Sse10,
        };
        let head = self.static_bytes_for(kind, Static::Head);
        {
            let conn = &mut self.conns[index as usize];
            conn.state = State::Stream;
            conn.kind = kind;
            conn.staging = None;
        }
        let last = req
            .last_event_id
            .map(<[u8]>::to_vec)
            .or_else(|| sub.last_event_id.as_ref().map(|s| s.clone().into_bytes()));
        let cors = self.cors_lines(req.origin);
        // Subscribed first: a resume the stream must answer asks for these topics.
        for topic in &sub.topics {
            self.subs.add(&mut self.conns, index, topic);
        }
        if last.is_some() || cors.is_some() {
            let head = match cors {
                Some(lines) => with_cors(&head, &lines),
                None => head,
            };
            if !self.enqueue(index, head) {
                return;
            }
            if let Some(last) = last {
                if !self.replay(index, &sub.topics, &last, kind) {
                    return;
                }
            }
            self.flush(index);
        } else {
            self.send_static(index, Static::Head);
        }
        self.keep_session(index, grant);
        bump(&self.counters.streams);
        self.count_open(index, 1);
        // The timer still holds the request deadline; the next tick re-arms it for the
        // stream's own (heartbeat, write stall).
        self.arm_timer(index, self.tick.wrapping_add(1));
    }

    /// Delivers what the broadcast ring holds, at most one batch per loop turn: between
    /// batches the loop reaps send completions, so a client that keeps up drains its queue
    /// as fast as events arrive and never meets its queue's limits.
    fn drain_broadcast(&mut self, broadcast: &Broadcast<Event>) {
        self.drain_broadcast_upto(broadcast, DRAIN_BATCH_EVENTS, DRAIN_BATCH_BYTES);
    }

    /// Delivers everything the ring holds now (to catch up before a resume).
    fn catch_up(&mut self, broadcast: &Broadcast<Event>) {
        self.drain_broadcast_upto(broadcast, usize::MAX, usize::MAX);
    }

    fn drain_broadcast_upto(&mut self, broadcast: &Broadcast<Event>, events: usize, bytes: usize) {
        let (mut n, mut size) = (0, 0);
        let mut batch = std::mem::take(&mut self.batch);
        // Events refilled from the history after an overrun go first, in batches too.
        while n < events && size < bytes {
            let Some(event) = self.refill.pop_front() else {
                break;
            };
            n += 1;
            size += event.data.len();
            batch.push(event);
        }
        let head = broadcast.head();
        while self.refill.is_empty() && self.next_seq < head && n < events && size < bytes {
            match broadcast.read(self.next_seq) {
                Read::Item(event) => {
                    self.next_seq += 1;
                    let before = std::mem::replace(&mut self.ring_seq, event.seq);
                    if let Some(after) = self.lost_after.take() {
                        // The first event after an overrun: what came between is refilled
                        // from the history, and this event follows it.
                        self.deliver_batch(&mut batch);
                        self.refill_lost(after, event);
                        continue;
                    }
                    // In a cluster every stream sequence comes through the ring in order: a
                    // jump is events this node never received (the stream evicted them
                    // before its consumer read them). No topic is known: every stream hears.
                    if event.seq > before + 1 && self.shared.backplane.is_some() {
                        self.deliver_batch(&mut batch);
                        bump_by(&self.counters.stream_skipped, event.seq - before - 1);
                        self.tell_ring_loss(before + 1, event.seq - 1);
                    }
                    n += 1;
                    size += event.data.len();
                    batch.push(event);
                }
                Read::Overrun => {
                    // What was read before the overrun goes out before its notices.
                    self.deliver_batch(&mut batch);
                    self.recover(broadcast);
                }
                Read::Empty => break,
            }
        }
        self.deliver_batch(&mut batch);
        self.batch = batch;
        broadcast.set_cursor(self.id, self.next_seq);
    }

    /// Delivers `batch` in order, as runs of consecutive events of one topic, and
    /// empties it.
    fn deliver_batch(&mut self, batch: &mut Vec<Arc<Event>>) {
        let mut start = 0;
        while start < batch.len() {
            let topic = &batch[start].topic;
            let len = batch[start..].iter().take_while(|e| &e.topic == topic).count();
            self.deliver(&batch[start..start + len]);
            start += len;
        }
        batch.clear();
    }

    /// This loop fell more than the ring's capacity behind: it skips ahead to the oldest
    /// position the ring still holds; the next event read tells what to refill.
    fn recover(&mut self, broadcast: &Broadcast<Event>) {
        let resume = broadcast
            .head()
            .saturating_sub(broadcast.capacity())
            .max(self.next_seq + 1);
        self.next_seq = resume;
        self.lost_after.get_or_insert(self.ring_seq);
    }

    /// Refills events after `after` and before `next` from the history for the topics
    /// this loop serves, counting what even the history lost, and queues `next` behind them.
    fn refill_lost(&mut self, after: u64, next: Arc<Event>) {
        let upto = next.seq - 1;
        if upto > after {
            bump_by(&self.counters.ring_overrun, upto - after);
            let names = self.subs.topic_names();
            let names: Vec<&str> = names.iter().map(|s| &**s).collect();
            let replay = {
                let history = self
                    .shared
                    .history
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                history.since(&names, after, upto, self.now)
            };
            if !replay.complete {
                bump(&self.counters.ring_lost);
                self.tell_ring_loss(after + 1, upto);
            }
            self.refill.extend(replay.events);
        }
        self.refill.push_back(next);
    }

    // ----- sending --------------------------------------------------------------------------

    /// Queues control bytes for connection `index`. Every byte queued for a client counts
    /// against its cap (`--out-queue-bytes-max`), whatever the client did to cause it: a
    /// client that would exceed it is failed instead (see [`Shard::overflow`]) and false
    /// is returned, after which the caller must leave the connection alone.
    #[must_use]
    fn enqueue(&mut self, index: u32, bytes: Bytes) -> bool {
        let conn = &mut self.conns[index as usize];
        if conn.queued_bytes() + bytes.len() > self.shared.config.out_queue_bytes_max {
            self.overflow(index);
            return false;
        }
        let out = conn
            .out
            .get_or_insert_with(|| self.pool.pop().unwrap_or_default());
        self.queued += bytes.len() as i64;
        out.push(bytes);
        true
    }

    /// Queues control bytes and sends them.
    fn send_control(&mut self, index: u32, bytes: Bytes) {
        if self.enqueue(index, bytes) {
            self.flush(index);
        }
    }

    /// Queues a connection's last bytes: once they are sent, it closes.
    fn send_final(&mut self, index: u32, bytes: Bytes) {
        if self.enqueue(index, bytes) {
            self.conns[index as usize].state = State::Draining;
            self.flush(index);
        }
    }

    /// A client's unsent bytes would exceed its cap: everything not yet handed to the
    /// kernel is dropped, and a WebSocket is closed with 1008 (RFC 6455 §7.4.1, policy),
    /// any other connection at once. The write-stall deadline reaps a WebSocket that
    /// does not read its close frame either.
    fn overflow(&mut self, index: u32) {
        bump(&self.counters.slow_closed);
        self.queued_peak = self.queued_peak.max(self.queued);
        let conn = &mut self.conns[index as usize];
        if conn.state != State::Ws {
            return self.close(index);
        }
        if let Some(out) = conn.out.as_mut() {
            self.queued -= out.truncate_unsent() as i64;
        }
        self.end_catchup(index);
        let mut frame = Vec::with_capacity(32);
        ws::encode_close(&mut frame, ws::close::POLICY, "send queue limit exceeded");
        let conn = &mut self.conns[index as usize];
        let out = conn
            .out
            .get_or_insert_with(|| self.pool.pop().unwrap_or_default());
        self.queued += frame.len() as i64;
        out.push(Bytes::from(frame));
        conn.state = State::Draining;
        self.flush(index);
    }

    fn flush(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.has_op(ops::SEND) || conn.state == State::Closing {
            return;
        }
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        if out.has_gaps() {
            self.tell_gaps(index);
        }
        let conn = &mut self.conns[index as usize];
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        if out.is_empty() {
            return;
        }
        let data = pack(tag::SEND, conn.generation, index);
        let op = match out.prepare_single() {
            Some((buf, len)) => Op::Send {
                file: conn.file,
                buf,
                len,
                data,
            },
            None => Op::SendMsg {
                file: conn.file,
                msg: out.prepare(),
                data,
            },
        };
        conn.ops |= ops::SEND;
        self.sending += 1;
        self.push(op);
        // A write-stall deadline applies while bytes are unsent.
        self.arm_earlier(index);
    }

    fn on_send(&mut self, index: u32, generation: u32, res: i32) {
        if !self.live(index, generation) {
            return;
        }
        self.sending -= 1;
        let conn = &mut self.conns[index as usize];
        let direct = if conn.has_op(ops::SEND_HEAD) {
            Some(Static::Head)
        } else if conn.has_op(ops::SEND_BEAT) {
            Some(Static::Beat)
        } else if conn.has_op(ops::SEND_PING) {
            Some(Static::Ping)
        } else {
            None
        };
        conn.ops &= !(ops::SEND | ops::SEND_HEAD | ops::SEND_BEAT | ops::SEND_PING);
        if conn.state == State::Closing {
            self.maybe_free(index);
            return;
        }
        if res <= 0 {
            if res == -libc::ETIMEDOUT {
                bump(&self.counters.tcp_timeouts);
            }
            self.close(index);
            return;
        }
        conn.last_io = self.tick;
        if let Some(which) = direct {
            let rest = self.static_bytes(index, which).slice(res as usize..);
            if !rest.is_empty() {
                // Rare: a short send. The rest goes ahead of anything queued meanwhile.
                let conn = &mut self.conns[index as usize];
                let out = conn
                    .out
                    .get_or_insert_with(|| self.pool.pop().unwrap_or_default());
                self.queued += rest.len() as i64;
                out.push_front(rest);
            }
            self.flush(index);
            return;
        }
        let conn = &mut self.conns[index as usize];
        let out = conn.out.as_mut().expect("a send completed, so a queue exists");
        out.sent(res as usize);
        self.queued -= i64::from(res);
        if conn.has_flag(flags::CATCHING_UP) {
            self.next_page(index);
            if self.conns[index as usize].state == State::Closing {
                return;
            }
        }
        let conn = &mut self.conns[index as usize];
        let Some(out) = conn.out.as_mut() else {
            return;
        };
        if !out.is_empty() {
            self.flush(index);
            return;
        }
        if out.has_gaps() {
            // Events were refused while everything queued was in flight: the client still
            // has to hear of them, so the queue stays to carry the notice.
            self.flush(index);
            return;
        }
        let mut out = conn.out.take().expect("checked above");
        if self.pool.len() < OUT_QUEUE_POOL_MAX {
            out.clear();
            self.pool.push(out);
        }
        if conn.state == State::Draining {
            self.linger(index);
        }
    }

    // ----- closing --------------------------------------------------------------------------

    /// Shuts our side down and waits (bounded) for the peer's EOF, so that a final answer
    /// is read rather than lost to a reset caused by unread input.
    fn linger(&mut self, index: u32) {
        let until = self.tick.wrapping_add(self.deadlines.linger);
        let conn = &mut self.conns[index as usize];
        conn.state = State::Lingering;
        conn.mark = until;
        conn.ops |= ops::SHUTDOWN;
        let op = Op::Shutdown {
            file: conn.file,
            data: pack(tag::SHUTDOWN, conn.generation, index),
        };
        self.push(op);
        self.arm_timer(index, until);
    }

    /// Starts closing: unsubscribes, cancels whatever the kernel holds for the connection,
    /// and closes its direct descriptor. The record is freed when the last op completes.
    fn close(&mut self, index: u32) {
        let Some(conn) = self.conns.get_mut(index as usize) else {
            return;
        };
        if conn.state == State::Closing {
            return;
        }
        // Out of its gauge while its state still says which one.
        self.count_open(index, -1);
        let conn = &mut self.conns[index as usize];
        conn.state = State::Closing;
        conn.staging = None;
        let (file, generation) = (conn.file, conn.generation);
        conn.ops |= ops::CANCEL;
        self.wheel.remove(index);
        self.end_catchup(index);
        self.poll_topics.remove(&index);
        self.sessions.clear(index);
        self.decoders.remove(&index);
        self.ws_buckets.remove(&index);
        self.ws_subs.remove(&index);
        self.poll_cors.remove(&index);
        self.subs.remove_all(&mut self.conns, index);
        // The direct descriptor itself is closed only once nothing of ours is in flight
        // on it (see `maybe_free`): an op the kernel runs later from its worker pool, such
        // as a shutdown, looks the slot up when it runs, and by then a freed slot may
        // hold the next accepted connection.
        self.push(Op::Cancel {
            file,
            data: pack(tag::CANCEL, generation, index),
        });
    }

    /// Moves connection `index` into (`+1`) or out of (`-1`) its transport's gauge; a
    /// connection is counted at most once.
    fn count_open(&mut self, index: u32, delta: i64) {
        let conn = &mut self.conns[index as usize];
        let counted = conn.has_flag(flags::COUNTED);
        if (delta > 0) == counted {
            return;
        }
        conn.flags ^= flags::COUNTED;
        let gauge = match (conn.state, conn.kind) {
            (State::Poll, _) => &self.counters.polls_held,
            (_, Kind::Ndjson) => &self.counters.open_ndjson,
            (_, k) if k.is_ws() => &self.counters.open_ws,
            _ => &self.counters.open_sse,
        };
        add(gauge, delta);
    }

    fn op_done(&mut self, index: u32, generation: u32, op: u8) {
        if !self.live(index, generation) {
            return;
        }
        self.conns[index as usize].ops &= !op;
        self.maybe_free(index);
    }

    /// Once a closing connection has no op in flight, closes its direct descriptor; once
    /// that close completes, frees the record.
    fn maybe_free(&mut self, index: u32) {
        let conn = &mut self.conns[index as usize];
        if conn.state != State::Closing || conn.ops != 0 {
            return;
        }
        if !conn.has_flag(flags::CLOSED) {
            conn.flags |= flags::CLOSED;
            conn.ops |= ops::CLOSE;
            let op = Op::Close {
                file: conn.file,
                data: pack(tag::CLOSE, conn.generation, index),
            };
            self.push(op);
            return;
        }
        let conn = self.conns.remove(index as usize);
        add(&self.counters.open, -1);
        self.release_admission(index, conn.has_flag(flags::REFUSED));
        if let Some(mut out) = conn.out {
            self.queued -= out.bytes() as i64;
            if self.pool.len() < OUT_QUEUE_POOL_MAX {
                out.clear();
                self.pool.push(out);
            }
        }
    }
}

impl crate::driver::Loop for Shard {
    fn outbox(&mut self) -> &mut Vec<Op> {
        &mut self.ops
    }

    fn complete(&mut self, c: Completion<'_>, now: Instant) {
        self.dispatch(c, now);
    }

    /// Delivers what the broadcast ring holds; the loop may sleep when nothing is left to
    /// deliver and it has parked (the ingest thread then rings its doorbell).
    fn before_wait(&mut self) -> bool {
        // Taken out and put back, rather than cloned: no reference count moves per turn.
        let broadcast = self.broadcast.take().expect("the loop's broadcast ring");
        self.drain_broadcast(&broadcast);
        let sleep = self.refill.is_empty() && broadcast.park(self.id, self.next_seq);
        self.broadcast = Some(broadcast);
        sleep
    }

    fn after_wait(&mut self, slept: bool) {
        if slept {
            self.shared.broadcast.unpark(self.id);
        }
    }

    fn end_turn(&mut self) -> bool {
        self.wake_waiting();
        self.deliver_fetched();
        self.deliver_downstream();
        self.ring_upstream();
        let broadcast = self.broadcast.take().expect("the loop's broadcast ring");
        let done = self.flushed(&broadcast);
        self.broadcast = Some(broadcast);
        done
    }
}

const SSE_HEADERS: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\n";
const SSE_HEADERS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n";

const NDJSON_HEADERS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n";

/// `head` with its `Access-Control-Allow-Origin: *` line replaced by `lines`.
fn with_cors(head: &Bytes, lines: &str) -> Bytes {
    const ANY: &[u8] = b"Access-Control-Allow-Origin: *\r\n";
    let Some(at) = head.windows(ANY.len()).position(|w| w == ANY) else {
        return head.clone();
    };
    let mut out = Vec::with_capacity(head.len() + lines.len());
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(lines.as_bytes());
    out.extend_from_slice(&head[at + ANY.len()..]);
    Bytes::from(out)
}

/// A reset signal: the id to carry (just before the first replayed event) and its data.
struct Reset {
    id: String,
    data: String,
}

/// The answer of `Shard::missed_since`: one page of what a resuming client missed.
struct Missed {
    reset: Option<Reset>,
    events: Vec<Arc<Event>>,
    /// More than the page: the rest follows its last event.
    more: bool,
}

/// The response head of an NDJSON stream, built once per loop.
fn ndjson_head(loop_id: usize) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\n\
         X-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nX-Ringcast-Loop: {loop_id}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    ))
}

/// A control message (`ringcast.reset`, `ringcast.gap`, `ringcast.slow`) named `name`,
/// with JSON `data` and optionally an event id, in the framing of `kind`: an SSE event, a
/// WebSocket text frame `{"id":..,"event":..,"data":..}`, or that object as an NDJSON line.
/// Without an id an SSE notice leaves the client's Last-Event-ID as it was.
fn control(kind: Kind, name: &str, id: Option<&str>, data: &str) -> Bytes {
    match kind {
        Kind::Sse | Kind::Sse10 => {
            let mut body = Vec::with_capacity(data.len() + 64);
            if let Some(id) = id {
                body.extend_from_slice(format!("id: {id}\n").as_bytes());
            }
            body.extend_from_slice(format!("event: {name}\n").as_bytes());
            // `data` is one line of JSON: the SSE encoder would not split it.
            body.extend_from_slice(format!("data: {data}\n\n").as_bytes());
            frame(&body, kind == Kind::Sse)
        }
        Kind::WsJson | Kind::WsRaw | Kind::WsEcho | Kind::Ndjson => {
            let id = id
                .map(|id| format!("\"id\":{},", json::string(id)))
                .unwrap_or_default();
            let object = format!("{{{id}\"event\":\"{name}\",\"data\":{data}}}");
            if kind == Kind::Ndjson {
                let mut line = object.into_bytes();
                line.push(b'\n');
                frame(&line, true)
            } else {
                ws_control(&object)
            }
        }
    }
}

/// The response head and the opening `retry:` field, built once per loop. The
/// `X-Ringcast-Loop` header names the loop that serves the stream.
fn stream_head(chunked: bool, retry_ms: u32, loop_id: usize) -> Bytes {
    let mut out = Vec::from(SSE_HEADERS);
    out.extend_from_slice(format!("X-Ringcast-Loop: {loop_id}\r\n").as_bytes());
    let mut retry = Vec::new();
    sse::encode_retry(&mut retry, retry_ms);
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        sse::encode_chunk(&mut out, &retry);
    } else {
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&retry);
    }
    Bytes::from(out)
}

fn frame(body: &[u8], chunked: bool) -> Bytes {
    if chunked {
        let mut out = Vec::with_capacity(body.len() + 12);
        sse::encode_chunk(&mut out, body);
        Bytes::from(out)
    } else {
        Bytes::copy_from_slice(body)
    }
}

/// The data of a `ringcast.reset` event: why the resume failed and where replay starts.
fn reset_json(reason: &str, last: &[u8], oldest: Option<String>) -> String {
    format!(
        "{{\"reason\":\"{reason}\",\"last_event_id\":{},\"oldest_id\":{}}}",
        json::string(&String::from_utf8_lossy(last)),
        oldest.map_or_else(|| "null".to_string(), |id| json::string(&id)),
    )
}

/// One WebSocket text frame carrying a control message.
fn ws_control(text: &str) -> Bytes {
    let mut frame = Vec::with_capacity(text.len() + 4);
    ws::encode_frame(&mut frame, ws::Opcode::Text, true, text.as_bytes());
    Bytes::from(frame)
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    bump_by(counter, 1);
}

/// Counters have one writer (their loop); a relaxed load and store is enough.
fn bump_by(counter: &std::sync::atomic::AtomicU64, n: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

fn add(counter: &std::sync::atomic::AtomicU64, n: i64) {
    bump_by(counter, n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_data_is_json_with_the_client_id_escaped() {
        let s = reset_json("expired", b"a\"b\\\n", Some("1-2".into()));
        assert_eq!(
            s,
            r#"{"reason":"expired","last_event_id":"a\"b\\\n","oldest_id":"1-2"}"#
        );
        assert_eq!(
            reset_json("malformed-id", b"", None),
            r#"{"reason":"malformed-id","last_event_id":"","oldest_id":null}"#
        );
    }
}
