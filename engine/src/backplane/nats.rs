//! The backplane thread: async-nats on a current-thread tokio runtime, and four tasks on
//! it (a `LocalSet`, so they share state without locks):
//!
//! - the publisher: takes the ingest thread's publishes in order and pipelines them to
//!   JetStream, up to [`WINDOW_MAX`] in flight, each message naming its topic's predecessor
//!   (checked by JetStream, see [`super::proof`] and [`Pipeline`]); acknowledges each
//!   publish with its stream sequence or the reason;
//! - the consumer: an ordered consumer over the whole stream from the node's join point,
//!   handing every event to the ingest thread in stream order, pausing while the ingest
//!   thread has [`super::CONSUMED_WAITING_MAX`] events waiting;
//! - fetches: a loop's resume its history cannot fill, read with batched direct gets per
//!   topic and proven whole or not;
//! - the watch: the connection's state, for `/healthz` and for failing publishes fast;
//! - the relay (see [`super::relay`]): SENDs and client messages to and from other nodes,
//!   and the queue group of the nodes with a backend.
//!
//! It never blocks the io_uring loops: they see its results in mailboxes and are woken
//! by doorbells ([`crate::driver::Ringer`]).
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedReceiver;

use super::proof::{self, Evidence, Prev, PREV_HEADER};
use super::relay::{self, Listening, Outgoing, Relay};
use super::{
    subject, Ack, Acked, Backplane, BackplaneError, Consumed, FetchRequest, Fetched, Joined, Publish, Request,
};
use crate::config::{BackplanePublish as PublishMode, Config};
use crate::driver::Ringer;
use crate::event::{Epoch, Event};

/// Publishes in flight to JetStream at once, each awaiting its own acknowledgement.
pub const WINDOW_MAX: usize = 1000;
/// Their payload bytes.
const WINDOW_BYTES_MAX: usize = 8 << 20;
/// Events per atomic batch (JetStream's own limit is 1,000), and read per topic by one
/// batched direct get.
pub const BATCH_MESSAGES_MAX: usize = 1000;
/// Payload bytes per atomic batch.
const BATCH_BYTES_MAX: usize = 8 << 20;
/// Times a publish is sent again after another node published its topic in between.
const CONFLICT_RETRIES: usize = 20;
/// Conflicts after which a pipeline sends what conflicted as atomic batches instead.
const CONTENDED_ATTEMPTS: usize = 3;
/// Header of the event name.
const EVENT_HEADER: &str = "Ringcast-Event";
/// Header of the coalescing key.
const KEY_HEADER: &str = "Ringcast-Key";
/// Room left for headers below the server's `max_payload`.
const HEADER_ROOM: usize = 4096;
/// How long the start waits for NATS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The JetStream error codes of a failed `Nats-Expected-Last-Subject-Sequence` check (the
/// first names the sequence, the second, a clustered stream's, does not) and of a failed
/// `Nats-Expected-Last-Msg-Id` check.
const WRONG_LAST_SEQUENCE: [u64; 3] = [10071, 10164, 10070];

/// Doorbell targets, filled in as the ingest thread and the loops build their drivers.
pub struct Bells {
    pub ingest: AtomicI32,
    pub loops: Vec<AtomicI32>,
    /// The driver they run on, which says how to ring them.
    pub driver: crate::driver::Kind,
}

/// What the backplane needs from the configuration.
#[derive(Clone)]
pub(super) struct Settings {
    urls: Vec<String>,
    pub(super) stream: String,
    pub(super) node: String,
    replicas: usize,
    pub(super) timeout: Duration,
    per_subject: i64,
    max_age: Duration,
    max_bytes: i64,
    payload_max: usize,
    publish: PublishMode,
}

impl Settings {
    fn of(config: &Config) -> Settings {
        Settings {
            urls: config
                .backplane
                .iter()
                .flat_map(|u| u.split(','))
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            stream: config.backplane_stream.clone(),
            node: config.node_name(),
            replicas: config.backplane_replicas,
            timeout: Duration::from_millis(config.backplane_timeout_ms),
            publish: config.backplane_publish,
            per_subject: i64::try_from(config.history_events).unwrap_or(i64::MAX),
            max_age: Duration::from_secs(config.history_age_secs),
            max_bytes: i64::try_from(config.history_bytes_total).unwrap_or(i64::MAX),
            payload_max: config.payload_max,
        }
    }
}

/// Starts the backplane thread, connects, and joins (or creates) the stream; returns once
/// the node may serve.
///
/// # Errors
/// A [`BackplaneError`] saying what is wrong and what to do.
pub fn start(
    config: &Config,
    loops: usize,
    driver: crate::driver::Kind,
) -> Result<(Arc<Backplane>, Arc<Bells>, Joined), BackplaneError> {
    let settings = Settings::of(config);
    if settings.publish == PublishMode::Pipelined && settings.replicas < 3 {
        eprintln!(
            "ringcast: backplane: --backplane-publish pipelined with {} stream replica(s): JetStream \
             acknowledges before it syncs, so a crash of the NATS server's host can lose acknowledged \
             events it had not synced; use --backplane-replicas 3 or --backplane-publish batched",
            settings.replicas
        );
    }
    let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
    let backplane = Arc::new(Backplane {
        requests: requests_tx,
        to_ingest: Default::default(),
        ingest_bell_pending: Default::default(),
        drained: tokio::sync::Notify::new(),
        fetched: (0..loops).map(|_| Default::default()).collect(),
        status: Default::default(),
        relaying: Default::default(),
        publishing: super::InFlight::new(super::PUBLISHING_MESSAGES_MAX, super::PUBLISHING_BYTES_MAX),
        relay_payload_max: Default::default(),
    });
    let bells = Arc::new(Bells {
        ingest: AtomicI32::new(-1),
        loops: (0..loops).map(|_| AtomicI32::new(-1)).collect(),
        driver,
    });
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let shared = (Arc::clone(&backplane), Arc::clone(&bells));
    std::thread::Builder::new()
        .name("ringcast-backplane".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(BackplaneError::Thread(e.to_string())));
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let joined = match join(&settings).await {
                    Ok(j) => j,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let (client, stream, info, subscriptions) = joined;
                let _ = ready_tx.send(Ok(info));
                serve(
                    settings,
                    client,
                    stream,
                    info,
                    subscriptions,
                    shared.0,
                    shared.1,
                    requests_rx,
                )
                .await;
            });
        })
        .map_err(|e| BackplaneError::Thread(e.to_string()))?;
    let joined = ready_rx
        .recv()
        .map_err(|_| BackplaneError::Thread("the backplane thread died while starting".into()))??;
    backplane.status.set_up();
    backplane
        .status
        .last_seq
        .store(joined.last_seq, Ordering::Release);
    backplane
        .relay_payload_max
        .store(joined.payload_max, Ordering::Release);
    Ok((backplane, bells, joined))
}

/// The node's own subscriptions, made before it serves.
struct Subscriptions {
    /// The inbox answers to this node's relayed requests come to.
    inbox: String,
    answers: async_nats::Subscriber,
    /// SENDs other nodes relay to this one.
    sends: async_nats::Subscriber,
}

/// Connects, finds or creates the stream, and subscribes to what other nodes relay to
/// this one (refusing to start when a node of the same name already runs).
async fn join(s: &Settings) -> Result<(Client, stream::Stream, Joined, Subscriptions), BackplaneError> {
    let urls = s.urls.join(",");
    let unreachable = |reason: String| BackplaneError::Unreachable {
        urls: urls.clone(),
        reason,
    };
    let connect = async_nats::ConnectOptions::new()
        .name(format!("ringcast {}", s.node))
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(s.timeout))
        .max_reconnects(None::<usize>)
        .connect(s.urls.clone());
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
    let js = jetstream::new(client.clone());
    let stream_error = |reason: String| BackplaneError::Stream {
        stream: s.stream.clone(),
        reason,
    };
    let mut stream = match js.get_stream(&s.stream).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let wanted = stream_config(s);
            js.create_stream(wanted).await.map_err(|e| {
                stream_error(format!(
                    "cannot create it: {e}; is JetStream enabled (nats-server -js)?"
                ))
            })?
        }
        Err(e) => {
            return Err(stream_error(format!(
                "cannot look it up: {e}; is JetStream enabled (nats-server -js)?"
            )))
        }
    };
    let info = stream
        .info()
        .await
        .map_err(|e| stream_error(e.to_string()))?
        .clone();
    check_compatible(s, &info.config)?;
    let epoch_micros = u64::try_from(info.created.unix_timestamp_nanos() / 1000)
        .unwrap_or(1)
        .max(1);
    let payload_max = client.server_info().max_payload.saturating_sub(HEADER_ROOM);
    let subscriptions = subscribe(s, &client).await?;
    Ok((
        client,
        stream,
        Joined {
            epoch_micros,
            last_seq: info.state.last_sequence,
            payload_max,
        },
        subscriptions,
    ))
}

/// Subscribes to this node's relay subjects, once no other node answers on them.
async fn subscribe(s: &Settings, client: &Client) -> Result<Subscriptions, BackplaneError> {
    if relay::another_runs_as(client, &s.stream, &s.node, s.timeout).await {
        return Err(BackplaneError::DuplicateNode { node: s.node.clone() });
    }
    let failed = |e: async_nats::SubscribeError| BackplaneError::Unreachable {
        urls: s.urls.join(","),
        reason: format!("cannot subscribe: {e}"),
    };
    let inbox = client.new_inbox();
    let answers = client
        .subscribe(Relay::replies_subject(&inbox))
        .await
        .map_err(failed)?;
    let sends = client
        .subscribe(subject::node_sends(&s.stream, &s.node))
        .await
        .map_err(failed)?;
    Ok(Subscriptions {
        inbox,
        answers,
        sends,
    })
}

/// The stream ringcast creates when none exists.
fn stream_config(s: &Settings) -> stream::Config {
    stream::Config {
        name: s.stream.clone(),
        subjects: vec![subject::all_topics(&s.stream)],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        max_messages_per_subject: s.per_subject,
        max_age: s.max_age,
        max_bytes: s.max_bytes,
        max_message_size: i32::try_from(s.payload_max + HEADER_ROOM).unwrap_or(i32::MAX),
        allow_direct: true,
        allow_atomic_publish: true,
        description: Some("ringcast events: one subject per topic".into()),
        ..Default::default()
    }
}

/// Refuses a stream whose settings would break ordering or the gap proof, naming what
/// differs; limits that only differ are the stream's to keep, with a line saying so.
fn check_compatible(s: &Settings, c: &stream::Config) -> Result<(), BackplaneError> {
    let mut wrong = Vec::new();
    let subjects = subject::all_topics(&s.stream);
    if c.subjects != [subjects.clone()] {
        wrong.push(format!(
            "its subjects are {:?}, ringcast needs exactly [{subjects:?}]",
            c.subjects
        ));
    }
    if c.retention != stream::RetentionPolicy::Limits {
        wrong.push(format!("retention is {:?}, ringcast needs limits", c.retention));
    }
    if c.discard != stream::DiscardPolicy::Old || c.discard_new_per_subject {
        wrong.push("it discards new messages when full; ringcast needs discard old".into());
    }
    if !c.allow_direct {
        wrong.push("allow_direct is off; ringcast reads resumes with direct gets".into());
    }
    if !c.allow_atomic_publish {
        wrong.push(
            "allow_atomic is off; ringcast publishes atomic batches (pipelined publishing too, when contended)"
                .into(),
        );
    }
    if c.sealed || c.mirror.is_some() || c.sources.as_ref().is_some_and(|v| !v.is_empty()) {
        wrong.push("it is sealed, a mirror or sourced; ringcast must write it".into());
    }
    if c.subject_transform.is_some() {
        wrong.push("it transforms subjects; ringcast reads topics from subjects".into());
    }
    if !wrong.is_empty() {
        return Err(BackplaneError::Incompatible {
            stream: s.stream.clone(),
            why: wrong.join("; "),
        });
    }
    if c.max_messages_per_subject != s.per_subject || c.max_age != s.max_age || c.max_bytes != s.max_bytes {
        eprintln!(
            "ringcast: backplane stream {} keeps {} messages per topic for {:?} and {} bytes; its \
             limits apply rather than --history-events {} / --history-age-secs {} / --history-bytes-total {}",
            s.stream,
            c.max_messages_per_subject,
            c.max_age,
            c.max_bytes,
            s.per_subject,
            s.max_age.as_secs(),
            s.max_bytes
        );
    }
    Ok(())
}

/// The thread's state, shared by its tasks (one thread: `Rc`, no locks).
pub(super) struct Node {
    pub(super) settings: Settings,
    pub(super) client: Client,
    stream: RefCell<stream::Stream>,
    epoch: Epoch,
    pub(super) backplane: Arc<Backplane>,
    bells: Arc<Bells>,
    bell: RefCell<Option<Ringer>>,
    /// The stream sequence of each topic's newest message, as far as this node knows.
    last: RefCell<HashMap<String, u64>>,
    /// The connection came back: the consumer starts again at once rather than waiting
    /// for its heartbeats to say the server lost it.
    reconnected: tokio::sync::Notify,
    /// Relayed requests awaiting their answers.
    pub(super) relay: Relay,
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    settings: Settings,
    client: Client,
    stream: stream::Stream,
    joined: Joined,
    subscriptions: Subscriptions,
    backplane: Arc<Backplane>,
    bells: Arc<Bells>,
    mut requests: UnboundedReceiver<Request>,
) {
    let bell = match Ringer::new(bells.driver) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("ringcast: backplane: no doorbell ring ({e}); loops learn of results on their tick");
            None
        }
    };
    let node = Rc::new(Node {
        settings,
        client,
        stream: RefCell::new(stream),
        epoch: Epoch::from_raw(joined.epoch_micros),
        backplane,
        bells,
        bell: RefCell::new(bell),
        last: RefCell::new(HashMap::new()),
        reconnected: tokio::sync::Notify::new(),
        relay: Relay::new(subscriptions.inbox),
    });
    let (publish_tx, publish_rx) = tokio::sync::mpsc::unbounded_channel();
    // Unbounded channels, each bounded by what feeds it: the ingest thread's room in
    // `InFlight`, the inbound queues, and one listen per backend.
    let (relay_tx, relay_rx) = tokio::sync::mpsc::unbounded_channel();
    let (listen_tx, listen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::task::spawn_local(publisher(Rc::clone(&node), publish_rx));
    tokio::task::spawn_local(consumer(Rc::clone(&node), joined.last_seq + 1));
    tokio::task::spawn_local(watch(Rc::clone(&node)));
    tokio::task::spawn_local(relay::outbound(Rc::clone(&node), relay_rx));
    tokio::task::spawn_local(relay::answers(Rc::clone(&node), subscriptions.answers));
    tokio::task::spawn_local(relay::expire(Rc::clone(&node)));
    tokio::task::spawn_local(relay::sends_in(Rc::clone(&node), subscriptions.sends));
    tokio::task::spawn_local(relay::listeners(Rc::clone(&node), listen_rx));
    while let Some(request) = requests.recv().await {
        match request {
            Request::Publish(p) => {
                let _ = publish_tx.send(p);
            }
            Request::Fetch(f) => {
                tokio::task::spawn_local(fetch_task(Rc::clone(&node), f));
            }
            Request::Send(s) => {
                let _ = relay_tx.send(Outgoing::Send(s));
            }
            Request::Upstream(u) => {
                let _ = relay_tx.send(Outgoing::Up(u));
            }
            Request::Answer { reply, result } => {
                let _ = relay_tx.send(Outgoing::Answer { reply, result });
            }
            Request::Listen(asker) => {
                let _ = listen_tx.send(Listening::Listen(asker));
            }
            Request::Unlisten => {
                let _ = listen_tx.send(Listening::Unlisten);
            }
        }
    }
}

impl Node {
    fn ring(&self, fd: &AtomicI32, data: u64) {
        let fd = fd.load(Ordering::Acquire);
        if fd < 0 {
            return;
        }
        if let Some(bell) = self.bell.borrow_mut().as_mut() {
            bell.ring(fd, data);
        }
    }

    pub(super) fn ring_ingest(&self) {
        if !self.backplane.ingest_bell_pending.swap(true, Ordering::AcqRel) {
            self.ring(&self.bells.ingest, crate::ingest::BACKPLANE_BELL_DATA);
        }
    }

    pub(super) fn ack(&self, acks: impl IntoIterator<Item = Ack>) {
        self.backplane
            .to_ingest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acks
            .extend(acks);
        self.ring_ingest();
    }

    pub(super) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Watches the connection: the status follows it, so `/healthz` says when the backplane
/// is down and publishes fail fast.
async fn watch(node: Rc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let statistics = node.client.statistics();
    let mut connects = statistics.connects.load(Ordering::Relaxed);
    loop {
        tick.tick().await;
        // A reconnection between two looks is seen by the count of connects, not only by
        // a look that found the connection down: either way the consumer starts again.
        let now = statistics.connects.load(Ordering::Relaxed);
        if now != connects {
            connects = now;
            node.mark_down();
        }
        if node.connected() {
            node.mark_up();
        } else {
            node.mark_down();
        }
    }
}

impl Node {
    fn mark_up(&self) {
        let status = &self.backplane.status;
        if !status.is_up() {
            eprintln!("ringcast: backplane: connected to NATS again");
            status.set_up();
            self.reconnected.notify_one();
        }
    }

    fn mark_down(&self) {
        let status = &self.backplane.status;
        if status.is_up() {
            eprintln!(
                "ringcast: backplane: lost the connection to NATS; publishes are refused until it is back"
            );
            status.set_down("not connected to NATS");
        }
    }
}

// ----- publishing ---------------------------------------------------------------------

/// One publish on its way to JetStream.
struct InFlight {
    publish: Publish,
    /// The stream sequence it is expected to get (see [`Pipeline`]).
    predicted: u64,
    /// Sends before this one that met a conflict.
    attempts: usize,
    reply: tokio::task::JoinHandle<Result<u64, PublishError>>,
}

/// The publishes in flight, in the order they were sent, and what the next ones predict.
///
/// Each publish names its topic's previous message in `Ringcast-Prev` and has JetStream
/// check it with `Nats-Expected-Last-Subject-Sequence`. When that message is itself still
/// in flight its sequence is not known yet: it is predicted, as the sequence after the
/// newest one sent, which holds while this node's publishes are stored back to back.
///
/// That they are is checked too: every publish has a `Nats-Msg-Id`, and each one sent
/// while others are in flight carries `Nats-Expected-Last-Msg-Id`, the id of the one sent
/// just before it, so JetStream stores it only right after that one. A chain of publishes
/// is thus stored whole and in order up to its first failure, and a prediction can never
/// pass by coinciding with somebody else's message. When another node's message comes in
/// between, or a publish is refused, every later one in flight fails (a conflict, never a
/// wrong predecessor stored), and the pipeline drains: nothing more is sent until every
/// publish in flight has its answer, then the conflicted ones are sent again, in their
/// order, with each topic's predecessor looked up, and without predictions or chaining
/// (one publish in flight per topic) until the pipeline next runs empty.
struct Pipeline {
    inflight: VecDeque<InFlight>,
    bytes: usize,
    /// The predicted sequence of the next publish; `None` when nothing anchors it (then
    /// the newest sequence this node knows of, plus one).
    next: Option<u64>,
    /// Per topic with publishes in flight: the predicted sequence of its newest, and how
    /// many it has in flight.
    topics: HashMap<Box<str>, (u64, usize)>,
    /// A conflict was met: send nothing until the publishes in flight are answered.
    draining: bool,
    /// Conflicted publishes waiting for the drain to end, in their order.
    conflicted: Vec<(Publish, usize)>,
    /// After a drain, publishes left to send before predictions may start again (once the
    /// pipeline has run empty).
    exact: usize,
    /// Sending without predictions or chaining since the last drain.
    exact_phase: bool,
    /// The `Nats-Msg-Id` of the newest publish in flight.
    last_id: Option<String>,
    /// Serial of the next `Nats-Msg-Id`.
    serial: u64,
}

impl Pipeline {
    fn new() -> Self {
        Pipeline {
            inflight: VecDeque::with_capacity(WINDOW_MAX),
            bytes: 0,
            next: None,
            topics: HashMap::new(),
            draining: false,
            conflicted: Vec::new(),
            exact: 0,
            exact_phase: false,
            last_id: None,
            serial: 0,
        }
    }

    fn has_room(&self) -> bool {
        !self.draining && self.inflight.len() < WINDOW_MAX && self.bytes < WINDOW_BYTES_MAX
    }

    /// Whether `p` may go now: after a drain, not while its topic has one in flight.
    fn may_send(&self, p: &Publish) -> bool {
        self.has_room() && (!self.exact_phase || !self.topics.contains_key(&p.topic))
    }

    fn send(&mut self, node: &Rc<Node>, publish: Publish, attempts: usize) {
        if self.inflight.is_empty() {
            // A new chain; after a drain's quota, predictions start again here.
            self.last_id = None;
            if self.exact == 0 {
                self.exact_phase = false;
            }
        }
        let predicted = self
            .next
            .filter(|_| !self.inflight.is_empty())
            .unwrap_or_else(|| node.backplane.status.last_seq.load(Ordering::Acquire) + 1);
        self.next = Some(predicted + 1);
        self.exact = self.exact.saturating_sub(1);
        self.serial += 1;
        let id = format!("{}-{}-{}", node.settings.node, std::process::id(), self.serial);
        let after = if self.exact_phase {
            None
        } else {
            self.last_id.replace(id.clone())
        };
        let prev = match self.topics.get(&publish.topic) {
            Some(&(newest, _)) => newest,
            None => node.last.borrow().get(&*publish.topic).copied().unwrap_or(0),
        };
        let entry = self.topics.entry(publish.topic.clone()).or_insert((0, 0));
        *entry = (predicted, entry.1 + 1);
        node.backplane.status.batches.fetch_add(1, Ordering::Relaxed);
        let mut message = message_of(node, &publish, prev);
        message.1.insert("Nats-Msg-Id", id.as_str());
        if let Some(after) = &after {
            message.1.insert("Nats-Expected-Last-Msg-Id", after.as_str());
        }
        let reply = tokio::task::spawn_local(send_one(Rc::clone(node), message));
        self.bytes += publish.payload.len();
        self.inflight.push_back(InFlight {
            publish,
            predicted,
            attempts,
            reply,
        });
    }

    /// The oldest publish has its answer.
    fn done(&mut self, node: &Node, sent: InFlight, result: Result<u64, PublishError>) -> Option<Ack> {
        self.bytes -= sent.publish.payload.len();
        if let Some(entry) = self.topics.get_mut(&sent.publish.topic) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.topics.remove(&sent.publish.topic);
            }
        }
        let status = &node.backplane.status;
        let result = match result {
            Ok(seq) => {
                let mut known = node.last.borrow_mut();
                let entry = known.entry(sent.publish.topic.to_string()).or_insert(0);
                *entry = (*entry).max(seq);
                status.last_seq.fetch_max(seq, Ordering::AcqRel);
                // Stored elsewhere than predicted (another node's message came first, or
                // one before it was not stored): the next ones are predicted from here.
                if seq != sent.predicted {
                    if let Some(next) = &mut self.next {
                        *next = (*next + seq).saturating_sub(sent.predicted).max(seq + 1);
                    }
                }
                Ok(seq)
            }
            Err(PublishError::Conflict) => {
                status.conflicts.fetch_add(1, Ordering::Relaxed);
                self.draining = true;
                // Only a topic's first conflict of a drain counts against its publish: the
                // ones after it failed because it did.
                let first = !self.conflicted.iter().any(|(p, _)| p.topic == sent.publish.topic);
                let attempts = sent.attempts + usize::from(first);
                if attempts < CONFLICT_RETRIES {
                    self.conflicted.push((sent.publish, attempts));
                    return None;
                }
                Err(format!(
                    "backplane busy: other nodes kept publishing this topic; {CONFLICT_RETRIES} attempts failed"
                ))
            }
            Err(PublishError::Refused(why)) => Err(why),
            Err(PublishError::Unavailable(why)) => Err(format!("backplane unavailable: {why}")),
        };
        Some(answer(node, sent.publish, result))
    }
}

/// A random pause of up to 2^`attempts` milliseconds (at most 64).
fn backoff_jitter(attempts: usize) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is seeded randomly per instance: enough to break ties.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(attempts);
    let cap_us = (1u64 << attempts.min(6)) * 1000;
    Duration::from_micros(h.finish() % cap_us.max(1))
}

/// The answer to one publish, and the room it leaves.
fn answer(node: &Node, publish: Publish, result: Result<u64, String>) -> Ack {
    let status = &node.backplane.status;
    node.backplane.publishing.give_back(publish.payload.len());
    match &result {
        Ok(_) => status.published.fetch_add(1, Ordering::Relaxed),
        Err(_) => status.refused.fetch_add(1, Ordering::Relaxed),
    };
    Ack {
        asker: publish.asker,
        result: result.map(Acked::Stored),
    }
}

async fn publisher(node: Rc<Node>, rx: UnboundedReceiver<Publish>) {
    match node.settings.publish {
        PublishMode::Batched => publish_batched(node, rx).await,
        PublishMode::Pipelined => publish_pipelined(node, rx).await,
    }
}

/// Publishes pipelined, up to [`WINDOW_MAX`] in flight (see [`Pipeline`]): acknowledged as
/// JetStream acknowledges a plain publish, once the stream leader (and, with replicas, a
/// quorum) has it, before it is synced to disk.
async fn publish_pipelined(node: Rc<Node>, mut rx: UnboundedReceiver<Publish>) {
    let mut pipe = Pipeline::new();
    // Publishes taken from the ingest thread or sent back by a drain, not yet sent.
    let mut queue: VecDeque<(Publish, usize)> = VecDeque::new();
    let mut open = true;
    loop {
        while open && queue.len() < WINDOW_MAX {
            match rx.try_recv() {
                Ok(p) => queue.push_back((p, 0)),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let mut acks = Vec::new();
        while let Some((p, _)) = queue.front() {
            if !pipe.may_send(p) {
                break;
            }
            let (p, attempts) = queue.pop_front().expect("a front");
            if !node.connected() {
                node.mark_down();
                let why = format!("backplane unavailable: {}", node.down_reason());
                acks.push(answer(&node, p, Err(why)));
                continue;
            }
            pipe.send(&node, p, attempts);
        }
        if !acks.is_empty() {
            node.ack(acks);
        }
        if pipe.inflight.is_empty() {
            if pipe.draining {
                pipe.draining = false;
                let again = std::mem::take(&mut pipe.conflicted);
                // Nodes that keep meeting on a topic back off by random amounts, so that
                // one of them gets through.
                let worst = again.iter().map(|(_, a)| *a).max().unwrap_or(0);
                if worst >= 2 {
                    let jitter = backoff_jitter(worst);
                    tokio::time::sleep(jitter).await;
                }
                pipe.exact = WINDOW_MAX;
                pipe.exact_phase = true;
                if worst >= CONTENDED_ATTEMPTS {
                    // Contended: one atomic batch carries them all per attempt, as in
                    // batched mode, rather than one publish per topic per round trip.
                    let publishes: Vec<Publish> = again.into_iter().map(|(p, _)| p).collect();
                    refresh_last(&node, publishes.iter().map(|p| &*p.topic)).await;
                    let results = store(&node, &publishes).await;
                    let acks: Vec<Ack> = publishes
                        .into_iter()
                        .zip(results)
                        .map(|(p, r)| answer(&node, p, r))
                        .collect();
                    node.ack(acks);
                    continue;
                }
                refresh_last(&node, again.iter().map(|(p, _)| &*p.topic)).await;
                for item in again.into_iter().rev() {
                    queue.push_front(item);
                }
                continue;
            }
            if !queue.is_empty() {
                continue;
            }
            match rx.recv().await {
                Some(p) => queue.push_back((p, 0)),
                None => return,
            }
            continue;
        }
        let front = pipe.inflight.front_mut().expect("in flight");
        tokio::select! {
            biased;
            result = &mut front.reply => {
                let sent = pipe.inflight.pop_front().expect("in flight");
                let result = result.unwrap_or_else(|e| Err(PublishError::Unavailable(e.to_string())));
                // Every answer rings the ingest thread, which lets waiting publishers go on.
                if let Some(ack) = pipe.done(&node, sent, result) {
                    node.ack([ack]);
                }
            }
            p = rx.recv(), if open && queue.len() < WINDOW_MAX => match p {
                Some(p) => queue.push_back((p, 0)),
                None => open = false,
            },
        }
    }
}

impl Node {
    /// Why NATS cannot be used now.
    pub(super) fn down_reason(&self) -> String {
        let reason = self.backplane.status.reason();
        if reason.is_empty() {
            "not connected to NATS".into()
        } else {
            reason
        }
    }
}

enum PublishError {
    /// A topic's predecessor was not the one named: another node published it meanwhile,
    /// or a publish it was predicted or chained after was not stored.
    Conflict,
    /// JetStream refused the event (or the batch) for good.
    Refused(String),
    /// No answer, or no connection.
    Unavailable(String),
}

/// The subject, headers and payload of `p`, naming `prev` as its topic's predecessor.
fn message_of(node: &Node, p: &Publish, prev: u64) -> (String, HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(PREV_HEADER, prev.to_string().as_str());
    headers.insert("Nats-Expected-Last-Subject-Sequence", prev.to_string().as_str());
    let subject = event_headers(node, p, &mut headers);
    (subject, headers, p.payload.clone())
}

/// Adds `p`'s event name and coalescing key to `headers`; returns its topic's subject.
fn event_headers(node: &Node, p: &Publish, headers: &mut HeaderMap) -> String {
    if let Some(event) = &p.event {
        headers.insert(EVENT_HEADER, &**event);
    }
    if let Some(key) = &p.key {
        headers.insert(KEY_HEADER, &**key);
    }
    subject::of_topic(&node.settings.stream, &p.topic)
}

/// Publishes one message and waits for JetStream's acknowledgement: its stream sequence.
async fn send_one(
    node: Rc<Node>,
    (subject, headers, payload): (String, HeaderMap, Bytes),
) -> Result<u64, PublishError> {
    let request = async_nats::Request::new().headers(headers).payload(payload);
    acknowledged(&node, subject, request).await.map(|(seq, _)| seq)
}

/// Sends `request` (a publish, or a batch's commit) and reads JetStream's acknowledgement
/// `{"stream":..,"seq":N[,"batch":..,"count":K]}` or
/// `{"error":{"code":..,"err_code":..,"description":..}}`: the sequence stored last, and
/// how many messages were stored.
async fn acknowledged(
    node: &Node,
    subject: String,
    request: async_nats::Request,
) -> Result<(u64, u64), PublishError> {
    #[derive(serde::Deserialize)]
    struct AckJson {
        seq: Option<u64>,
        count: Option<u64>,
        error: Option<ErrorJson>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorJson {
        err_code: Option<u64>,
        description: Option<String>,
    }
    let reply = node
        .client
        .send_request(subject, request.timeout(Some(node.settings.timeout)))
        .await
        .map_err(|e| match e.kind() {
            // It went out and no answer came: NATS may have stored it.
            async_nats::RequestErrorKind::TimedOut => PublishError::Unavailable(format!(
                "no acknowledgement within {} ms; the event may still have been stored",
                node.settings.timeout.as_millis()
            )),
            _ => PublishError::Unavailable(e.to_string()),
        })?;
    let ack: AckJson = serde_json::from_slice(&reply.payload)
        .map_err(|e| PublishError::Refused(format!("unreadable acknowledgement from JetStream: {e}")))?;
    if let Some(error) = ack.error {
        if error.err_code.is_some_and(|c| WRONG_LAST_SEQUENCE.contains(&c)) {
            return Err(PublishError::Conflict);
        }
        return Err(PublishError::Refused(format!(
            "JetStream refused the event: {}",
            error.description.unwrap_or_default()
        )));
    }
    match ack.seq {
        Some(seq) if seq > 0 => Ok((seq, ack.count.unwrap_or(1))),
        _ => Err(PublishError::Refused("JetStream acknowledged no sequence".into())),
    }
}

/// Publishes as atomic batches, one in flight: JetStream syncs each batch to disk before
/// acknowledging it, so an acknowledged event survives even a single server's crash.
async fn publish_batched(node: Rc<Node>, mut rx: UnboundedReceiver<Publish>) {
    let mut batch: Vec<Publish> = Vec::with_capacity(BATCH_MESSAGES_MAX);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.payload.len();
        batch.push(first);
        while batch.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += p.payload.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        let results = store(&node, &batch).await;
        let status = &node.backplane.status;
        // Every answer rings the ingest thread, which lets waiting publishers go on.
        let acks: Vec<Ack> = batch
            .drain(..)
            .zip(results)
            .map(|(p, result)| {
                node.backplane.publishing.give_back(p.payload.len());
                match &result {
                    Ok(_) => status.published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => status.refused.fetch_add(1, Ordering::Relaxed),
                };
                Ack {
                    asker: p.asker,
                    result: result.map(Acked::Stored),
                }
            })
            .collect();
        node.ack(acks);
    }
}

/// Stores `batch` as one atomic batch; the stream sequence of each event, or why not.
async fn store(node: &Node, batch: &[Publish]) -> Vec<Result<u64, String>> {
    let refuse = |why: String| batch.iter().map(|_| Err(why.clone())).collect();
    for _ in 0..CONFLICT_RETRIES {
        if !node.connected() {
            node.mark_down();
            return refuse(format!("backplane unavailable: {}", node.down_reason()));
        }
        node.backplane.status.batches.fetch_add(1, Ordering::Relaxed);
        match send_batch(node, batch).await {
            Ok(last) => {
                let first = last + 1 - batch.len() as u64;
                let mut known = node.last.borrow_mut();
                for (i, p) in batch.iter().enumerate() {
                    let seq = first + i as u64;
                    let entry = known.entry(p.topic.to_string()).or_insert(0);
                    *entry = (*entry).max(seq);
                }
                node.backplane.status.last_seq.fetch_max(last, Ordering::AcqRel);
                return (first..=last).map(Ok).collect();
            }
            Err(PublishError::Conflict) => {
                node.backplane.status.conflicts.fetch_add(1, Ordering::Relaxed);
                refresh_last(node, batch.iter().map(|p| &*p.topic)).await;
            }
            Err(PublishError::Refused(why)) => return refuse(why),
            Err(PublishError::Unavailable(why)) => return refuse(format!("backplane unavailable: {why}")),
        }
    }
    refuse(format!(
        "backplane busy: other nodes kept publishing these topics; {CONFLICT_RETRIES} attempts failed"
    ))
}

thread_local! {
    static BATCH_SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Sends one atomic batch and returns the sequence of its last message.
async fn send_batch(node: &Node, batch: &[Publish]) -> Result<u64, PublishError> {
    let serial = BATCH_SERIAL.with(|s| {
        s.set(s.get() + 1);
        s.get()
    });
    // Batch ids are at most 64 bytes; the node name is shortened if need be.
    let name: String = node.settings.node.chars().take(40).collect();
    let batch_id = format!("{name}-{}-{serial}", std::process::id());
    let known = node.last.borrow().clone();
    let mut seen_at: HashMap<&str, usize> = HashMap::new();
    let last_index = batch.len() - 1;
    for (i, p) in batch.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", batch_id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        match seen_at.insert(&p.topic, i) {
            // Stored right after one another: name the predecessor by distance.
            Some(j) => headers.insert(PREV_HEADER, format!("-{}", i - j).as_str()),
            None => {
                let prev = known.get(&*p.topic).copied().unwrap_or(0);
                headers.insert(PREV_HEADER, prev.to_string().as_str());
                headers.insert("Nats-Expected-Last-Subject-Sequence", prev.to_string().as_str());
            }
        }
        let subject = event_headers(node, p, &mut headers);
        if i < last_index {
            node.client
                .publish_with_headers(subject, headers, p.payload.clone())
                .await
                .map_err(|e| PublishError::Unavailable(e.to_string()))?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let request = async_nats::Request::new()
            .headers(headers)
            .payload(p.payload.clone());
        let (seq, n) = acknowledged(node, subject, request).await?;
        let count = batch.len() as u64;
        if n == count && seq >= n {
            return Ok(seq);
        }
        return Err(PublishError::Refused(format!(
            "JetStream stored {n} of {count} events (last {seq}); the batch is not whole"
        )));
    }
    Err(PublishError::Refused("empty batch".into()))
}

/// Learns the newest stored message of each of `topics`.
async fn refresh_last<'a>(node: &Node, topics: impl Iterator<Item = &'a str>) {
    let mut topics: Vec<&str> = topics.collect();
    topics.sort_unstable();
    topics.dedup();
    for topic in topics {
        let subject = subject::of_topic(&node.settings.stream, topic);
        if let Ok(Some((seq, _))) = last_at_or_before(node, &subject, None).await {
            let mut known = node.last.borrow_mut();
            let entry = known.entry(topic.to_string()).or_insert(0);
            *entry = (*entry).max(seq);
            node.backplane.status.last_seq.fetch_max(seq, Ordering::AcqRel);
        }
    }
}

// ----- consuming ----------------------------------------------------------------------

async fn consumer(node: Rc<Node>, mut next: u64) {
    loop {
        let stream = node.stream.borrow().clone();
        let created = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: next },
                ..Default::default()
            })
            .await;
        let messages = match created {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                node.backplane
                    .status
                    .set_down(format!("cannot read the stream: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                m = messages.next() => m,
                () = node.reconnected.notified() => break,
            };
            let Some(Ok(message)) = message else {
                // The ordered consumer recreates itself after most errors; it ended.
                break;
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            if seq < next {
                continue;
            }
            if seq > next {
                node.backplane
                    .status
                    .skipped
                    .fetch_add(seq - next, Ordering::Relaxed);
            }
            next = seq + 1;
            let Some(consumed) = consumed_of(&node, seq, &message.message) else {
                continue;
            };
            deliver_consumed(&node, consumed).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|v| v.as_str())
}

/// The event a stream message carries; `None` for a message ringcast cannot serve (a
/// subject that names no topic, a payload that is not UTF-8), which is skipped.
fn consumed_of(node: &Node, seq: u64, message: &async_nats::Message) -> Option<Consumed> {
    let topic = subject::topic_of(&node.settings.stream, message.subject.as_str())?;
    std::str::from_utf8(&message.payload).ok()?;
    let headers = message.headers.as_ref();
    {
        let mut known = node.last.borrow_mut();
        let entry = known.entry(topic.clone()).or_insert(0);
        *entry = (*entry).max(seq);
    }
    node.backplane.status.last_seq.fetch_max(seq, Ordering::AcqRel);
    node.backplane.status.consumed.fetch_add(1, Ordering::Relaxed);
    Some(Consumed {
        seq,
        topic,
        event: header(headers, EVENT_HEADER).map(str::to_owned),
        key: header(headers, KEY_HEADER).map(str::to_owned),
        payload: message.payload.clone(),
    })
}

/// Hands one event to the ingest thread, waiting while it has too many waiting.
async fn deliver_consumed(node: &Node, consumed: Consumed) {
    let mut consumed = Some(consumed);
    loop {
        {
            let mut to_ingest = node
                .backplane
                .to_ingest
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if to_ingest.consumed.len() < super::CONSUMED_WAITING_MAX {
                to_ingest.consumed.push_back(consumed.take().expect("once"));
            }
        }
        node.ring_ingest();
        if consumed.is_none() {
            return;
        }
        // Wait for the ingest thread to drain, with a safety net for a missed wake-up.
        let _ = tokio::time::timeout(Duration::from_millis(10), node.backplane.drained.notified()).await;
    }
}

// ----- fetching resumes ------------------------------------------------------------------

async fn fetch_task(node: Rc<Node>, request: FetchRequest) {
    node.backplane.status.fetches.fetch_add(1, Ordering::Relaxed);
    let shard = request.shard;
    let fetched = match fetch(&node, &request).await {
        Ok(f) => f,
        Err(why) => Fetched {
            index: request.index,
            generation: request.generation,
            after: request.after,
            upto: request.upto,
            events: Vec::new(),
            whole: false,
            more: false,
            error: Some(why),
        },
    };
    node.backplane.fetched[shard]
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(fetched);
    node.ring(&node.bells.loops[shard], crate::shard::DOORBELL_DATA);
}

/// One stored message read back.
struct Stored {
    seq: u64,
    topic: usize,
    prev: Prev,
    event: Option<String>,
    key: Option<String>,
    payload: Bytes,
}

/// Reads `(after, upto]` of the request's topics, at most a page, and proves it whole.
async fn fetch(node: &Node, r: &FetchRequest) -> Result<Fetched, String> {
    let per_topic = r.limits.events.clamp(1, BATCH_MESSAGES_MAX);
    let mut all: Vec<Stored> = Vec::new();
    // A topic whose read stopped at its batch size may hold more before `upto`: the page
    // then ends where the first such topic's read ended.
    let mut cut = r.upto;
    for (i, topic) in r.topics.iter().enumerate() {
        let subject = subject::of_topic(&node.settings.stream, topic);
        let read = batch_get(node, &subject, r.after + 1, r.upto, per_topic).await?;
        if read.len() >= per_topic {
            cut = cut.min(read.last().map_or(r.upto, |m| m.0));
        }
        all.extend(read.into_iter().map(|(seq, m)| stored(i, seq, &m)));
    }
    all.retain(|m| m.seq <= cut);
    all.sort_unstable_by_key(|m| m.seq);
    let mut more = cut < r.upto;
    let mut bytes = 0;
    let mut keep = 0;
    for m in &all {
        if keep > 0 && (keep >= r.limits.events || bytes + m.payload.len() > r.limits.bytes) {
            more = true;
            cut = all[keep - 1].seq;
            break;
        }
        bytes += m.payload.len();
        keep += 1;
    }
    all.truncate(keep);
    let stream_first = stream_first_seq(node).await?;
    let mut whole = true;
    for (i, topic) in r.topics.iter().enumerate() {
        let first = all.iter().find(|m| m.topic == i).map(|m| (m.seq, m.prev));
        let held_before = match first {
            Some(_) => false,
            None => {
                let subject = subject::of_topic(&node.settings.stream, topic);
                last_at_or_before(node, &subject, Some(cut)).await?.is_some()
            }
        };
        if !proof::whole(r.after, Evidence { first, held_before }, stream_first) {
            whole = false;
        }
    }
    let now = Instant::now();
    let events = all
        .into_iter()
        .map(|m| {
            Arc::new(Event::new(
                node.epoch,
                m.seq,
                &r.topics[m.topic],
                m.event.as_deref(),
                m.key.as_deref(),
                &m.payload,
                now,
            ))
        })
        .collect();
    Ok(Fetched {
        index: r.index,
        generation: r.generation,
        after: r.after,
        upto: r.upto,
        events,
        whole,
        more,
        error: None,
    })
}

fn stored(topic: usize, seq: u64, m: &async_nats::Message) -> Stored {
    let headers = m.headers.as_ref();
    Stored {
        seq,
        topic,
        prev: Prev::parse(header(headers, PREV_HEADER), seq),
        event: header(headers, EVENT_HEADER).map(str::to_owned),
        key: header(headers, KEY_HEADER).map(str::to_owned),
        payload: m.payload.clone(),
    }
}

/// The direct-get API subject of the stream.
fn direct_get_subject(node: &Node) -> String {
    format!("$JS.API.DIRECT.GET.{}", node.settings.stream)
}

/// Up to `batch` messages of `subject` from sequence `from` to `upto`, in order (a
/// batched direct get: the server streams them and ends with an end-of-batch status).
async fn batch_get(
    node: &Node,
    subject: &str,
    from: u64,
    upto: u64,
    batch: usize,
) -> Result<Vec<(u64, async_nats::Message)>, String> {
    if from > upto {
        return Ok(Vec::new());
    }
    let inbox = node.client.new_inbox();
    let mut replies = node
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| format!("backplane unavailable: {e}"))?;
    let body = serde_json::json!({ "seq": from, "next_by_subj": subject, "batch": batch, "up_to_seq": upto });
    node.client
        .publish_with_reply(direct_get_subject(node), inbox, Bytes::from(body.to_string()))
        .await
        .map_err(|e| format!("backplane unavailable: {e}"))?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(node.settings.timeout, replies.next()).await;
        let Ok(Some(message)) = next else {
            return Err("backplane unavailable: a stream read timed out".into());
        };
        match message.status {
            // 204 ends a batch; 404 says nothing (more) matches.
            Some(status) if status.as_u16() == 204 || status == StatusCode::NOT_FOUND => return Ok(out),
            Some(status) if status != StatusCode::OK => {
                return Err(format!(
                    "the stream read failed: {status} {}",
                    message.description.unwrap_or_default()
                ))
            }
            _ => {}
        }
        let seq = header(message.headers.as_ref(), "Nats-Sequence")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("a stream message without its sequence")?;
        if seq > upto {
            return Ok(out);
        }
        out.push((seq, message));
        if out.len() >= batch {
            return Ok(out);
        }
    }
}

/// The newest held message of `subject` at or before `upto` (or at all): its sequence
/// and predecessor.
async fn last_at_or_before(
    node: &Node,
    subject: &str,
    upto: Option<u64>,
) -> Result<Option<(u64, Prev)>, String> {
    let body = match upto {
        Some(upto) => serde_json::json!({ "last_by_subj": subject, "up_to_seq": upto }),
        None => serde_json::json!({ "last_by_subj": subject }),
    };
    let reply = node
        .client
        .request(direct_get_subject(node), Bytes::from(body.to_string()))
        .await
        .map_err(|e| format!("backplane unavailable: {e}"))?;
    if reply.status == Some(StatusCode::NOT_FOUND) {
        return Ok(None);
    }
    let headers = reply.headers.as_ref();
    let seq = header(headers, "Nats-Sequence")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or("a direct get answered without a sequence")?;
    Ok(Some((seq, Prev::parse(header(headers, PREV_HEADER), seq))))
}

/// The stream's first held sequence.
async fn stream_first_seq(node: &Node) -> Result<u64, String> {
    let stream = node.stream.borrow().clone();
    let info = stream
        .get_info()
        .await
        .map_err(|e| format!("backplane unavailable: {e}"))?;
    Ok(info.state.first_sequence)
}
