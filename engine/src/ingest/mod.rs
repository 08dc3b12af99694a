//! The ingest thread: publishers connect to a local Unix socket and speak the line
//! protocol of [`crate::proto::ingest`]. Each publish is given the next sequence number,
//! stored in the history, pushed onto the broadcast ring and acknowledged with its id;
//! loops that sleep are woken with a doorbell.
//!
//! This thread is the broadcast ring's only producer. It is sans-IO like the loops (see
//! [`crate::driver`]): its own small driver, io_uring or epoll, runs it over plain
//! descriptors: publishers are few and each owns an input buffer.
//!
//! Slots: at most `--publishers-max` publishers at once, and beyond them up to
//! [`OWN_CONNECTIONS_MAX`] connections from the engine's own process (the admin
//! listener's `POST /publish`, recognised by `SO_PEERCRED`), so that idle or hostile
//! publishers can never lock HTTP publishing out. A publisher that sends no command for
//! `--publisher-idle-ms` is told so and closed, unless it listens for upstream messages
//! (a backend waiting for them may be quiet for hours) or is the engine's own.
//!
//! Upstream: client messages from the loops' mailboxes go to backends that sent
//! `UPSTREAM`, round-robin; a backend's `SEND` goes to its connection's loop. With a
//! backplane, connection ids name their node (`<node>/<loop>.<slot>.<generation>`), and
//! what this node cannot do itself (a SEND for another node's connection, a client
//! message with no local backend to take it) is relayed through the backplane thread
//! (see [`crate::backplane::relay`]), which also hands in what other nodes relay here.
pub mod client;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, PoisonError};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;

use crate::backplane::{self, Acked, Asker, Request};
use crate::driver::{Completion, Op};
use crate::event::Event;
use crate::proto::ingest::{self, Command, Decoded, IngestDecoder, IngestLimits, Publish};
use crate::proto::json;
use crate::ring::broadcast::Producer;
use crate::shard::DOORBELL_DATA;
use crate::shared::Shared;
use crate::upstream::{ConnId, Downstream};

/// Why a client's message comes back when no backend anywhere can take it.
pub const NO_BACKEND: &str = "no backend is listening for upstream messages";

use crate::driver::tag::{ingest as tag, pack, unpack};

/// The `user_data` of a loop's doorbell to this thread.
pub const UPSTREAM_BELL_DATA: u64 = user_data(tag::UPSTREAM_BELL, 0);
/// The `user_data` of the backplane thread's doorbell to this thread.
pub const BACKPLANE_BELL_DATA: u64 = user_data(tag::BACKPLANE_BELL, 0);
/// The `user_data` of a loop's doorbell when it reached the mark publishes wait for.
pub const FLOW_BELL_DATA: u64 = user_data(tag::FLOW_BELL, 0);

/// Replies of one publisher waiting for the backplane's answer (and the replies behind
/// them); beyond this its commands wait, and its input is not read, until some are
/// answered.
const AWAITING_MAX: usize = 4096;

/// A backend with more unread bytes than this is passed over for client messages.
const UPSTREAM_BACKLOG_MAX: usize = 4 << 20;

const fn user_data(tag: u8, index: u32) -> u64 {
    pack(tag, 0, index)
}

/// Bytes asked of each receive.
const READ_CHUNK: usize = 64 << 10;
/// A publisher whose unread replies exceed this is not read from until they drain.
const REPLY_BACKLOG_MAX: usize = 1 << 20;
/// Doorbell safety net and history expiry run on this tick.
const TICK_MS: u64 = 100;
const EXPIRE_EVERY_TICKS: u32 = 10;
/// The longest line the decoder accepts before the payload.
const LINE_MAX: usize = 1024;
/// Ticks shutdown waits for publishers to read their acknowledgements.
const SHUTDOWN_TICKS: u32 = 20;
/// Connections from the engine's own process accepted beyond `--publishers-max`.
pub const OWN_CONNECTIONS_MAX: usize = 8;
/// With `--ingest-flow lag`, a loop behind the bound rings this thread once it has read
/// this fraction of the bound more (64 events of the default 4096).
const FLOW_HYSTERESIS_DIV: u64 = 64;
/// Idle publishers are looked for this often (1 s).
const IDLE_CHECK_TICKS: u32 = 10;

struct Publisher {
    stream: UnixStream,
    input: Vec<u8>,
    decoder: IngestDecoder,
    /// Replies not yet handed to the kernel.
    replies: Vec<u8>,
    /// Replies the kernel is sending; `sent` of them are done.
    sending: Vec<u8>,
    sent: usize,
    recv_armed: bool,
    send_armed: bool,
    /// No more input is read (QUIT, EOF or lost framing); close once replies are out.
    closing: bool,
    /// With a backplane: its next command waits (in `input`, which is not read further)
    /// for answers to come back, its own or, for a relayed SEND, any publisher's.
    held: bool,
    /// Sent `UPSTREAM`: client messages are pushed to it.
    upstream: bool,
    /// Connected from the engine's own process: in a reserved slot, never idle-closed.
    own: bool,
    /// Distinguishes this publisher from later ones in the same slot, for acknowledgements.
    serial: u64,
    /// With a backplane: replies in command order from the first command still waiting
    /// for the backplane's answer on (`None`: waiting). Empty otherwise.
    awaiting: std::collections::VecDeque<Option<Vec<u8>>>,
    /// The ticket of `awaiting`'s front: each entry's ticket is this plus its position,
    /// so an answer finds its reply whatever order answers come in.
    awaiting_front: u64,
    /// The tick of the last complete command (or of the connect).
    last_command: u32,
}

struct Ingest {
    /// Ops queued for the driver.
    ops: Vec<Op>,
    accept_armed: bool,
    publishers: Slab<Publisher>,
    producer: Producer<Event>,
    shard_rings: Vec<RawFd>,
    shared: Arc<Shared>,
    limits: IngestLimits,
    ticks: u32,
    /// Something was published since the last doorbell round.
    published: bool,
    /// Loops that were handed backend messages since the last doorbell round.
    down_woken: Vec<bool>,
    /// Where the round-robin over upstream backends continues.
    next_listener: usize,
    /// Tick at which shutdown began: no more publishers are accepted, and the loop ends
    /// once every acknowledgement is sent (or the grace period is over).
    stopping_since: Option<u32>,
    /// Serial of the next publisher.
    next_serial: u64,
    /// This node's id in the cluster, naming it in connection ids.
    node: Box<str>,
    /// With `--ingest-flow lag`: the lag at which publishes wait, and since when the
    /// loops have been behind it.
    flow_lag: Option<u64>,
    behind_since: Option<Instant>,
    /// Where the next round over held publishers starts.
    next_held: usize,
}

/// What a `PUB` may do under `--ingest-flow`.
enum Flow {
    Go,
    /// Wait: its publisher is held until a loop's doorbell (or the tick) says more.
    Hold,
    /// The loops have been behind for `--ingest-flow-wait-ms`: refuse it, with the lag.
    Refuse(u64),
}

/// What the ingest thread needs; the thread itself builds its ring (`SINGLE_ISSUER`
/// binds a ring to the thread that creates it).
pub struct IngestThread {
    pub listener: UnixListener,
    pub shared: Arc<Shared>,
    /// Each loop's ring descriptor, the target of its doorbell.
    pub shard_rings: Vec<RawFd>,
}

impl IngestThread {
    /// Runs the ingest loop on the calling thread until an unrecoverable driver error.
    ///
    /// # Errors
    /// The driver's setup error or that error.
    pub fn run(self) -> io::Result<()> {
        let setup = crate::driver::Setup {
            tick_data: user_data(tag::TICK, 0),
            tick_ms: TICK_MS,
            bell_data: &[UPSTREAM_BELL_DATA, BACKPLANE_BELL_DATA, FLOW_BELL_DATA],
            direct: false,
            files: 0,
            sq_entries: 256,
        };
        let IngestThread {
            listener,
            shared,
            shard_rings,
        } = self;
        let listener = std::os::fd::OwnedFd::from(listener);
        match shared.driver {
            crate::driver::Kind::IoUring => {
                let driver = crate::driver::uring::Uring::new(setup, vec![listener], None)
                    .map_err(io::Error::other)?;
                let mut ingest = Ingest::new(shared, shard_rings, driver.bell());
                driver.run(&mut ingest)
            }
            crate::driver::Kind::Epoll => {
                let driver =
                    crate::driver::epoll::Epoll::new(setup, vec![listener], 0).map_err(io::Error::other)?;
                let mut ingest = Ingest::new(shared, shard_rings, driver.bell());
                driver.run(&mut ingest)
            }
        }
    }
}

impl Ingest {
    /// The loop, once its driver's doorbell `bell` is known to the threads that ring it.
    fn new(shared: Arc<Shared>, shard_rings: Vec<RawFd>, bell: RawFd) -> Ingest {
        shared
            .ingest_ring_fd
            .store(bell, std::sync::atomic::Ordering::Release);
        if let Some(link) = &shared.backplane {
            link.bells
                .ingest
                .store(bell, std::sync::atomic::Ordering::Release);
        }
        let loops = shard_rings.len();
        let node = shared.config.node_name().into();
        let limits = IngestLimits {
            payload_max: shared.config.payload_max,
            line_max: LINE_MAX,
        };
        let shared_flow_lag = shared.config.flow_lag();
        let mut ingest = Ingest {
            ops: Vec::with_capacity(64),
            accept_armed: false,
            publishers: Slab::new(),
            producer: Producer::new(Arc::clone(&shared.broadcast)),
            shard_rings,
            shared,
            limits,
            ticks: 0,
            published: false,
            down_woken: vec![false; loops],
            next_listener: 0,
            stopping_since: None,
            next_serial: 0,
            node,
            flow_lag: shared_flow_lag,
            behind_since: None,
            next_held: 0,
        };
        ingest.arm_accept();
        // Stream events may have arrived before this doorbell existed to be rung.
        ingest.on_backplane();
        ingest
    }
}

impl crate::driver::Loop for Ingest {
    fn outbox(&mut self) -> &mut Vec<Op> {
        &mut self.ops
    }

    fn complete(&mut self, c: Completion<'_>, _now: Instant) {
        self.dispatch(c.data, c.res, c.more);
    }

    fn before_wait(&mut self) -> bool {
        true
    }

    fn after_wait(&mut self, _slept: bool) {}

    fn end_turn(&mut self) -> bool {
        self.stopping_since.is_some() && self.drained()
    }
}

impl Ingest {
    /// During shutdown: true once no acknowledgement is waiting or being sent, or when the
    /// grace period is over.
    fn drained(&self) -> bool {
        let quiet = self.publishers.iter().all(|(_, p)| {
            !p.send_armed && p.replies.is_empty() && p.awaiting.is_empty() && p.sent == p.sending.len()
        });
        let since = self.stopping_since.unwrap_or(self.ticks);
        quiet || self.ticks.wrapping_sub(since) > SHUTDOWN_TICKS
    }

    /// Queues an op. Receive buffers live in their publisher's `input` Vec and send
    /// buffers in its `sending` Vec; neither is touched (resized or dropped) while the
    /// matching `recv_armed`/`send_armed` flag says the driver holds it.
    fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    fn dispatch(&mut self, data: u64, res: i32, more: bool) {
        let index = data as u32 as usize;
        match unpack(data).0 {
            tag::ACCEPT => self.on_accept(res, more),
            tag::RECV => self.on_recv(index, res),
            tag::SEND => self.on_send(index, res),
            tag::TICK => self.on_tick(),
            tag::DOORBELL => {}
            tag::UPSTREAM_BELL => self.route_upstream(),
            tag::BACKPLANE_BELL => self.on_backplane(),
            tag::FLOW_BELL => self.on_flow(),
            t => debug_assert!(false, "unknown ingest completion tag {t}"),
        }
    }

    fn arm_accept(&mut self) {
        self.accept_armed = true;
        self.push(Op::Accept {
            listener: 0,
            slot: 0,
            multishot: true,
            peer: false,
            data: user_data(tag::ACCEPT, 0),
        });
    }

    fn on_accept(&mut self, res: i32, more: bool) {
        if !more {
            self.accept_armed = false;
        }
        if res < 0 {
            // Out of descriptors or memory: the tick re-arms, so this cannot spin.
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing else owns.
        let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(res) };
        let own = crate::sys::socket::peer_pid(&stream) == Some(std::process::id() as i32);
        let taken = self.publishers.iter().filter(|(_, p)| p.own == own).count();
        let room = if own {
            OWN_CONNECTIONS_MAX
        } else {
            self.shared.config.publishers_max
        };
        if taken >= room {
            let _ = (&stream).write_reply(b"-ERR too many publishers connected; closing\r\n");
            if !self.accept_armed {
                self.arm_accept();
            }
            return;
        }
        let index = self.publishers.insert(Publisher {
            stream,
            input: Vec::new(),
            decoder: IngestDecoder::new(self.limits),
            replies: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            recv_armed: false,
            send_armed: false,
            closing: false,
            held: false,
            upstream: false,
            own,
            last_command: self.ticks,
            serial: self.next_serial,
            awaiting: std::collections::VecDeque::new(),
            awaiting_front: 0,
        });
        self.next_serial += 1;
        self.arm_recv(index);
        if !self.accept_armed {
            self.arm_accept();
        }
    }

    fn arm_recv(&mut self, index: usize) {
        let p = &mut self.publishers[index];
        if p.recv_armed
            || p.closing
            || p.held
            || p.replies.len() > REPLY_BACKLOG_MAX
            || p.awaiting.len() >= AWAITING_MAX
        {
            return;
        }
        p.input.reserve(READ_CHUNK);
        let spare = p.input.spare_capacity_mut();
        let op = Op::Recv {
            file: p.stream.as_raw_fd() as u32,
            buf: spare.as_mut_ptr().cast(),
            len: spare.len() as u32,
            data: user_data(tag::RECV, index as u32),
        };
        p.recv_armed = true;
        self.push(op);
    }

    fn on_recv(&mut self, index: usize, res: i32) {
        let Some(p) = self.publishers.get_mut(index) else {
            return;
        };
        p.recv_armed = false;
        if res <= 0 {
            // EOF or error: complete commands were handled; a partial one is dropped.
            p.closing = true;
        } else {
            let len = p.input.len() + res as usize;
            // SAFETY: the kernel wrote `res` bytes into the spare capacity handed to it by
            // `arm_recv`, and the Vec was not touched while the receive was in flight.
            unsafe { p.input.set_len(len) };
            self.process(index);
            // Wake sleeping loops per read, not per batch of completions, so a long
            // pipeline from one publisher cannot lap a loop that was never told.
            if std::mem::take(&mut self.published) {
                self.ring_doorbells(false);
            }
            self.ring_down_doorbells();
        }
        self.arm_recv(index);
        self.flush(index);
    }

    /// Decodes and executes every complete command in the publisher's input.
    fn process(&mut self, index: usize) {
        let mut input = std::mem::take(&mut self.publishers[index].input);
        let mut at = 0;
        while !self.publishers[index].closing {
            let decoded = self.publishers[index].decoder.decode(&input[at..]);
            match decoded {
                Decoded::Command { command, consumed } => {
                    // Decoding keeps no state between commands: a held one is decoded
                    // again when it may go.
                    if self.must_wait(index, &command) {
                        self.publishers[index].held = true;
                        break;
                    }
                    if let Command::Publish(_) = command {
                        match self.flow() {
                            Flow::Go => {}
                            Flow::Hold => {
                                self.publishers[index].held = true;
                                break;
                            }
                            Flow::Refuse(lag) => {
                                at += consumed;
                                self.publishers[index].last_command = self.ticks;
                                let reason = self.behind_reason(lag);
                                self.reply(index, reason.as_bytes());
                                continue;
                            }
                        }
                    }
                    at += consumed;
                    self.publishers[index].last_command = self.ticks;
                    self.execute(index, command);
                }
                Decoded::Error { error, consumed } => {
                    at += consumed;
                    self.reply(index, format!("-ERR {error}\r\n").as_bytes());
                    if error.is_fatal() {
                        self.publishers[index].closing = true;
                    }
                }
                Decoded::Partial { consumed, need } => {
                    at += consumed;
                    if let Some(need) = need {
                        input.reserve(need.saturating_sub(input.len() - at));
                    }
                    break;
                }
            }
        }
        input.drain(..at);
        self.publishers[index].input = input;
    }

    /// With a backplane: whether `command` must wait, because the publisher has
    /// [`AWAITING_MAX`] replies waiting, or because it is a SEND for another node and
    /// the relay has no room ([`backplane::InFlight`]). Backends are slowed down rather
    /// than refused; every relay ends within `--backplane-timeout-ms`.
    fn must_wait(&self, index: usize, command: &Command<'_>) -> bool {
        let Some(link) = &self.shared.backplane else {
            return false;
        };
        if self.publishers[index].awaiting.len() >= AWAITING_MAX {
            return true;
        }
        if let Command::Publish(p) = command {
            return !link.backplane.publishing.room_for(p.payload.len());
        }
        let Command::Send(send) = command else {
            return false;
        };
        match ConnId::parse_addressed(send.conn) {
            Some((Some(node), _)) if node != &*self.node => {
                !link.backplane.relaying.room_for(send.payload.len())
            }
            _ => false,
        }
    }

    /// With `--ingest-flow lag`: whether a `PUB` may be published now. While the slowest
    /// loop trails the head by more than the bound it waits, and the loops behind are
    /// asked to ring this thread once they are a 64th of it closer (a hysteresis, so a
    /// loop at the bound does not ring per event, yet a slow loop releases publishes
    /// soon); once they have been behind for `--ingest-flow-wait-ms`, publishes are
    /// refused until they catch up.
    fn flow(&mut self) -> Flow {
        let Some(bound) = self.flow_lag else {
            return Flow::Go;
        };
        let lag = self.producer.ring().lag();
        if lag <= bound {
            self.behind_since = None;
            return Flow::Go;
        }
        let since = *self.behind_since.get_or_insert_with(Instant::now);
        let waited_ms = since.elapsed().as_millis();
        if waited_ms >= u128::from(self.shared.config.ingest_flow_wait_ms) {
            return Flow::Refuse(lag);
        }
        let ring = self.producer.ring();
        let mark = ring.head() - bound + (bound / FLOW_HYSTERESIS_DIV).max(1);
        if ring.watch(mark) <= bound {
            self.behind_since = None;
            return Flow::Go;
        }
        // Loops asleep since the last publishes of this read have not been told yet.
        if std::mem::take(&mut self.published) {
            self.ring_doorbells(false);
        }
        Flow::Hold
    }

    /// The refusal of a `PUB` the loops had no room for.
    fn behind_reason(&self, lag: u64) -> String {
        format!(
            "-ERR engine behind: a loop trails the newest event by {lag} events (--ingest-flow-lag {}) \
             for over {} ms (--ingest-flow-wait-ms); not published, try again\r\n",
            self.flow_lag.unwrap_or(0),
            self.shared.config.ingest_flow_wait_ms
        )
    }

    /// Lets held publishers go on once answers have made room.
    fn resume_held(&mut self) {
        let mut held: Vec<usize> = self
            .publishers
            .iter()
            .filter(|(_, p)| p.held)
            .map(|(i, _)| i)
            .collect();
        // Each round starts with another publisher, so that under flow control the first
        // in the table does not take the room every time.
        if !held.is_empty() {
            self.next_held = self.next_held.wrapping_add(1);
            let start = self.next_held % held.len();
            held.rotate_left(start);
        }
        for index in held {
            // Nothing arms a receive for a held publisher, so its input is not lent out.
            debug_assert!(
                !self.publishers[index].recv_armed,
                "publisher {index} held with a receive armed"
            );
            self.publishers[index].held = false;
            self.process(index);
            self.arm_recv(index);
            self.flush(index);
        }
        if std::mem::take(&mut self.published) {
            self.ring_doorbells(false);
        }
    }

    /// A loop reached the mark publishes wait for, or the tick: the loops may have
    /// caught up, and the waits of `--ingest-flow-wait-ms` may be over.
    fn on_flow(&mut self) {
        if let Some(bound) = self.flow_lag {
            if self.producer.ring().lag() <= bound {
                self.behind_since = None;
            }
        }
        self.resume_held();
    }

    fn execute(&mut self, index: usize, command: Command<'_>) {
        match command {
            Command::Publish(p) if self.shared.backplane.is_some() => self.forward(index, &p),
            Command::Publish(p) => {
                let id = self.publish(&p);
                ingest::encode_ok(&mut self.publishers[index].replies, &id);
            }
            Command::Ping => self.reply(index, ingest::PONG),
            Command::Quit => {
                self.publishers[index].closing = true;
                self.reply(index, ingest::BYE);
            }
            Command::Upstream => {
                let p = &mut self.publishers[index];
                if !p.upstream {
                    p.upstream = true;
                    self.shared.upstream_listeners.add();
                    // In a cluster the answer waits until other nodes can reach it.
                    if self.ask(index, Request::Listen) {
                        return;
                    }
                }
                self.reply(index, b"+OK upstream\r\n");
            }
            Command::Send(send) => self.send(index, send.conn, send.payload),
        }
    }

    /// With a backplane: hands the request `make` builds (for this publisher's next
    /// ticket) to the backplane thread and holds the publisher's later replies until it
    /// is answered. False when there is no backplane or its thread has stopped.
    fn ask(&mut self, index: usize, make: impl FnOnce(Asker) -> Request) -> bool {
        let Some(link) = &self.shared.backplane else {
            return false;
        };
        let p = &mut self.publishers[index];
        let asker = Asker {
            index,
            serial: p.serial,
            ticket: p.awaiting_front + p.awaiting.len() as u64,
        };
        if !link.backplane.request(make(asker)) {
            return false;
        }
        p.awaiting.push_back(None);
        true
    }

    /// A backend's `SEND`: to a connection of this node at once, to another node's
    /// through the backplane, answered in command order either way.
    fn send(&mut self, index: usize, conn: &str, payload: &[u8]) {
        let Some((node, id)) = ConnId::parse_addressed(conn) else {
            return self.reply(index, b"-ERR invalid connection id\r\n");
        };
        let result = match node.filter(|n| *n != &*self.node) {
            None => self
                .send_down(id, Bytes::copy_from_slice(payload))
                .map_err(str::to_owned),
            Some(node) => match self.relay_send(index, node, id, payload) {
                Ok(()) => return,
                Err(reason) => Err(reason),
            },
        };
        match result {
            Ok(()) => self.reply(index, b"+OK sent\r\n"),
            Err(reason) => self.reply(index, format!("-ERR {reason}\r\n").as_bytes()),
        }
    }

    /// Hands a `SEND` for another node's connection to the backplane; its answer comes
    /// as an acknowledgement.
    fn relay_send(&mut self, index: usize, node: &str, conn: ConnId, payload: &[u8]) -> Result<(), String> {
        let Some(link) = &self.shared.backplane else {
            return Err(format!(
                "no such node: {node} (this engine runs without a backplane)"
            ));
        };
        let relaying = &link.backplane.relaying;
        if !relaying.take(payload.len()) {
            return Err("too many SENDs and messages wait for other nodes; try again".into());
        }
        let payload = Bytes::copy_from_slice(payload);
        let node: Box<str> = node.into();
        let len = payload.len();
        let asked = self.ask(index, |asker| {
            Request::Send(backplane::RelaySend {
                asker,
                node,
                conn,
                payload,
            })
        });
        if asked {
            return Ok(());
        }
        if let Some(link) = &self.shared.backplane {
            link.backplane.relaying.give_back(len);
        }
        Err("backplane unavailable: its thread has stopped".into())
    }

    /// Queues a reply behind any still waiting for the backplane, so replies keep the
    /// order of the commands.
    fn reply(&mut self, index: usize, bytes: &[u8]) {
        let p = &mut self.publishers[index];
        if p.awaiting.is_empty() {
            p.replies.extend_from_slice(bytes);
        } else {
            p.awaiting.push_back(Some(bytes.to_vec()));
        }
    }

    /// With a backplane: hands the publish to it; the reply waits for JetStream.
    fn forward(&mut self, index: usize, p: &Publish<'_>) {
        let Some(link) = &self.shared.backplane else {
            return;
        };
        // Room was there (`must_wait`); the backplane thread gives it back with the answer.
        let _ = link.backplane.publishing.take(p.payload.len());
        let asked = self.ask(index, |asker| {
            Request::Publish(backplane::Publish {
                asker,
                topic: p.topic.into(),
                event: p.event.map(Into::into),
                key: p.key.map(Into::into),
                payload: Bytes::copy_from_slice(p.payload),
            })
        });
        if !asked {
            self.reply(index, b"-ERR backplane unavailable: its thread has stopped\r\n");
        }
    }

    /// The backplane's doorbell: puts stream events into the history and the ring in
    /// stream order, answers the requests the backplane has done or failed, and takes
    /// what other nodes relayed here.
    fn on_backplane(&mut self) {
        let Some(link) = &self.shared.backplane else {
            return;
        };
        let taken = link.backplane.take_for_ingest();
        for consumed in taken.consumed {
            self.publish_consumed(consumed);
        }
        if std::mem::take(&mut self.published) {
            self.ring_doorbells(false);
        }
        self.on_acks(taken.acks);
        self.on_relayed(taken.sends, taken.upstream);
        for undelivered in taken.undelivered {
            self.refuse_upstream(undelivered.from, &undelivered.reason);
        }
        self.resume_held();
        self.ring_down_doorbells();
    }

    /// Fills in the replies the backplane's answers are for, and sends every reply that
    /// no longer waits behind an unanswered one.
    fn on_acks(&mut self, acks: std::collections::VecDeque<backplane::Ack>) {
        let epoch = self.shared.epoch;
        let mut answered = Vec::new();
        for ack in acks {
            let Asker {
                index,
                serial,
                ticket,
            } = ack.asker;
            let Some(p) = self.publishers.get_mut(index).filter(|p| p.serial == serial) else {
                continue;
            };
            let at = ticket.wrapping_sub(p.awaiting_front);
            let Some(slot) = usize::try_from(at).ok().and_then(|at| p.awaiting.get_mut(at)) else {
                continue;
            };
            let mut reply = Vec::new();
            match ack.result {
                Ok(Acked::Stored(seq)) => ingest::encode_ok(&mut reply, &epoch.id(seq)),
                Ok(Acked::Sent) => reply.extend_from_slice(b"+OK sent\r\n"),
                Ok(Acked::Listening) => reply.extend_from_slice(b"+OK upstream\r\n"),
                Err(reason) => reply.extend_from_slice(format!("-ERR {reason}\r\n").as_bytes()),
            }
            *slot = Some(reply);
            while let Some(Some(_)) = p.awaiting.front() {
                let ready = p.awaiting.pop_front().flatten().expect("checked");
                p.awaiting_front += 1;
                p.replies.extend_from_slice(&ready);
            }
            answered.push(index);
        }
        answered.sort_unstable();
        answered.dedup();
        for index in answered {
            self.arm_recv(index);
            self.flush(index);
        }
    }

    /// What other nodes relayed here: SENDs for this node's connections, and client
    /// messages for its backends; each is answered through the backplane.
    fn on_relayed(
        &mut self,
        sends: std::collections::VecDeque<backplane::InboundSend>,
        upstream: std::collections::VecDeque<backplane::InboundUp>,
    ) {
        let shared = Arc::clone(&self.shared);
        let Some(link) = &shared.backplane else {
            return;
        };
        for send in sends {
            let result = self.send_down(send.conn, send.payload);
            link.backplane.request(Request::Answer {
                reply: send.reply,
                result: result.map_err(str::to_owned),
            });
        }
        for up in upstream {
            let result = match self.pick_listener() {
                Some(index) => {
                    self.push_msg(index, &up.from, up.text, &up.payload, up.sub.as_deref());
                    Ok(())
                }
                None if shared.upstream_listeners.any() => Err(format!(
                    "every backend on node {} is behind on its messages; message not delivered",
                    self.node
                )),
                None => Err(NO_BACKEND.to_owned()),
            };
            link.backplane.request(Request::Answer {
                reply: up.reply,
                result,
            });
        }
    }

    /// An event the stream delivered: retained and handed to every loop, with its stream
    /// sequence as its id.
    fn publish_consumed(&mut self, c: crate::backplane::Consumed) {
        let now = Instant::now();
        let event = Arc::new(Event::new(
            self.shared.epoch,
            c.seq,
            &c.topic,
            c.event.as_deref(),
            c.key.as_deref(),
            &c.payload,
            now,
        ));
        self.retain_and_ring(event, now);
    }

    /// Puts `event` into the history and the broadcast ring; the loops are woken after.
    fn retain_and_ring(&mut self, event: Arc<Event>, now: Instant) {
        self.shared
            .history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(Arc::clone(&event), now);
        self.producer.push(event);
        self.published = true;
    }

    /// Hands a backend's `SEND` to the client's loop. `+OK` means queued there: a
    /// connection that has closed meanwhile never gets it (the loop counts that).
    fn send_down(&mut self, id: ConnId, payload: Bytes) -> Result<(), &'static str> {
        let mailbox = self
            .shared
            .mailboxes
            .get(id.shard as usize)
            .ok_or("no such connection: its loop does not exist")?;
        let msg = Downstream {
            index: id.index,
            generation: id.generation,
            payload,
            refusal: false,
        };
        if !mailbox.push_down(msg) {
            return Err("the connection's loop has too much queued; try again");
        }
        self.down_woken[id.shard as usize] = true;
        Ok(())
    }

    /// Moves client messages from every loop's mailbox to backends listening with
    /// `UPSTREAM`, round-robin, as `MSG <conn-id> <length> text|binary` pushes. With a
    /// backplane the id names this node, and a message no local backend can take is
    /// relayed to a backend on another node. A message no backend can take goes back to
    /// its client as an error.
    fn route_upstream(&mut self) {
        let shared = Arc::clone(&self.shared);
        for mailbox in &shared.mailboxes {
            for msg in mailbox.take_up() {
                if let Some(index) = self.pick_listener() {
                    let from = match shared.backplane {
                        Some(_) => format!("{}/{}", self.node, msg.from),
                        None => msg.from.to_string(),
                    };
                    let sub = msg.sub.as_deref().map(crate::upstream::encode_sub);
                    self.push_msg(index, &from, msg.text, &msg.payload, sub.as_deref());
                    continue;
                }
                match &shared.backplane {
                    Some(link) => {
                        let from = msg.from;
                        if let Err(reason) = relay_up(&link.backplane, msg) {
                            self.refuse_upstream(from, &reason);
                        }
                    }
                    None => self.refuse_upstream(msg.from, NO_BACKEND),
                }
            }
        }
        self.ring_down_doorbells();
    }

    /// Pushes a client's message to backend `index`: `MSG <from> <length> text|binary`, and
    /// with subscriber auth the sender's `sub` (percent-encoded) after them.
    fn push_msg(&mut self, index: usize, from: &str, text: bool, payload: &[u8], sub: Option<&str>) {
        let p = &mut self.publishers[index];
        let kind = if text { "text" } else { "binary" };
        let line = match sub {
            Some(sub) => format!("MSG {from} {} {kind} {sub}\r\n", payload.len()),
            None => format!("MSG {from} {} {kind}\r\n", payload.len()),
        };
        p.replies.extend_from_slice(line.as_bytes());
        p.replies.extend_from_slice(payload);
        p.replies.extend_from_slice(b"\r\n");
        self.flush(index);
    }

    /// Sends a client's message back to it undelivered, as
    /// `{"event":"ringcast.error","reason":..,"topic":null}`.
    fn refuse_upstream(&mut self, from: ConnId, reason: &str) {
        let mut text = Vec::with_capacity(64 + reason.len());
        text.extend_from_slice(b"{\"event\":\"ringcast.error\",\"reason\":");
        json::push_string(&mut text, reason);
        text.extend_from_slice(b",\"topic\":null}");
        let back = Downstream {
            index: from.index,
            generation: from.generation,
            payload: Bytes::from(text),
            refusal: true,
        };
        let Some(mailbox) = self.shared.mailboxes.get(from.shard as usize) else {
            return;
        };
        if mailbox.push_down(back) {
            self.down_woken[from.shard as usize] = true;
        }
    }

    /// The next backend listening for client messages that is keeping up with them.
    fn pick_listener(&mut self) -> Option<usize> {
        let listeners: Vec<usize> = self
            .publishers
            .iter()
            .filter(|(_, p)| p.upstream && !p.closing && p.replies.len() < UPSTREAM_BACKLOG_MAX)
            .map(|(i, _)| i)
            .collect();
        if listeners.is_empty() {
            return None;
        }
        self.next_listener = self.next_listener.wrapping_add(1);
        Some(listeners[self.next_listener % listeners.len()])
    }

    /// Wakes the loops that were handed backend messages.
    fn ring_down_doorbells(&mut self) {
        for shard in 0..self.down_woken.len() {
            if std::mem::take(&mut self.down_woken[shard]) {
                self.push(Op::Bell {
                    target: self.shard_rings[shard],
                    deliver: DOORBELL_DATA,
                    data: user_data(tag::DOORBELL, shard as u32),
                });
            }
        }
    }

    /// Assigns the next id, retains the event, and hands it to every loop. Returns the id.
    fn publish(&mut self, p: &Publish<'_>) -> Box<str> {
        let now = Instant::now();
        let seq = self.producer.next_seq();
        let event = Arc::new(Event::new(
            self.shared.epoch,
            seq,
            p.topic,
            p.event,
            p.key,
            p.payload,
            now,
        ));
        let id = event.id.clone();
        self.retain_and_ring(event, now);
        id
    }

    /// Rings the loops that parked; with `all_behind`, also every loop whose cursor trails
    /// the head (the safety net behind a doorbell that failed).
    fn ring_doorbells(&mut self, all_behind: bool) {
        let mut wake: Vec<usize> = self.producer.take_parked().collect();
        if all_behind {
            let ring = self.producer.ring();
            wake.extend((0..ring.readers()).filter(|&r| ring.cursor(r) < ring.head()));
            wake.sort_unstable();
            wake.dedup();
        }
        for shard in wake {
            self.push(Op::Bell {
                target: self.shard_rings[shard],
                deliver: DOORBELL_DATA,
                data: user_data(tag::DOORBELL, shard as u32),
            });
        }
    }

    fn flush(&mut self, index: usize) {
        let p = &mut self.publishers[index];
        if p.send_armed {
            return;
        }
        if p.sent == p.sending.len() {
            p.sending.clear();
            p.sent = 0;
            std::mem::swap(&mut p.sending, &mut p.replies);
        }
        if p.sending.is_empty() {
            if p.closing && !p.recv_armed && p.awaiting.is_empty() && self.publishers.remove(index).upstream {
                self.shared.upstream_listeners.remove();
                if let Some(link) = &self.shared.backplane {
                    link.backplane.request(Request::Unlisten);
                }
            }
            return;
        }
        let rest = &p.sending[p.sent..];
        let op = Op::Send {
            file: p.stream.as_raw_fd() as u32,
            buf: rest.as_ptr(),
            len: rest.len() as u32,
            data: user_data(tag::SEND, index as u32),
        };
        p.send_armed = true;
        self.push(op);
    }

    fn on_send(&mut self, index: usize, res: i32) {
        let Some(p) = self.publishers.get_mut(index) else {
            return;
        };
        p.send_armed = false;
        if res <= 0 {
            // The publisher is gone; what it did not read it cannot read.
            p.closing = true;
            p.sending.clear();
            p.replies.clear();
            p.sent = 0;
        } else {
            p.sent += res as usize;
        }
        self.arm_recv(index);
        self.flush(index);
    }

    fn on_tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.stopping_since.is_none() && self.shared.stopping.load(std::sync::atomic::Ordering::Acquire) {
            self.stopping_since = Some(self.ticks);
        }
        if !self.accept_armed && self.stopping_since.is_none() {
            self.arm_accept();
        }
        self.ring_doorbells(true);
        // The safety net behind a backplane doorbell rung before this ring existed.
        self.on_backplane();
        if self.flow_lag.is_some() {
            // Ends the waits of `--ingest-flow-wait-ms`, to the tick.
            self.on_flow();
        }
        if self.ticks.is_multiple_of(IDLE_CHECK_TICKS) {
            self.close_idle();
        }
        if self.ticks.is_multiple_of(EXPIRE_EVERY_TICKS) {
            self.shared
                .history
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .expire(Instant::now());
        }
    }
}

impl Ingest {
    /// Tells publishers that have sent no command for `--publisher-idle-ms` why they are
    /// closed, and closes them: shutting the read side ends their pending receive, and
    /// the connection goes once the reply is sent.
    fn close_idle(&mut self) {
        let idle_ms = self.shared.config.publisher_idle_ms;
        if idle_ms == 0 {
            return;
        }
        let idle_ticks = u32::try_from(idle_ms.div_ceil(TICK_MS)).unwrap_or(u32::MAX);
        let now = self.ticks;
        let idle: Vec<usize> = self
            .publishers
            .iter()
            .filter(|(_, p)| {
                !p.own
                    && !p.upstream
                    && !p.closing
                    && p.awaiting.is_empty()
                    && now.wrapping_sub(p.last_command) >= idle_ticks
            })
            .map(|(i, _)| i)
            .collect();
        for index in idle {
            let p = &mut self.publishers[index];
            p.replies.extend_from_slice(
                format!("-ERR no command for {idle_ms} ms (see --publisher-idle-ms); closing\r\n").as_bytes(),
            );
            p.closing = true;
            let _ = p.stream.shutdown(std::net::Shutdown::Read);
            self.flush(index);
        }
    }
}

/// Hands a client's message no local backend can take to the backplane for a backend on
/// another node; the reason when it cannot go.
fn relay_up(backplane: &backplane::Backplane, msg: crate::upstream::Upstream) -> Result<(), String> {
    let max = backplane
        .relay_payload_max
        .load(std::sync::atomic::Ordering::Acquire);
    if msg.payload.len() > max {
        return Err(format!(
            "message of {} bytes is over the backplane's limit of {max} bytes; not delivered",
            msg.payload.len()
        ));
    }
    if !backplane.relaying.take(msg.payload.len()) {
        return Err("upstream queue full; message not delivered".into());
    }
    let len = msg.payload.len();
    let relay = backplane::RelayUp {
        from: msg.from,
        text: msg.text,
        payload: msg.payload,
        sub: msg.sub,
    };
    if backplane.request(Request::Upstream(relay)) {
        return Ok(());
    }
    backplane.relaying.give_back(len);
    Err("backplane unavailable: its thread has stopped".into())
}

/// A best-effort one-off reply on a connection being turned away.
trait WriteReply {
    fn write_reply(self, bytes: &[u8]) -> io::Result<()>;
}

impl WriteReply for &UnixStream {
    fn write_reply(self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut s = self;
        s.set_nonblocking(true)?;
        s.write_all(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::counters::Counters;
    use crate::event::Epoch;
    use crate::ring::broadcast::Broadcast;
    use crate::ring::history::History;
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::{AtomicBool, AtomicI32};
    use std::sync::Mutex;

    /// One loop's worth of shared state; the loop itself is played by the test, which
    /// moves that loop's ring cursor by hand.
    fn shared(flags: &[&str]) -> Arc<Shared> {
        let config = Config::from_flags(flags).expect("test flags parse");
        config.validate().expect("test flags are valid");
        Arc::new(Shared {
            epoch: Epoch::from_raw(0x5eed),
            broadcast: Broadcast::new(config.ring_slots, 1),
            history: Mutex::new(History::with_origin(config.history_limits(), 0)),
            counters: vec![Arc::new(Counters::default())],
            mailboxes: vec![crate::upstream::Mailbox::default()],
            upstream_listeners: crate::upstream::Listeners::default(),
            ingest_ring_fd: AtomicI32::new(-1),
            stopping: AtomicBool::new(false),
            ingest_stopped: AtomicBool::new(false),
            backplane: None,
            auth: None,
            admission: None,
            start_seq: 0,
            driver: crate::driver::Kind::Epoll,
            config,
        })
    }

    /// The ingest thread with one publisher, connected over a real socket pair. The test
    /// is its driver: it hands the publisher's input in and takes the replies out, and
    /// runs none of the queued ops.
    fn ingest(flags: &[&str]) -> (Ingest, UnixStream) {
        let shared = shared(flags);
        let mut ingest = Ingest::new(shared, vec![-1], -1);
        let (ours, theirs) = UnixStream::pair().expect("socket pair");
        ingest.on_accept(theirs.into_raw_fd(), true);
        (ingest, ours)
    }

    /// Hands `input` to publisher 0 as a receive would, and returns the replies it made.
    fn feed(ingest: &mut Ingest, input: &[u8]) -> String {
        ingest.publishers[0].recv_armed = false;
        ingest.publishers[0].input.extend_from_slice(input);
        ingest.process(0);
        replies(ingest)
    }

    /// The replies handed to the kernel (as if it sent them whole) and those not yet.
    fn replies(ingest: &mut Ingest) -> String {
        let p = &mut ingest.publishers[0];
        p.recv_armed = false;
        p.send_armed = false;
        let mut out = std::mem::take(&mut p.sending);
        p.sent = 0;
        out.append(&mut p.replies);
        String::from_utf8(out).expect("UTF-8 replies")
    }

    fn pubs(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("PUB t 1\n{}\n", i % 10).into_bytes())
            .collect()
    }

    fn oks(replies: &str) -> usize {
        replies.lines().filter(|l| l.starts_with("+OK ")).count()
    }

    const LAG: [&str; 8] = [
        "--ingest-flow",
        "lag",
        "--ingest-flow-lag",
        "8",
        "--ring-slots",
        "64",
        "--ingest-flow-wait-ms",
        "100",
    ];

    #[test]
    fn publishes_wait_for_a_loop_behind_the_bound_and_go_on_when_it_reads() {
        let (mut ingest, _peer) = ingest(&LAG);
        let ring = Arc::clone(&ingest.shared.broadcast);
        // The loop reads nothing: 9 publishes take the lag to 9, past the bound of 8.
        let first = feed(&mut ingest, &pubs(20));
        assert_eq!((oks(&first), first.lines().count()), (9, 9), "{first}");
        assert!(ingest.publishers[0].held, "the 10th PUB waits");
        assert_eq!(ring.lag(), 9);
        // The loop reads two events: not yet the mark (a 64th of the bound, at least one
        // event, below the lag at the hold).
        ring.set_cursor(0, 2);
        assert!(!ring.reached_mark(0, 2));
        ring.set_cursor(0, 3);
        assert!(
            ring.reached_mark(0, 3),
            "the loop would ring the ingest thread now"
        );
        ingest.on_flow();
        assert_eq!(oks(&replies(&mut ingest)), 2, "two more fit under the bound");
        assert!(ingest.publishers[0].held);
        // A PING behind the held PUBs waits with them: replies keep the command order.
        assert_eq!(feed(&mut ingest, b"PING\n"), "");
        // The loop reads everything: the last 9 go (the lag back at 9), and the PING is
        // answered after them.
        ring.set_cursor(0, ring.head());
        assert!(ring.reached_mark(0, ring.head()));
        ingest.on_flow();
        let rest = replies(&mut ingest);
        assert_eq!((oks(&rest), rest.lines().count()), (9, 10), "{rest}");
        assert!(rest.ends_with("+PONG\r\n"), "{rest}");
        assert!(!ingest.publishers[0].held);
        assert_eq!(ring.lag(), 9);
        // One more PUB finds the loop past the bound and waits.
        assert_eq!(feed(&mut ingest, &pubs(1)), "");
        assert!(ingest.publishers[0].held);
    }

    #[test]
    fn publishes_are_refused_once_the_loops_stay_behind_for_the_wait() {
        let (mut ingest, _peer) = ingest(&LAG);
        let ring = Arc::clone(&ingest.shared.broadcast);
        assert_eq!(oks(&feed(&mut ingest, &pubs(12))), 9);
        std::thread::sleep(Duration::from_millis(150));
        // The tick ends the wait: the held PUB and those behind it are refused, not
        // published, and the connection stays open.
        ingest.on_flow();
        let refused = replies(&mut ingest);
        assert_eq!(refused.lines().count(), 3, "{refused}");
        for line in refused.lines() {
            assert!(
                line.starts_with("-ERR engine behind: a loop trails the newest event by 9 events (--ingest-flow-lag 8) for over 100 ms"),
                "{line}"
            );
        }
        assert_eq!(ring.head(), 10, "nothing refused was published");
        assert!(!ingest.publishers[0].closing && !ingest.publishers[0].held);
        // Once the loop has caught up, publishing goes on at once.
        ring.set_cursor(0, ring.head());
        ingest.on_flow();
        assert_eq!(oks(&feed(&mut ingest, &pubs(1))), 1);
    }

    #[test]
    fn with_accept_nothing_waits_for_the_loops() {
        let (mut ingest, _peer) = ingest(&["--ring-slots", "64"]);
        let all = feed(&mut ingest, &pubs(200));
        assert_eq!(
            oks(&all),
            200,
            "the ring is lapped, every publish is acknowledged"
        );
        assert!(!ingest.publishers[0].held);
    }
}
