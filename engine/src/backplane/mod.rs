//! The cluster backplane: NATS JetStream as the one ordered, durable log every node
//! publishes to and serves from (`--backplane nats://HOST:PORT[,...]`). Without the flag
//! none of this runs and the engine is a single node with in-memory history.
//!
//! # Shape
//!
//! ```text
//!  publishers -> ingest thread --PUB--> backplane thread --batch or pipeline--> JetStream stream
//!                  ^    |  acks, stream events (in stream order)   |            |
//!                  |    `------------------------------------------'  ordered consumer
//!                  |                                                             |
//!   broadcast ring + history <- ingest thread <- every stored event <------------'
//!   loops --resume a node's history cannot fill--> backplane thread --direct get--> stream
//! ```
//!
//! The io_uring loops see only the broadcast ring, as on a single node. The backplane
//! thread runs async-nats on a current-thread tokio runtime of its own; it talks to the
//! ingest thread and the loops through the mailboxes of [`Backplane`] and wakes them with
//! doorbells (`MSG_RING` from a small ring of its own, or eventfd writes on epoll).
//!
//! # One id space
//!
//! All topics share one stream (`--backplane-stream`, default `RINGCAST`) over the subjects
//! `<stream>.<topic>` (see [`subject`]). An event's id is `<epoch>-<seq>`: `seq` is its
//! stream sequence and `epoch` the stream's creation time, so every node and transport
//! gives an event the same id, ids survive node restarts, and they change only when the
//! stream is recreated (a client then gets `ringcast.reset` with `unknown-epoch`).
//!
//! # Publishing
//!
//! `+OK <id>` is sent only once JetStream has stored the event. Every message names its
//! topic's previous message (`Ringcast-Prev`, see [`proof`]), checked by JetStream with
//! `Nats-Expected-Last-Subject-Sequence`, so a stored predecessor is never a wrong one.
//! Two ways to get there (`--backplane-publish`):
//!
//! - `batched` (the default): JetStream atomic batches (up to [`nats::BATCH_MESSAGES_MAX`]
//!   events), one batch in flight at a time, so events keep the order the node received
//!   them in while a batch carries many of them per round trip; JetStream syncs a batch
//!   to disk before acknowledging it, so an acknowledged event survives even a lone
//!   server's crash. A batch refused because another node published one of its topics in
//!   between is retried with the new predecessor.
//! - `pipelined`: plain publishes, up to [`nats::WINDOW_MAX`] in flight, acknowledged as
//!   JetStream acknowledges them (held by the stream leader and, with replicas, a quorum;
//!   not yet synced). A predecessor still in flight is predicted; another node's message
//!   in between makes the check fail for those that relied on it, and they are sent again
//!   (see `nats::Pipeline`).
//!
//! When NATS cannot be reached a publish is answered `-ERR backplane unavailable: <reason>`
//! at once (no connection: nothing was sent) or within `--backplane-timeout-ms` (sent,
//! never acknowledged: the reason then says the event may still have been stored, which
//! happens when NATS goes away between receiving a publish and answering it).
//!
//! # Serving
//!
//! Each node consumes the whole stream from where it stood when the node started, with an
//! ordered consumer, and its ingest thread puts every event into the broadcast ring and
//! the history in stream order, so every subscriber on every node gets every event once,
//! in one order. The history is a cache in front of the stream: it starts knowing nothing
//! before the node's start, and a resume it cannot fill (from before the start, or evicted
//! locally) is read from the stream with direct gets, a page at a time, and proven whole
//! or told as a reset (see [`proof`]). Stream limits map from the history flags:
//! `--history-events` is the stream's messages per subject, `--history-age-secs` its
//! maximum age, `--history-bytes-total` its maximum bytes; `--history-bytes` (per topic)
//! bounds only the local cache, JetStream having no per-subject byte limit.
//!
//! # Upstream across nodes
//!
//! A WebSocket lives on one node, its backend may be connected to any. In a cluster a
//! connection id names its node, `<node>/<loop>.<slot>.<generation>` (`--node-id`), and
//! the ingest thread hands what it cannot do locally to the backplane thread, which
//! relays it as a NATS request outside the stream (see [`relay`]):
//!
//! ```text
//!  backend --SEND b/0.4.1--> ingest(a) --Request::Send--> backplane(a) --request-->
//!      ringcast-relay.<stream>.send.b --> backplane(b) --ToIngest::sends--> ingest(b)
//!      --send_down--> loop 0 of b;  the answer goes back the same way, `+OK sent` or
//!      `-ERR <reason>` in the backend's command order (an [`Ack`] of [`Acked::Sent`])
//!
//!  client on a --> ingest(a): no local backend --Request::Upstream--> backplane(a)
//!      --request--> ringcast-relay.<stream>.up (queue group of the nodes with a backend)
//!      --> backplane(b) --ToIngest::upstream--> ingest(b) --MSG a/0.4.1--> a backend on b
//! ```
//!
//! A node subscribes to the queue group while it has a local backend (`UPSTREAM` is
//! answered once the subscription has reached NATS). No node subscribed is NATS's "no
//! responders": a SEND gets `-ERR no such node: <node>`, a client message the usual
//! `ringcast.error` that no backend listens. Every relay is answered within
//! `--backplane-timeout-ms` and bounded in count and bytes on both sides
//! ([`RELAY_MESSAGES_MAX`], [`INBOUND_MESSAGES_MAX`]).
pub mod nats;
pub mod proof;
pub mod relay;
pub mod subject;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use crate::event::Event;
use crate::ring::history::PageLimits;
use crate::upstream::ConnId;

/// Events the backplane thread may have waiting for the ingest thread; beyond this it
/// stops reading the stream until the ingest thread catches up (JetStream holds the rest).
pub const CONSUMED_WAITING_MAX: usize = 16_384;

/// SENDs and client messages this node has relayed to other nodes and not yet seen
/// answered; beyond this a SEND is refused and a client told its message was not taken.
pub const RELAY_MESSAGES_MAX: usize = 4096;
/// Publishes waiting for JetStream, all publishers of a node together.
pub const PUBLISHING_MESSAGES_MAX: usize = 32_768;
/// Payload bytes of publishes waiting for JetStream.
pub const PUBLISHING_BYTES_MAX: usize = 64 << 20;
/// Their payload bytes.
pub const RELAY_BYTES_MAX: usize = 16 << 20;
/// SENDs and client messages from other nodes waiting for the ingest thread; beyond this
/// the backplane thread answers them itself that this node is busy.
pub const INBOUND_MESSAGES_MAX: usize = 4096;
/// Their payload bytes.
pub const INBOUND_BYTES_MAX: usize = 16 << 20;

/// Who asked the backplane, for the answer: a publisher's slab index and serial, and the
/// ticket of the reply the answer fills in (a publisher's replies keep command order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asker {
    pub index: usize,
    pub serial: u64,
    pub ticket: u64,
}

/// A publisher's event on its way to JetStream.
pub struct Publish {
    pub asker: Asker,
    pub topic: Box<str>,
    pub event: Option<Box<str>>,
    pub key: Option<Box<str>>,
    pub payload: Bytes,
}

/// What the backplane did for an [`Asker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acked {
    /// A [`Publish`] was stored with this stream sequence: `+OK <id>`.
    Stored(u64),
    /// A [`RelaySend`] was queued for its connection on the other node: `+OK sent`.
    Sent,
    /// An `UPSTREAM` backend is reachable from every node: `+OK upstream`.
    Listening,
}

/// The answer to a request of an [`Asker`], or the reason it failed (`-ERR <reason>`).
pub struct Ack {
    pub asker: Asker,
    pub result: Result<Acked, String>,
}

/// A backend's `SEND` for a connection on another node.
pub struct RelaySend {
    pub asker: Asker,
    /// The node holding the connection.
    pub node: Box<str>,
    pub conn: ConnId,
    pub payload: Bytes,
}

/// A client's message that no backend on this node could take, for one on another node.
pub struct RelayUp {
    pub from: ConnId,
    /// A text frame (else binary).
    pub text: bool,
    pub payload: Bytes,
    /// The client's token's `sub`, with subscriber auth.
    pub sub: Option<std::sync::Arc<str>>,
}

/// A `SEND` another node relayed for a connection of this node.
pub struct InboundSend {
    pub conn: ConnId,
    pub payload: Bytes,
    /// Where the answer goes (a NATS reply subject).
    pub reply: String,
}

/// A client's message another node relayed for a backend of this node.
pub struct InboundUp {
    /// The client's connection id, `<node>/<loop>.<slot>.<generation>` (checked).
    pub from: String,
    pub text: bool,
    pub payload: Bytes,
    /// The client's token's `sub`, percent-encoded as the `MSG` line carries it.
    pub sub: Option<String>,
    pub reply: String,
}

/// A client's message relayed to other nodes that no backend took, and why.
pub struct Undelivered {
    pub from: ConnId,
    pub reason: String,
}

/// An event the stream delivered, in stream order.
pub struct Consumed {
    pub seq: u64,
    pub topic: String,
    pub event: Option<String>,
    pub key: Option<String>,
    pub payload: Bytes,
}

/// A loop's request for what its history cannot replay: events of `topics` in
/// `(after, upto]`, at most a page.
pub struct FetchRequest {
    pub shard: usize,
    pub index: u32,
    pub generation: u32,
    pub topics: Vec<Box<str>>,
    pub after: u64,
    pub upto: u64,
    pub limits: PageLimits,
}

/// The stream's answer to a [`FetchRequest`].
pub struct Fetched {
    pub index: u32,
    pub generation: u32,
    pub after: u64,
    /// The end of the range asked for.
    pub upto: u64,
    /// The events, in order.
    pub events: Vec<Arc<Event>>,
    /// The stream proved nothing of the range is missing (see [`proof`]).
    pub whole: bool,
    /// The page stopped at its limits: more follow its last event.
    pub more: bool,
    /// The stream could not be read: the reason (the range is treated as not whole).
    pub error: Option<String>,
}

/// What the backplane thread hands the ingest thread.
#[derive(Default)]
pub struct ToIngest {
    pub consumed: VecDeque<Consumed>,
    pub acks: VecDeque<Ack>,
    /// Bounded with `upstream` by [`INBOUND_MESSAGES_MAX`] and `inbound_bytes`.
    pub sends: VecDeque<InboundSend>,
    pub upstream: VecDeque<InboundUp>,
    /// Payload bytes of `sends` and `upstream`, bounded by [`INBOUND_BYTES_MAX`].
    pub inbound_bytes: usize,
    /// At most one per relayed client message, so bounded by [`RELAY_MESSAGES_MAX`].
    pub undelivered: VecDeque<Undelivered>,
}

/// Requests to the backplane thread.
pub enum Request {
    Publish(Publish),
    Fetch(FetchRequest),
    /// Relay a `SEND` to the node holding the connection; answered with an [`Ack`].
    Send(RelaySend),
    /// Relay a client's message to a backend on another node; answered only when it
    /// fails, with an [`Undelivered`].
    Upstream(RelayUp),
    /// A backend on this node sent `UPSTREAM`: join the queue group if it is the first,
    /// then answer with an [`Ack`] of [`Acked::Listening`].
    Listen(Asker),
    /// A backend that had sent `UPSTREAM` left: leave the queue group if it was the last.
    Unlisten,
    /// The answer to an [`InboundSend`] or [`InboundUp`]: `Ok` when it was taken.
    Answer {
        reply: String,
        result: Result<(), String>,
    },
}

/// Relayed messages awaiting their answer: the ingest thread takes room before it asks
/// the backplane thread, which gives it back once the answer is in, so that what waits
/// on other nodes (or on NATS) is bounded by [`RELAY_MESSAGES_MAX`] and [`RELAY_BYTES_MAX`].
/// A backend's SEND waits for room ([`InFlight::room_for`]); a client's message that
/// finds none is refused.
pub struct InFlight {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// A SEND waits for room: the ingest thread is rung when some is given back.
    wanted: AtomicBool,
    messages_max: usize,
    bytes_max: usize,
}

impl Default for InFlight {
    /// The relay's bounds.
    fn default() -> Self {
        InFlight::new(RELAY_MESSAGES_MAX, RELAY_BYTES_MAX)
    }
}

impl InFlight {
    /// A budget of `messages_max` messages and `bytes_max` bytes.
    pub fn new(messages_max: usize, bytes_max: usize) -> Self {
        InFlight {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            wanted: AtomicBool::new(false),
            messages_max,
            bytes_max,
        }
    }

    /// Whether one more message of `bytes` fits (always, when nothing is in flight, so a
    /// payload over the byte bound cannot wait forever); when not, the ingest thread is
    /// rung once room is given back.
    pub fn room_for(&self, bytes: usize) -> bool {
        let messages = self.messages.load(Ordering::Acquire);
        let held = self.bytes.load(Ordering::Acquire);
        let fits = messages == 0 || (messages < self.messages_max && held + bytes <= self.bytes_max);
        if !fits {
            self.wanted.store(true, Ordering::Release);
        }
        fits
    }

    /// Takes room for one message of `bytes`; false (and nothing taken) when it does not
    /// fit. Only the ingest thread takes, so room seen by [`InFlight::room_for`] is there.
    pub fn take(&self, bytes: usize) -> bool {
        if !self.room_for(bytes) {
            return false;
        }
        self.messages.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        true
    }

    /// Gives back the room of one answered message; true when a SEND was waiting for it
    /// (the caller rings the ingest thread).
    pub fn give_back(&self, bytes: usize) -> bool {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.wanted.swap(false, Ordering::AcqRel)
    }
}

/// The backplane as every other thread sees it.
pub struct Backplane {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
    /// Filled by the backplane thread, drained by the ingest thread.
    pub to_ingest: Mutex<ToIngest>,
    /// Rung, not yet drained: the backplane thread rings the ingest thread only once.
    pub ingest_bell_pending: AtomicBool,
    /// The ingest thread drained `to_ingest`: the backplane thread may read the stream on.
    pub drained: tokio::sync::Notify,
    /// Per loop: answers to its fetches.
    pub fetched: Vec<Mutex<Vec<Fetched>>>,
    pub status: Status,
    /// Relayed messages awaiting their answer.
    pub relaying: InFlight,
    /// Publishes handed to the backplane thread and not yet answered: a publisher waits
    /// (is not read) while they hold [`PUBLISHING_MESSAGES_MAX`] or
    /// [`PUBLISHING_BYTES_MAX`].
    pub publishing: InFlight,
    /// The largest payload a relayed message may have (the NATS server's limit less
    /// room for headers); set once joined.
    pub relay_payload_max: AtomicUsize,
}

/// The backplane's health, for `/healthz`, `/metrics` and the loops.
#[derive(Default)]
pub struct Status {
    /// Connected to NATS.
    pub up: AtomicBool,
    /// Why not, when not.
    pub reason: Mutex<String>,
    /// The newest stream sequence this node knows of (from acks and the consumer).
    pub last_seq: AtomicU64,
    /// Events stored through this node.
    pub published: AtomicU64,
    /// Publishes refused because the backplane could not store them.
    pub refused: AtomicU64,
    /// Batches retried because another node published one of their topics in between.
    pub conflicts: AtomicU64,
    /// Events read from the stream.
    pub consumed: AtomicU64,
    /// Resumes read from the stream rather than the local history.
    pub fetches: AtomicU64,
    /// Stream sequences this node never received (evicted before it read them).
    pub skipped: AtomicU64,
    /// Atomic batches sent (their events are `published` or `refused`).
    pub batches: AtomicU64,
    /// Backends' `SEND`s relayed to the node holding the connection.
    pub sends_relayed: AtomicU64,
    /// `SEND`s other nodes relayed for this node's connections.
    pub sends_received: AtomicU64,
    /// Client messages relayed to backends on other nodes.
    pub upstream_relayed: AtomicU64,
    /// Client messages other nodes relayed for this node's backends.
    pub upstream_received: AtomicU64,
    /// Relayed `SEND`s and client messages not taken: refused by the other node, no
    /// such node, no backend anywhere, or no answer in time.
    pub relay_failed: AtomicU64,
}

impl Status {
    pub fn set_down(&self, reason: impl Into<String>) {
        self.up.store(false, Ordering::Release);
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.into();
    }

    pub fn set_up(&self) {
        self.up.store(true, Ordering::Release);
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Backplane {
    /// Hands a request to the backplane thread. False when the thread has gone.
    pub fn request(&self, request: Request) -> bool {
        self.requests.send(request).is_ok()
    }

    /// Takes what waits for the ingest thread and lets the backplane thread read on.
    pub fn take_for_ingest(&self) -> ToIngest {
        self.ingest_bell_pending.store(false, Ordering::Release);
        let taken = std::mem::take(&mut *self.to_ingest.lock().unwrap_or_else(PoisonError::into_inner));
        self.drained.notify_one();
        taken
    }

    /// Takes loop `shard`'s answered fetches.
    pub fn take_fetched(&self, shard: usize) -> Vec<Fetched> {
        let mut slot = self.fetched[shard].lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut *slot)
    }
}

/// The backplane as the engine's threads hold it.
pub struct Link {
    pub backplane: Arc<Backplane>,
    pub bells: Arc<nats::Bells>,
}

/// Where the stream stood when this node joined it.
#[derive(Clone, Copy, Debug)]
pub struct Joined {
    /// The stream's creation time in microseconds: the epoch of every id.
    pub epoch_micros: u64,
    /// The stream's last sequence at the join: the history knows nothing at or before it.
    pub last_seq: u64,
    /// The largest payload the NATS server takes, less room for headers.
    pub payload_max: usize,
}

/// Why the backplane did not start.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    #[error("cannot reach the backplane {urls}: {reason}; start nats-server with JetStream (-js) or fix --backplane")]
    Unreachable { urls: String, reason: String },
    #[error("the backplane stream {stream} cannot be used as ringcast's: {why}; delete it, or pass --backplane-stream with another name")]
    Incompatible { stream: String, why: String },
    #[error("the backplane stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("cannot start the backplane thread: {0}")]
    Thread(String),
    #[error("another node of the cluster is running as {node}; give each node its own --node-id")]
    DuplicateNode { node: String },
}
