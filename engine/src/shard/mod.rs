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
//!
//! Here: the record of a loop, its construction, the dispatch of completions and the
//! tick. Beside it, one file per part of a connection's life: `accept` and `admission`
//! (a new connection), `request` (input and requests), `auth`, `stream` (subscribing and
//! the fan-out), `catchup` (resume and replay), `poll`, `websocket`, `send` and
//! `backpressure` (out-queues), `timers`, `park` (idle receives traded for polls),
//! `drain`, `close`; `framing` builds the bytes
//! the transports send, `subs` the topic index.
mod accept;
mod admission;
mod auth;
mod backpressure;
mod catchup;
mod close;
mod drain;
mod framing;
mod park;
mod poll;
mod request;
mod runs;
mod send;
#[cfg(test)]
mod sim;
mod stream;
mod subs;
mod timers;
mod websocket;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::conn::{ops, Conn};
use crate::driver::{Completion, Op};
use crate::engine::{Counters, Shared};
use crate::event::Event;
use crate::proto::http::{self};
use crate::proto::ws;
use crate::ring::broadcast::Broadcast;
use framing::{control, ndjson_head, reset_json, stream_head, with_cors, ws_control, Missed, Reset};
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
/// (see `drain_broadcast`), and at most half a subscriber's queue limits unless those are
/// below the `DRAIN_MIN_*`: a turn's events of one topic go to each subscriber as one run,
/// so a loop that is behind hands each client a deep send rather than many shallow ones,
/// and a queue holding a turn still has room for another. While a client is behind, turns
/// are of the `DRAIN_MIN_*`.
const DRAIN_BATCH_EVENTS: usize = 512;
const DRAIN_BATCH_BYTES: usize = 128 << 10;
const DRAIN_MIN_EVENTS: usize = 64;
const DRAIN_MIN_BYTES: usize = 64 << 10;
/// Slots of the connection timer wheel: 4096 ticks of 100 ms, a turn of about 7 minutes.
const WHEEL_SLOTS: usize = 4096;
/// A loop at its connection limit reports it at most this often (10 s).
const FULL_LOG_TICKS: u32 = 100;
/// Queues kept for reuse, so a burst of sends does not allocate per connection; an idle
/// loop keeps the fewer (see `send::QueuePool`).
const OUT_QUEUE_POOL_MAX: usize = 1024;
const OUT_QUEUE_POOL_IDLE: usize = 64;
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
    /// Out-queues kept for the next connection that needs one (see `send::QueuePool`).
    pool: send::QueuePool,
    /// One timer per connection, keyed by slab index (see `timers`).
    wheel: Wheel,
    deadlines: Deadlines,
    clock: Clock,
    /// Scratch list of timers due this tick.
    due: Vec<u32>,
    /// Idle connections' receives traded for polls (see `park`).
    park: park::Park,
    /// WebSocket decoders holding a partial frame or message, by slab index. An idle
    /// WebSocket has none: its record stays 40 bytes.
    decoders: HashMap<u32, Box<ws::Decoder>>,
    /// permessage-deflate for every connection of this loop that negotiated it: neither
    /// direction keeps context between messages, so one compressor (events, echoes) and
    /// one inflater serve them all, made on first use.
    deflate: ws::deflate::Codec,
    /// Where the last compressed client message was inflated; at most `ws_max_message`
    /// + 1 bytes, kept for the next one.
    inflated: Vec<u8>,
    /// Bytes queued on this loop's connections, all out-queues together (a gauge
    /// published each tick).
    queued: i64,
    /// The most `queued` has been since memory was last handed back to the OS.
    queued_peak: i64,
    /// The tick at which freed memory is handed back once more (see `release_memory`).
    release_again: Option<u32>,
    /// Client messages were queued for the ingest thread this turn: ring it.
    upstream_waiting: bool,
    /// CORS header lines of held long-polls, when `--cors-origin` is configured.
    poll_cors: HashMap<u32, String>,
    /// Connections catching up from the history or the stream, by slab index (see
    /// `catchup`).
    catchup: HashMap<u32, catchup::CatchUp>,
    /// Catching-up connections waiting for this loop's cursor to pass their id.
    waiting: Vec<u32>,
    /// Topics' retained events encoded end to end, shared by resuming clients (see `runs`).
    runs: Vec<runs::Run>,
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
    /// Events and payload bytes one turn fans out at most (see `DRAIN_BATCH_*`).
    turn_events: usize,
    turn_bytes: usize,
    /// Connections whose queue holds at least half its limit (`deep_events`,
    /// `deep_bytes`) after their last send: clients behind, whose policy the next turns
    /// would make act (see `note_depth`).
    deep: usize,
    deep_events: usize,
    deep_bytes: usize,
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
/// The listen backlog asked for. The kernel caps it at `net.core.somaxconn` (4096 by
/// default); where that is raised (tuning/sysctl.conf), a reconnect storm of tens of
/// thousands waits in the queue instead of having its handshakes dropped and retried
/// after growing timeouts.
const LISTEN_BACKLOG: i32 = 65_535;

pub fn listeners(cfg: &crate::config::Config) -> Result<Vec<std::os::fd::OwnedFd>, String> {
    cfg.listen
        .iter()
        .map(|addr| {
            crate::sys::socket::tcp_listener(
                *addr,
                LISTEN_BACKLOG,
                cfg.tcp_user_timeout_ms,
                cfg.tcp_notsent_lowat,
            )
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
        let turn_events = DRAIN_BATCH_EVENTS.min((cfg.queue_events / 2).max(DRAIN_MIN_EVENTS));
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
            pool: send::QueuePool::default(),
            wheel: Wheel::with_capacity(WHEEL_SLOTS, 0, max_conns as usize),
            deadlines: Deadlines::new(cfg, &clock),
            park: park::Park::new(max_conns as usize, park_ticks(&shared, &clock)),
            clock,
            due: Vec::new(),
            decoders: HashMap::new(),
            deflate: ws::deflate::Codec::default(),
            inflated: Vec::new(),
            queued: 0,
            queued_peak: 0,
            release_again: None,
            upstream_waiting: false,
            poll_cors: HashMap::new(),
            catchup: HashMap::new(),
            waiting: Vec::new(),
            runs: Vec::new(),
            reset_ids: HashMap::new(),
            poll_topics: HashMap::new(),
            peer_keys: by_address.then(|| vec![0; max_conns as usize]),
            refusals: HashMap::new(),
            ws_buckets: HashMap::new(),
            ws_subs: HashMap::new(),
            rng: 0x2545_f491_4f6c_dd1d ^ ((id as u64 + 1) << 17),
            sessions: auth::Sessions::default(),
            refill: std::collections::VecDeque::new(),
            batch: Vec::with_capacity(turn_events),
            id,
            next_seq: shared.broadcast.head(),
            ring_seq: shared.start_seq,
            lost_after: None,
            tick: 0,
            now,
            generation: 0,
            max_conns: max_conns as usize,
            sending: 0,
            turn_events,
            turn_bytes: DRAIN_BATCH_BYTES.min((cfg.queue_bytes / 2).max(DRAIN_MIN_BYTES)),
            deep: 0,
            deep_events: (cfg.queue_events / 2).max(1),
            deep_bytes: (cfg.queue_bytes / 2).max(1),
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
            tag::POLL => self.on_poll(index, generation, c.res),
            // The cancel that parks a receive holds nothing of the connection's: the
            // receive's own final completion says what became of it.
            tag::DOORBELL | tag::PARK => {}
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
        self.sweep_idle_receives();
    }

    /// Once the loop's backlog has shrunk to a quarter of a peak of a megabyte or more,
    /// hands the freed memory back to the OS: a burst or a flood must not stay resident.
    /// Checked each tick, so it runs at most once per drained peak, and once more a second
    /// later: the connections a flood filled are often freed after their backlog, once
    /// their last bytes are sent and they close. Each second, the out-queues pooled but
    /// not needed in that second are freed too (down to `OUT_QUEUE_POOL_IDLE`), so the
    /// burst of handshakes that opened the loop's connections leaves no queue per
    /// connection behind.
    fn release_memory(&mut self) {
        const PEAK_MIN: i64 = 1 << 20;
        const AGAIN_TICKS: u32 = 10;
        self.queued_peak = self.queued_peak.max(self.queued);
        let trimmed =
            self.tick.is_multiple_of(10) && self.pool.trim(OUT_QUEUE_POOL_IDLE) >= OUT_QUEUE_POOL_IDLE;
        let again = self
            .release_again
            .is_some_and(|at| self.tick.wrapping_sub(at) < u32::MAX / 2);
        if self.queued_peak >= PEAK_MIN && self.queued <= self.queued_peak / 4 {
            crate::sys::alloc::release_free_memory();
            self.queued_peak = self.queued;
            self.release_again = Some(self.tick.wrapping_add(AGAIN_TICKS));
        } else if trimmed || again {
            crate::sys::alloc::release_free_memory();
            self.release_again = None;
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

/// Ticks between sweeps for idle receives: `--recv-park-ms` on io_uring, 0 (never) on
/// epoll, whose connections hold no armed receive.
fn park_ticks(shared: &Shared, clock: &Clock) -> u32 {
    let ms = shared.config.recv_park_ms;
    if ms == 0 || shared.driver != crate::driver::Kind::IoUring {
        return 0;
    }
    clock.ticks_in(std::time::Duration::from_millis(ms)).max(1)
}

const SSE_HEADERS: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\n";
const SSE_HEADERS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n";

const NDJSON_HEADERS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: 0\r\n\r\n";

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
